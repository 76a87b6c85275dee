"""Versions and search state in an object store: a real S3 endpoint (moto's server) on 127.0.0.1,
reached as KFP's MinIO (minio://, endpoint from AWS_ENDPOINT_URL) and as s3://."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.s3_server import fresh_bucket, s3_server


@pytest.fixture(scope="module")
def endpoint():
    with s3_server() as url:
        yield url


@pytest.fixture
def bucket(endpoint, monkeypatch, request):
    return fresh_bucket(endpoint, monkeypatch, "v-", request.node.name)


@pytest.mark.parametrize("scheme", ["s3", "minio"])
def test_data_version_follows_the_object_not_the_url(bucket, scheme):
    from kfp_automl.tables.io import data_version

    name, client = bucket
    client.put_object(Bucket=name, Key="latest.csv", Body=b"a,y\n1,0\n2,1\n")
    url = f"{scheme}://{name}/latest.csv"
    first = data_version(url)
    assert first.startswith("etag:")
    assert data_version(url) == first  # asking twice changes nothing
    client.put_object(Bucket=name, Key="latest.csv", Body=b"a,y\n1,0\n2,1\n3,0\n")
    second = data_version(url)
    assert second != first  # new rows behind the same URL: a new version, a cache miss


def test_data_version_of_a_missing_object_is_a_user_error(bucket):
    from kfp_automl.errors import UserError
    from kfp_automl.tables.io import data_version

    name, _ = bucket
    with pytest.raises(UserError, match="not found"):
        data_version(f"minio://{name}/nothing-here.csv")


def test_the_search_files_mirror_survives_a_new_pod(bucket, tmp_path):
    """What one pod pushed beside Ray's state, a fresh pod (an empty folder) pulls back."""
    from kfp_automl.components.tune.search import _Mirror, state_filesystem

    name, client = bucket
    path, fs = state_filesystem(f"minio://{name}/root/run/tune-models/search-state")
    first = tmp_path / "pod-1"
    first.mkdir()
    mirror = _Mirror(fs, f"{path}/search-files", first)
    for file, data in (("t1.npy", b"one"), ("t2.npy", b"two"), (".search-started", b"12.5")):
        (first / file).write_bytes(data)
        mirror.push(first / file)
    mirror.remove(first / "t1.npy")
    listed = client.list_objects_v2(Bucket=name)["Contents"]
    keys = sorted(o["Key"] for o in listed if not o["Key"].endswith("/"))  # no folder markers
    assert keys == [
        "root/run/tune-models/search-state/search-files/.search-started",
        "root/run/tune-models/search-state/search-files/t2.npy",
    ]
    second = tmp_path / "pod-2"
    second.mkdir()
    _Mirror(fs, f"{path}/search-files", second).pull()
    assert sorted(p.name for p in Path(second).iterdir()) == [".search-started", "t2.npy"]
    assert (second / ".search-started").read_text() == "12.5"
