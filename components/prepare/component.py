"""KFP component: prepare (validate, describe, split)."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Output

from components._image import COMPONENTS_IMAGE


@dsl.component(base_image=COMPONENTS_IMAGE, install_kfp_package=False)
def prepare_data(
    data: str,
    target: str,
    train: Output[Dataset],
    valid: Output[Dataset],
    test: Output[Dataset],
    schema: Output[Artifact],
    profile: Output[Artifact],
    task: str = "auto",
    seed: int = 42,
    valid_fraction: float = 0.15,
    test_fraction: float = 0.15,
):
    """Validate a table, infer the task and column roles, and split it.

    Args:
        data: Table path or fsspec URL (CSV, TSV, Parquet, JSON Lines); empty for the built-in demo table.
        target: Target column; empty with empty `data` means the demo table's target.
        train: Training rows (Parquet).
        valid: Validation rows used to compare trials (Parquet).
        test: Holdout rows used only by evaluation (Parquet).
        schema: Column roles, dtypes, categories and ranges (JSON).
        profile: Reference bins, shares and calibrated drift thresholds per feature (JSON).
        task: "auto", "classification" or "regression".
        seed: Seed of the split.
        valid_fraction: Share of rows for validation.
        test_fraction: Share of rows for the holdout test.
    """
    from components.prepare.prepare import run

    result = run(
        data,
        target,
        train.path,
        valid.path,
        test.path,
        schema.path,
        profile.path,
        task,
        seed,
        valid_fraction,
        test_fraction,
    )
    for art, key in ((train, "train"), (valid, "valid"), (test, "test")):
        art.metadata["rows"] = result["rows"][key]
    schema.metadata.update(
        {
            "task": result["task"],
            "target": result["target"],
            "data_fingerprint": result["data_fingerprint"],
        }
    )
