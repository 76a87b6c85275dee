"""The retrain trigger's persisted state: cooldown, pending claims, the hourly limit (fake clock)."""

from __future__ import annotations

import json
import threading

import pytest

from kfp_automl.retrain.state import STATE_FILE, Claim, RetrainState, Verdict


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(claim_id: str, due: list[str]) -> tuple[str, dict, str]:
    return f"retrain m [{claim_id}]", {"data": "s3://lake/x.csv", "alerts": due}, ""


def claim(state: RetrainState, model: str, fps: list[str]) -> Claim:
    made = state.claim(model, fps, make)
    assert isinstance(made, Claim), made
    return made


def test_claim_confirm_and_cooldown(tmp_path):
    clock = Clock()
    state = RetrainState(tmp_path, cooldown_s=60, clock=clock)
    first = claim(state, "m", ["a", "b"])
    assert first.fingerprints == ["a", "b"] and first.run_name == f"retrain m [{first.id}]"
    state.confirm(first.id, "run-1")
    verdict = state.claim("m", ["a", "c"], make)
    assert isinstance(verdict, Verdict) and verdict.reason == "cooldown"
    assert "run-1" in verdict.message  # the model is in cooldown, even for a new alert
    clock.now += 59
    assert isinstance(state.claim("m", ["a"], make), Verdict)
    clock.now += 1
    again = claim(state, "m", ["a"])  # cooldown over
    saved = json.loads((tmp_path / STATE_FILE).read_text())
    assert saved["models"]["m"] == {"at": 1060.0, "run_id": None, "claim": again.id}
    assert saved["pending"][again.id]["arguments"] == {"data": "s3://lake/x.csv", "alerts": ["a"]}
    assert "b" not in saved["fingerprints"]  # pruned once its cooldown ended


def test_a_fingerprint_in_cooldown_is_not_claimed_for_another_model(tmp_path):
    state = RetrainState(tmp_path, cooldown_s=60, clock=Clock())
    claim(state, "m1", ["x"])
    verdict = state.claim("m2", ["x"], make)
    assert verdict == Verdict(reason="cooldown", message=verdict.message)
    assert "every alert" in verdict.message


def test_a_pending_claim_survives_a_restart_and_is_handed_back_not_claimed_again(tmp_path):
    clock = Clock()
    state = RetrainState(tmp_path, cooldown_s=60, clock=clock)
    pending = claim(state, "m", ["a"])
    clock.now += 3600  # long after the cooldown: still pending, never pruned or claimed again
    again = RetrainState(tmp_path, cooldown_s=60, clock=clock)
    assert again.pending_claims() == [pending]
    verdict = again.claim("m", ["a"], make)
    assert isinstance(verdict, Verdict) and verdict.pending == pending
    again.attempted(pending.id, "cannot reach the KFP API")
    [left] = again.pending_claims()
    assert left.attempts == 1 and left.last_error == "cannot reach the KFP API"
    again.confirm(pending.id, "run-7")
    assert again.pending_claims() == []
    saved = json.loads((tmp_path / STATE_FILE).read_text())
    assert saved["models"]["m"]["run_id"] == "run-7" == saved["fingerprints"]["a"]["run_id"]


def test_release_lets_the_retry_claim_again_and_frees_its_start(tmp_path):
    state = RetrainState(tmp_path, cooldown_s=60, max_per_hour=1, clock=Clock())
    first = claim(state, "m", ["a"])
    state.release(first.id)  # the KFP API said no: nothing was created
    assert state.pending_claims() == [] and state.starts_last_hour() == 0
    claim(state, "m", ["a"])


def test_at_most_max_per_hour_claims_over_all_models_also_after_a_restart(tmp_path):
    clock = Clock()
    state = RetrainState(tmp_path, cooldown_s=1, max_per_hour=2, clock=clock)
    for model in ("m1", "m2"):
        state.confirm(claim(state, model, [model]).id, f"run-{model}")
    limited = state.claim("m3", ["m3"], make)
    assert isinstance(limited, Verdict) and limited.reason == "rate_limited"
    assert "2 runs started in the last hour" in limited.message
    assert "in 3600 s" in limited.message
    clock.now += 1800
    restarted = RetrainState(tmp_path, cooldown_s=1, max_per_hour=2, clock=clock)
    assert restarted.check("m1", ["m1"]).reason == "rate_limited"
    clock.now += 1800  # an hour after the first two
    claim(restarted, "m3", ["m3"])


def test_the_run_name_must_carry_the_claim_id(tmp_path):
    state = RetrainState(tmp_path, cooldown_s=60, clock=Clock())
    with pytest.raises(ValueError, match="claim id"):
        state.claim("m", ["a"], lambda cid, due: ("retrain m", {}, ""))
    assert state.pending_claims() == []


def test_an_unreadable_state_file_is_moved_aside(tmp_path):
    (tmp_path / STATE_FILE).write_text("{half a file")
    state = RetrainState(tmp_path, cooldown_s=60, clock=Clock())
    claim(state, "m", ["a"])
    assert len(list(tmp_path.glob("retrain-state.corrupt-*"))) == 1


def test_a_state_file_of_the_previous_release_still_loads(tmp_path):
    old = {"fingerprints": {"a": {"at": 990.0, "run_id": "r1", "model": "m"}},
           "models": {"m": {"at": 990.0, "run_id": "r1"}}}  # fmt: skip
    (tmp_path / STATE_FILE).write_text(json.dumps(old))
    state = RetrainState(tmp_path, cooldown_s=60, clock=Clock())
    assert state.check("m", ["a"]).reason == "cooldown"
    assert not list(tmp_path.glob("retrain-state.corrupt-*"))


def test_concurrent_claims_start_one_run(tmp_path):
    state = RetrainState(tmp_path, cooldown_s=60, clock=Clock())
    won = []
    barrier = threading.Barrier(8)

    def one():
        barrier.wait()
        if isinstance(state.claim("m", ["a"], make), Claim):
            won.append(1)

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert won == [1]
