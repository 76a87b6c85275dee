"""AutoGluon's side of tests/bench/autogluon_bench.py; runs in .venv-autogluon, not in .venv.

It imports nothing from kfp_automl (that venv does not have it): it reads the training CSV,
fits `TabularPredictor` with the `best_quality` preset for --time-limit seconds on
--num-cpus cores, writes the test rows' `prediction` (and one `proba_<class>` column per
class) to --output, and prints one JSON line with its clocks:

    .venv-autogluon/bin/python tests/bench/autogluon_fit.py --train train.csv \\
        --test test-features.csv --label survived --problem-type binary \\
        --eval-metric roc_auc --time-limit 60 --path ag-models --output ag-preds.csv
"""

from __future__ import annotations

import time

STARTED = time.monotonic()

import argparse  # noqa: E402  (the clock above includes the imports)
import json  # noqa: E402
import sys  # noqa: E402


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", required=True)
    parser.add_argument("--test", required=True, help="the test rows without the label")
    parser.add_argument("--label", required=True)
    parser.add_argument(
        "--problem-type", required=True, choices=["binary", "multiclass", "regression"]
    )
    parser.add_argument("--eval-metric", required=True)
    parser.add_argument("--time-limit", type=int, required=True)
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument("--presets", default="best_quality")
    parser.add_argument("--path", required=True, help="AutoGluon's model folder")
    parser.add_argument("--output", required=True)
    args = parser.parse_args(argv)

    import pandas as pd
    from autogluon.tabular import TabularPredictor

    imported = time.monotonic()
    train = pd.read_csv(args.train)
    test = pd.read_csv(args.test)
    predictor = TabularPredictor(
        label=args.label,
        problem_type=args.problem_type,
        eval_metric=args.eval_metric,
        path=args.path,
        verbosity=0,
    )
    fit_started = time.monotonic()
    predictor.fit(
        train,
        time_limit=args.time_limit,
        presets=args.presets,
        num_cpus=args.num_cpus,
    )
    fit_s = time.monotonic() - fit_started

    predict_started = time.monotonic()
    out = pd.DataFrame({"prediction": predictor.predict(test)})
    if args.problem_type != "regression":
        proba = predictor.predict_proba(test, as_multiclass=True)
        for cls in proba.columns:
            out[f"proba_{cls}"] = proba[cls].to_numpy()
    predict_s = time.monotonic() - predict_started
    out.to_csv(args.output, index=False)

    board = predictor.leaderboard(silent=True)
    print(
        json.dumps(
            {
                "import_s": imported - STARTED,
                "fit_s": fit_s,
                "predict_s": predict_s,
                "best_model": predictor.model_best,
                "n_models": len(board),
                "classes": [str(c) for c in (predictor.class_labels or [])],
                "in_process_s": time.monotonic() - STARTED,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main(sys.argv[1:])
