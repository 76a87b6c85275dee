"""The model registry: stages, promotion, rollback, and promotions that race."""

from __future__ import annotations

import json
import multiprocessing

import pytest

from kfp_automl.errors import UserError
from kfp_automl.registry.registry import Registry


def _registry(tmp_path, versions=("v1", "v2", "v3")) -> Registry:
    reg = Registry(tmp_path / "reg")
    for v in versions:
        reg.register("m", v, {"metric": "roc_auc", "valid_score": 0.8})
    return reg


def test_new_versions_are_challengers_and_one_champion_at_a_time(tmp_path):
    reg = _registry(tmp_path)
    assert [v["stage"] for v in reg.versions("m")] == ["challenger"] * 3
    assert reg.champion("m") is None
    reg.promote("m", "v1")
    reg.promote("m", "v2", reason="better")
    stages = {v["version"]: v["stage"] for v in reg.versions("m")}
    assert stages == {"v1": "archived", "v2": "champion", "v3": "challenger"}
    assert reg.champion("m")["version"] == "v2"
    assert reg.events("m")[-1] == {
        **reg.events("m")[-1],
        "event": "promote",
        "from": "v1",
        "reason": "better",
    }


def test_rollback_returns_to_the_previous_champion(tmp_path):
    reg = _registry(tmp_path)
    reg.promote("m", "v1")
    reg.promote("m", "v2")
    reg.promote("m", "v3")
    assert reg.rollback("m")["version"] == "v2"
    assert reg.rollback("m")["version"] == "v1"
    with pytest.raises(UserError, match="first champion"):
        reg.rollback("m")


def test_rollback_after_a_repeated_promotion_returns_to_the_champion_it_replaced(tmp_path):
    """A promote step retried after its write landed promotes the champion again; rollback
    still goes back to the version before it, not to the champion itself."""
    reg = _registry(tmp_path)
    reg.promote("m", "v1")
    reg.promote("m", "v2")
    reg.promote("m", "v2")  # the retried step
    entry = reg.rollback("m")
    assert (entry["version"], entry["previous"]) == ("v1", "v2")
    assert reg.champion("m")["version"] == "v1"


def test_errors_name_the_problem(tmp_path):
    reg = _registry(tmp_path)
    with pytest.raises(UserError, match="no champion"):
        reg.rollback("m")
    with pytest.raises(UserError, match="no version 'v9'"):
        reg.promote("m", "v9")


def _promote_many(root: str, versions: list[str]) -> None:
    reg = Registry(root)
    for v in versions:
        reg.promote("m", v)


def test_racing_promotions_leave_exactly_one_champion(tmp_path):
    versions = [f"v{i}" for i in range(20)]
    reg = _registry(tmp_path, versions)
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_promote_many, args=(str(reg.root), versions[i::2] * 5))
        for i in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    state = json.loads((reg.root / "m.json").read_text())  # never half-written
    champions = [v for v in reg.versions("m") if v["stage"] == "champion"]
    assert len(champions) == 1 and champions[0]["version"] == state["champion"]
    promotions = [e for e in reg.events("m") if e["event"] == "promote"]
    assert len(promotions) == 100  # no update lost to the race
    # each promotion names the champion it replaced: the chain is unbroken
    for before, after in zip(promotions, promotions[1:], strict=False):
        assert after["from"] == before["version"]


# --- which registry a pipeline task uses ----------------------------------------------------


@pytest.mark.parametrize(
    ("registry_root", "artifact_uri", "namespace", "expected"),
    [
        # a cluster: every pod has its own disk; the registry is the namespace's, in the bucket
        # the backend put the task's artifacts in (whatever the pipeline root's prefix and run)
        (
            "",
            "minio://mlpipeline/v2/artifacts/kfp-automl-training/run-1/package-model/salt/bento",
            "team-a",
            "minio://mlpipeline/kfp-automl-registry/team-a",
        ),
        (
            "",
            "s3://team/pipelines/p/run-2/gate-model/decision",
            "",
            "s3://team/kfp-automl-registry",
        ),
        ("", "gs://team/root/p/r/t/bento", "ns", "gs://team/kfp-automl-registry/ns"),
        # kfp.local: one filesystem, the default beside the BentoML store
        ("", "/home/me/outputs/pipeline_root/p/package-model/bento", "ns", ""),
        ("", "file:///home/me/root/bento", "", ""),
        ("", "", "", ""),
        # an explicit root always wins
        (" s3://reg/models ", "minio://mlpipeline/v2/artifacts/x", "ns", "s3://reg/models"),
        ("/shared/registry", "", "", "/shared/registry"),
    ],
)
def test_run_root_shares_the_registry_on_a_cluster(
    monkeypatch, registry_root, artifact_uri, namespace, expected
):
    from kfp_automl.registry.registry import NAMESPACE_ENV, run_root

    monkeypatch.setenv(NAMESPACE_ENV, namespace)
    assert run_root(registry_root, artifact_uri) == expected


def test_two_runs_of_one_namespace_share_one_registry(monkeypatch):
    """Each run's artifacts live under its own run folder; the registry must not."""
    from kfp_automl.registry.registry import NAMESPACE_ENV, run_root

    monkeypatch.setenv(NAMESPACE_ENV, "team-a")
    first = run_root("", "minio://mlpipeline/v2/artifacts/p/run-1/package-model/a1/bento")
    second = run_root("", "minio://mlpipeline/v2/artifacts/p/run-2/gate-model/b2/decision")
    assert first == second
    monkeypatch.setenv(NAMESPACE_ENV, "team-b")
    assert run_root("", "minio://mlpipeline/v2/artifacts/p/run-3/package-model/c3/bento") != first


def test_describe_root_says_which_registry_and_why(monkeypatch, tmp_path):
    from kfp_automl.registry.registry import NAMESPACE_ENV, describe_root

    monkeypatch.setenv(NAMESPACE_ENV, "ns")
    monkeypatch.setenv("KFP_AUTOML_REGISTRY", str(tmp_path / "reg"))
    line = describe_root("", "minio://b/root/p/run/task/bento")
    assert line.startswith("registry minio://b/kfp-automl-registry/ns (shared by the namespace")
    assert describe_root("", "/local/root/bento") == (
        f"registry {tmp_path / 'reg'} ($KFP_AUTOML_REGISTRY: registry_root is empty)"
    )
    monkeypatch.delenv("KFP_AUTOML_REGISTRY")
    monkeypatch.setenv("BENTOML_HOME", str(tmp_path / "bento"))
    assert describe_root("", "/local/root/bento") == (
        f"registry {tmp_path / 'bento' / 'kfp-automl-registry'} "
        "(the local default: registry_root is empty)"
    )
    assert describe_root("s3://x/y", "minio://b") == "registry s3://x/y (registry_root)"


# ---- archives: kfp_automl/registry/archive.py (hostile ones: tests/adversarial/test_archives.py)


def _tiny_archive(path, mode="w:gz"):
    import io
    import tarfile

    data = b"name: m\nversion: v1\n"
    with tarfile.open(path, mode) as tar:
        info = tarfile.TarInfo("bento.yaml")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        folder = tarfile.TarInfo("src")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
    return path


@pytest.mark.parametrize(
    "mode, compression", [("w:gz", "gz"), ("w:xz", "xz"), ("w:bz2", "bz2"), ("w", "tar")]
)
def test_a_small_archive_passes_with_its_digest(tmp_path, mode, compression):
    import hashlib

    from kfp_automl.registry.archive import verify_archive

    path = _tiny_archive(tmp_path / "m.bento", mode)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    info = verify_archive(path, digest)
    assert (info.tag, info.sha256, info.members, info.compression) == (
        "m:v1",
        digest,
        2,
        compression,
    )
    with pytest.raises(UserError, match=f"has sha256 {digest}, but {'0' * 64} is recorded"):
        verify_archive(path, "0" * 64)


def test_the_unpacked_limit_follows_the_archive_size():
    from kfp_automl.registry.archive import Limits

    limits = Limits()
    assert limits.unpacked_limit(30_000) == 64_000_000  # the floor: a bomb of 200 MB is over it
    assert limits.unpacked_limit(10_000_000) == 1_000_000_000  # 100x
    assert limits.unpacked_limit(2_000_000_000) == 4_096_000_000  # the cap
    assert Limits(max_ratio=1000).unpacked_limit(1_000_000) == 1_000_000_000


@pytest.mark.parametrize(
    "url, ok",
    [
        ("/bento/model.bento", True),
        ("relative/model.bento", True),
        ("file:///bento/model.bento", True),
        ("s3://b/k.bento", True),
        ("minio://mlpipeline/k", True),
        ("gs://b/k", True),
        ("https://h/k.bento?X-Amz-Signature=s", True),
        ("http://127.0.0.1:8000/k.bento", True),
        ("ftp://h/k", False),
        ("memory://k", False),
        ("s3a://b/k", False),
        ("simplecache::s3://b/k", False),
        ("zip://bento.yaml::file:///m.zip", False),
        ("data:application/octet-stream;base64,AA", False),
    ],
)
def test_only_known_sources_are_read(url, ok):
    from kfp_automl.registry.archive import check_source

    if ok:
        check_source(url)
    else:
        with pytest.raises(UserError, match="is not a supported URL: use a path, file://"):
            check_source(url)


def test_a_download_stops_at_its_cap(tmp_path):
    import io

    from kfp_automl.registry.archive import copy_capped

    out = io.BytesIO()
    with pytest.raises(UserError, match="larger than the 1e-06 MB limit"):
        copy_capped(io.BytesIO(b"xy"), out, 1, "src")
    assert copy_capped(io.BytesIO(b"x"), io.BytesIO(), 1, "src")[0] == 1
