"""The model registry: versions of a model, their metrics and stage, and who is champion.

One JSON file per model name (`<root>/<name>.json`) is the source of truth; every
change happens under an exclusive lock on `<root>/<name>.lock` and is written to a
temporary file that is renamed into place, so readers never see a half-written
file and two promotions racing each other still leave exactly one champion.
Each version's stage is mirrored into its BentoML model's labels (`stage`), so
`bentoml models list` shows it too.

Stages: `challenger` (registered, never promoted), `champion` (at most one per
name), `archived` (a former champion).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from components.common.errors import UserError
from components.common.io import write_json

STAGES = ("challenger", "champion", "archived")


def default_root() -> Path:
    """`$KFP_AUTOML_REGISTRY`, else a folder beside the BentoML store."""
    if os.environ.get("KFP_AUTOML_REGISTRY"):
        return Path(os.environ["KFP_AUTOML_REGISTRY"])
    home = os.environ.get("BENTOML_HOME") or str(Path.home() / "bentoml")
    return Path(home) / "kfp-automl-registry"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Registry:
    def __init__(self, root: str | os.PathLike[str] | None = None):
        self.root = Path(root) if root else default_root()

    # ---- reading ----------------------------------------------------------------------------

    def _path(self, name: str) -> Path:
        return self.root / f"{name}.json"

    def _read(self, name: str) -> dict[str, Any]:
        try:
            return json.loads(self._path(name).read_text())
        except FileNotFoundError:
            return {"name": name, "champion": None, "versions": {}, "events": []}

    def names(self) -> list[str]:
        return sorted(p.stem for p in self.root.glob("*.json")) if self.root.is_dir() else []

    def versions(self, name: str) -> list[dict[str, Any]]:
        """Every version of `name`, oldest first, each with its `stage`."""
        state = self._read(name)
        return [
            {"version": v, **entry, "stage": self._stage(state, v)}
            for v, entry in sorted(state["versions"].items(), key=lambda kv: kv[1]["registered_at"])
        ]

    def champion(self, name: str) -> dict[str, Any] | None:
        state = self._read(name)
        v = state["champion"]
        return {"version": v, **state["versions"][v], "stage": "champion"} if v else None

    def events(self, name: str) -> list[dict[str, Any]]:
        return self._read(name)["events"]

    @staticmethod
    def _stage(state: dict[str, Any], version: str) -> str:
        if state["champion"] == version:
            return "champion"
        return "archived" if state["versions"][version].get("was_champion") else "challenger"

    # ---- changing (under the lock) ----------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self, name: str) -> Iterator[dict[str, Any]]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / f"{name}.lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                state = self._read(name)
                yield state
                write_json(self._path(name), state)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def register(self, name: str, version: str, info: dict[str, Any]) -> dict[str, Any]:
        """Add `version` as a challenger (registering it again only updates its info)."""
        with self._locked(name) as state:
            entry = state["versions"].setdefault(version, {"registered_at": _now()})
            entry.update(info)
            state["events"].append({"at": _now(), "event": "register", "version": version})
        _mirror_stage(name, version, self._stage(state, version))
        return {"version": version, **entry, "stage": self._stage(state, version)}

    def promote(self, name: str, version: str, reason: str = "") -> dict[str, Any]:
        """Make `version` the champion; the former champion becomes archived."""
        with self._locked(name) as state:
            if version not in state["versions"]:
                known = ", ".join(state["versions"]) or "none"
                raise UserError(f"model {name!r} has no version {version!r} (versions: {known})")
            before = state["champion"]
            if before and before != version:
                state["versions"][before]["was_champion"] = True
            state["champion"] = version
            state["versions"][version]["was_champion"] = True
            state["events"].append(
                {
                    "at": _now(),
                    "event": "promote",
                    "version": version,
                    "from": before,
                    "reason": reason,
                }
            )
        if before and before != version:
            _mirror_stage(name, before, "archived")
        _mirror_stage(name, version, "champion")
        return {
            "version": version,
            **state["versions"][version],
            "stage": "champion",
            "previous": before,
        }

    def rollback(self, name: str, reason: str = "") -> dict[str, Any]:
        """Make champion again the version the current champion replaced when it was promoted."""
        with self._locked(name) as state:
            current = state["champion"]
            if current is None:
                raise UserError(f"model {name!r} has no champion to roll back from")
            earlier = [
                e["from"]
                for e in reversed(state["events"])
                if e["event"] == "promote" and e["version"] == current and e.get("from")
            ]
            if not earlier:
                raise UserError(
                    f"model {name!r}: {current} is the first champion; there is nothing to roll back to"
                )
            target = earlier[0]
            state["champion"] = target
            state["events"].append(
                {
                    "at": _now(),
                    "event": "rollback",
                    "version": target,
                    "from": current,
                    "reason": reason,
                }
            )
        _mirror_stage(name, current, "archived")
        _mirror_stage(name, target, "champion")
        return {
            "version": target,
            **state["versions"][target],
            "stage": "champion",
            "previous": current,
        }


def _mirror_stage(name: str, version: str, stage: str) -> None:
    """Best effort: show the stage in the BentoML model's labels (the registry file decides)."""
    try:
        import bentoml

        model = bentoml.models.get(f"{name}:{version}")
        model.info.labels["stage"] = stage
        model.flush()
    except Exception:  # the model may live in another store (a cluster's pipeline root)
        pass


def promote_tag(model_tag: str, reason: str = "", root: str = "") -> dict[str, Any]:
    """Promote BentoML model `name:version` in the registry at `root` (empty: the default)."""
    from components.common.progress import say

    name, version = model_tag.split(":", 1)
    entry = Registry(root or None).promote(name, version, reason)
    say("promote", f"{model_tag} is the champion (before: {entry['previous'] or 'none'})")
    return entry
