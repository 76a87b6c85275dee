"""Hostile callers of POST /feedback against a real served Bento with prediction logging on.

Labels need a caller's bearer token; ids the server makes are random; a caller's own ids
and labels are its own; hostile bodies get a 4xx in the error format, fast, and are counted
in automl_feedback_rejected_total (never in /predict's automl_requests_rejected_total). A
server killed with SIGKILL while labels arrive keeps every label it acknowledged.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pandas as pd
import psutil
import pytest

from kfp_automl.serving.prediction_store import read_labels
from tests.adversarial.conftest import good_records, served
from tests.adversarial.probes import assert_ready, assert_refused, rejected, timed_post
from tests.support.servers import CLI, free_port, start, stop, wait_ready

pytestmark = pytest.mark.slow

TOKENS = {"crm": "crm-" + "7" * 40, "shop": "shop-" + "5" * 40, "bulk": "bulk-" + "3" * 40}


def _tokens(directory: Path) -> Path:
    directory.mkdir(parents=True)
    for name, token in TOKENS.items():
        (directory / name).write_text(token + "\n")
    return directory


def _auth(caller: str) -> dict[str, str]:
    return {"authorization": f"Bearer {TOKENS[caller]}"}


@pytest.fixture(scope="module")
def server(small_bento, tmp_path_factory):
    root = tmp_path_factory.mktemp("feedback")
    log_dir = root / "logs"
    flags = ["--log-predictions", "on", "--log-dir", str(log_dir), "--max-body-mb", "1"]
    flags += ["--feedback-tokens", str(_tokens(root / "tokens"))]
    with served(small_bento, root / "home", *flags) as base:
        yield base, log_dir


def feedback_rejected(base: str) -> dict[str, float]:
    """automl_feedback_rejected_total by reason, read from /metrics."""
    return rejected(base, "automl_feedback_rejected_total")


def _predict(base: str, records: list[dict], caller: str | None = None) -> list[dict]:
    headers = _auth(caller) if caller else {}
    r = httpx.post(f"{base}/predict", json={"records": records}, headers=headers, timeout=30)
    assert r.status_code == 200, r.text[:300]
    return r.json()


def _label(base: str, labels: list[dict], caller: str) -> httpx.Response:
    return httpx.post(
        f"{base}/feedback", json={"labels": labels}, headers=_auth(caller), timeout=30
    )


def _raw_post(base: str, path: str, headers: list[bytes], body: bytes):
    """POST with header lines sent byte for byte (an HTTP client library refuses some of
    them); returns (the answer as an httpx.Response, seconds)."""
    host, port = base.removeprefix("http://").split(":")
    head = [b"POST %s HTTP/1.1" % path.encode(), b"Host: " + host.encode(), *headers]
    head += [b"Content-Type: application/json", b"Content-Length: %d" % len(body)]
    head.append(b"Connection: close")
    start_s = time.perf_counter()
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"\r\n".join(head) + b"\r\n\r\n" + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    elapsed = time.perf_counter() - start_s
    raw_head, _, content = data.partition(b"\r\n\r\n")
    status_line, *lines = raw_head.split(b"\r\n")
    fields = [tuple(v.strip() for v in line.split(b":", 1)) for line in lines]
    response = httpx.Response(int(status_line.split()[1]), headers=fields, content=content)
    return response, elapsed


TOKEN = TOKENS["crm"].encode()
UNAUTHORIZED = [
    ("no header", [], "send a feedback token"),
    ("a wrong token", [b"Authorization: Bearer " + b"9" * 44], "not a feedback token"),
    ("another scheme", [b"Authorization: Basic " + TOKEN], "Bearer"),
    ("no token", [b"Authorization: Bearer"], "Bearer"),
    ("UTF-8 bytes", [b"Authorization: Bearer " + "crm-\u00e4\u00f6".encode() + b"7" * 40], "ASCII"),
    ("latin-1 bytes", [b"Authorization: Bearer \xff\xfe\xfd" + b"7" * 40], "ASCII"),
    ("a control byte", [b"Authorization: Bearer crm-\x01" + b"7" * 40], "ASCII"),
    ("a tab", [b"Authorization: Bearer\t" + TOKEN], "Bearer"),
    ("two headers", [b"Authorization: Bearer " + TOKEN] * 2, "exactly one"),
    ("a near miss", [b"Authorization: Bearer " + TOKEN[:-1] + b"8"], "not a feedback token"),
    ("a huge token", [b"Authorization: Bearer " + b"7" * 60_000], "not a feedback token"),
]


def test_labels_without_a_valid_token_get_401_in_the_error_format(server):
    base, _ = server
    answers = _predict(base, good_records(1), "crm")
    body = b'{"labels": [{"id": "%s", "label": "yes"}]}' % answers[0]["id"].encode()
    before, predict_before = feedback_rejected(base), rejected(base)
    for name, headers, words in UNAUTHORIZED:
        r, elapsed = _raw_post(base, "/feedback", headers, body)
        error = assert_refused(r, elapsed, 401)
        assert error["reason"] == "unauthorized" and words in error["problem"], (name, error)
        assert r.headers["www-authenticate"].startswith("Bearer"), name
    after = feedback_rejected(base)
    assert after["unauthorized"] - before.get("unauthorized", 0) == len(UNAUTHORIZED)
    assert rejected(base) == predict_before  # /predict's count is not moved by /feedback
    # nothing was labelled: the owner can still label its prediction
    assert _label(base, [{"id": answers[0]["id"], "label": "yes"}], "crm").json()["matched"] == 1
    assert_ready(base)


def test_server_ids_are_random_and_share_no_prefix(server):
    base, _ = server
    ids = [a["id"] for _ in range(4) for a in _predict(base, good_records(50))]
    assert len(set(ids)) == 200
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids), ids[:3]
    assert len({i[:8] for i in ids}) > 150  # no per-worker prefix and counter to guess from


def test_one_caller_can_neither_label_nor_claim_another_callers_ids(server):
    base, log_dir = server
    rows = good_records(4)
    # shop sends crm's customer id first, with other features: the id is not claimed
    shop = _predict(base, [{**rows[0], "id": "cust-9"}], "shop")
    crm = _predict(base, [{**rows[1], "id": "cust-9"}, {**rows[2], "id": "cust-10"}], "crm")
    assert [a["id"] for a in crm] == ["cust-9", "cust-10"] and shop[0]["id"] == "cust-9"
    # shop guesses crm's ids (its own and neighbours of a server-made one): none is joined
    made = _predict(base, [rows[3]], "crm")[0]["id"]
    guesses = [f"{made[:-1]}{d}" for d in "0123456789abcdef" if d != made[-1]]
    r = _label(base, [{"id": i, "label": "no"} for i in ["cust-10", *guesses]], "shop")
    error = assert_refused(r, 0.0, 422)
    assert error["reason"] == "no_label_joined"
    assert r.json()["unknown_id"] == 1 + len(guesses)
    # each caller labels its own cust-9; crm's labels are its own, none a duplicate
    assert _label(base, [{"id": "cust-9", "label": "no"}], "shop").json()["matched"] == 1
    mine = [{"id": "cust-9", "label": "yes"}, {"id": "cust-10", "label": "no"}]
    mine.append({"id": made, "label": "yes"})
    assert _label(base, mine, "crm").json()["matched"] == 3
    # an anonymous prediction's own id is labelled by no caller
    anonymous = _predict(base, [{**rows[0], "id": "anon-1"}])
    assert _label(base, [{"id": anonymous[0]["id"], "label": "no"}], "crm").status_code == 422
    labels = read_labels(log_dir)
    assert labels[("shop", "cust-9")][0] == "no" and labels[("crm", "cust-9")][0] == "yes"
    assert ("crm", "anon-1") not in labels and ("", "anon-1") not in labels


HOSTILE = [
    # (what, content type, body, status, reason counted)
    ("deep nesting", "application/json",
     b'{"labels": [' + b"[" * 100_000 + b"]" * 100_000 + b"]}", 400, "bad_json"),
    ("deep inside a label", "application/json",
     b'{"labels": [{"id": "a", "label": ' + b"[" * 5_000 + b"]" * 5_000 + b"}]}", 400, "bad_json"),
    ("a repeated key", "application/json", b'{"labels": [], "labels": [{"id": "a"}]}', 400,
     "bad_json"),
    ("NaN", "application/json", b'{"labels": [{"id": "a", "label": NaN}]}', 400, "bad_json"),
    ("not UTF-8", "application/json", b'{"labels": [{"id": "\xff", "label": "no"}]}', 400,
     "bad_json"),
    ("over the body limit", "application/json",
     b'{"labels": [{"id": "a", "label": "' + b"x" * (1024 * 1024) + b'"}]}', 413, "too_large"),
    ("pickle", "application/x-python-pickle", b"\x80\x04K\x01.", 415, "unsupported_media_type"),
]  # fmt: skip


def test_hostile_bodies_are_refused_fast_and_counted_apart_from_predict(server):
    base, _ = server
    before, predict_before = feedback_rejected(base), rejected(base)
    with httpx.Client(timeout=30) as client:
        for what, ctype, content, status, _ in HOSTILE:
            r, elapsed = timed_post(
                client,
                f"{base}/feedback",
                content=content,
                headers={"content-type": ctype, **_auth("crm")},
            )
            assert_refused(r, elapsed, status)
            assert len(r.content) < 4096, what  # the answer never echoes the body
    after = feedback_rejected(base)
    for reason in {h[4] for h in HOSTILE}:
        expected = sum(1 for h in HOSTILE if h[4] == reason)
        assert after[reason] - before.get(reason, 0) == expected, reason
    assert rejected(base) == predict_before
    assert_ready(base)


def test_a_caller_flooding_labels_is_slowed_alone(server):
    """Labels cost the store a write each: past its burst (one full request) a caller gets
    429 with Retry-After, counted; another caller is not held up."""
    base, _ = server
    before = feedback_rejected(base).get("rate_limited", 0)
    full = [{"id": f"nobody-{i}", "label": "No"} for i in range(10_000)]
    first = _label(base, full, "bulk")
    assert first.status_code == 422, first.text[:300]  # spent: unknown ids, but spent
    flood = _label(base, full, "bulk")
    assert flood.status_code == 429, flood.text[:300]
    error = flood.json()["error"]
    assert error["reason"] == "rate_limited" and "'bulk'" in error["problem"]
    assert 1 <= int(flood.headers["retry-after"]) <= 10
    assert _label(base, full[:5], "shop").status_code == 422  # its own bucket
    assert feedback_rejected(base)["rate_limited"] - before == 1
    assert_ready(base)


def test_huge_label_values_are_refused_per_item_and_kept_short(server):
    base, _ = server
    answer = _predict(base, good_records(1), "crm")[0]
    items = [
        {"id": answer["id"], "label": "y" * 900_000},  # a label of 900 kB
        {"id": answer["id"], "label": int("9" * 4000)},  # an integer beyond any float
        {"id": answer["id"], "label": 1e308},
        {"id": answer["id"], "label": {"nested": [[["no"]]]}},
        {"id": "x" * 10_000, "label": "no"},
    ]
    r, elapsed = timed_post(
        httpx.Client(timeout=30), f"{base}/feedback", json={"labels": items}, headers=_auth("crm")
    )
    error = assert_refused(r, elapsed, 422)
    assert "wrong_type" in error["problem"]
    assert [i["status"] for i in r.json()["results"]] == ["wrong_type"] * 4 + ["bad_id"]
    assert len(r.content) < 4096  # a problem quotes a value cut short
    assert _label(base, [{"id": answer["id"], "label": "yes"}], "crm").json()["matched"] == 1
    assert_ready(base)


def test_formulas_sent_by_anonymous_callers_are_neutralised_in_the_exported_csv(server, tmp_path):
    base, log_dir = server
    hostile = ["=cmd|' /C calc'!A0", '+HYPERLINK("http://x")', "@SUM(A1)", "-1+2"]
    records = [{**r, "colour": v} for r, v in zip(good_records(4), hostile, strict=True)]
    answers = _predict(base, records)  # no token: anyone may call /predict
    labels = [{"id": a["id"], "label": "no"} for a in answers]
    assert _label(base, labels, "shop").json()["matched"] == 4  # server-made ids: OPEN
    out = tmp_path / "fresh.csv"
    done = subprocess.run(
        [*CLI, "export-feedback", "--log-dir", str(log_dir), "--output", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    table = pd.read_csv(out, keep_default_na=False, dtype=str)
    assert {"'" + v for v in hostile} <= set(table["colour"])
    for column in table.columns:
        for cell in table[column]:
            number = re.fullmatch(r"[+-]?\d+(\.\d*)?([eE][+-]?\d+)?", cell)
            assert number or not cell.startswith(("=", "+", "-", "@", "\t", "\r")), cell


def _kill_tree(pid: int) -> None:
    """SIGKILL a server and its workers (BentoML starts them in sessions of their own)."""
    tree = psutil.Process(pid)
    everyone = [tree, *tree.children(recursive=True)]
    for p in everyone:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(signal.SIGKILL)
    psutil.wait_procs(everyone, timeout=30)


def _store_is_whole(log_dir: Path) -> None:
    db = sqlite3.connect(f"file:{log_dir / 'feedback.db'}?mode=ro", uri=True)
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        db.close()


def test_sigkill_while_labelling_loses_no_acknowledged_label(small_bento, tmp_path):
    log_dir, home = tmp_path / "logs", tmp_path / "home"
    port = free_port()
    cmd = [*CLI, "serve", "--model", str(small_bento), "--port", str(port), "--log-dir"]
    cmd += [str(log_dir), "--log-predictions", "on", "--feedback-tokens"]
    cmd += [str(_tokens(tmp_path / "tokens"))]
    env = {"BENTOML_HOME": str(home)}
    base = f"http://127.0.0.1:{port}"
    proc = start(cmd, env=env)
    acknowledged: dict[str, str] = {}
    try:
        wait_ready(f"{base}/readyz", proc)
        ids = [a["id"] for _ in range(20) for a in _predict(base, good_records(50), "crm")]
        stop_sending = threading.Event()

        def send_labels():
            with httpx.Client(timeout=10) as client:
                for n in range(0, len(ids), 5):
                    if stop_sending.is_set():
                        return
                    batch = [{"id": i, "label": "yes" if n % 2 else "no"} for i in ids[n : n + 5]]
                    try:
                        r = client.post(
                            f"{base}/feedback", json={"labels": batch}, headers=_auth("crm")
                        )
                    except httpx.TransportError:
                        return  # the server is gone
                    if r.status_code == 200 and r.json()["matched"] == len(batch):
                        acknowledged.update({b["id"]: b["label"] for b in batch})

        sender = threading.Thread(target=send_labels)
        sender.start()
        deadline = time.monotonic() + 30
        while len(acknowledged) < 200 and time.monotonic() < deadline:
            time.sleep(0.01)
        _kill_tree(proc.pid)  # the node kills the pod: no shutdown hooks run
        proc.wait(timeout=30)
        stop_sending.set()
        sender.join(timeout=30)
    finally:
        if proc.poll() is None:
            stop(proc)
    assert 200 <= len(acknowledged) < len(ids), "the kill must land while labels arrive"
    dead = {p.name for p in log_dir.glob("predictions-*.active.jsonl")}
    assert dead, "the killed worker's active log file is left behind"
    _store_is_whole(log_dir)
    labels = read_labels(log_dir)
    assert {i: labels[("crm", i)][0] for i in acknowledged} == acknowledged

    with served(small_bento, home, "--log-predictions", "on", "--log-dir", str(log_dir),
                "--feedback-tokens", str(tmp_path / "tokens")) as again:  # fmt: skip
        # the dead worker's file is closed and counted, cut after its last whole line
        assert not dead & {p.name for p in log_dir.glob("predictions-*.active.jsonl")}
        for name in dead:
            closed = log_dir / name.replace(".active.jsonl", ".jsonl")
            assert closed.read_bytes().endswith(b"\n")
        some = list(acknowledged)[:50]
        r = _label(again, [{"id": i, "label": acknowledged[i]} for i in some], "crm")
        assert r.status_code == 200 and r.json()["duplicate"] == 50  # still joined
    out = tmp_path / "fresh.parquet"
    export = subprocess.run(
        [*CLI, "export-feedback", "--log-dir", str(log_dir), "--output", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "BENTOML_HOME": str(home)},
    )
    assert export.returncode == 0, export.stderr
    exported = int(re.search(r"(\d+) labelled predictions", export.stdout).group(1))
    assert exported >= len(acknowledged)  # a label may commit just before its answer is lost
