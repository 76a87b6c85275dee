"""Logged predictions plus their labels -> a training table (`kfp-automl export-feedback`).

Reads a prediction log directory written by the service (see
kfp_automl/serving/prediction_log.py): the model schema files, the JSON Lines
prediction and label records, and the join store's labels. Labelled
predictions become rows with the model's feature columns and the target column
named as in training, so `kfp-automl run --data` takes the table unchanged.

Predictions and labels are joined by (owner, id), as the service joins them: two callers'
predictions with the same id stay apart (lines written before owners existed read as the
anonymous owner, as the store's rows of that time do).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from kfp_automl.errors import UserError
from kfp_automl.serving.prediction_store import ANONYMOUS, read_labels
from kfp_automl.tables.io import read_table

_RELATIVE = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


@dataclass
class FeedbackTable:
    table: pd.DataFrame
    target: str
    predictions: int = 0  # logged predictions read (after --since / --model)
    labelled: int = 0
    skipped_lines: int = 0  # unreadable lines (a line cut short by a crash)
    excluded: list[str] = field(default_factory=list)


def parse_since(text: str, now: float | None = None) -> float | None:
    """A UNIX time from an ISO date/time (UTC unless it says otherwise) or an age like 7d, 12h."""
    if not text:
        return None
    now = time.time() if now is None else now
    match = _RELATIVE.fullmatch(text.strip())
    if match:
        return now - float(match.group(1)) * _UNITS[match.group(2)]
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UserError(
            f"--since {text!r} is neither an ISO date/time (2026-11-20, 2026-11-20T08:00) "
            "nor an age (90m, 12h, 7d)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def _schemas(directory: Path, model: str) -> list[dict[str, Any]]:
    if not directory.is_dir():
        raise UserError(f"--log-dir {str(directory)!r} is not a directory")
    schemas = []
    for path in sorted(directory.glob("model-*.json")):
        try:
            schemas.append(json.loads(path.read_text()))
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot read {path}: {exc}") from None
    if not schemas:
        raise UserError(
            f"no prediction log in {directory} (no model-*.json): serve with --log-predictions on"
        )
    return _one_target(schemas, model, str(directory))


def _one_target(schemas: list[dict[str, Any]], model: str, where: str) -> list[dict[str, Any]]:
    """The schemas of `model` (all when empty), which must share one target column."""
    if model:
        schemas = [s for s in schemas if s["model"] == model]
        if not schemas:
            raise UserError(f"--model {model!r}: no predictions of that model in {where}")
    targets = sorted({s["target"] for s in schemas})
    if len(targets) > 1:
        names = sorted({s["model"] for s in schemas})
        raise UserError(
            f"{where} holds models with different targets ({', '.join(targets)}); "
            f"choose one with --model ({', '.join(names)})"
        )
    return schemas


def _features(schemas: list[dict[str, Any]]) -> list[dict[str, Any]]:
    features: list[dict[str, Any]] = []
    for s in schemas:
        features += [f for f in s["features"] if f["name"] not in {g["name"] for g in features}]
    return features


def _typed(rows: list[dict], features: list[dict[str, Any]], target: str) -> pd.DataFrame:
    table = pd.DataFrame(rows, columns=[f["name"] for f in features] + [target])
    for f in features:
        if f["kind"] == "numeric":
            table[f["name"]] = pd.to_numeric(table[f["name"]], errors="coerce").astype(float)
        else:
            table[f["name"]] = table[f["name"]].astype(object)
    return table


Key = tuple[str, str]  # (owner, id)


def _read_lines(directory: Path) -> tuple[dict[Key, dict], dict[Key, Any], int]:
    predictions: dict[Key, dict] = {}
    labels: dict[Key, Any] = {}
    skipped = 0
    for path in sorted(directory.glob("predictions-*.jsonl")):
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                try:
                    rec = json.loads(line)
                    kind, key = rec["kind"], (str(rec.get("owner") or ANONYMOUS), str(rec["id"]))
                except (ValueError, KeyError, TypeError, AttributeError):
                    skipped += 1
                    continue
                if kind == "prediction":
                    predictions.setdefault(key, rec)
                elif kind == "label" and "label" in rec:
                    labels.setdefault(key, rec["label"])
    return predictions, labels, skipped


def feedback_table(
    log_dir: str | Path, since: float | None = None, model: str = ""
) -> FeedbackTable:
    """Labelled predictions in `log_dir` as a table: feature columns, then the target."""
    directory = Path(log_dir)
    schemas = _schemas(directory, model)
    target = schemas[0]["target"]
    features = _features(schemas)
    excluded = sorted({c for s in schemas for c in s.get("excluded", [])})
    versions = {(s["model"], s["version"]) for s in schemas}
    predictions, labels, skipped = _read_lines(directory)
    for key, (label, _) in read_labels(directory).items():
        labels.setdefault(key, label)
    rows, n_pred = [], 0
    for key, rec in predictions.items():
        if (rec.get("model"), rec.get("version")) not in versions:
            continue
        if since is not None and rec.get("ts", 0) < since:
            continue
        n_pred += 1
        if key in labels:
            rows.append({**{f["name"]: rec["features"].get(f["name"]) for f in features},
                         target: labels[key]})  # fmt: skip
    table = _typed(rows, features, target)
    return FeedbackTable(table, target, n_pred, len(rows), skipped, excluded)


def store_feedback_table(url: str, since: float | None = None, model: str = "") -> FeedbackTable:
    """Labelled predictions in the shared store (serve --log-store, postgres_store.py) as a
    table: feature columns, then the target. The store holds each prediction's features, so
    no pod's disk is read."""
    import psycopg

    from kfp_automl.serving.postgres_store import TABLE, redact

    where = f"the store {redact(url)}"
    try:
        with psycopg.connect(url, connect_timeout=10) as conn:
            try:
                infos = conn.execute("SELECT info FROM automl_models").fetchall()
            except psycopg.errors.UndefinedTable:
                infos = []
            if not infos:
                raise UserError(f"no logged model in {where}: serve with --log-store")
            schemas = _one_target([json.loads(i) for (i,) in infos], model, where)
            target = schemas[0]["target"]
            features = _features(schemas)
            versions = sorted({(s["model"], s["version"]) for s in schemas})
            excluded = sorted({c for s in schemas for c in s.get("excluded", [])})
            cond = "(model, version) IN (SELECT * FROM unnest(%s::text[], %s::text[]))"
            args: list[Any] = [[m for m, _ in versions], [v for _, v in versions]]
            if since is not None:
                cond += " AND ts >= %s"
                args.append(since)
            counted = conn.execute(f"SELECT count(*) FROM {TABLE} WHERE {cond}", args).fetchone()
            n_pred = counted[0] if counted else 0
            rows = []
            with conn.cursor(name="automl_export") as cur:  # streamed, not held whole
                cur.execute(
                    f"SELECT features, label FROM {TABLE} WHERE {cond} AND label_ts IS NOT NULL "
                    "ORDER BY label_ts",
                    args,
                )
                for features_text, label in cur:
                    values = json.loads(features_text) if features_text else {}
                    rows.append({**{f["name"]: values.get(f["name"]) for f in features},
                                 target: json.loads(label)})  # fmt: skip
    except psycopg.OperationalError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot read {where}: {first}") from None
    return FeedbackTable(_typed(rows, features, target), target, n_pred, len(rows), 0, excluded)


def append_to(original_path: str, fresh: FeedbackTable) -> pd.DataFrame:
    """The original training table with the feedback rows appended in its columns and dtypes."""
    original = read_table(original_path)
    if fresh.target not in original.columns:
        raise UserError(
            f"--append-to {original_path}: it has no target column {fresh.target!r}; "
            "append feedback only to the table the model was trained on"
        )
    missing = [c for c in fresh.table.columns if c not in original.columns]
    if missing:
        raise UserError(
            f"--append-to {original_path}: it has no column {missing[0]!r} "
            f"({len(missing)} of the model's columns missing); is it the training table?"
        )
    new = fresh.table.reindex(columns=original.columns)
    for col in original.columns:
        if pd.api.types.is_numeric_dtype(original[col]) and not pd.api.types.is_bool_dtype(
            original[col]
        ):
            new[col] = pd.to_numeric(new[col], errors="coerce")
            if pd.api.types.is_integer_dtype(original[col]) and new[col].notna().all():
                new[col] = new[col].astype(original[col].dtype)  # 0/1 columns stay integers
    if len(new) == 0:
        return original
    return pd.concat([original, new], ignore_index=True)


@dataclass
class Exported:
    """What `export` wrote: the table's rows and what they came from."""

    rows: int
    fresh: FeedbackTable
    source: str  # where the predictions were read (a store URL without its password)


def export(
    output: str,
    *,
    store: str = "",
    log_dir: str = "",
    since: str = "",
    model: str = "",
    append_to_path: str = "",
    raw_csv: bool = False,
    min_labels: int = 1,
) -> Exported:
    """Write the training table of labelled predictions (from the shared `store` URL, else
    `log_dir`) to `output`, appended to `append_to_path` when given. UserError when fewer
    than `min_labels` predictions are labelled: nothing is written then."""
    from kfp_automl.serving.postgres_store import redact
    from kfp_automl.tables.io import table_format, write_table

    table_format(output)  # a bad output name fails before any work
    since_ts = parse_since(since)
    if store:
        if not store.startswith(("postgresql://", "postgres://")):
            raise UserError("the store must be a postgresql://USER:PASSWORD@HOST:5432/DB URL")
        source = redact(store)
        fresh = store_feedback_table(store, since_ts, model)
    else:
        source = log_dir
        fresh = feedback_table(log_dir, since_ts, model)
    needed = max(1, min_labels)
    if fresh.labelled < needed:
        found = (
            f"{fresh.labelled} labelled predictions"
            if fresh.labelled
            else "no labelled predictions"
        )
        raise UserError(
            f"{found} in {source}"
            + (f" since {since}" if since else "")
            + f" ({fresh.predictions} logged)"
            + (f", fewer than the {needed} asked for" if needed > 1 else "")
            + "; send labels to POST /feedback"
        )
    table = append_to(append_to_path, fresh) if append_to_path else fresh.table
    write_table(table, output, raw_csv=raw_csv)
    return Exported(len(table), fresh, source)
