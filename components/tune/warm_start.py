"""Warm start: seed a search with the best configurations of a previous leaderboard."""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from kfp_automl.components.tune.families import (
    CONDITIONAL,
    FAMILIES,
    Family,
    domains,
    fits_space,
    flat_config,
)
from kfp_automl.errors import UserError

MAX_SEEDS = 5


def read_leaderboard(path: str) -> pd.DataFrame:
    """A previous leaderboard CSV (path or fsspec URL); a missing or foreign file is a UserError."""
    try:
        board = pd.read_csv(path)
    except FileNotFoundError:
        raise UserError(f"--warm-start: leaderboard not found: {path}") from None
    except Exception as exc:  # parser and transport errors differ per backend
        raise UserError(f"--warm-start: cannot read {path} as CSV: {exc}") from None
    missing = [c for c in ("family", "params", "status") if c not in board.columns]
    if missing:
        raise UserError(f"--warm-start: {path} is not a leaderboard (no column {missing[0]!r})")
    return board


def _today(family: Family, params: dict[str, Any], space: set[str]) -> dict[str, Any]:
    """`params` with the conditional choices today's space has and the board lacks (a board
    from before they were searched, from data without categories or with a balanced target) at
    the family's start values, and those it no longer searches dropped."""
    out = {k: v for k, v in params.items() if k not in CONDITIONAL or k in space}
    for k in CONDITIONAL:
        if k in space and k not in out:
            out[k] = family.initial[k]
    return out


def seeds(
    board: pd.DataFrame,
    families: list[Family],
    n_rows: int,
    task: str,
    limit: int = MAX_SEEDS,
    has_categorical: bool = True,
    imbalanced: bool = False,
) -> tuple[list[dict[str, Any]], list[str]]:
    """The board's best finished configurations that fit today's space (best first), and why
    the others among its top rows were skipped."""
    chosen = {f.name for f in families}
    ok = board[board["status"] == "ok"]
    if "rank" in ok.columns:
        ok = ok.sort_values("rank", kind="stable")
    out: list[dict[str, Any]] = []
    skipped: list[str] = []
    for _, row in ok.iterrows():
        if len(out) >= limit:
            break
        name = str(row["family"])
        try:
            params = json.loads(row["params"])
        except (TypeError, ValueError):
            skipped.append(f"{name}: unreadable params")
            continue
        if name not in FAMILIES:
            skipped.append(f"{name}: no such family")
        elif name not in chosen:
            skipped.append(f"{name}: family not searched")
        else:
            family = FAMILIES[name]
            space = domains(family, n_rows, task, has_categorical, imbalanced)
            params = _today(family, params, set(space))
            if not fits_space(family, params, n_rows, task, has_categorical, imbalanced):
                skipped.append(
                    f"{name} {json.dumps(params, sort_keys=True)}: outside today's space"
                )
            elif (config := flat_config(name, params)) not in out:
                out.append(config)
    return out, skipped
