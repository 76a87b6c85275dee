"""`kfp-automl serve` settings: an explicit flag wins, else a pod's AUTOML_* variable, else
the flag's default. The process image is replaced by `bentoml serve` (os.execve), so the
tests capture the environment it would get; tests/integration/test_fetch_bento.py checks
the effect on a real server."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from kfp_automl.bentos import lookup as bentos
from kfp_automl.cli.main import main
from kfp_automl.serving.files import SERVICE

KEYS = (
    "AUTOML_WORKERS",
    "AUTOML_UNKNOWN_FIELDS",
    "AUTOML_MONITORING",
    "AUTOML_MAX_BODY_BYTES",
    "AUTOML_MAX_LATENCY_MS",
)


@pytest.fixture
def exec_env(monkeypatch):
    captured = {}

    def fake_execve(path, argv, env):
        captured.update(path=path, argv=argv, env=env)
        raise SystemExit(0)

    bento = SimpleNamespace(tag="m:v1", info=SimpleNamespace(service=SERVICE))
    monkeypatch.setattr(bentos, "resolve_bento", lambda ref, sha256="": bento)
    # a stand-in Bento has no model to load (tests/adversarial/test_crash.py loads real ones)
    monkeypatch.setattr("kfp_automl.serving.startup.check_model", lambda bento: None)
    monkeypatch.setattr("os.execve", fake_execve)
    for key in KEYS:
        monkeypatch.delenv(key, raising=False)
    return captured


def _serve(*flags):
    with pytest.raises(SystemExit):
        main(["serve", "--model", "m:v1", *flags])


def test_defaults_without_variables(exec_env):
    _serve()
    env = exec_env["env"]
    assert [env[k] for k in KEYS] == ["1", "ignore", "true", str(8 * 1024 * 1024), "1000"]
    assert exec_env["argv"][1:3] == ["serve", "m:v1"]


def test_pod_variables_win_over_defaults(exec_env, monkeypatch):
    pod = dict(zip(KEYS, ["2", "reject", "false", "1000", "5000"], strict=True))
    for key, value in pod.items():
        monkeypatch.setenv(key, value)
    _serve()
    assert {k: exec_env["env"][k] for k in KEYS} == pod


def test_explicit_flags_win_over_variables(exec_env, monkeypatch):
    for key, value in zip(KEYS, ["2", "ignore", "true", "1000", "5000"], strict=True):
        monkeypatch.setenv(key, value)
    _serve(
        *("--workers", "3", "--reject-unknown-fields", "--no-monitoring", "--max-body-mb", "1"),
        *("--max-latency-ms", "20000"),
    )
    env = exec_env["env"]
    assert [env[k] for k in KEYS] == ["3", "reject", "false", str(1024 * 1024), "20000"]


LIMIT_KEYS = (
    "AUTOML_HEADER_TIMEOUT_S",
    "AUTOML_BODY_IDLE_TIMEOUT_S",
    "AUTOML_BODY_TIMEOUT_S",
    "AUTOML_MAX_CONNECTIONS",
    "AUTOML_KEEP_ALIVE_S",
)


def test_server_limits_from_flags_variables_and_defaults(exec_env, monkeypatch):
    for key in LIMIT_KEYS:
        monkeypatch.delenv(key, raising=False)
    _serve()
    assert [exec_env["env"][k] for k in LIMIT_KEYS] == ["10.0", "10.0", "30.0", "1000", "75.0"]
    monkeypatch.setenv("AUTOML_MAX_CONNECTIONS", "50")
    _serve("--header-timeout", "3", "--keep-alive", "700")
    env = exec_env["env"]
    assert [env[k] for k in LIMIT_KEYS] == ["3.0", "10.0", "30.0", "50", "700.0"]


@pytest.mark.parametrize(
    ("key", "value", "phrase"),
    [
        ("AUTOML_MAX_CONNECTIONS", "many", "is not a whole number"),
        ("AUTOML_HEADER_TIMEOUT_S", "0", "header_timeout_s must be over 0"),
    ],
)
def test_a_bad_limit_variable_is_one_line_before_serving(
    exec_env, monkeypatch, capsys, key, value, phrase
):
    monkeypatch.setenv(key, value)
    assert main(["serve", "--model", "m:v1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and key.removeprefix("AUTOML_").lower()[:6] in err.lower()
    assert phrase in err and "path" not in exec_env
