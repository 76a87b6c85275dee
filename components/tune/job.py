"""What a tune step's Ray job runs on the cluster: `python -m kfp_automl.components.tune.job
EXCHANGE_URL SUBMISSION_ID` (submit.py submits it).

It is the local search, run where the cluster is: it copies the inputs from the exchange
folder (exchange.py), calls the same files-to-files `run()` the step calls without a cluster,
joined to the cluster the job runs on (the driver is here, so its callbacks keep the top
trials' predictions and the ensemble is selected as locally), and puts the model, the
leaderboard, the report and the model's metadata back. The search state lives under the
state path the step gave, so a resubmitted job resumes it. A failure leaves
`errors/<submission id>.json` saying whether it was the user's mistake.

Credentials for the store are the cluster's own (its pods' environment), never the job's.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from kfp_automl import __version__
from kfp_automl.components.tune.exchange import ERRORS, INFO, INPUTS, OUTPUTS, SPEC, Exchange
from kfp_automl.errors import UserError
from kfp_automl.progress import say


def run_job(ex: Exchange, submission_id: str) -> None:
    from kfp_automl.components.tune.tune import run

    try:
        spec = ex.read_json(SPEC)
    except OSError as exc:
        raise RuntimeError(
            f"cannot read the tune step's {SPEC} in {ex.url} from the Ray cluster ({exc}): the "
            "cluster's pods need the pipeline's object store and its credentials (the Secret "
            "kfp-automl-storage mounted in them, manifests/tuning)"
        ) from None
    if spec.get("version") != __version__:
        raise UserError(
            f"the Ray cluster runs kfp-automl {__version__} and the tune step "
            f"{spec.get('version')}: run the cluster on the components image of the step's version"
        )
    say("tune", f"Ray job {submission_id}: the search runs on the cluster, inputs from {ex.url}")
    with tempfile.TemporaryDirectory(prefix="kfp-automl-job-") as tmp:
        inputs, outputs = Path(tmp) / INPUTS, Path(tmp) / OUTPUTS
        names = ex.get_tree(INPUTS, inputs)
        ex.remove_tree(OUTPUTS)  # whatever an earlier job left: info.json comes last
        info = run(
            train_path=str(inputs / "train.parquet"),
            valid_path=str(inputs / "valid.parquet"),
            schema_path=str(inputs / "schema.json"),
            model_dir=str(outputs / "model"),
            leaderboard_path=str(outputs / "leaderboard.csv"),
            report_path=str(outputs / "search_report.html"),
            warm_start=str(inputs / "warm_start.csv") if "warm_start.csv" in names else "",
            ray_address="auto",  # the cluster this job runs on
            storage_path=spec["storage_path"],
            **spec["options"],
        )
        ex.put_tree(outputs / "model", f"{OUTPUTS}/model")
        ex.put(outputs / "leaderboard.csv", f"{OUTPUTS}/leaderboard.csv")
        ex.put(outputs / "search_report.html", f"{OUTPUTS}/search_report.html")
        ex.write_json(INFO, info.to_metadata())
    say("tune", f"Ray job {submission_id}: outputs in {ex.url}/{OUTPUTS}")


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        sys.exit("usage: python -m kfp_automl.components.tune.job EXCHANGE_URL SUBMISSION_ID")
    ex, submission_id = Exchange(args[0]), args[1]
    try:
        run_job(ex, submission_id)
    except Exception as exc:
        report = {
            "user_error": isinstance(exc, UserError),
            "type": type(exc).__name__,
            "message": " ".join(str(exc).split()) or type(exc).__name__,
        }
        try:
            ex.write_json(f"{ERRORS}/{submission_id}.json", report)
        except OSError as write_error:  # the store itself is unreachable: the log says it all
            print(f"cannot write the failure report to {ex.url}: {write_error}", file=sys.stderr)
        raise


if __name__ == "__main__":
    main()
