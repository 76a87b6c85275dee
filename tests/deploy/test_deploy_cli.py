"""`kfp-automl deploy`: --dry-run output, bad input (exit 2, one line), and runs against the stand-in.

`--champion NAME` deploys the registry's champion: these tests use a real registry folder
whose entries carry what the package step records (`bento_tag`, `bento_uri`, `bento_sha256`).
The archive's digest reaches the serving pod's BENTO_SHA256: from --sha256 for a URL, from the
file for a local archive, from the registry with --champion.
"""

from __future__ import annotations

import hashlib
import io
import os
import socket
import subprocess
import sys
import tarfile
import time

import pytest
import yaml

from kfp_automl.cli.main import main
from kfp_automl.contracts.release import RELEASE_ANNOTATION
from kfp_automl.registry.registry import Registry
from tests.support.kube_apiserver import write_kubeconfig

URL = "s3://models/automl-churn/v9.bento"
DEP = "/apis/apps/v1/namespaces/prod/deployments/automl-serving"
SHA = "9" * 64  # the digest of the archive at URL, as the registry would record it


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
        "registry": _registry(tmp_path / "registry", bento),
    }


def _registry(root, bento):
    """Models as the package step registers them, promoted by hand, plus broken entries."""
    reg = Registry(root)

    def add(name, version, promote=True, **info):
        reg.register(name, version, {"metric": "roc_auc", "family": "linear", **info})
        if promote:
            reg.promote(name, version)

    sha = hashlib.sha256(bento.read_bytes()).hexdigest()
    for v in ("aaa", "bbb"):  # the champion is bbb, promoted over aaa
        add(
            "automl-churn",
            v,
            bento_tag=f"automl-churn:b{v}",
            bento_uri=_url(v),
            bento_sha256=_sha(v),
        )
    add("fresh", "f1", promote=False, bento_tag="fresh:b1", bento_uri=_url("f1"))
    add("old", "o1", bento_tag="old:b1")  # registered before archives were recorded
    add("untagged", "u1", bento_uri=_url("u1"))
    # a local run's
    add("local", "l1", bento_tag="automl-churn:abc123", bento_uri=str(bento), bento_sha256=sha)
    add("moved", "m1", bento_tag="moved:b1", bento_uri=str(root / "gone.bento"), bento_sha256=sha)
    add("other", "x1", bento_tag="automl-churn:zzz", bento_uri=str(bento), bento_sha256=sha)
    # registered before digests were recorded
    add("nodigest", "n1", bento_tag="nodigest:b1", bento_uri=_url("n1"))
    add("changed", "c1", bento_tag="automl-churn:abc123", bento_uri=str(bento), bento_sha256=SHA)
    return root


def _sha(v):
    return hashlib.sha256(v.encode()).hexdigest()


def _url(v):
    return f"s3://models/automl-churn/{v}.bento"


def _live(api):
    dep = api.state.objects[DEP]
    template = dep["spec"]["template"]
    env = template["spec"]["initContainers"][0]["env"][0]
    return template["metadata"]["labels"]["app.kubernetes.io/version"], env["value"]


def _live_sha(api):
    env = api.state.objects[DEP]["spec"]["template"]["spec"]["initContainers"][0]["env"]
    return {e["name"]: e["value"] for e in env}["BENTO_SHA256"]


def _args(files, *extra):
    return ["deploy", "--manifests", str(files["ok"]), "--namespace", "prod", *extra]


def test_dry_run_prints_the_rendered_objects_without_a_cluster(files, capsys, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(files["unreachable"]))  # must not be contacted
    assert main(_args(files, "--bento", URL, "--version", "v9", "--sha256", SHA, "--dry-run")) == 0
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
    init_env = dep["spec"]["template"]["spec"]["initContainers"][0]["env"]
    assert init_env == [{"name": "BENTO_URL", "value": URL}, {"name": "BENTO_SHA256", "value": SHA}]
    assert RELEASE_ANNOTATION in dep["metadata"]["annotations"]


def test_dry_run_with_a_local_archive_reads_its_version_and_digest(files, capsys):
    assert main(_args(files, "--bento", str(files["bento"]), "--dry-run")) == 0
    dep = [o for o in yaml.safe_load_all(capsys.readouterr().out) if o["kind"] == "Deployment"][0]
    assert dep["metadata"]["labels"]["app.kubernetes.io/version"] == "abc123"
    env = dep["spec"]["template"]["spec"]["initContainers"][0]["env"]
    assert env[0]["value"] == files["bento"].resolve().as_uri()
    assert env[1]["value"] == hashlib.sha256(files["bento"].read_bytes()).hexdigest()


V9 = ["--version", "v9", "--sha256", SHA]
BAD = [
    (["--bento", URL, *V9, "--manifests", "{missing}"], ["manifests file not found"]),
    (["--bento", URL, *V9, "--manifests", "{broken}"], ["'fetch-bento'"]),
    (["--bento", URL, "--manifests", "{ok}"], ["--version is required"]),
    (["--bento", URL, "--version", "v9", "--manifests", "{ok}"], ["--sha256 is required"]),
    (
        ["--bento", URL, "--version", "v9", "--sha256", "x1", "--manifests", "{ok}"],
        ["not a sha256"],
    ),
    (
        ["--bento", "{bento}", "--sha256", SHA, "--manifests", "{ok}", "--dry-run"],
        [f"but {SHA} is recorded for it (--sha256)"],
    ),
    (["--bento", "{bento}", "--manifests", "{ok}"], ["local file the cluster cannot fetch"]),
    (["--bento", "{missing}", "--manifests", "{ok}", "--dry-run"], ["Bento archive not found"]),
    (["--bento", "{ok}", "--manifests", "{ok}", "--dry-run"], ["not a Bento archive"]),
    (
        ["--bento", "{bento}", "--version", "v2", "--manifests", "{ok}", "--dry-run"],
        ["--version 'v2' differs"],
    ),
    (
        ["--bento", URL, "--version", "v 9", "--sha256", SHA, "--manifests", "{ok}"],
        ["not a valid label value"],
    ),
    (["--bento", URL, *V9, "--manifests", "{ok}"], ["cannot reach the API server"]),
    (["--bento", URL, *V9, "--manifests", "{ok}", "--timeout", "0"], ["--timeout"]),
]


CHAMPION = ["--registry", "{registry}", "--manifests", "{ok}"]
BAD += [
    (["--manifests", "{ok}"], ["--bento ARCHIVE or --champion NAME"]),
    (["--bento", URL, "--champion", "automl-churn", "--manifests", "{ok}"], ["(one)"]),
    (["--champion", "automl-churn", "--version", "v9", *CHAMPION], ["--version comes from"]),
    (["--champion", "automl-churn", "--sha256", SHA, *CHAMPION], ["--sha256 comes from"]),
    (["--bento", URL, *V9, *CHAMPION], ["--registry goes with --champion"]),
    (["--champion", "nope", *CHAMPION], ["no model named 'nope' in the registry at"]),
    (["--champion", "fresh", *CHAMPION], ["'fresh' has no champion", "kfp-automl promote"]),
    (["--champion", "old", *CHAMPION], ["no Bento archive URL for old:o1", "--bento URL"]),
    (["--champion", "untagged", *CHAMPION], ["no Bento tag for untagged:u1"]),
    (["--champion", "local", *CHAMPION], ["local:l1 is a local file the cluster cannot fetch"]),
    (["--champion", "moved", *CHAMPION, "--dry-run"], ["the archive of moved:m1 is not found"]),
    (
        ["--champion", "other", *CHAMPION, "--dry-run"],
        ["holds Bento automl-churn:abc123, the registry records automl-churn:zzz"],
    ),
    (
        ["--champion", "nodigest", *CHAMPION],
        ["no archive sha256 for nodigest:n1", "--sha256 HEX"],
    ),
    (
        ["--champion", "changed", *CHAMPION, "--dry-run"],
        [f"but {SHA} is recorded for it (the registry's bento_sha256)"],
    ),
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


def test_dry_run_of_the_champion_reads_its_archive_from_the_registry(files, capsys, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(files["unreachable"]))  # must not be contacted
    args = ["--champion", "local", "--registry", str(files["registry"]), "--dry-run"]
    assert main(_args(files, *args)) == 0
    dep = [o for o in yaml.safe_load_all(capsys.readouterr().out) if o["kind"] == "Deployment"][0]
    assert dep["metadata"]["labels"]["app.kubernetes.io/version"] == "abc123"
    env = dep["spec"]["template"]["spec"]["initContainers"][0]["env"][0]
    assert env["value"] == files["bento"].resolve().as_uri()


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
            *_args(files, "--bento", URL, *V9),
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
    assert main(_args(files, "--bento", URL, *V9)) == 0
    out = capsys.readouterr().out
    assert "version v9 is live in prod/automl-serving (9 objects applied" in out
    assert _live_sha(api) == SHA
    assert {r.authorization for r in api.state.requests} == {"Bearer tok-1"}  # from kubeconfig
    api.state.rollout["v10"] = "never"
    url10 = URL.replace("v9", "v10")
    args = _args(files, "--bento", url10, "--version", "v10", "--sha256", SHA, "--timeout", "1")
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: deploy of version v10 to prod/automl-serving failed: not ready")
    assert err.rstrip().endswith("rolled back to version v9 (ready again)")
    assert err.count("\n") == 1


@pytest.mark.slow
def test_deploy_champion_serves_the_registrys_champion_after_promote_and_rollback(
    files, api, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path / "kc", api.host)))
    reg = ["--registry", str(files["registry"])]
    champion = _args(files, "--champion", "automl-churn", *reg)
    assert main(champion) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith("version bbbb (the champion automl-churn:bbb) is live in prod/")
    assert _live(api) == ("bbbb", _url("bbb"))
    assert _live_sha(api) == _sha("bbb")  # the registry's bento_sha256
    # rollback changes the registry only, and says so
    assert main(["rollback", "--name", "automl-churn", *reg]) == 0
    out = capsys.readouterr().out
    assert "automl-churn:aaa is the champion again" in out
    assert "the served version did not change" in out and "deploy --champion automl-churn" in out
    assert _live(api) == ("bbbb", _url("bbb"))
    # the one command that makes the served version the champion again
    assert main(champion) == 0
    assert "version baaa (the champion automl-churn:aaa)" in capsys.readouterr().out
    assert _live(api) == ("baaa", _url("aaa")) and _live_sha(api) == _sha("aaa")
    # a champion whose rollout never becomes ready: the served version stays, and it says so
    api.state.rollout["bbbb"] = "never"
    assert main(["promote", "automl-churn:bbb", *reg]) == 0
    capsys.readouterr()
    assert main([*champion, "--timeout", "1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: deploy of version bbbb to prod/automl-serving failed: not ready")
    assert err.rstrip().endswith(
        "rolled back to version baaa (ready again); automl-churn:bbb stays the registry's "
        "champion, not served"
    )
    assert err.count("\n") == 1
    assert _live(api) == ("baaa", _url("aaa"))


@pytest.mark.slow
def test_a_deploy_rerun_after_its_process_died_mid_rollout_rolls_back_to_the_version_before(
    files, api, tmp_path, capsys, monkeypatch
):
    """KFP retries a deploy step whose pod was lost: the first attempt applied the new version
    and died waiting for it. The rerun must roll back to what was live before that attempt."""
    kubeconfig = write_kubeconfig(tmp_path / "kc", api.host)
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    assert main(_args(files, "--bento", URL, *V9)) == 0
    api.state.rollout["v10"] = "never"
    url10 = URL.replace("v9", "v10")
    args = _args(files, "--bento", url10, "--version", "v10", "--sha256", SHA)
    first = subprocess.Popen(
        [sys.executable, "-m", "kfp_automl.cli.main", *args, "--timeout", "120"],
        env={**os.environ, "KUBECONFIG": str(kubeconfig)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not _waiting_for_v10(api):
            assert first.poll() is None and time.monotonic() < deadline, "never applied v10"
            time.sleep(0.05)
    finally:
        first.kill()  # the pod is lost mid-rollout
        first.wait()
    assert _live(api) == ("v10", url10)  # the dead attempt left the new version applied
    assert main([*args, "--timeout", "1"]) == 1
    err = capsys.readouterr().err
    assert err.rstrip().endswith("rolled back to version v9 (ready again)"), err
    assert _live(api) == ("v9", URL)


def _waiting_for_v10(api) -> bool:
    """The stand-in saw v10's Deployment applied, then a poll of its rollout."""
    calls = api.state.calls()
    applied = [
        i
        for i, r in enumerate(calls)
        if r.method == "PATCH"
        and r.path == DEP
        and r.body["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/version"] == "v10"
    ]
    return bool(applied) and any(
        r.method == "GET" and r.path == DEP for r in calls[applied[0] + 1 :]
    )
