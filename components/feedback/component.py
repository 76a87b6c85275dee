"""KFP component: export-feedback (labelled predictions of the shared store -> a table)."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Output

from kfp_automl.components._image import COMPONENTS_IMAGE

# The step reads the shared store's URL from this variable: on a cluster from the Secret the
# serving pods read (pipelines/feedback.py), never from a pipeline parameter (it holds a
# password, and parameters show in the Kubeflow UI).
STORE_ENV = "AUTOML_LOG_STORE"


@dsl.component(base_image=COMPONENTS_IMAGE, install_kfp_package=False)
def export_feedback(
    table: Output[Dataset],
    model_name: str,
    since: str = "30d",
    append_to: str = "",
    min_labels: int = 100,
    log_dir: str = "",
) -> NamedTuple("Exported", data=str, target=str, labelled=int):
    """Write the labelled predictions of `model_name` as a training table (Parquet).

    Args:
        table: The table: the model's feature columns and its target, named as in training.
        model_name: The served model whose predictions are read.
        since: Only predictions made since then: an age (12h, 30d) or an ISO date/time (UTC).
        append_to: The original training table (path or URL): the output is it with the
            labelled predictions appended.
        min_labels: Fail, writing nothing, when fewer predictions are labelled.
        log_dir: Read this prediction log directory (one host) instead of the shared store
            whose URL is in the environment variable AUTOML_LOG_STORE.
    """
    from kfp_automl.progress import reported

    with reported("export-feedback"):
        import os
        from collections import namedtuple

        from kfp_automl.feedback.export import export
        from kfp_automl.progress import say

        store = "" if log_dir else os.environ.get("AUTOML_LOG_STORE", "")
        if not store and not log_dir:
            from kfp_automl.errors import UserError

            raise UserError(
                "no prediction store: set AUTOML_LOG_STORE (on a cluster, the Secret "
                "kfp-automl-prediction-store) or log_dir"
            )
        table.uri = table.uri + ".parquet"  # the format follows the name
        done = export(
            table.path,
            store=store,
            log_dir=log_dir,
            since=since,
            model=model_name,
            append_to_path=append_to,
            min_labels=min_labels,
        )
        table.metadata.update(
            {"rows": done.rows, "labelled": done.fresh.labelled, "target": done.fresh.target}
        )
        say(
            "export-feedback",
            f"{done.fresh.labelled} labelled predictions of {model_name} (of "
            f"{done.fresh.predictions} logged) from {done.source}; {done.rows} rows",
        )
        exported = namedtuple("Exported", ["data", "target", "labelled"])
        return exported(table.uri, done.fresh.target, done.fresh.labelled)
