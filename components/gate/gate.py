"""Champion/challenger gate: may the new model replace the one in production?

Both models score the same holdout rows. The challenger must beat the champion
by at least `min_improvement` on the primary metric, and a paired bootstrap over
those rows must show the gain is not noise (the share of resamples in which the
challenger is not better by the margin stays under `alpha`). Holdout rows whose inputs
the champion was fitted on (registry/training_rows.py) are left out of both scores. No champion yet
means deploy; a champion whose schema differs from the new data means refuse, and so does a
champion whose archive the registry records no digest for (it is not imported unchecked).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd

from kfp_automl.contracts.decision import GateDecision
from kfp_automl.contracts.schema import Schema
from kfp_automl.errors import UserError
from kfp_automl.runtime.metrics import Metric, resolve_metric
from kfp_automl.runtime.records import coerce_frame

MIN_ROWS = 30


def schema_differences(champion: Schema, new: Schema) -> list[str]:
    """What keeps the champion from scoring the new data: columns gone or changed, another target."""
    problems = []
    if champion.target != new.target or champion.task != new.task:
        problems.append(
            f"the champion predicts {champion.target!r} ({champion.task}), "
            f"the new data {new.target!r} ({new.task})"
        )
    kinds = {f.name: f.kind for f in new.features}
    new_columns = set(kinds) | {d["name"] for d in new.dropped}
    for f in champion.features:
        if f.name not in new_columns:
            problems.append(f"column {f.name!r} is gone")
        elif f.name in kinds and kinds[f.name] != f.kind:
            problems.append(f"column {f.name!r} changed from {f.kind} to {kinds[f.name]}")
    return problems


def _scores(model: Any, X: pd.DataFrame) -> tuple[np.ndarray, np.ndarray | None, list]:
    """(predictions, probabilities, classes), asking a classifier once, as serving does."""
    from kfp_automl.runtime.threshold import labels

    classes = list(getattr(model, "classes_", []))
    proba = model.predict_proba(X) if hasattr(model, "predict_proba") else None
    pred = labels(model, proba, classes) if proba is not None else model.predict(X)
    return pred, proba, classes


def _metric_on(metric: Metric, y, pred, proba, classes, idx=None) -> float:
    if idx is not None:
        y, pred = y[idx], pred[idx]
        proba = proba[idx] if proba is not None else None
    try:
        return float(metric.fn(y, pred, proba, classes))
    except ValueError:  # e.g. a resample holding one class only
        return float("nan")


def decide(
    challenger: Any,
    test: pd.DataFrame,
    schema: Schema,
    metric: str = "",
    champion: tuple[Any, Schema, str] | None = None,
    min_improvement: float = 0.0,
    n_bootstrap: int = 500,
    alpha: float = 0.05,
    seed: int = 0,
    champion_rows: np.ndarray | None = None,
    rows_note: str = "",
) -> GateDecision:
    """Compare `challenger` with `champion` (model, schema, version) on the holdout `test`.

    `champion_rows`: the hashes of the inputs the champion was fitted on
    (registry/training_rows.py); holdout rows among them are left out of the comparison.
    `rows_note`: why they are not known, said in the reason when a champion is compared.
    """
    m = resolve_metric(metric, schema.task, schema.n_classes)
    y = test[schema.target].to_numpy()
    chal = _scores(challenger, test.drop(columns=[schema.target]))
    chal_score = _metric_on(m, y, *chal)
    base = {"metric": m.name, "challenger_score": chal_score, "min_improvement": min_improvement}
    if champion is None:
        return GateDecision(True, "no champion yet: the first model is deployed", **base)
    champ_model, champ_schema, champ_version = champion
    base["champion_version"] = champ_version
    problems = schema_differences(champ_schema, schema)
    if problems:
        return GateDecision(
            False,
            "the champion's schema differs from the new data, so the two cannot be compared; "
            "the gate refuses (promote by hand with `kfp-automl promote` if the change is intended): "
            + "; ".join(problems),
            problems=tuple(problems),
            **base,
        )
    where = f" on all {len(test)} holdout rows" + (f" ({rows_note})" if rows_note else "")
    if champion_rows is not None:
        from kfp_automl.registry.training_rows import seen

        fitted = seen(test, champ_schema, champion_rows)
        base["left_out_rows"] = left_out = int(fitted.sum())
        if left_out:
            test, y = test[~fitted], y[~fitted]
            if len(test):
                chal = _scores(challenger, test.drop(columns=[schema.target]))
                base["challenger_score"] = chal_score = _metric_on(m, y, *chal)
            where = (
                f" on the {len(test)} holdout rows the champion was not fitted on ({left_out} of "
                f"{len(test) + left_out} left out: it learned from their inputs)"
            )
    base["compared_rows"] = len(test)
    sign = 1.0 if m.greater_is_better else -1.0
    if len(test):  # (with none left, the challenger's score stays its whole holdout's)
        champ = _scores(champ_model, coerce_frame(test, champ_schema))
        champ_score = _metric_on(m, y, *champ)
        improvement = sign * (chal_score - champ_score)
        base.update(champion_score=champ_score, improvement=improvement)
    if len(test) < MIN_ROWS:
        few = (
            f"only {len(test)} holdout rows are left to compare once the "
            f"{base['left_out_rows']} the champion was fitted on are left out"
            if base.get("left_out_rows")
            else f"the holdout has {len(test)} rows"
        )
        return GateDecision(
            False,
            f"{few}, too few (< {MIN_ROWS}) to tell a real gain from noise; the gate refuses "
            "(promote by hand with `kfp-automl promote` if the new model should replace the "
            "champion)",
            **base,
        )
    import sklearn

    rng = np.random.default_rng(seed)
    deltas = []
    # 2 x n_bootstrap metric calls on our own arrays: sklearn's per-call checks would be most
    # of the gate's time
    with sklearn.config_context(skip_parameter_validation=True, assume_finite=True):
        for _ in range(n_bootstrap):
            idx = rng.integers(0, len(y), len(y))
            chal_b, champ_b = _metric_on(m, y, *chal, idx=idx), _metric_on(m, y, *champ, idx=idx)
            deltas.append(sign * (chal_b - champ_b))
    deltas = np.asarray(deltas)
    deltas = deltas[~np.isnan(deltas)]
    p_value = float(np.mean(deltas <= min_improvement)) if len(deltas) else 1.0
    ci = (
        (float(np.quantile(deltas, 0.025)), float(np.quantile(deltas, 0.975)))
        if len(deltas)
        else None
    )
    base.update(p_value=p_value, improvement_ci=ci)
    gain = f"{m.name} {chal_score:.4f} vs champion {champ_version} {champ_score:.4f}{where}"
    if improvement < min_improvement:
        return GateDecision(False, f"not better by the required {min_improvement}: {gain}", **base)
    if p_value >= alpha:
        return GateDecision(
            False,
            f"the gain could be noise (paired bootstrap p={p_value:.3f} >= {alpha}): {gain}",
            **base,
        )
    return GateDecision(
        True, f"better than the champion (paired bootstrap p={p_value:.3f}): {gain}", **base
    )


def unverified_champion(decision: GateDecision, champion: str, why: str) -> GateDecision:
    """Keep a champion whose archive cannot be checked (no digest recorded): no comparison is
    possible, so nothing replaces it automatically."""
    return replace(
        decision,
        deploy=False,
        reason=(
            f"the champion {champion} cannot be compared: {why}; the gate refuses (promote by "
            "hand with `kfp-automl promote` if the new model should replace it)"
        ),
        champion_version=champion.split(":", 1)[1],
        problems=(why,),
    )


def champion_rows(entry: dict[str, Any]) -> tuple[np.ndarray | None, str]:
    """(the hashes of the inputs the champion was fitted on, or None; why they are not known).

    A registry entry without them (registered before they were recorded) or a file that is
    gone compares on every holdout row, and the reason says so; a file whose digest is not
    the registry's raises UnverifiedArchive: nothing then replaces the champion automatically.
    """
    from kfp_automl.registry import training_rows
    from kfp_automl.registry.store import UnverifiedArchive

    uri, digest = entry.get("training_rows_uri"), entry.get("training_rows_sha256")
    if not uri or not digest:
        return (
            None,
            "the registry records no training rows for the champion, so some of them may be ones it was fitted on",
        )
    try:
        return training_rows.read(str(uri), str(digest)), ""
    except training_rows.RowsMissing as exc:
        return None, f"{exc}, so some of them may be ones the champion was fitted on"
    except UserError as exc:
        raise UnverifiedArchive(f"the champion's training rows are not trusted: {exc}") from None


def run(
    *,
    model_dir: str,
    sha256: str,
    test_path: str,
    schema_path: str,
    decision_path: str,
    registry_root: str = "",
    model_name: str = "",
    metric: str = "",
    min_improvement: float = 0.0,
    n_bootstrap: int = 500,
) -> GateDecision:
    """Load the challenger (hash-checked) and the registry's champion, decide, write the decision."""
    from kfp_automl.progress import say
    from kfp_automl.registry.registry import Registry, model_name_for
    from kfp_automl.registry.store import UnverifiedArchive, load_registered_model
    from kfp_automl.runtime.model_file import load_model

    schema = Schema.read(schema_path)
    name = model_name or model_name_for(schema.target)
    entry = Registry(registry_root or None).champion(name)
    champion = None
    unverified = ""
    rows, rows_note = None, ""
    if entry is not None:
        try:
            model, champ_schema, _ = load_registered_model(name, entry)
            champion = (model, champ_schema, entry["version"])
            rows, rows_note = champion_rows(entry)
        except UnverifiedArchive as exc:
            unverified = str(exc)
    decision = decide(
        load_model(model_dir, sha256),
        pd.read_parquet(test_path),
        schema,
        metric,
        champion,
        min_improvement,
        n_bootstrap,
        champion_rows=rows,
        rows_note=rows_note,
    )
    if unverified and entry is not None:
        decision = unverified_champion(decision, f"{name}:{entry['version']}", unverified)
    decision.write(decision_path)
    say("gate", f"{'deploy' if decision.deploy else 'keep the champion'}: {decision.reason}")
    return decision
