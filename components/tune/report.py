"""The search report (HTML): score over time per family, the winner, the whole history."""

from __future__ import annotations

import base64
import html
import io
import json

import pandas as pd

from kfp_automl.components.tune.families import family_params
from kfp_automl.runtime.metrics import Metric

STYLE = (
    "body{font-family:sans-serif;margin:2em auto;max-width:72em;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;font-size:.85em}td,th{border:1px solid #ccc;padding:2px 6px}"
    "th{background:#f3f3f3}code{background:#f6f6f6;padding:1px 3px}"
)


def score_over_time_png(board: pd.DataFrame, metric: Metric) -> bytes:
    """Each finished trial's score at its finish time, and each family's best so far."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = board[board["status"] == "ok"].sort_values("finished_at_s")
    fig, ax = plt.subplots(figsize=(8, 4.2), dpi=100)
    for family, rows in ok.groupby("family", sort=True):
        best = rows["score"].cummax() if metric.greater_is_better else rows["score"].cummin()
        (line,) = ax.step(rows["finished_at_s"], best, where="post", label=family, marker=".")
        ax.scatter(rows["finished_at_s"], rows["score"], s=10, alpha=0.4, color=line.get_color())
    ax.set_xlabel("seconds since the search started")
    ax.set_ylabel(f"{metric.name} ({'higher' if metric.greater_is_better else 'lower'} is better)")
    ax.set_title("Score over time: best so far per family (lines), every trial (dots)")
    ax.grid(alpha=0.3)
    if len(ok):
        ax.legend(fontsize=8)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _table(df: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>"
        for row in df.itertuples(index=False)
    )
    return f"<table><tr>{head}</tr>{rows}</table>"


def render(result, metric: Metric) -> str:
    """The whole report as one self-contained HTML page."""
    board = result.leaderboard
    png = base64.b64encode(score_over_time_png(board, metric)).decode()
    counts = board["status"].value_counts().to_dict()
    if result.ensemble:
        winner = (
            f"<p>Ensemble (greedy selection) of {len(result.ensemble)} configurations: "
            f"{metric.name} {result.ensemble_score:.4f} on the validation rows against "
            f"{result.best_single_pooled:.4f} for the best single one.</p>"
            + _table(
                pd.DataFrame(
                    [
                        {"family": c["family"], "weight": w, "params": json.dumps(family_params(c))}
                        for c, w in result.ensemble
                    ]
                )
            )
        )
    else:
        winner = (
            f"<p><b>{html.escape(result.best_config['family'])}</b>, {metric.name} "
            f"{result.best_score:.4f}:</p><pre>"
            + html.escape(json.dumps(family_params(result.best_config), indent=2, sort_keys=True))
            + "</pre>"
        )
    per_family = (
        board[board["status"] == "ok"]
        .groupby("family")["score"]
        .agg(["count", "max" if metric.greater_is_better else "min", "median"])
        .round(4)
        .reset_index()
    )
    history = board.sort_values("finished_at_s", na_position="last")
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>Search report</title>"
        f"<style>{STYLE}</style></head><body><h1>Search report</h1>"
        f"<p>{len(board)} trials ({', '.join(f'{n} {s}' for s, n in counts.items())}), "
        f"{result.validation} validation, {result.elapsed_s:.0f}s; metric "
        f"<code>{metric.name}</code> ({'max' if metric.greater_is_better else 'min'}).</p>"
        f'<section id="score-over-time"><h2>Score over time</h2>'
        f'<img alt="score over time" src="data:image/png;base64,{png}"></section>'
        f'<section id="best"><h2>Best configuration</h2>{winner}</section>'
        f'<section id="families"><h2>Per family</h2>{_table(per_family)}</section>'
        f'<section id="history"><h2>Search history</h2>{_table(history)}</section>'
        "</body></html>"
    )
