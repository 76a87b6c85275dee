"""The data report: one self-contained HTML page and a Markdown summary of the prepare step.

Per column: role, type, missing rate, range or categories, association with
the target, and a distribution plot (from the training rows); the target's
balance; every warning and automatic decision. Figures are inline PNGs drawn
with matplotlib's Agg renderer (components/_html.py, shared with the model report), no scripts.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from kfp_automl.components._html import STYLE, esc
from kfp_automl.components._html import img as _img
from kfp_automl.components._html import note as _note
from kfp_automl.components._html import png as _png
from kfp_automl.components._html import section as _section
from kfp_automl.components._html import table as _table
from kfp_automl.contracts.profile import Profile
from kfp_automl.contracts.schema import Schema

MAX_PLOTS = 60
PLOT_ROWS = 100_000
TOP_CATEGORIES = 15


def _figure(width: float, height: float):
    """A small figure with fixed margins (no constrained layout: dozens are drawn per report)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=80)
    fig.subplots_adjust(left=0.28, right=0.97, bottom=0.14, top=0.88)
    return fig, fig.add_subplot()


def _distribution(name: str, values: pd.Series, role: str) -> str:
    fig, ax = _figure(4.2, 2.6)
    values = values.dropna()
    if role in ("numeric", "datetime"):
        v = values.astype("int64") if role == "datetime" else values
        v = pd.to_numeric(v, errors="coerce").to_numpy(dtype=float)
        v = v[np.isfinite(v)]
        ax.hist(v, bins=40, color="#4c72b0")
        if role == "datetime" and len(v):
            ticks = np.linspace(v.min(), v.max(), 4)
            ax.set_xticks(
                ticks, [str(pd.Timestamp(int(t)).date()) for t in ticks], fontsize="small"
            )
    else:
        counts = values.astype(str).str.slice(0, 24).value_counts().head(TOP_CATEGORIES)[::-1]
        ax.barh(range(len(counts)), counts.to_numpy(), color="#4c72b0")
        ax.set_yticks(range(len(counts)), counts.index.tolist(), fontsize="small")
    ax.set_title(name[:40], fontsize="medium")
    return _png(fig)


def _target_plot(schema: Schema, profile: Profile) -> str:
    spec = profile.target
    fig, ax = _figure(4.5, 2.8)
    if not spec.numeric:
        labels = [*spec.categories, "other", "missing"]
        pairs = [(lab, c) for lab, c in zip(labels, spec.counts, strict=True) if c]
        ax.bar([p[0][:16] for p in pairs], [p[1] for p in pairs], color="#dd8452")
        ax.set_ylabel("train rows")
    else:
        edges = [spec.min, *spec.edges, spec.max]
        counts = spec.counts[: len(edges) - 1]
        ax.bar(range(len(counts)), counts, color="#dd8452")
        ax.set_xticks(range(len(counts)), [f"{e:.3g}" for e in edges[:-1]], fontsize="x-small")
        ax.set_xlabel("bin (lower edge)")
    ax.set_title(f"target {schema.target}"[:40])
    return _png(fig)


def _feature_table(schema: Schema) -> pd.DataFrame:
    rows = []
    for f in schema.features:
        if f.min is not None:
            summary = f"{f.min} .. {f.max}"
        elif f.role in ("categorical", "boolean"):
            shown = ", ".join(map(str, f.categories[:5]))
            summary = f"{f.n_categories} categories: {shown}" + (
                " ..." if f.n_categories > 5 else ""
            )
        else:
            summary = ""
        rows.append(
            {
                "column": f.name,
                "role": f.role,
                "dtype": f.dtype,
                "missing": f"{f.missing_rate:.1%}",
                "range / categories": summary,
                "association": "" if f.association is None else f"{f.association:.3f}",
            }
        )
    return pd.DataFrame(rows)


def _list(items: list[str], cls: str = "warnings") -> str:
    if not items:
        return _note("none")
    return f'<ul class="{cls}">' + "".join(f"<li>{esc(i)}</li>" for i in items) + "</ul>"


def render_html(schema: Schema, train: pd.DataFrame, profile: Profile) -> str:
    """The data report page."""
    rows = schema.rows
    sample = train.sample(PLOT_ROWS, random_state=0) if len(train) > PLOT_ROWS else train
    overview = _table(
        pd.DataFrame(
            [
                ("task", schema.task),
                ("target", schema.target),
                ("rows read", rows["input"]),
                ("rows without a target (dropped)", rows["missing_target"]),
                (
                    "exact repeats of a row (dropped)"
                    if rows.get("duplicates_dropped")
                    else "exact repeats of a row (kept, each set on one side of every split)",
                    rows.get("duplicates", 0),
                ),
                (
                    "train / valid / test rows",
                    f"{rows['train']} / {rows['valid']} / {rows['test']}",
                ),
                ("split", schema.split.get("strategy", "random")),
                (
                    "features kept / columns dropped",
                    f"{len(schema.features)} / {len(schema.dropped)}",
                ),
            ],
            columns=["", "value"],
        )
    )
    plots = []
    for f in schema.features[:MAX_PLOTS]:
        if f.role == "text":
            continue
        plots.append(
            _img(_distribution(f.name, sample[f.name], f.role), f"distribution of {f.name}")
        )
    if len(schema.features) > MAX_PLOTS:
        plots.append(_note(f"plots of the first {MAX_PLOTS} features only"))
    decisions = pd.DataFrame(list(schema.decisions), columns=["column", "action", "reason"])
    sections = [
        _section("overview", "Overview", overview),
        _section("warnings", "Warnings", _list(schema.warnings)),
        _section(
            "target",
            "Target",
            [
                _img(_target_plot(schema, profile), "target distribution"),
                _note(_balance(schema, profile)),
            ],
        ),
        _section(
            "columns",
            "Columns",
            [
                _table(_feature_table(schema)),
                _note(
                    "association: the share of the target's error a column removes on its own, "
                    "on held-out rows (0 none, 1 perfect); a column at or above 0.98 is treated as leakage"
                ),
            ],
        ),
        _section("distributions", "Distributions (training rows)", plots),
        _section(
            "dropped",
            "Columns dropped",
            _table(pd.DataFrame(list(schema.dropped), columns=["name", "reason"]))
            if schema.dropped
            else _note("none"),
        ),
        _section("decisions", "Automatic decisions", _table(decisions)),
    ]
    title = f"Data report: {esc(schema.target)} ({esc(schema.task)})"
    nav = " ".join(
        f'<a href="#{s}">{s}</a>'
        for s in (
            "overview",
            "warnings",
            "target",
            "columns",
            "distributions",
            "dropped",
            "decisions",
        )
    )
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>kfp-automl data report: {esc(schema.target)}</title>",
            f"<style>{STYLE}</style></head><body>",
            f"<h1>{title}</h1>",
            f"<nav>{nav}</nav>",
            *sections,
            "</body></html>",
        ]
    )


def _balance(schema: Schema, profile: Profile) -> str:
    spec = profile.target
    if spec.numeric:
        return f"train target range {spec.min:.4g} .. {spec.max:.4g}"
    parts = [f"{c}: {s:.1%}" for c, s in zip(spec.categories, spec.shares, strict=False) if s > 0]
    return "class shares in train: " + ", ".join(parts)


def render_markdown(schema: Schema) -> str:
    """A short Markdown summary: counts, warnings, dropped columns, feature roles."""
    rows = schema.rows
    lines = [
        f"# Data: {schema.target} ({schema.task})",
        "",
        f"- rows read: {rows['input']}; without a target: {rows['missing_target']}; "
        f"exact repeats of a row: {rows.get('duplicates', 0)} "
        f"({'dropped' if rows.get('duplicates_dropped') else 'kept'})",
        f"- train / valid / test: {rows['train']} / {rows['valid']} / {rows['test']} "
        f"({schema.split.get('strategy', 'random')} split)",
        f"- features: {len(schema.features)}; dropped: {len(schema.dropped)}",
        "",
        "## Warnings",
        "",
        *([f"- {w}" for w in schema.warnings] or ["- none"]),
        "",
        "## Columns dropped",
        "",
        *([f"- `{d['name']}`: {d['reason']}" for d in schema.dropped] or ["- none"]),
        "",
        "## Features",
        "",
        "| column | role | missing | association |",
        "|---|---|---|---|",
    ]
    for f in schema.features:
        assoc = "" if f.association is None else f"{f.association:.3f}"
        name = str(f.name).replace("|", "\\|")
        lines.append(f"| {name} | {f.role} | {f.missing_rate:.1%} | {assoc} |")
    return "\n".join(lines) + "\n"
