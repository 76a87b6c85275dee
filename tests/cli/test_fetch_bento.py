"""`kfp-automl fetch-bento`: copies an archive atomically and refuses bad input in one line.

The archives here are small tar files with a bento.yaml, fetched with their digest (--sha256);
tests/integration/test_fetch_bento.py fetches a real Bento and serves it, and
tests/adversarial/test_archives.py sends hostile archives.
"""

from __future__ import annotations

import hashlib
import io
import sys
import tarfile
from pathlib import Path

import pytest

from kfp_automl.bentos.fetch import display_url
from kfp_automl.cli.main import main


def _archive(path: Path, name: str = "automl-churn", version: str = "abc123") -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for member, data in (
            ("bento.yaml", f"name: {name}\nversion: {version}\n".encode()),
            ("src/service.py", b"# service\n"),
        ):
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest() if Path(path).is_file() else "0" * 64


def test_copies_a_local_archive(tmp_path, capsys):
    src = _archive(tmp_path / "m.bento")
    dest = tmp_path / "pod" / "bento" / "model.bento"
    argv = ["fetch-bento", "--url", str(src), "--dest", str(dest), "--sha256", _sha256(src)]
    assert main(argv) == 0
    assert dest.read_bytes() == src.read_bytes()
    assert "fetched Bento automl-churn:abc123" in capsys.readouterr().out
    assert [p.name for p in dest.parent.iterdir()] == ["model.bento"]  # no temp file left


def test_copies_a_file_url_and_replaces_an_older_archive(tmp_path):
    dest = _archive(tmp_path / "model.bento", version="old")
    src = _archive(tmp_path / "new.bento", version="new")
    argv = ["fetch-bento", "--url", src.as_uri(), "--dest", str(dest)]
    assert main([*argv, "--sha256", _sha256(src)]) == 0
    assert dest.read_bytes() == src.read_bytes()


def _not_a_tar(tmp_path):
    p = tmp_path / "x.bento"
    p.write_bytes(b"not a tar file")
    return str(p)


def _no_bento_yaml(tmp_path):
    p = tmp_path / "x.bento"
    with tarfile.open(p, "w") as tar:
        info = tarfile.TarInfo("README")
        tar.addfile(info, io.BytesIO(b""))
    return str(p)


BAD = {
    "empty url": (lambda t: "", "--url is empty"),
    "unexpanded variable": (lambda t: "$(BENTO_URL)", "was not expanded"),
    "missing file": (lambda t: str(t / "nope.bento"), "no Bento archive at"),
    "directory": (lambda t: str(t), "is a directory"),
    "unknown scheme": (lambda t: "zzz://bucket/x.bento", "not a supported URL"),
    "not a tar file": (_not_a_tar, "is not a Bento archive (not a readable tar file)"),
    "no bento.yaml": (_no_bento_yaml, "is not a Bento archive (no valid bento.yaml inside)"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, case):
    make_url, expected = BAD[case]
    src_dir = tmp_path / "src"
    src_dir.mkdir()
    url = make_url(src_dir)
    dest = tmp_path / "pod" / "model.bento"
    argv = ["fetch-bento", "--url", url, "--dest", str(dest), "--sha256", _sha256(url)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err and err.count("\n") == 1, err
    assert "Traceback" not in err
    assert not dest.exists()
    assert not dest.parent.exists() or list(dest.parent.iterdir()) == []
    if case.startswith("not a") or case.startswith("no bento"):
        assert ".tmp" not in err  # the message names the URL, not the temp file


def test_a_failed_fetch_keeps_the_previous_archive(tmp_path):
    dest = _archive(tmp_path / "model.bento")
    before = dest.read_bytes()
    url = _not_a_tar(tmp_path)
    assert main(["fetch-bento", "--url", url, "--dest", str(dest), "--sha256", _sha256(url)]) == 2
    assert dest.read_bytes() == before


def test_object_store_without_its_package_says_what_to_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "s3fs", None)  # as if s3fs were not installed
    argv = ["fetch-bento", "--url", "s3://b/m.bento", "--dest", str(tmp_path / "m.bento")]
    code = main([*argv, "--sha256", "0" * 64])
    assert code == 2
    assert "install s3fs (pip install 'kfp-automl[storage]')" in capsys.readouterr().err


def test_messages_hide_credentials_and_signatures():
    assert display_url("https://u:secret@h:9000/b/m.bento?X-Amz-Signature=abc") == (
        "https://h:9000/b/m.bento"
    )
    assert display_url("/bento/model.bento") == "/bento/model.bento"
