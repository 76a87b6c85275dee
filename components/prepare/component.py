"""KFP components: fingerprint (the inputs' versions) and prepare (validate, infer column
roles, clean, split, profile, data report)."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Markdown, Output

from kfp_automl.components._image import COMPONENTS_IMAGE


@dsl.component(base_image=COMPONENTS_IMAGE, install_kfp_package=False)
def prepare_data(
    data: str,
    target: str,
    train: Output[Dataset],
    valid: Output[Dataset],
    test: Output[Dataset],
    schema: Output[Artifact],
    profile: Output[Artifact],
    data_report: Output[HTML],
    data_summary: Output[Markdown],
    task: str = "auto",
    seed: int = 42,
    valid_fraction: float = 0.15,
    test_fraction: float = 0.15,
    drop_columns: str = "",
    categorical_columns: str = "",
    numeric_columns: str = "",
    datetime_columns: str = "",
    text_columns: str = "",
    boolean_columns: str = "",
    time_column: str = "",
    group_column: str = "",
    drop_duplicates: bool = False,
    data_version: str = "",
):
    """Validate a table, infer the task and column roles, clean it, split it, and report on it.

    Args:
        data: Table path or fsspec URL (CSV, TSV, Parquet, JSON Lines); empty for the built-in
            demo table. Credentials for s3://, gs:// ... come from the pod's environment.
        target: Target column; empty with empty `data` means the demo table's target.
        train: Training rows (Parquet).
        valid: Validation rows used to compare trials (Parquet).
        test: Holdout rows used only by evaluation (Parquet).
        schema: Column roles, dtypes, categories, ranges, required columns, decisions (JSON).
        profile: Reference bins, counts, shares and calibrated drift thresholds per feature (JSON).
        data_report: The data report (HTML).
        data_summary: The data report's summary (Markdown).
        task: "auto", "classification" or "regression".
        seed: Seed of the split.
        valid_fraction: Share of rows for validation.
        test_fraction: Share of rows for the holdout test.
        drop_columns: Columns to drop: comma-separated or a JSON array (as are the role lists below).
        categorical_columns: Comma-separated columns to treat as categorical.
        numeric_columns: Comma-separated columns to treat as numbers (other values become missing).
        datetime_columns: Comma-separated columns to parse as dates/times.
        text_columns: Comma-separated columns to treat as free text.
        boolean_columns: Comma-separated columns to treat as true/false.
        time_column: Split by time on this column (the latest rows are the test rows).
        group_column: Split so that one value of this column never spans two splits.
        drop_duplicates: Drop exact repeats of a row; by default they are kept as observations,
            each set of identical rows on one side of every split and validation fold.
        data_version: The version of `data` the fingerprint step read (ETag, generation or
            SHA-256): part of KFP's cache key, so a changed table is never a cache hit.
            Recorded on the split datasets.
    """
    import time

    from kfp_automl.progress import reported

    started = time.monotonic()
    with reported("prepare"):
        from kfp_automl.components.prepare.prepare import Options, run
        from kfp_automl.components.prepare.roles import parse_list

        options = Options(
            drop=parse_list(drop_columns),
            categorical=parse_list(categorical_columns),
            numeric=parse_list(numeric_columns),
            datetime=parse_list(datetime_columns),
            text=parse_list(text_columns),
            boolean=parse_list(boolean_columns),
            time_column=time_column,
            group_column=group_column,
            drop_duplicates=drop_duplicates,
        )
        result = run(
            data=data,
            target=target,
            train_path=train.path,
            valid_path=valid.path,
            test_path=test.path,
            schema_path=schema.path,
            profile_path=profile.path,
            task=task,
            seed=seed,
            valid_fraction=valid_fraction,
            test_fraction=test_fraction,
            options=options,
            report_path=data_report.path,
            summary_path=data_summary.path,
        )
        for art, key in ((train, "train"), (valid, "valid"), (test, "test")):
            art.metadata["rows"] = result.rows[key]
            art.metadata["data_version"] = data_version
        schema.metadata.update(
            {
                "task": result.task,
                "target": result.target,
                "data_fingerprint": result.data_fingerprint,
                # the run's budget is the whole run's: tune gives the search what is left
                "elapsed_s": round(time.monotonic() - started, 2),
            }
        )
        data_report.metadata["warnings"] = len(result.warnings)


@dsl.component(base_image=COMPONENTS_IMAGE, install_kfp_package=False)
def fingerprint_inputs(data: str = "", warm_start: str = "") -> NamedTuple(
    "InputVersions", data_version=str, warm_start_version=str
):
    """Read the version of every URL the pipeline's steps read (never cached).

    KFP keys a task's cache on its inputs; a URL string stays the same when the data behind
    it changes. prepare and tune take these versions as inputs, so their cache hits only
    when the data they would read is the same.

    Args:
        data: The table (path or URL; empty: the built-in demo table).
        warm_start: A previous leaderboard (path or URL); empty: none.

    Returns:
        data_version: ETag, version id, generation or SHA-256 of the table.
        warm_start_version: The same for the warm-start leaderboard ("" without one).
    """
    from kfp_automl.progress import reported

    with reported("fingerprint"):
        from collections import namedtuple

        from kfp_automl.progress import say
        from kfp_automl.tables.io import data_version

        table = data_version(data)
        board = data_version(warm_start) if warm_start else ""
        say("fingerprint", f"data {data or '(built-in demo table)'}: {table}")
        if warm_start:
            say("fingerprint", f"warm start {warm_start}: {board}")
        versions = namedtuple("InputVersions", ["data_version", "warm_start_version"])
        return versions(table, board)
