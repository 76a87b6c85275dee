"""What the retrain trigger has started, persisted so a restart does not start it again.

One JSON file (`retrain-state.json` in the state directory), rewritten atomically
after every change. An alert (by fingerprint) and a model (by name) each have a
cooldown: while either started a run less than `cooldown_s` ago, another firing
notification starts nothing. A run is claimed *before* it is submitted and the
claim is dropped only when the KFP API says no; if the process dies in between,
the claim stands, so a crash can lose one retraining (the alert, still firing,
starts it after the cooldown) but never starts two.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from kfp_automl.errors import UserError
from kfp_automl.files import atomic_path

STATE_FILE = "retrain-state.json"
log = logging.getLogger("kfp_automl.retrain")


class RetrainState:
    """Fingerprints and models with the time (and run id) of the run they started."""

    def __init__(
        self, directory: str | Path, cooldown_s: float, clock: Callable[[], float] = time.time
    ):
        self.path = Path(directory) / STATE_FILE
        self.cooldown_s = cooldown_s
        self.clock = clock
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"--state-dir {str(directory)!r} cannot be created: {exc}") from None
        self._data = self._load()
        self._save()  # fails now, not at the first alert, if the directory is not writable

    def _load(self) -> dict:
        empty: dict = {"fingerprints": {}, "models": {}}
        if not self.path.exists():
            return empty
        try:
            data = json.loads(self.path.read_text())
            if not isinstance(data.get("fingerprints"), dict) or not isinstance(
                data.get("models"), dict
            ):
                raise ValueError("missing fingerprints/models")
            return data
        except (ValueError, OSError, AttributeError) as exc:
            aside = self.path.with_suffix(f".corrupt-{int(self.clock())}")
            self.path.replace(aside)
            log.warning("state file %s unreadable (%s): moved to %s", self.path, exc, aside)
            return empty

    def _save(self) -> None:
        try:
            with atomic_path(self.path) as tmp:
                tmp.write_text(json.dumps(self._data, indent=1, sort_keys=True))
        except OSError as exc:
            raise UserError(f"cannot write {self.path}: {exc}") from None

    def _recent(self, table: str, key: str, now: float) -> dict | None:
        entry = self._data[table].get(key)
        return entry if entry and now - entry["at"] < self.cooldown_s else None

    def claim(self, model: str, fingerprints: list[str]) -> tuple[list[str], str | None]:
        """Claim a run for `model`: the fingerprints not in cooldown, or [] and the reason."""
        with self._lock:
            now = self.clock()
            recent = self._recent("models", model, now)
            if recent:
                return [], f"model {model} started run {recent.get('run_id') or '(pending)'}"
            due = [fp for fp in fingerprints if not self._recent("fingerprints", fp, now)]
            if not due:
                return [], "every alert started a run within the cooldown"
            self._prune(now)
            entry = {"at": now, "run_id": None}
            self._data["models"][model] = dict(entry)
            for fp in due:
                self._data["fingerprints"][fp] = {**entry, "model": model}
            self._save()
            return due, None

    def confirm(self, model: str, fingerprints: list[str], run_id: str) -> None:
        with self._lock:
            for entry in [self._data["models"].get(model)] + [
                self._data["fingerprints"].get(fp) for fp in fingerprints
            ]:
                if entry is not None:
                    entry["run_id"] = run_id
            self._save()

    def release(self, model: str, fingerprints: list[str]) -> None:
        """Drop a claim whose run was not created, so the next notification tries again."""
        with self._lock:
            self._data["models"].pop(model, None)
            for fp in fingerprints:
                self._data["fingerprints"].pop(fp, None)
            self._save()

    def _prune(self, now: float) -> None:
        for table in ("models", "fingerprints"):
            old = [k for k, v in self._data[table].items() if now - v["at"] >= self.cooldown_s]
            for key in old:
                del self._data[table][key]
