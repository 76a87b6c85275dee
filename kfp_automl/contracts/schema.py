"""The schema: what the prepare step learned about a table, and what every later part reads.

Written by prepare (`schema.json`), read by tune, evaluate, package, gate, the Bento (which
checks requests against it) and `export-feedback`. The JSON keeps the field names it has
always had; `Schema.from_dict` reads every version this project has written:

- version 1: features carry `name`, `kind`, `dtype`, `required` (no `role`: the role is the kind);
- version 2 (today): features also carry `role`, `missing_rate`, ranges, categories and the
  association with the target; the schema carries the split, row counts, decisions, warnings.

A feature's `kind` is what serving validates a value against (`numeric`: a JSON number;
`categorical`: a string, number or boolean); its `role` says how the model's preprocessing
treats it (numeric, categorical, boolean, datetime or text).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from kfp_automl.contracts.errors import ContractError, expect
from kfp_automl.files import write_json

SCHEMA_VERSION = 2
VERSIONS = (1, 2)
KINDS = ("numeric", "categorical")
ROLES = ("numeric", "categorical", "boolean", "datetime", "text")
TASKS = ("classification", "regression")

Kind = Literal["numeric", "categorical"]
Task = Literal["classification", "regression"]


@dataclass(frozen=True)
class Feature:
    """One model input column."""

    name: str
    kind: Kind
    role: str
    dtype: str = ""
    required: bool = True
    missing_rate: float = 0.0
    # numeric: floats; datetime: ISO timestamps; otherwise None
    min: float | str | None = None
    max: float | str | None = None
    n_categories: int = 0
    categories: tuple[str, ...] = ()  # the most frequent first (at most 200 recorded)
    association: float | None = None  # held-out score of the feature alone (leakage guard)

    @property
    def numeric(self) -> bool:
        return self.kind == "numeric"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind,
            "role": self.role,
            "dtype": self.dtype,
            "required": self.required,
            "missing_rate": self.missing_rate,
        }
        if self.min is not None or self.max is not None:
            out["min"], out["max"] = self.min, self.max
        if self.role in ("categorical", "boolean"):
            out["n_categories"] = self.n_categories
            out["categories"] = list(self.categories)
        out["association"] = self.association  # None: not measured (too few rows, text)
        return out

    @classmethod
    def from_dict(cls, d: Any, where: str = "feature") -> Feature:
        expect(isinstance(d, dict), f"{where}: expected an object")
        name = d.get("name")
        expect(isinstance(name, str) and name != "", f"{where}: 'name' must be a non-empty string")
        where = f"feature {name!r}"
        kind = d.get("kind")
        expect(kind in KINDS, f"{where}: 'kind' must be one of {', '.join(KINDS)}, got {kind!r}")
        role = d.get("role") or kind  # version 1 has no roles: the kind is the role
        expect(role in ROLES, f"{where}: 'role' must be one of {', '.join(ROLES)}, got {role!r}")
        categories = d.get("categories") or []
        expect(isinstance(categories, list), f"{where}: 'categories' must be a list")
        return cls(
            name=name,
            kind=kind,
            role=role,
            dtype=str(d.get("dtype") or ""),
            required=bool(d.get("required", True)),
            missing_rate=float(d.get("missing_rate") or 0.0),
            min=d.get("min"),
            max=d.get("max"),
            n_categories=int(d.get("n_categories") or 0),
            categories=tuple(str(c) for c in categories),
            association=None if d.get("association") is None else float(d["association"]),
        )


@dataclass(frozen=True)
class Schema:
    """The prepared table: target, task, features, and how the data was cleaned and split."""

    target: str
    task: Task
    features: tuple[Feature, ...]
    classes: tuple[Any, ...] | None = None  # classification: the labels, sorted (JSON values)
    data_fingerprint: str = ""
    dropped: tuple[dict[str, str], ...] = ()  # {"name", "reason"}
    decisions: tuple[dict[str, str], ...] = ()  # {"column", "action", "reason"}
    warnings: tuple[str, ...] = ()
    split: dict[str, Any] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    version: int = SCHEMA_VERSION

    @property
    def names(self) -> list[str]:
        """The feature columns, in model order."""
        return [f.name for f in self.features]

    def feature(self, name: str) -> Feature:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(name)

    def by_role(self, role: str) -> list[Feature]:
        return [f for f in self.features if f.role == role]

    @property
    def n_classes(self) -> int:
        return len(self.classes or ())

    @property
    def classification(self) -> bool:
        return self.task == "classification"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "version": SCHEMA_VERSION,
            "target": self.target,
            "task": self.task,
            "data_fingerprint": self.data_fingerprint,
            "features": [f.to_dict() for f in self.features],
            "dropped": [dict(d) for d in self.dropped],
            "required": self.names,
            "decisions": [dict(d) for d in self.decisions],
            "warnings": list(self.warnings),
            "split": dict(self.split),
            "rows": dict(self.rows),
        }
        if self.classes is not None:
            out["classes"] = list(self.classes)
        return out

    @classmethod
    def from_dict(cls, d: Any) -> Schema:
        expect(isinstance(d, dict), "schema: expected a JSON object")
        version = d.get("version", 1)
        expect(
            version in VERSIONS,
            f"schema version {version!r} is not one this release reads ({VERSIONS}); "
            "a newer kfp-automl wrote it",
        )
        target = d.get("target")
        expect(isinstance(target, str) and target != "", "schema: 'target' must be a string")
        task = d.get("task")
        expect(task in TASKS, f"schema: 'task' must be one of {', '.join(TASKS)}, got {task!r}")
        raw = d.get("features")
        expect(
            isinstance(raw, list) and len(raw) > 0, "schema: 'features' must be a non-empty list"
        )
        features = tuple(Feature.from_dict(f, f"schema feature {i}") for i, f in enumerate(raw))
        names = [f.name for f in features]
        twice = sorted({n for n in names if names.count(n) > 1})
        expect(not twice, f"schema: feature {twice[0] if twice else ''!r} appears twice")
        classes = d.get("classes")
        expect(classes is None or isinstance(classes, list), "schema: 'classes' must be a list")
        return cls(
            target=target,
            task=task,
            features=features,
            classes=None if classes is None else tuple(classes),
            data_fingerprint=str(d.get("data_fingerprint") or ""),
            dropped=tuple(dict(x) for x in d.get("dropped") or []),
            decisions=tuple(dict(x) for x in d.get("decisions") or []),
            warnings=tuple(str(w) for w in d.get("warnings") or []),
            split=dict(d.get("split") or {}),
            rows={k: int(v) for k, v in (d.get("rows") or {}).items()},
            version=SCHEMA_VERSION,
        )

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> Schema:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise ContractError(f"cannot read the schema {path}: {exc}") from None
        try:
            return cls.from_dict(data)
        except ContractError as exc:
            raise ContractError(f"{path}: {exc}") from None

    def write(self, path: str | os.PathLike[str]) -> None:
        write_json(path, self.to_dict())
