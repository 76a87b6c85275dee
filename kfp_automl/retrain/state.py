"""What the retrain trigger started or is starting, persisted so a restart neither loses nor repeats it.

One JSON file (`retrain-state.json` in the state directory), rewritten atomically after every
change. Its tables:

- `models`, `fingerprints`: what started a run, and when. While a model or an alert
  fingerprint started one less than `cooldown_s` ago, another notification starts nothing.
- `pending`: claims, written *before* their run is submitted: the model, the alerts, and the
  run's name and arguments. The run name carries the claim's id, so it identifies the run on
  Kubeflow Pipelines. A claim is confirmed (run id recorded, claim removed) when the KFP API
  creates the run, and dropped when the API refuses it (nothing was created). A claim still
  pending (the process died during the submission, or the API did not answer) is resumed with
  the same name and arguments: the trigger first asks the API for a run of that name and
  records it when there is one, and only otherwise creates it. A crash between the claim and
  the submission therefore neither loses the run nor starts it twice.
- `starts`: when each claim was made, for the global rate limit (at most `max_per_hour`
  claims in any hour, over every model), so a restart does not reset it.

The trigger serialises its notifications, so one process is the only writer (its
Deployment runs one replica and replaces it with `Recreate`); the lock here keeps the
file consistent for threads of that process.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kfp_automl.errors import UserError
from kfp_automl.files import atomic_path

STATE_FILE = "retrain-state.json"
HOUR_S = 3600.0
log = logging.getLogger("kfp_automl.retrain")


@dataclass
class Claim:
    """A run the trigger decided to start, recorded before it is submitted."""

    id: str
    model: str
    fingerprints: list[str]
    run_name: str
    arguments: dict[str, Any]
    at: float
    note: str = ""  # what the run does differently from the trigger's settings, and why
    attempts: int = 0
    last_error: str = ""


@dataclass
class Verdict:
    """What a notification for a model may start: `due` fingerprints, or why nothing."""

    due: list[str] = field(default_factory=list)
    reason: str = ""  # "cooldown" or "rate_limited" when nothing is due
    message: str = ""
    pending: Claim | None = None  # the model's claim that still waits for its run


def new_claim_id() -> str:
    return uuid.uuid4().hex[:12]


class RetrainState:
    """Started runs, pending claims and the start times of the last hour, in one file."""

    def __init__(
        self,
        directory: str | Path,
        cooldown_s: float,
        max_per_hour: int = 10,
        clock: Callable[[], float] = time.time,
    ):
        self.path = Path(directory) / STATE_FILE
        self.cooldown_s = cooldown_s
        self.max_per_hour = max_per_hour
        self.clock = clock
        self._lock = threading.RLock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"--state-dir {str(directory)!r} cannot be created: {exc}") from None
        self._data = self._load()
        self._save()  # fails now, not at the first alert, if the directory is not writable

    def _load(self) -> dict:
        empty: dict = {"fingerprints": {}, "models": {}, "pending": {}, "starts": []}
        if not self.path.exists():
            return empty
        try:
            data = json.loads(self.path.read_text())
            if not isinstance(data.get("fingerprints"), dict) or not isinstance(
                data.get("models"), dict
            ):
                raise ValueError("missing fingerprints/models")
            data.setdefault("pending", {})  # a file written before claims were resumable
            data.setdefault("starts", [])
            if not isinstance(data["pending"], dict) or not isinstance(data["starts"], list):
                raise ValueError("pending/starts of the wrong type")
            for entry in data["pending"].values():
                Claim(**entry)  # every field there, no other
            return data
        except (ValueError, TypeError, OSError, AttributeError) as exc:
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

    # ---- reading ------------------------------------------------------------------------------

    def _recent(self, table: str, key: str, now: float) -> dict | None:
        entry = self._data[table].get(key)
        return entry if entry and now - entry["at"] < self.cooldown_s else None

    def _starts_last_hour(self, now: float) -> list[float]:
        return sorted(s["at"] for s in self._data["starts"] if now - s["at"] < HOUR_S)

    def _verdict(self, model: str, fingerprints: list[str], now: float) -> Verdict:
        entry = self._data["models"].get(model)
        if entry and entry.get("run_id") is None and entry.get("claim") in self._data["pending"]:
            return Verdict(pending=Claim(**self._data["pending"][entry["claim"]]))
        recent = self._recent("models", model, now)
        if recent:
            return Verdict(
                reason="cooldown", message=f"model {model} started run {recent.get('run_id')}"
            )
        due = [fp for fp in fingerprints if not self._recent("fingerprints", fp, now)]
        if not due:
            return Verdict(
                reason="cooldown", message="every alert started a run within the cooldown"
            )
        starts = self._starts_last_hour(now)
        if len(starts) >= self.max_per_hour:
            wait = HOUR_S - (now - starts[0])
            return Verdict(
                reason="rate_limited",
                message=f"{len(starts)} runs started in the last hour, at most "
                f"{self.max_per_hour} (--max-runs-per-hour); the next may start in {wait:.0f} s",
            )
        return Verdict(due=due)

    def check(self, model: str, fingerprints: list[str]) -> Verdict:
        """What `claim` would decide now, without claiming anything."""
        with self._lock:
            return self._verdict(model, fingerprints, self.clock())

    def pending_claims(self) -> list[Claim]:
        """Claims whose run is not recorded yet, oldest first."""
        with self._lock:
            claims = [Claim(**c) for c in self._data["pending"].values()]
        return sorted(claims, key=lambda c: c.at)

    def starts_last_hour(self) -> int:
        with self._lock:
            return len(self._starts_last_hour(self.clock()))

    # ---- changing (each one atomic rewrite of the file) ----------------------------------------

    def claim(
        self,
        model: str,
        fingerprints: list[str],
        make: Callable[[str, list[str]], tuple[str, dict[str, Any], str]],
    ) -> Claim | Verdict:
        """Claim a run for `model`: the Claim (saved), or the Verdict saying why not.

        `make(claim_id, due)` gives the run's name (it must carry the claim id), arguments
        and note for the due fingerprints."""
        with self._lock:
            now = self.clock()
            verdict = self._verdict(model, fingerprints, now)
            if not verdict.due:
                return verdict
            self._prune(now)
            claim_id = new_claim_id()
            run_name, arguments, note = make(claim_id, verdict.due)
            if claim_id not in run_name:
                raise ValueError(f"the run name {run_name!r} must carry the claim id {claim_id}")
            claim = Claim(claim_id, model, verdict.due, run_name, arguments, now, note)
            self._data["pending"][claim_id] = asdict(claim)
            self._data["models"][model] = {"at": now, "run_id": None, "claim": claim_id}
            for fp in verdict.due:
                self._data["fingerprints"][fp] = {"at": now, "run_id": None, "model": model}
            self._data["starts"].append({"at": now, "claim": claim_id})
            self._save()
            return claim

    def confirm(self, claim_id: str, run_id: str) -> None:
        """The claim's run exists (created now, or found on the API): record its id."""
        with self._lock:
            claim = self._data["pending"].pop(claim_id, None)
            if claim is None:
                return
            model = self._data["models"].get(claim["model"])
            if model is not None and model.get("claim") == claim_id:
                model["run_id"] = run_id
            for fp in claim["fingerprints"]:
                entry = self._data["fingerprints"].get(fp)
                if entry is not None:
                    entry["run_id"] = run_id
            self._save()

    def attempted(self, claim_id: str, error: str) -> None:
        """A submission of the claim failed without saying whether the run was created."""
        with self._lock:
            claim = self._data["pending"].get(claim_id)
            if claim is not None:
                claim["attempts"] += 1
                claim["last_error"] = error[:500]
                self._save()

    def release(self, claim_id: str) -> None:
        """Drop a claim whose run was not created, so the next notification tries again."""
        with self._lock:
            claim = self._data["pending"].pop(claim_id, None)
            if claim is None:
                return
            model = self._data["models"].get(claim["model"])
            if model is not None and model.get("claim") == claim_id:
                del self._data["models"][claim["model"]]
            for fp in claim["fingerprints"]:
                self._data["fingerprints"].pop(fp, None)
            self._data["starts"] = [s for s in self._data["starts"] if s["claim"] != claim_id]
            self._save()

    def _prune(self, now: float) -> None:
        """Forget what left its cooldown (never what a pending claim holds) and old starts."""
        held = {c["model"] for c in self._data["pending"].values()}
        held_fps = {fp for c in self._data["pending"].values() for fp in c["fingerprints"]}
        for table, keep in (("models", held), ("fingerprints", held_fps)):
            old = [k for k, v in self._data[table].items() if now - v["at"] >= self.cooldown_s]
            for key in old:
                if key not in keep:
                    del self._data[table][key]
        self._data["starts"] = [s for s in self._data["starts"] if now - s["at"] < HOUR_S]
