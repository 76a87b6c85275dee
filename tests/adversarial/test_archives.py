"""Hostile .bento archives against every place that takes one: `fetch-bento` (the serving pod's
init step), `serve`/`predict --model X.bento`, and the gate's import of the registry's champion.

Each hostile archive is the real small Bento with one member added (a `..` path, an absolute
path, a symbolic or hard link, a device, a FIFO, a second bento.yaml), or a decompression bomb
(30 KB of xz that unpacks to 200 MB), or too many members. Given the archive's true digest, so
that only the archive checks stand between it and the store, each is refused with one line
naming the member or the limit, exit 2, nothing written at the destination and nothing
imported into the BentoML store. A digest that differs from the one recorded outside the
archive (the flag, the registry) is refused before the archive is even opened.
"""

from __future__ import annotations

import hashlib
import io
import json
import lzma
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from kfp_automl.cli.main import main
from tests.support.servers import CLI

BOMB_BYTES = 200 * 1024 * 1024


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _members(archive: Path) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    with tarfile.open(archive) as tar:
        return [
            (m, tar.extractfile(m).read() if m.isfile() else None)  # type: ignore[union-attr]
            for m in tar.getmembers()
        ]


def _write(path: Path, members, extra=()) -> Path:
    """An xz tar (as BentoML exports) of `members` then `extra` ((TarInfo, bytes|None) pairs)."""
    with tarfile.open(path, "w:xz", preset=0) as tar:
        for info, data in [*members, *extra]:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _info(name: str, kind: bytes = tarfile.REGTYPE, size: int = 0, link: str = ""):
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname, info.mode = kind, size, link, 0o644
    return info


class _Zeros(io.RawIOBase):
    """`n` zero bytes, read without holding them."""

    def __init__(self, n: int):
        self.left = n

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        k = min(len(buffer), self.left)
        buffer[:k] = bytes(k)
        self.left -= k
        return k


def _bomb(path: Path, members) -> Path:
    """The Bento's bento.yaml plus 200 MB of zeros: about 30 KB of xz."""
    with lzma.open(path, "wb", preset=0) as xz, tarfile.open(fileobj=xz, mode="w") as tar:
        for info, data in members:
            if info.name.lstrip("./") == "bento.yaml":
                tar.addfile(info, io.BytesIO(data))
        tar.addfile(_info("models/zeros.bin", size=BOMB_BYTES), _Zeros(BOMB_BYTES))
    return path


@pytest.fixture(scope="module")
def hostile(small_bento, tmp_path_factory) -> dict[str, tuple[Path, str]]:
    """case -> (archive, a phrase the one-line refusal must contain)."""
    root = tmp_path_factory.mktemp("hostile-archives")
    members = _members(small_bento)
    payload = b"import os\n"
    cases = {
        "dot-dot path": (
            [(_info("../evil.py", size=len(payload)), payload)],
            "'../evil.py'",
        ),
        "nested dot-dot path": (
            [(_info("src/../../evil.py", size=len(payload)), payload)],
            "'src/../../evil.py'",
        ),
        "absolute path": (
            [(_info("/tmp/kfp-automl-evil.py", size=len(payload)), payload)],
            "absolute path",
        ),
        "symbolic link": (
            [(_info("src/passwd", tarfile.SYMTYPE, link="/etc/passwd"), None)],
            "symbolic link",
        ),
        "hard link": (
            [(_info("src/hard", tarfile.LNKTYPE, link="bento.yaml"), None)],
            "hard link",
        ),
        "character device": (
            [(_info("src/null", tarfile.CHRTYPE), None)],
            "device",
        ),
        "fifo": ([(_info("src/pipe", tarfile.FIFOTYPE), None)], "FIFO"),
        "second bento.yaml": (
            [(_info("./bento.yaml", size=len(payload)), payload)],
            "appears twice",
        ),
    }
    out = {}
    for case, (extra, phrase) in cases.items():
        path = _write(root / f"{case.replace(' ', '-')}.bento", members, extra)
        out[case] = (path, phrase)
    out["decompression bomb"] = (_bomb(root / "bomb.bento", members), "unpack")
    many = [(_info(f"src/f{i}.txt"), b"") for i in range(10_050)]
    out["too many members"] = (_write(root / "many.bento", members, many), "members")
    assert out["decompression bomb"][0].stat().st_size < 64 * 1024  # ~30 KB
    return out


CASES = [
    "dot-dot path",
    "nested dot-dot path",
    "absolute path",
    "symbolic link",
    "hard link",
    "character device",
    "fifo",
    "second bento.yaml",
    "decompression bomb",
    "too many members",
]


def _one_line_error(err: str, *phrases: str) -> None:
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for phrase in phrases:
        assert phrase in err, (phrase, err)


# ---- fetch-bento ------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_fetch_bento_refuses_a_hostile_archive_and_writes_nothing(hostile, tmp_path, capsys, case):
    archive, phrase = hostile[case]
    dest = tmp_path / "pod" / "bento" / "model.bento"
    argv = ["fetch-bento", "--url", str(archive), "--dest", str(dest), "--sha256", sha256(archive)]
    assert main(argv) == 2
    _one_line_error(capsys.readouterr().err, phrase)
    assert not dest.exists()
    assert not dest.parent.exists() or list(dest.parent.iterdir()) == []  # no temp file left


def test_fetch_bento_refuses_a_digest_that_differs_naming_both(small_bento, tmp_path, capsys):
    dest = tmp_path / "model.bento"
    dest.write_bytes(b"the archive fetched before")
    recorded = hashlib.sha256(b"another archive").hexdigest()
    argv = ["fetch-bento", "--url", str(small_bento), "--dest", str(dest), "--sha256", recorded]
    assert main(argv) == 2
    _one_line_error(capsys.readouterr().err, sha256(small_bento), recorded)
    assert dest.read_bytes() == b"the archive fetched before"
    assert [p.name for p in tmp_path.iterdir()] == ["model.bento"]


def test_fetch_bento_accepts_the_real_bento_with_its_digest(small_bento, tmp_path, capsys):
    dest = tmp_path / "model.bento"
    digest = sha256(small_bento)
    argv = ["fetch-bento", "--url", small_bento.as_uri(), "--dest", str(dest)]
    assert main([*argv, "--sha256", f"sha256:{digest.upper()}"]) == 0
    assert dest.read_bytes() == small_bento.read_bytes()
    assert f"sha256 {digest}" in capsys.readouterr().out


@pytest.mark.parametrize(
    "digest, phrase",
    [
        ("", "--sha256 is empty"),
        ("$(BENTO_SHA256)", "was not expanded"),
        ("abc123", "is not a sha256 digest"),
    ],
)
def test_fetch_bento_needs_a_digest(small_bento, tmp_path, capsys, digest, phrase):
    dest = tmp_path / "model.bento"
    argv = ["fetch-bento", "--url", str(small_bento), "--dest", str(dest), "--sha256", digest]
    assert main(argv) == 2
    _one_line_error(capsys.readouterr().err, phrase)
    assert not dest.exists()


def test_fetch_bento_reads_the_digest_from_bento_sha256(small_bento, tmp_path, monkeypatch):
    """The pod's init container gets it as env BENTO_SHA256 (set by the deploy step)."""
    monkeypatch.setenv("BENTO_SHA256", "0" * 64)
    dest = tmp_path / "model.bento"
    assert main(["fetch-bento", "--url", str(small_bento), "--dest", str(dest)]) == 2
    monkeypatch.setenv("BENTO_SHA256", sha256(small_bento))
    assert main(["fetch-bento", "--url", str(small_bento), "--dest", str(dest)]) == 0


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.invalid/m.bento",
        "memory://m.bento",
        "simplecache::file:///tmp/m.bento",
        "zip://bento.yaml::file:///tmp/m.zip",
        "data:application/octet-stream;base64,AAAA",
    ],
)
def test_fetch_bento_allows_only_known_schemes(tmp_path, capsys, url):
    dest = tmp_path / "model.bento"
    assert main(["fetch-bento", "--url", url, "--dest", str(dest), "--sha256", "0" * 64]) == 2
    _one_line_error(capsys.readouterr().err, "is not a supported URL", "s3://", "https://")
    assert not dest.exists()


def test_fetch_bento_caps_the_download(small_bento, tmp_path, capsys):
    dest = tmp_path / "model.bento"
    argv = ["fetch-bento", "--url", str(small_bento), "--dest", str(dest)]
    assert main([*argv, "--sha256", sha256(small_bento), "--max-mb", "0.05"]) == 2
    _one_line_error(capsys.readouterr().err, "larger than the 0.05 MB limit", "--max-mb")
    assert list(tmp_path.iterdir()) == []


# ---- serve / predict --model X.bento ----------------------------------------------------------


def _cli(args: list[str], home: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "BENTOML_HOME": str(home), **env},
    )


def _store_is_empty(home: Path) -> bool:
    return not any((home / "bentos").glob("*/*")) and not any((home / "models").glob("*/*"))


@pytest.mark.slow
@pytest.mark.parametrize(
    "case", ["dot-dot path", "symbolic link", "decompression bomb", "second bento.yaml"]
)
def test_serve_refuses_a_hostile_archive_before_importing_it(hostile, tmp_path, case):
    archive, phrase = hostile[case]
    home = tmp_path / "bentoml"
    done = _cli(["serve", "--model", str(archive), "--sha256", sha256(archive)], home)
    assert done.returncode == 2, done.stdout + done.stderr
    _one_line_error(done.stderr, phrase)
    assert _store_is_empty(home)


@pytest.mark.slow
def test_serve_and_predict_check_the_digest_given_or_registered(small_bento, tmp_path):
    """--sha256, else the registry's record of the archive's version: a digest that differs
    is refused before the archive is imported; the right one scores."""
    from kfp_automl.registry.registry import Registry
    from tests.adversarial.conftest import LEGACY

    home = tmp_path / "bentoml"
    other = hashlib.sha256(b"another archive").hexdigest()
    done = _cli(["serve", "--model", str(small_bento), "--sha256", other], home)
    assert done.returncode == 2
    _one_line_error(done.stderr, sha256(small_bento), other)
    assert _store_is_empty(home)

    with tarfile.open(small_bento) as tar:
        info = next(m for m in tar.getmembers() if m.name.lstrip("./") == "bento.yaml")
        import yaml

        meta = yaml.safe_load(tar.extractfile(info))  # type: ignore[arg-type]
    registry = tmp_path / "registry"
    entry = {"bento_tag": f"{meta['name']}:{meta['version']}", "bento_sha256": other}
    Registry(registry).register(meta["name"], meta["version"], entry)
    out = tmp_path / "scored.csv"
    predict = ["predict", "--model", str(small_bento), "--data", str(LEGACY / "rows.parquet")]
    predict += ["--output", str(out)]
    done = _cli(predict, home, KFP_AUTOML_REGISTRY=str(registry))
    assert done.returncode == 2
    _one_line_error(done.stderr, sha256(small_bento), other, "registry")
    assert _store_is_empty(home) and not out.exists()

    entry["bento_sha256"] = sha256(small_bento)
    Registry(registry).register(meta["name"], meta["version"], entry)
    done = _cli(predict, home, KFP_AUTOML_REGISTRY=str(registry))
    assert done.returncode == 0, done.stderr
    assert "warning" not in done.stderr
    assert out.read_text().count("\n") == 61  # a header and the 60 rows


# ---- the gate's import of the registry's champion ---------------------------------------------

_GATE = r"""
import json, sys
from pathlib import Path

import bentoml

from kfp_automl.errors import UserError
from kfp_automl.registry.store import load_registered_model

results = {}
for case, entry in json.loads(sys.argv[1]).items():
    try:
        load_registered_model(entry.pop("name"), entry)
        results[case] = "loaded"
    except Exception as exc:
        kind = "UserError" if isinstance(exc, UserError) else type(exc).__name__
        results[case] = f"{kind}: {exc}"
    results[case + " store"] = sorted(str(m.tag) for m in bentoml.models.list())
print(json.dumps(results))
"""


@pytest.mark.slow
def test_the_gate_imports_a_champion_only_with_its_recorded_digest_and_a_safe_archive(
    hostile, small_bento, tmp_path
):
    with tarfile.open(small_bento) as tar:
        info = next(m for m in tar.getmembers() if m.name.lstrip("./") == "bento.yaml")
        import yaml

        meta = yaml.safe_load(tar.extractfile(info))  # type: ignore[arg-type]
    name, version = meta["name"], meta["version"]

    def entry(archive: Path, digest: str | None) -> dict:
        out = {"name": name, "version": version, "bento_uri": str(archive)}
        return out if digest is None else {**out, "bento_sha256": digest}

    cases = {
        "mismatch": entry(small_bento, hashlib.sha256(b"x").hexdigest()),
        "no digest": entry(small_bento, None),
        "symbolic link": entry(hostile["symbolic link"][0], sha256(hostile["symbolic link"][0])),
        "bomb": entry(hostile["decompression bomb"][0], sha256(hostile["decompression bomb"][0])),
        "ok": entry(small_bento, sha256(small_bento)),  # last: it imports the model
    }
    done = subprocess.run(
        [sys.executable, "-c", _GATE, json.dumps(cases)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml")},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert results["mismatch"].startswith("UserError: ")
    assert sha256(small_bento) in results["mismatch"] and "\n" not in results["mismatch"]
    assert "records no sha256" in results["no digest"]
    assert "symbolic link" in results["symbolic link"]
    assert "unpack" in results["bomb"]
    for case in ("mismatch", "no digest", "symbolic link", "bomb"):
        assert results[f"{case} store"] == [], case  # nothing imported
    assert results["ok"] == "loaded"
    assert results["ok store"] == [f"{name}:{version}"]


_GATE_RUN = r"""
import json, sys

import pandas as pd

from kfp_automl.components.gate.gate import run
from kfp_automl.contracts.schema import Schema
from kfp_automl.runtime.model_file import load_model
from kfp_automl.runtime.records import coerce_frame

fixture, name, registry, out = sys.argv[1:5]
sha = open(f"{fixture}/sha256").read().strip()
schema = Schema.read(f"{fixture}/schema.json")
rows = pd.read_parquet(f"{fixture}/rows.parquet")
rows[schema.target] = load_model(fixture, sha).predict(coerce_frame(rows, schema))
rows.to_parquet(f"{out}/test.parquet")
d = run(
    model_dir=fixture,
    sha256=sha,
    test_path=f"{out}/test.parquet",
    schema_path=f"{fixture}/schema.json",
    decision_path=f"{out}/decision.json",
    registry_root=registry,
    model_name=name,
    n_bootstrap=20,
)
print(json.dumps({"deploy": d.deploy, "reason": d.reason}))
"""


@pytest.mark.slow
def test_the_gate_keeps_a_champion_registered_without_a_digest(small_bento, tmp_path):
    """Its archive cannot be checked, so it is not imported: the gate refuses to replace it
    automatically (the run goes on; promote by hand), instead of unpacking an unchecked archive."""
    from kfp_automl.registry.registry import Registry
    from tests.adversarial.conftest import LEGACY

    registry = Registry(tmp_path / "registry")
    registry.register("automl-legacy", "old1", {"bento_uri": str(small_bento)})
    registry.promote("automl-legacy", "old1")
    args = [str(LEGACY), "automl-legacy", str(registry.root), str(tmp_path)]
    done = subprocess.run(
        [sys.executable, "-c", _GATE_RUN, *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml")},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    decision = json.loads(done.stdout.strip().splitlines()[-1])
    assert decision["deploy"] is False
    assert "the champion automl-legacy:old1 cannot be compared" in decision["reason"]
    assert "records no sha256" in decision["reason"] and "kfp-automl promote" in decision["reason"]
    assert not (tmp_path / "bentoml" / "models").exists() or not any(
        (tmp_path / "bentoml" / "models").glob("*/*")
    )
