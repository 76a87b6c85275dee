"""The model card (JSON + Markdown), the short Markdown summary, and the known limitations.

`limitations` is the one list of warnings: the report, the summary and the
card all show it.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from kfp_automl.contracts.model_info import ModelInfo
from kfp_automl.contracts.schema import Schema

if TYPE_CHECKING:
    from kfp_automl.components.evaluate.results import Diagnostics, Evaluation

CARD_VERSION = 1
MISSING_RATE_WARN = 0.2  # a feature missing in at least this share of rows is a limitation
WEAK_CLASS_F1 = 0.5  # a class whose holdout F1 or recall is below this is a limitation
TOP_FEATURES = 3


def _num(value: Any) -> float | None:
    """A JSON-safe number: None for missing, nan or inf."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def limitations(ev: Evaluation, schema: Schema, diag: Diagnostics | None = None) -> list[str]:
    """What a user of the model should know: weak classes and slices, gaps in the data."""
    out = []
    if ev.n_bootstrap > 0 and ev.intervals and not any(iv.defined for iv in ev.intervals.values()):
        reason = next(iter(ev.intervals.values())).reason
        out.append(f"Tiny holdout ({ev.n_test} rows): no confidence intervals ({reason}).")
    elif ev.n_test < 100:
        out.append(f"Small holdout ({ev.n_test} rows): the metrics are rough estimates.")
    primary = ev.intervals.get(ev.metric)
    if (
        primary is not None
        and not primary.defined
        and any(iv.defined for iv in ev.intervals.values())
    ):
        out.append(f"No interval for the primary metric {ev.metric}: {primary.reason}.")
    for name, reason in ev.undefined.items():
        out.append(f"{name} is not defined on the holdout: {reason}.")
    for c in ev.per_class() if ev.confusion else []:
        if c["rows"] and (c["f1"] < WEAK_CLASS_F1 or c["recall"] < WEAK_CLASS_F1):
            out.append(
                f"Weak on class {c['class']!r}: recall {c['recall']:.2f}, F1 {c['f1']:.2f} "
                f"on {c['rows']} holdout rows."
            )
    if diag is not None:
        for s in diag.slices.flagged:
            out.append(
                f"Weak on slice {diag.slices.column}={s.value!r}: {diag.slices.metric} "
                f"{s.score:.4f} vs {diag.slices.overall:.4f} on all rows ({s.rows} rows)."
            )
    for f in schema.features:
        if f.missing_rate >= MISSING_RATE_WARN:
            out.append(f"Feature {f.name!r} is missing in {f.missing_rate:.0%} of rows (imputed).")
    return out


def _metrics(ev: Evaluation) -> dict[str, Any]:
    out = {}
    for name, value in ev.metrics.items():
        iv = ev.intervals.get(name)
        entry: dict[str, Any] = {"value": _num(value)}
        if iv is not None and iv.defined:
            entry |= {"ci_low": _num(iv.low), "ci_high": _num(iv.high)}
        else:
            entry |= {
                "ci_low": None,
                "ci_high": None,
                "ci_missing_reason": iv.reason if iv else "not computed",
            }
        out[name] = entry
    return out


def model_card(
    ev: Evaluation,
    schema: Schema,
    model_info: ModelInfo,
    diag: Diagnostics | None = None,
) -> dict[str, Any]:
    """Everything a reviewer needs about the model, JSON-safe."""
    from kfp_automl import __version__

    features = [
        {
            "name": f.name,
            "kind": f.kind,
            "dtype": f.dtype,
            "missing_rate": f.missing_rate,
            **({"n_categories": f.n_categories} if f.role in ("categorical", "boolean") else {}),
        }
        for f in schema.features
    ]
    evaluation: dict[str, Any] = {
        "holdout_rows": ev.n_test,
        "primary_metric": ev.metric,
        "bootstrap": {"resamples": ev.n_bootstrap, "seed": ev.seed, "level": 0.95},
        "metrics": _metrics(ev),
        "undefined_metrics": dict(ev.undefined),
    }
    if ev.confusion:
        evaluation["per_class"] = [{**c, "class": str(c["class"])} for c in ev.per_class()]
    if diag is not None:
        evaluation["top_features"] = diag.importance.top(TOP_FEATURES)
        evaluation["slices"] = {
            "column": diag.slices.column,
            "metric": diag.slices.metric,
            "skipped": diag.slices.skipped,
            "flagged": [
                {"value": s.value, "rows": s.rows, "score": _num(s.score)}
                for s in diag.slices.flagged
            ],
        }
    return {
        "card_version": CARD_VERSION,
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "code_version": __version__,
        "task": ev.task,
        "target": schema.target,
        "classes": [str(c) for c in ev.labels],
        "model": {
            "family": model_info.family,
            "params": model_info.params,
            "tuned_metric": model_info.metric,
            "validation_score": _num(model_info.valid_score),
            "n_trials": model_info.n_trials,
            "sha256": model_info.sha256,
            # a binary classifier's tuned threshold on P(threshold_class); None: argmax
            "decision_threshold": model_info.decision_threshold,
            "threshold_class": model_info.threshold_class,
        },
        "data": {
            "fingerprint": schema.data_fingerprint,
            "rows": schema.rows,
            "features": features,
            "dropped": [dict(d) for d in schema.dropped],
        },
        "evaluation": evaluation,
        "limitations": limitations(ev, schema, diag),
    }


def _interval_text(entry: dict[str, Any]) -> str:
    if entry.get("ci_low") is None:
        return f"no interval ({entry.get('ci_missing_reason', '')})"
    return f"95% CI [{entry['ci_low']:.4f}, {entry['ci_high']:.4f}]"


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def model_card_markdown(card: dict[str, Any]) -> str:
    """The card as Markdown (for people; the JSON is for tools)."""
    m, d, e = card["model"], card["data"], card["evaluation"]
    rows = d.get("rows", {})
    lines = [
        f"# Model card: {card['target']} ({card['task']})",
        "",
        f"- code version: {card['code_version']}",
        f"- generated: {card['generated_at']}",
        f"- model: {m['family']} with {json.dumps(m['params'], sort_keys=True)}",
        f"- model file sha256: `{m['sha256'] or 'n/a'}`",
        f"- tuned for {m['tuned_metric'] or e['primary_metric']} "
        f"over {m['n_trials']} trials; validation score {m['validation_score']}",
        *(
            [
                f"- decision threshold: {m['threshold_class']} when its probability is at least "
                f"{m['decision_threshold']:.3f} (tuned on out-of-fold predictions)"
            ]
            if m.get("decision_threshold") is not None
            else []
        ),
        "",
        "## Data",
        "",
        f"- fingerprint: `{d['fingerprint'] or 'n/a'}`",
        "- rows: " + (", ".join(f"{k} {v}" for k, v in rows.items()) if rows else "n/a"),
    ]
    if card["classes"]:
        lines.append(f"- classes: {', '.join(card['classes'])}")
    lines += ["", "| feature | kind | missing |", "|---|---|---|"]
    for f in d["features"]:
        missing = f.get("missing_rate")
        lines.append(
            f"| {_cell(f['name'])} | {f['kind']} | "
            f"{'n/a' if missing is None else f'{missing:.1%}'} |"
        )
    if d["dropped"]:
        lines += [
            "",
            "Dropped columns: "
            + "; ".join(f"{_cell(x['name'])} ({_cell(x['reason'])})" for x in d["dropped"]),
        ]
    lines += [
        "",
        f"## Holdout metrics ({e['holdout_rows']} rows, primary: {e['primary_metric']})",
        "",
        "| metric | value | 95% interval |",
        "|---|---|---|",
    ]
    for name, entry in e["metrics"].items():
        lines.append(f"| {name} | {entry['value']:.4f} | {_cell(_interval_text(entry))} |")
    for name, reason in e["undefined_metrics"].items():
        lines.append(f"| {name} | not defined | {_cell(reason)} |")
    lines.append("")
    lines.append(
        f"Intervals: percentiles over {e['bootstrap']['resamples']} bootstrap resamples "
        f"of the holdout rows (seed {e['bootstrap']['seed']})."
    )
    if e.get("top_features"):
        lines += ["", "Most important features: " + ", ".join(e["top_features"]) + "."]
    lines += ["", "## Known limitations", ""]
    lines += [f"- {x}" for x in card["limitations"]] or ["- none found"]
    return "\n".join(lines) + "\n"


def summary_markdown(
    ev: Evaluation,
    schema: Schema,
    model_info: ModelInfo,
    diag: Diagnostics | None = None,
) -> str:
    """A few lines for the Kubeflow dashboard: what was trained and how good it is."""
    iv = ev.intervals.get(ev.metric)
    score = ev.metrics.get(ev.metric)
    if score is None:
        primary = f"not defined ({ev.undefined.get(ev.metric, '')})"
    elif iv is not None and iv.defined:
        primary = f"{score:.4f} (95% CI {iv.low:.4f} to {iv.high:.4f})"
    else:
        primary = f"{score:.4f} (no interval: {iv.reason if iv else 'not computed'})"
    top = diag.importance.top(TOP_FEATURES) if diag is not None else []
    lines = [
        f"## {schema.target}: {ev.task}",
        "",
        f"- model: **{model_info.family}**",
        f"- holdout {ev.metric} on {ev.n_test} rows: **{primary}**",
        f"- top features: {', '.join(top) if top else 'n/a'}",
    ]
    warnings = limitations(ev, schema, diag)
    if warnings:
        lines += ["", "**Warnings**", ""] + [f"- {w}" for w in warnings]
    return "\n".join(lines) + "\n"
