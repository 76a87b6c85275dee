"""The retrain trigger's persisted cooldown state (fake clock, no server)."""

from __future__ import annotations

import json
import threading

from kfp_automl.retrain.state import STATE_FILE, RetrainState


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_claim_confirm_and_cooldown(tmp_path):
    clock = Clock()
    state = RetrainState(tmp_path, cooldown_s=60, clock=clock)
    assert state.claim("m", ["a", "b"]) == (["a", "b"], None)
    state.confirm("m", ["a", "b"], "run-1")
    due, why = state.claim("m", ["a", "c"])
    assert due == [] and "run-1" in why  # the model is in cooldown, even for a new alert
    clock.now += 59
    assert state.claim("m", ["a"])[0] == []
    clock.now += 1
    assert state.claim("m", ["a"]) == (["a"], None)  # cooldown over
    saved = json.loads((tmp_path / STATE_FILE).read_text())
    assert saved["models"]["m"] == {"at": 1060.0, "run_id": None}
    assert "b" not in saved["fingerprints"]  # pruned once its cooldown ended


def test_a_fingerprint_in_cooldown_is_not_claimed_for_another_model(tmp_path):
    state = RetrainState(tmp_path, cooldown_s=60, clock=Clock())
    assert state.claim("m1", ["x"])[0] == ["x"]
    assert state.claim("m2", ["x"]) == ([], "every alert started a run within the cooldown")


def test_release_lets_the_retry_claim_again_and_a_new_process_sees_claims(tmp_path):
    clock = Clock()
    state = RetrainState(tmp_path, cooldown_s=60, clock=clock)
    state.claim("m", ["a"])
    state.release("m", ["a"])
    assert state.claim("m", ["a"])[0] == ["a"]  # the KFP API said no: the retry may start it
    # a claim not yet confirmed (the process died while submitting) still counts after a restart
    again = RetrainState(tmp_path, cooldown_s=60, clock=clock)
    assert again.claim("m", ["a"])[0] == []


def test_an_unreadable_state_file_is_moved_aside(tmp_path):
    (tmp_path / STATE_FILE).write_text("{half a file")
    state = RetrainState(tmp_path, cooldown_s=60, clock=Clock())
    assert state.claim("m", ["a"])[0] == ["a"]
    assert len(list(tmp_path.glob("retrain-state.corrupt-*"))) == 1


def test_concurrent_claims_start_one_run(tmp_path):
    state = RetrainState(tmp_path, cooldown_s=60, clock=Clock())
    won = []
    barrier = threading.Barrier(8)

    def claim():
        barrier.wait()
        if state.claim("m", ["a"])[0]:
            won.append(1)

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert won == [1]
