"""The model registry in Google Cloud Storage: fake-gcs-server on 127.0.0.1 through
google-cloud-storage, as on a cluster whose pipeline root is gs://."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import time

import pytest

from kfp_automl.errors import UserError
from kfp_automl.registry.registry import Registry
from tests.support.gcs_server import gcs_server
from tests.support.servers import CLI, free_port


@pytest.fixture(scope="module")
def emulator():
    with gcs_server(free_port()) as url:
        yield url


@pytest.fixture
def gcs(emulator, monkeypatch, request):
    """A fresh bucket, STORAGE_EMULATOR_HOST set: (bucket name, google.cloud.storage.Bucket)."""
    from google.cloud import storage

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", emulator)
    monkeypatch.delenv("KFP_AUTOML_REGISTRY", raising=False)
    name = "reg-" + request.node.name.replace("_", "-")[:40].lower().rstrip("-")
    return name, storage.Client().create_bucket(name)


def _raw(bucket, key: str) -> tuple[dict, int]:
    blob = bucket.blob(key)
    return json.loads(blob.download_as_bytes()), blob.generation


def _registry(root: str, versions=("v1", "v2", "v3"), **kw) -> Registry:
    reg = Registry(root, **kw)
    for v in versions:
        reg.register("m", v, {"metric": "roc_auc", "valid_score": 0.8})
    return reg


def test_register_promote_rollback_and_list_through_gcs(gcs, emulator):
    name, bucket = gcs
    root = f"gs://{name}/team/registry"
    reg = _registry(root)
    reg.register("other", "v1", {})
    reg.promote("m", "v1")
    reg.promote("m", "v3")
    assert reg.rollback("m")["version"] == "v1"
    assert sorted(b.name for b in bucket.list_blobs()) == [
        "team/registry/m.json",
        "team/registry/other.json",
    ]
    state, _ = _raw(bucket, "team/registry/m.json")
    assert state["champion"] == "v1"
    assert Registry(root).names() == ["m", "other"]
    out = subprocess.run(
        [*CLI, "models", "--name", "m", "--registry", root],
        capture_output=True,
        text=True,
        env={**os.environ, "STORAGE_EMULATOR_HOST": emulator},
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    stages = {line.split()[0]: line.split()[1] for line in out.stdout.splitlines()[1:]}
    assert stages == {"v1": "champion", "v2": "challenger", "v3": "archived"}


def test_a_conflicting_write_is_retried_on_the_fresh_document(gcs):
    name, bucket = gcs
    root = f"gs://{name}/r"
    ours, theirs = Registry(root), Registry(root)
    calls = []

    def change(state):
        calls.append(len(state["versions"]))
        if len(calls) <= 2:
            theirs.register("m", f"theirs{len(calls)}", {})
        state["versions"]["ours"] = {"registered_at": "2026-01-01T00:00:00Z"}

    ours.backend.update("m", change)
    assert calls == [0, 1, 2] and ours.backend.conflicts == 2
    assert set(_raw(bucket, "r/m.json")[0]["versions"]) == {"theirs1", "theirs2", "ours"}


def test_gives_up_after_a_bounded_number_of_attempts(gcs):
    name, bucket = gcs
    root = f"gs://{name}/r"
    ours, theirs = _registry(root, attempts=2), Registry(root)

    def change(state):
        theirs.register("m", f"t{len(state['versions'])}", {})
        state["champion"] = "v1"

    with pytest.raises(UserError, match="changed by others 2 times in a row"):
        ours.backend.update("m", change)
    state, _ = _raw(bucket, "r/m.json")
    assert state["champion"] is None and len(state["versions"]) == 5


def test_a_missing_bucket_is_a_one_line_error(gcs):
    with pytest.raises(UserError, match="bucket 'no-such-bucket' does not exist"):
        Registry("gs://no-such-bucket/r").promote("m", "v1")


@pytest.mark.slow
def test_an_unreachable_store_is_a_one_line_error(gcs, monkeypatch):
    from kfp_automl.registry import backends

    monkeypatch.setattr(backends, "GCS_RETRY_S", 2.0)  # the retries end sooner, not differently
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{free_port()}")
    started = time.monotonic()
    with pytest.raises(UserError, match="cannot reach the object store") as err:
        Registry(f"gs://{gcs[0]}/r").register("m", "v1", {})
    assert "\n" not in str(err.value) and time.monotonic() - started < 60


def _promote_many(root: str, emulator: str, versions: list[str], start, conflicts) -> None:
    os.environ["STORAGE_EMULATOR_HOST"] = emulator
    reg = Registry(root)
    import bentoml  # noqa: F401  (imported by the first promotion otherwise: a 2 s head start)

    start.wait(60)  # both processes are ready: the promotions overlap
    for v in versions:
        reg.promote("m", v)
    conflicts.put(reg.backend.conflicts)


@pytest.mark.slow
def test_racing_promotions_through_gcs_leave_exactly_one_champion(gcs, emulator):
    name, bucket = gcs
    root = f"gs://{name}/race"
    versions = [f"v{i}" for i in range(20)]
    _registry(root, versions)
    ctx = multiprocessing.get_context("spawn")
    start, conflicts = ctx.Barrier(2), ctx.Queue()
    procs = [
        ctx.Process(
            target=_promote_many, args=(root, emulator, versions[i::2] * 5, start, conflicts)
        )
        for i in range(2)
    ]
    started = time.monotonic()
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
    elapsed = time.monotonic() - started
    assert [p.exitcode for p in procs] == [0, 0]
    state, _ = _raw(bucket, "race/m.json")
    promotions = [e for e in state["events"] if e["event"] == "promote"]
    assert len(promotions) == 100
    for before, after in zip(promotions, promotions[1:], strict=False):
        assert after["from"] == before["version"]
    champions = [v for v in Registry(root).versions("m") if v["stage"] == "champion"]
    assert len(champions) == 1 and champions[0]["version"] == promotions[-1]["version"]
    refused = conflicts.get(timeout=10) + conflicts.get(timeout=10)
    print(f"100 racing promotions in {elapsed:.1f} s, {refused} writes refused and retried")
