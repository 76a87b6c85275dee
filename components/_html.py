"""HTML pieces the steps' reports share (the data report, the model report).

One self-contained page per report: inline CSS, figures as base64 PNG data URIs drawn with
matplotlib's Agg renderer (a Figure without pyplot), no scripts.
"""

from __future__ import annotations

import base64
import html
import io
from typing import Any

import pandas as pd

DPI = 96
STYLE = (
    "body{font-family:sans-serif;margin:2em auto;max-width:72em;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;margin:1em 0}"
    "td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}"
    "th{background:#f4f4f4}section{margin-bottom:2em}"
    "img{max-width:100%;height:auto;margin:.5em 1em .5em 0;vertical-align:top}"
    "nav a{margin-right:1em}.note{color:#555}.missing{color:#8a5a00}"
    ".flag{background:#fde2e1}.warnings li{margin:.3em 0}"
    ".row{display:flex;flex-wrap:wrap;column-gap:2em}.row>section{flex:0 1 34em}"
)


def esc(value: Any) -> str:
    return html.escape(str(value))


def table(df: pd.DataFrame, escape: bool = True) -> str:
    return df.to_html(
        index=False, border=0, classes="table", escape=escape, float_format=lambda v: f"{v:.4f}"
    )


def img(uri: str, alt: str) -> str:
    return f'<img src="{uri}" alt="{esc(alt)}">'


def section(sid: str, title: str, body: list[str] | str) -> str:
    body = "\n".join(body) if isinstance(body, list) else body
    return f'<section id="{sid}">\n<h2>{esc(title)}</h2>\n{body}\n</section>'


def note(text: str, cls: str = "note") -> str:
    return f'<p class="{cls}">{esc(text)}</p>'


def png(fig) -> str:
    """The figure as a PNG data URI."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)  # a Figure without pyplot renders with Agg
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
