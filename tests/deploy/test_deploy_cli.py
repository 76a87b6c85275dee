"""`kfp-automl deploy`: --dry-run output, bad input (exit 2, one line), and runs against the stand-in."""

from __future__ import annotations

import io
import socket
import subprocess
import sys
import tarfile

import pytest
import yaml

from kfp_automl.cli.main import main
from kfp_automl.contracts.release import RELEASE_ANNOTATION
from tests.support.kube_apiserver import write_kubeconfig

URL = "s3://models/automl-churn/v9.bento"


@pytest.fixture
def files(tmp_path, manifests_text):
    """The fixture manifests, a broken copy, and a minimal .bento (a tar with bento.yaml)."""
    ok = tmp_path / "serving.yaml"
    ok.write_text(manifests_text)
    broken = tmp_path / "broken.yaml"
    broken.write_text(manifests_text.replace("name: fetch-bento", "name: download"))
    bento = tmp_path / "automl-churn.bento"
    info = yaml.safe_dump({"name": "automl-churn", "version": "abc123"}).encode()
    with tarfile.open(bento, "w") as tar:
        member = tarfile.TarInfo("bento.yaml")
        member.size = len(info)
        tar.addfile(member, io.BytesIO(info))
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nobody listens there
    unreachable = write_kubeconfig(tmp_path / "unreachable.kubeconfig", f"http://127.0.0.1:{port}")
    return {
        "ok": ok,
        "broken": broken,
        "bento": bento,
        "missing": tmp_path / "missing.yaml",
        "unreachable": unreachable,
    }


def _args(files, *extra):
    return ["deploy", "--manifests", str(files["ok"]), "--namespace", "prod", *extra]


def test_dry_run_prints_the_rendered_objects_without_a_cluster(files, capsys, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(files["unreachable"]))  # must not be contacted
    assert main(_args(files, "--bento", URL, "--version", "v9", "--dry-run")) == 0
    objects = list(yaml.safe_load_all(capsys.readouterr().out))
    assert [o["kind"] for o in objects][:4] == [
        "ServiceAccount",
        "ConfigMap",
        "Service",
        "Deployment",
    ]
    assert {o["metadata"]["namespace"] for o in objects} == {"prod"}
    dep = objects[3]
    assert dep["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/version"] == "v9"
    assert dep["spec"]["template"]["spec"]["initContainers"][0]["env"][0]["value"] == URL
    assert RELEASE_ANNOTATION in dep["metadata"]["annotations"]


def test_dry_run_with_a_local_archive_reads_its_version(files, capsys):
    assert main(_args(files, "--bento", str(files["bento"]), "--dry-run")) == 0
    dep = [o for o in yaml.safe_load_all(capsys.readouterr().out) if o["kind"] == "Deployment"][0]
    assert dep["metadata"]["labels"]["app.kubernetes.io/version"] == "abc123"
    env = dep["spec"]["template"]["spec"]["initContainers"][0]["env"][0]
    assert env["value"] == files["bento"].resolve().as_uri()


BAD = [
    (["--bento", URL, "--version", "v9", "--manifests", "{missing}"], ["manifests file not found"]),
    (["--bento", URL, "--version", "v9", "--manifests", "{broken}"], ["'fetch-bento'"]),
    (["--bento", URL, "--manifests", "{ok}"], ["--version is required"]),
    (["--bento", "{bento}", "--manifests", "{ok}"], ["local file the cluster cannot fetch"]),
    (["--bento", "{missing}", "--manifests", "{ok}", "--dry-run"], ["Bento archive not found"]),
    (["--bento", "{ok}", "--manifests", "{ok}", "--dry-run"], ["not a Bento archive"]),
    (
        ["--bento", "{bento}", "--version", "v2", "--manifests", "{ok}", "--dry-run"],
        ["--version 'v2' differs"],
    ),
    (["--bento", URL, "--version", "v 9", "--manifests", "{ok}"], ["not a valid label value"]),
    (["--bento", URL, "--version", "v9", "--manifests", "{ok}"], ["cannot reach the API server"]),
    (["--bento", URL, "--version", "v9", "--manifests", "{ok}", "--timeout", "0"], ["--timeout"]),
]


@pytest.mark.parametrize("args, words", BAD)
def test_bad_input_is_one_line_and_exit_2(files, capsys, monkeypatch, args, words):
    monkeypatch.setenv("KUBECONFIG", str(files["unreachable"]))
    filled = [a.format(**{k: str(v) for k, v in files.items()}) for a in args]
    assert main(["deploy", "--namespace", "prod", *filled]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for w in words:
        assert w in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "kubeconfig, expected",
    [
        ("none", "error: no Kubernetes credentials"),
        ("unreachable", "error: deploy to prod/automl-serving: API discovery: cannot reach"),
    ],
)
def test_no_cluster_is_one_line_in_a_real_process(files, tmp_path, kubeconfig, expected):
    """A real subprocess (stderr as a user sees it): exit 2, one line, no traceback."""
    path = files.get(kubeconfig, tmp_path / kubeconfig)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "KUBECONFIG": str(path)}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "kfp_automl.cli.main",
            *_args(files, "--bento", URL, "--version", "v9"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith(expected) and proc.stderr.count("\n") == 1, proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_deploy_against_the_stand_in_then_a_failed_rollout_exits_1(
    files, api, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path / "kc", api.host, "tok-1")))
    assert main(_args(files, "--bento", URL, "--version", "v9")) == 0
    out = capsys.readouterr().out
    assert "version v9 is live in prod/automl-serving (9 objects applied" in out
    assert {r.authorization for r in api.state.requests} == {"Bearer tok-1"}  # from kubeconfig
    api.state.rollout["v10"] = "never"
    url10 = URL.replace("v9", "v10")
    args = _args(files, "--bento", url10, "--version", "v10", "--timeout", "1")
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: deploy of version v10 to prod/automl-serving failed: not ready")
    assert err.rstrip().endswith("rolled back to version v9 (ready again)")
    assert err.count("\n") == 1
