"""The HTML report: one self-contained page (inline CSS, figures as base64 PNG, no scripts).

Every section is a <section> with an id and a heading; every figure is an
<img> with alt text. A section whose content could not be computed says why.
"""

from __future__ import annotations

import json
import math
import re
from typing import TYPE_CHECKING

import pandas as pd

from kfp_automl.components._html import STYLE, esc
from kfp_automl.components._html import img as _img
from kfp_automl.components._html import note as _note
from kfp_automl.components._html import section as _section
from kfp_automl.components._html import table as _table
from kfp_automl.components.evaluate import plots
from kfp_automl.components.evaluate.slices import ABSOLUTE_GAP, MIN_FLAG_ROWS, RELATIVE_GAP
from kfp_automl.contracts.model_info import ModelInfo
from kfp_automl.contracts.schema import Schema
from kfp_automl.runtime.metrics import METRICS

if TYPE_CHECKING:
    from kfp_automl.components.evaluate.results import Diagnostics, Evaluation

LEADERBOARD_ROWS = 25


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def section_ids(task: str) -> list[str]:
    """The ids of the sections every report of this task has, in page order."""
    head = ["model", "warnings", "metrics"]
    per_task = (
        ["roc", "pr", "calibration", "confusion"] if task == "classification" else ["residuals"]
    )
    tail = ["learning-curve", "importance", "partial-dependence", "slices", "leaderboard"]
    return head + per_task + tail + ["features"]


TITLES = {
    "model": "Chosen model",
    "warnings": "Warnings",
    "metrics": "Holdout metrics",
    "roc": "ROC curve",
    "pr": "Precision-recall curve",
    "calibration": "Calibration",
    "confusion": "Confusion matrix",
    "residuals": "Residuals",
    "learning-curve": "Learning curve",
    "importance": "Permutation importance",
    "partial-dependence": "Partial dependence",
    "slices": "Metrics by slice",
    "leaderboard": "Leaderboard",
    "features": "Features used",
    "dropped": "Columns dropped",
}


def _model(ev: Evaluation, info: ModelInfo) -> list[str]:
    valid = f"{info.valid_score:.4f}" if math.isfinite(info.valid_score) else "n/a"
    params = json.dumps(info.params, sort_keys=True)
    return [
        "<ul>",
        f"<li>family: <b>{esc(info.family)}</b></li>",
        f"<li>parameters: <code>{esc(params)}</code></li>",
        f"<li>validation {esc(info.metric or ev.metric)}: {valid}</li>",
        f"<li>trials: {info.n_trials}</li>",
        *(
            [
                f"<li>decision threshold: answers <b>{esc(info.threshold_class)}</b> when its "
                f"probability is at least {info.decision_threshold:.3f} (tuned on the search's "
                f"out-of-fold predictions: {esc(info.metric)} {info.threshold_score:.4f} there; "
                "the holdout figures below use it)</li>"
            ]
            if info.decision_threshold is not None
            else []
        ),
        "</ul>",
    ]


def _warnings(items: list[str]) -> list[str]:
    if not items:
        return [_note("No warnings.")]
    return ['<ul class="warnings">', *(f"<li>{esc(w)}</li>" for w in items), "</ul>"]


def _metrics(ev: Evaluation) -> list[str]:
    rows = []
    for name, value in ev.metrics.items():
        iv = ev.intervals.get(name)
        if iv is not None and iv.defined:
            interval = f"[{iv.low:.4f}, {iv.high:.4f}]"
        else:
            reason = iv.reason if iv is not None else "not computed"
            interval = f'<span class="missing">missing: {esc(reason)}</span>'
        better = "higher" if METRICS[name].greater_is_better else "lower"
        label = f"<b>{esc(name)}</b>" if name == ev.metric else esc(name)
        rows.append(
            f"<tr><td>{label}</td><td>{value:.4f}</td><td>{interval}</td>"
            f"<td>{better} is better</td></tr>"
        )
    for name, reason in ev.undefined.items():
        rows.append(
            f"<tr><td>{esc(name)}</td><td>not defined</td>"
            f'<td class="missing">{esc(reason)}</td><td></td></tr>'
        )
    table = (
        '<table class="table"><thead><tr><th>metric</th><th>value</th>'
        "<th>95% interval</th><th>direction</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
    )
    how = (
        f"Intervals: 2.5th and 97.5th percentiles of each metric over {ev.n_bootstrap} "
        f"bootstrap resamples of the {ev.n_test} holdout rows (seed {ev.seed}), computed "
        f"from the same predictions. Primary metric in bold: {ev.metric}."
    )
    notes = [_note(how)]
    if "mape" in ev.metrics or "mape" in ev.undefined:
        notes.append(_note("mape is a fraction: 0.1 means 10 %."))
    missing = {iv.reason for iv in ev.intervals.values() if not iv.defined}
    if missing:
        notes.append(
            _note("Some intervals are missing: " + "; ".join(sorted(missing)) + ".", "missing")
        )
    return [table, *notes]


def _classification(ev: Evaluation) -> list[str]:
    n = len(ev.labels)
    kind = "" if n == 2 else " (one vs rest)"
    can_curve = ev.proba is not None and len(set(ev.y.tolist())) >= 2
    curves = []
    for sid, fn, alt in (
        ("roc", plots.roc_curves, f"ROC curve{kind} of the holdout predictions"),
        ("pr", plots.pr_curves, f"Precision-recall curve{kind} of the holdout predictions"),
        ("calibration", plots.calibration_curves, f"Calibration curve{kind}"),
    ):
        body = (
            _img(fn(ev.y, ev.proba, ev.labels), alt)
            if can_curve
            else _note("Needs two or more classes among the holdout rows.")
        )
        curves.append(_section(sid, TITLES[sid], body))
    out = ['<div class="row">', *curves, "</div>"]
    labels = [str(c) for c in ev.labels]
    cm = pd.DataFrame(ev.confusion, columns=[f"pred {c}" for c in labels])
    cm.insert(0, "actual", labels)
    per_class = pd.DataFrame(ev.per_class())
    heat = plots.confusion_heatmap(ev.confusion, ev.labels)
    out.append(
        _section(
            "confusion",
            TITLES["confusion"],
            [
                _img(heat, "Confusion matrix heatmap: actual class by row, predicted by column"),
                _table(cm),
                "<h3>Per class</h3>",
                _table(per_class),
            ],
        )
    )
    return out


def _regression(ev: Evaluation) -> list[str]:
    alt = "Residuals (true minus predicted) against the prediction, and their distribution"
    return [
        _section("residuals", TITLES["residuals"], _img(plots.residual_plots(ev.y, ev.pred), alt))
    ]


def _learning(diag: Diagnostics | None) -> list[str]:
    lc = diag.learning if diag else None
    if lc is None or lc.skipped:
        return [_note(f"Skipped: {lc.skipped if lc else 'not computed'}.", "missing")]
    uri = plots.learning_curve(
        lc.sizes, lc.train_mean, lc.train_std, lc.cv_mean, lc.cv_std, lc.metric
    )
    out = [
        _img(uri, f"Learning curve: {lc.metric} against training rows, training and held-out fold"),
        _note(
            f"Unfitted clones of the chosen configuration fitted on growing subsets of "
            f"train+valid ({lc.n_rows} rows), 3-fold CV."
        ),
    ]
    if lc.note:
        out.append(_note(lc.note.capitalize() + "."))
    return out


def _importance(diag: Diagnostics | None) -> list[str]:
    imp = diag.importance if diag else None
    if imp is None or imp.skipped:
        return [_note(f"Skipped: {imp.skipped if imp else 'not computed'}.", "missing")]
    uri = plots.importance_bars(imp.features, imp.mean, imp.std, imp.metric)
    table = pd.DataFrame({"feature": imp.features, "mean": imp.mean, "std": imp.std})
    return [
        _img(uri, f"Permutation importance: loss in {imp.metric} when each column is shuffled"),
        _note(
            f"Each input column shuffled 3 times on {imp.n_rows} holdout rows; the loss "
            f"in {imp.metric} (positive: the model relies on it)."
        ),
        _table(table),
    ]


def _dependence(diag: Diagnostics | None) -> list[str]:
    if diag is None or not diag.dependence:
        reason = diag.dependence_skipped if diag else "not computed"
        return [_note(f"Skipped: {reason}.", "missing")]
    out = [
        _note(
            "Average prediction over holdout rows as one feature is set to each value "
            "(the top features by permutation importance)."
        )
    ]
    for d in diag.dependence:
        uri = plots.partial_dependence(d.feature, d.kind, d.grid, d.outputs, d.average)
        out.append(_img(uri, f"Partial dependence of {', '.join(d.outputs)} on {d.feature}"))
    return out


def _slices(diag: Diagnostics | None) -> tuple[str, list[str]]:
    sr = diag.slices if diag else None
    if sr is None:
        return TITLES["slices"], [_note("Skipped: not computed.", "missing")]
    title = f"Metrics by slice of {sr.column}" if sr.column else TITLES["slices"]
    if sr.skipped:
        return title, [_note(f"Skipped: {sr.skipped}.", "missing")]
    rows = []
    for s in sr.slices:
        value = _fmt(s.score) if s.score is not None else f"not defined ({s.undefined})"
        flag = "much worse than overall" if s.flagged else ""
        cls = ' class="flag"' if s.flagged else ""
        rows.append(
            f"<tr{cls}><td>{esc(s.value)}</td><td>{s.rows}</td><td>{esc(value)}</td>"
            f"<td>{flag}</td></tr>"
        )
    table = (
        f'<table class="table"><thead><tr><th>{esc(sr.column)}</th><th>rows</th>'
        f"<th>{esc(sr.metric)}</th><th>flag</th></tr></thead><tbody>"
        f"<tr><td><i>all rows</i></td><td>{sum(s.rows for s in sr.slices)}</td>"
        f"<td>{_fmt(sr.overall)}</td><td></td></tr>" + "".join(rows) + "</tbody></table>"
    )
    rule = (
        f"Flagged: {sr.metric} worse than on all rows by more than {RELATIVE_GAP:.0%} "
        f"({ABSOLUTE_GAP} for r2), in slices of at least {MIN_FLAG_ROWS} rows."
    )
    return title, [table, _note(rule)]


def _features(schema: Schema) -> list[str]:
    feats = pd.DataFrame([f.to_dict() for f in schema.features])
    cols = [
        c
        for c in ["name", "kind", "dtype", "missing_rate", "min", "max", "n_categories"]
        if c in feats
    ]
    feats = feats[cols].astype(object)
    if "n_categories" in feats:
        feats["n_categories"] = ["" if pd.isna(v) else str(int(v)) for v in feats["n_categories"]]
    return [_table(feats.where(feats.notna(), ""))]


def render_report(
    ev: Evaluation,
    schema: Schema,
    leaderboard: pd.DataFrame | None,
    model_info: ModelInfo,
    diag: Diagnostics | None = None,
) -> str:
    """A self-contained HTML page the Kubeflow dashboard can show."""
    from kfp_automl.components.evaluate.model_card import limitations

    sections = [
        _section("model", TITLES["model"], _model(ev, model_info)),
        _section("warnings", TITLES["warnings"], _warnings(limitations(ev, schema, diag))),
        _section("metrics", f"Holdout metrics ({ev.n_test} rows)", _metrics(ev)),
    ]
    sections += _classification(ev) if ev.task == "classification" else _regression(ev)
    sections.append(_section("learning-curve", TITLES["learning-curve"], _learning(diag)))
    sections.append(_section("importance", TITLES["importance"], _importance(diag)))
    sections.append(_section("partial-dependence", TITLES["partial-dependence"], _dependence(diag)))
    sections.append(_section("slices", *_slices(diag)))
    if leaderboard is not None and len(leaderboard):
        board = [
            f"<p>Top {min(LEADERBOARD_ROWS, len(leaderboard))} of {len(leaderboard)} trials, "
            "best first.</p>",
            _table(leaderboard.head(LEADERBOARD_ROWS)),
        ]
        board_title = f"Leaderboard (top {LEADERBOARD_ROWS} of {len(leaderboard)} trials)"
    else:
        board, board_title = [_note("No trials recorded.")], "Leaderboard (no trials)"
    sections.append(_section("leaderboard", board_title, board))
    sections.append(_section("features", TITLES["features"], _features(schema)))
    if schema.dropped:
        sections.append(
            _section("dropped", TITLES["dropped"], _table(pd.DataFrame(list(schema.dropped))))
        )
    ids = [i for s in sections for i in re.findall(r'<section id="([^"]+)"', s)]
    nav = "<nav>" + "".join(f'<a href="#{i}">{esc(TITLES[i])}</a>' for i in ids) + "</nav>"
    title = f"Model report: {esc(schema.target)} ({esc(ev.task)})"
    return "\n".join(
        [
            "<!doctype html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>kfp-automl report: {esc(schema.target)}</title>",
            f"<style>{STYLE}</style></head><body>",
            f"<h1>{title}</h1>",
            nav,
            *sections,
            "</body></html>",
        ]
    )
