"""The model registry in an object store: a real S3 endpoint (moto's server) on 127.0.0.1.

Every request goes over HTTP through botocore, as on a cluster against MinIO or S3: reads,
conditional writes refused with 412 and retried, listing, the CLI, bad input, and two
processes racing promotions.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from kfp_automl.errors import UserError
from kfp_automl.registry.registry import Registry
from tests.support.s3_server import conditionless_proxy, fresh_bucket, s3_env, s3_server
from tests.support.servers import CLI, free_port


@pytest.fixture(scope="module")
def endpoint():
    with s3_server() as url:
        yield url


@pytest.fixture
def s3(endpoint, monkeypatch, request):
    """A fresh bucket on the server, the AWS environment set: (bucket name, botocore client)."""
    return fresh_bucket(endpoint, monkeypatch, "reg-", request.node.name)


def _raw(client, bucket: str, key: str) -> tuple[dict, str]:
    obj = client.get_object(Bucket=bucket, Key=key)
    return json.loads(obj["Body"].read()), obj["ETag"]


def _keys(client, bucket: str) -> list[str]:
    return sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", []))


def _registry(root: str, versions=("v1", "v2", "v3"), **kw) -> Registry:
    reg = Registry(root, **kw)
    for v in versions:
        reg.register("m", v, {"metric": "roc_auc", "valid_score": 0.8})
    return reg


def test_register_promote_rollback_and_list_through_s3(s3):
    bucket, client = s3
    reg = _registry(f"s3://{bucket}/team/registry")
    reg.register("other", "v1", {"metric": "rmse"})
    assert reg.root == f"s3://{bucket}/team/registry"
    assert reg.names() == ["m", "other"]
    assert reg.champion("m") is None
    reg.promote("m", "v1")
    reg.promote("m", "v2", reason="better")
    stages = {v["version"]: v["stage"] for v in reg.versions("m")}
    assert stages == {"v1": "archived", "v2": "champion", "v3": "challenger"}
    assert reg.rollback("m")["version"] == "v1"
    # one JSON document per name under the prefix, and the object the store was tested with
    assert _keys(client, bucket) == [
        "team/registry/.kfp-automl-write-check",
        "team/registry/m.json",
        "team/registry/other.json",
    ]
    state, _ = _raw(client, bucket, "team/registry/m.json")
    assert state["champion"] == "v1"
    assert [e["event"] for e in state["events"]][-3:] == ["promote", "promote", "rollback"]
    # a fresh reader (another pod) sees the same, also through KFP's minio:// name
    again = Registry(f"minio://{bucket}/team/registry/")
    assert again.champion("m")["version"] == "v1"
    assert again.names() == ["m", "other"]
    # a bucket root (no prefix) and a prefix that holds nothing
    assert Registry(f"s3://{bucket}/elsewhere").names() == []
    Registry(f"s3://{bucket}").register("top", "v1", {})
    assert Registry(f"s3://{bucket}").names() == ["top"]


def test_a_refused_change_writes_nothing(s3):
    bucket, client = s3
    reg = _registry(f"s3://{bucket}/r")
    reg.promote("m", "v1")
    before = _raw(client, bucket, "r/m.json")
    with pytest.raises(UserError, match="no version 'v9'"):
        reg.promote("m", "v9")
    with pytest.raises(UserError, match="first champion"):
        reg.rollback("m")
    assert _raw(client, bucket, "r/m.json") == before  # same document, same ETag


def test_a_conflicting_write_is_retried_on_the_fresh_document(s3):
    """Another writer changes the document between our read and our write: the store refuses
    our write (412), the change is made again on what the other wrote, nothing is lost."""
    bucket, client = s3
    root = f"s3://{bucket}/r"
    ours, theirs = Registry(root), Registry(root)
    calls = []

    def change(state):
        calls.append(len(state["versions"]))
        if len(calls) <= 2:  # meanwhile, someone else registers a version (the first creates)
            theirs.register("m", f"theirs{len(calls)}", {})
        state["versions"]["ours"] = {"registered_at": "2026-01-01T00:00:00Z"}
        return len(calls)

    assert ours.backend.update("m", change) == 3
    assert calls == [0, 1, 2]  # each retry started from the other writer's latest document
    assert ours.backend.conflicts == 2
    assert set(Registry(root).backend.read("m")["versions"]) == {"theirs1", "theirs2", "ours"}


def test_gives_up_after_a_bounded_number_of_attempts(s3):
    bucket, client = s3
    root = f"s3://{bucket}/r"
    ours, theirs = _registry(root, attempts=3), Registry(root)

    def change(state):
        theirs.register("m", f"t{len(state['versions'])}", {})  # always one step ahead
        state["champion"] = "v1"

    started = time.monotonic()
    with pytest.raises(UserError, match="changed by others 3 times in a row") as err:
        ours.backend.update("m", change)
    assert "\n" not in str(err.value)
    assert time.monotonic() - started < 10
    state, _ = _raw(client, bucket, "r/m.json")
    assert state["champion"] is None and len(state["versions"]) == 6  # theirs all kept, ours none


@pytest.mark.slow  # several CLI processes
def test_cli_lists_and_promotes_from_s3(s3, endpoint):
    bucket, _ = s3
    root = f"s3://{bucket}/cli"
    _registry(root)
    env = {**os.environ, **s3_env(endpoint)}

    def cli(*args):
        return subprocess.run([*CLI, *args], capture_output=True, text=True, env=env, timeout=120)

    out = cli("promote", "m:v2", "--registry", root)
    assert out.returncode == 0, out.stderr
    assert "m:v2 is the champion (before: none)" in out.stdout
    out = cli("models", "--registry", root)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "m"
    stages = {line.split()[0]: line.split()[1] for line in lines[1:]}
    assert stages == {"v1": "challenger", "v2": "champion", "v3": "challenger"}
    out = cli("models", "--registry", f"s3://{bucket}/empty")
    assert f"no models registered yet in s3://{bucket}/empty" in out.stdout
    out = cli("promote", "m:v1", "--registry", "s3://no-such-bucket/cli")
    assert out.returncode == 2
    assert (
        out.stderr
        == "error: registry s3://no-such-bucket/cli: bucket 'no-such-bucket' does not exist\n"
    )


@pytest.mark.parametrize(
    "root, env, message",
    [
        ("s3://no-such-bucket/r", {}, "bucket 'no-such-bucket' does not exist"),
        (
            "s3://{bucket}/r",
            {"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None},
            "no object-store credentials; set AWS_ACCESS_KEY_ID",
        ),
        (
            "minio://{bucket}/r",
            {"AWS_ENDPOINT_URL": None},
            "a minio:// registry needs the MinIO endpoint in AWS_ENDPOINT_URL",
        ),
        ("s3://key:secret@{bucket}/r", {}, "never in the URL"),
        ("ftp://{bucket}/r", {}, "ftp:// is not supported"),
        ("s3:///r", {}, "names no bucket"),
        pytest.param(
            "s3://{bucket}/r",
            {"AWS_ENDPOINT_URL": "http://127.0.0.1:{port}"},
            "cannot reach the object store",
            marks=pytest.mark.slow,  # botocore tries three times
        ),
    ],
    ids=[
        "no-bucket",
        "no-credentials",
        "minio-no-endpoint",
        "password",
        "scheme",
        "no-name",
        "unreachable",
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(s3, monkeypatch, root, env, message):
    bucket, client = s3
    for key, value in env.items():
        if value is None:
            monkeypatch.delenv(key)
        else:
            monkeypatch.setenv(key, value.format(port=free_port()))
    with pytest.raises(UserError, match=message) as err:
        _registry(root.format(bucket=bucket))
    assert "\n" not in str(err.value)
    assert _keys(client, bucket) == []
    assert "no-such-bucket" not in {b["Name"] for b in client.list_buckets()["Buckets"]}


def test_the_s3_specific_endpoint_variable_and_listing_a_missing_bucket(s3, endpoint, monkeypatch):
    bucket, client = s3
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)  # botocore's per-service variable
    _registry(f"minio://{bucket}/r")
    assert Registry(f"s3://{bucket}/r").names() == ["m"]
    with pytest.raises(UserError, match="bucket 'no-such-bucket' does not exist"):
        Registry("s3://no-such-bucket/r").names()


def test_a_store_that_ignores_conditional_writes_is_refused(s3, endpoint, monkeypatch):
    """Racing promotions would be lost there without a word: the first write finds out."""
    bucket, client = s3
    with conditionless_proxy(endpoint) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy)
        reg = Registry(f"s3://{bucket}/r")
        assert reg.names() == []  # reading works
        with pytest.raises(UserError, match="the object store ignores conditional writes"):
            reg.register("m", "v1", {})
    assert "r/m.json" not in _keys(client, bucket)


def test_a_document_that_is_not_the_registrys_is_refused(s3):
    bucket, client = s3
    client.put_object(Bucket=bucket, Key="r/m.json", Body=b"<html>")
    with pytest.raises(UserError, match=r"r/m.json is not a registry document \(not JSON\)"):
        Registry(f"s3://{bucket}/r").register("m", "v1", {})
    assert client.get_object(Bucket=bucket, Key="r/m.json")["Body"].read() == b"<html>"


def _promote_many(root: str, versions: list[str], conflicts, start) -> None:
    reg = Registry(root)
    import bentoml  # noqa: F401  (imported by the first promotion otherwise: a 2 s head start)

    start.wait(60)  # both processes are ready: the promotions overlap
    for v in versions:
        reg.promote("m", v)
    conflicts.put(reg.backend.conflicts)


def _check_chain(state: dict) -> int:
    """Exactly one champion, named by the last promotion; every promotion names the one before."""
    promotions = [e for e in state["events"] if e["event"] == "promote"]
    for before, after in zip(promotions, promotions[1:], strict=False):
        assert after["from"] == before["version"]
    if promotions:
        assert state["champion"] == promotions[-1]["version"]
        assert state["versions"][state["champion"]]["was_champion"] is True
    return len(promotions)


@pytest.mark.slow
def test_racing_promotions_through_s3_leave_exactly_one_champion(s3):
    """Two processes, 50 promotions each, against one document: none lost, and every state a
    third reader observed meanwhile had exactly one champion and an unbroken chain."""
    bucket, client = s3
    root = f"s3://{bucket}/race"
    versions = [f"v{i}" for i in range(20)]
    _registry(root, versions)
    ctx = multiprocessing.get_context("spawn")
    conflicts, start = ctx.Queue(), ctx.Barrier(2)
    procs = [
        ctx.Process(target=_promote_many, args=(root, versions[i::2] * 5, conflicts, start))
        for i in range(2)
    ]
    observed, stop = [], threading.Event()

    def observe():
        while not stop.is_set():
            state, etag = _raw(client, bucket, "race/m.json")
            if not observed or observed[-1][0] != etag:
                observed.append((etag, _check_chain(state)))
            time.sleep(0.01)

    watcher = threading.Thread(target=observe)
    started = time.monotonic()
    watcher.start()
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
    stop.set()
    watcher.join(30)
    elapsed = time.monotonic() - started
    assert [p.exitcode for p in procs] == [0, 0]
    state, _ = _raw(client, bucket, "race/m.json")
    assert _check_chain(state) == 100  # no promotion lost to the race
    champions = [v for v in Registry(root).versions("m") if v["stage"] == "champion"]
    assert len(champions) == 1 and champions[0]["version"] == state["champion"]
    counts = [n for _, n in observed]
    assert len(observed) > 5 and counts == sorted(counts)  # states seen mid-race, in order
    refused = conflicts.get(timeout=10) + conflicts.get(timeout=10)
    print(f"100 racing promotions in {elapsed:.1f} s, {refused} writes refused and retried")


def _run(args: list[str], env: dict, out) -> dict:
    proc = subprocess.run(
        [*CLI, "run", *args, "--output", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return json.loads((out / "summary.json").read_text())


_LOAD = """
import sys
from kfp_automl.registry.store import load_registered_model
entry = {"version": sys.argv[2], "bento_uri": sys.argv[3], "bento_sha256": sys.argv[4]}
model, schema, meta = load_registered_model(sys.argv[1], entry)
print(meta["sha256"], schema.target)
"""


@pytest.mark.slow
def test_pipeline_registers_gates_and_promotes_through_s3(s3, endpoint, small_churn_csv, tmp_path):
    """`kfp-automl run` (kfp.local) with the registry in the object store: the package step
    registers the model there, the gate reads the champion there, promote writes it. A fresh
    BentoML store (as a new pod would have) loads the champion from its archive in the store
    (a second gated run is test_pipeline_local's, with a folder registry)."""
    bucket, client = s3
    root = f"minio://{bucket}/kfp-automl-registry"  # KFP's scheme; endpoint from AWS_ENDPOINT_URL
    env = {**os.environ, **s3_env(endpoint), "KFP_AUTOML_REGISTRY": root}
    args = ["--data", str(small_churn_csv), "--target", "churn", "--families", "linear"]
    args += ["--max-trials", "2", "--time-budget", "20", "--model-name", "churn-s3"]
    first = _run(args, env, tmp_path / "first")
    v1 = first["model_tag"].split(":")[1]
    assert first["deploy"] is True and "no champion" in first["gate_reason"]
    state, _ = _raw(client, bucket, "kfp-automl-registry/churn-s3.json")
    assert state["champion"] == v1
    assert [e["event"] for e in state["events"]] == ["register", "promote"]
    assert state["versions"][v1]["bento_tag"] == first["bento_tag"]
    assert Path(state["versions"][v1]["bento_uri"]).is_file()  # the artifact under the root
    out = subprocess.run(
        [*CLI, "models", "--registry", root], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == "churn-s3"
    assert out.stdout.splitlines()[1].split()[:2] == [v1, "champion"]

    # a pod with an empty BentoML store loads the champion from its archive in the store
    archive = Path(state["versions"][v1]["bento_uri"])
    client.put_object(Bucket=bucket, Key="artifacts/v1.bento", Body=archive.read_bytes())
    fresh = {**env, "BENTOML_HOME": str(tmp_path / "bentoml-a")}
    digest = state["versions"][v1]["bento_sha256"]  # the package step recorded it
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            _LOAD,
            "churn-s3",
            v1,
            f"minio://{bucket}/artifacts/v1.bento",
            digest,
        ],
        capture_output=True,
        text=True,
        env=fresh,
        timeout=120,
    )
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    import bentoml  # run 1 used this test process's store

    sha = bentoml.models.get(first["model_tag"]).info.metadata["sha256"]
    assert loaded.stdout.split() == [sha, "churn"]
    missing = subprocess.run(
        [
            sys.executable,
            "-c",
            _LOAD,
            "churn-s3",
            v1,
            f"s3://{bucket}/artifacts/none.bento",
            digest,
        ],
        capture_output=True,
        text=True,
        env={**env, "BENTOML_HOME": str(tmp_path / "bentoml-b")},
        timeout=120,
    )
    assert missing.returncode != 0
    assert f"cannot fetch model churn-s3:{v1} from s3://{bucket}/artifacts/none.bento" in (
        missing.stderr
    )


def test_read_table_from_kfp_minio_url(s3):
    """Data in KFP's MinIO store (`minio://`) reads like s3:// at AWS_ENDPOINT_URL."""
    from kfp_automl.tables.io import fsspec_url, read_table

    bucket, client = s3
    csv = b"age,plan,churn\n31,basic,no\n45,premium,yes\n"
    client.put_object(Bucket=bucket, Key="data/churn.csv", Body=csv)
    assert fsspec_url(f"minio://{bucket}/data/churn.csv") == f"s3://{bucket}/data/churn.csv"
    assert fsspec_url("/tmp/minio://x") == "/tmp/minio://x"
    df = read_table(f"minio://{bucket}/data/churn.csv")
    assert df.to_dict("list") == {"age": [31, 45], "plan": ["basic", "premium"],
                                  "churn": ["no", "yes"]}  # fmt: skip


def test_the_gate_reads_a_champions_training_rows_from_the_store(s3, tmp_path):
    """On a cluster the hashes live beside the model artifact under the pipeline root
    (minio://): read through the same store, digest-checked; a deleted file is a note."""
    import numpy as np

    from kfp_automl.components.gate.gate import champion_rows
    from kfp_automl.registry import training_rows

    bucket, client = s3
    keys = np.array([3, 7, 11], dtype=np.uint64)
    digest = training_rows.write(keys, tmp_path)
    key = "v2/artifacts/run/tune-models/model/training_rows.npy"
    client.put_object(
        Bucket=bucket, Key=key, Body=(tmp_path / training_rows.ROWS_FILE).read_bytes()
    )
    entry = {"training_rows_uri": f"minio://{bucket}/{key}", "training_rows_sha256": digest}
    rows, note = champion_rows(entry)
    np.testing.assert_array_equal(rows, keys)
    assert note == ""
    client.delete_object(Bucket=bucket, Key=key)
    rows, note = champion_rows(entry)
    assert rows is None and "gone" in note
