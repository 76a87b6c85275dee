"""`kfp-automl models`, `promote` and `rollback` against a registry folder."""

from __future__ import annotations

from kfp_automl.cli.main import main
from kfp_automl.registry.registry import Registry


def _setup(tmp_path):
    reg = Registry(tmp_path / "reg")
    for i, v in enumerate(["aaa", "bbb"]):
        reg.register(
            "automl-churn",
            v,
            {"metric": "roc_auc", "valid_score": 0.8 + i / 100, "family": "linear"},
        )
    return reg, ["--registry", str(reg.root)]


def test_models_promote_rollback(tmp_path, capsys):
    reg, flag = _setup(tmp_path)
    assert main(["models", *flag]) == 0
    out = capsys.readouterr().out
    assert "automl-churn" in out and out.count("challenger") == 2
    assert main(["promote", "automl-churn:aaa", *flag]) == 0
    assert main(["promote", "bbb", "--name", "automl-churn", *flag]) == 0
    assert reg.champion("automl-churn")["version"] == "bbb"
    capsys.readouterr()
    assert main(["models", "--name", "automl-churn", *flag]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any("bbb" in line and "champion" in line for line in lines)
    assert any("aaa" in line and "archived" in line for line in lines)
    assert main(["rollback", *flag]) == 0
    assert reg.champion("automl-churn")["version"] == "aaa"


def test_promote_and_rollback_say_the_served_version_did_not_change(tmp_path, capsys):
    """They change the registry only, and name the one command that serves the champion."""
    _, flag = _setup(tmp_path)
    serve = f"`kfp-automl deploy --champion automl-churn --registry {flag[1]} --namespace NS"
    for argv, first in [
        (["promote", "automl-churn:aaa"], "automl-churn:aaa is the champion (before: none)"),
        (["promote", "automl-churn:bbb"], "automl-churn:bbb is the champion (before: aaa)"),
        (["promote", "automl-churn:bbb"], "automl-churn:bbb was the champion already"),
        (["rollback"], "automl-churn:aaa is the champion again (was: bbb)"),
    ]:
        assert main([*argv, *flag]) == 0, argv
        lines = capsys.readouterr().out.splitlines()
        assert lines[0] == first, (argv, lines)
        assert len(lines) == 2 and lines[1].startswith("the served version did not change"), lines
        assert serve in lines[1], lines


def test_registry_mistakes_are_one_line_errors(tmp_path, capsys):
    _, flag = _setup(tmp_path)
    cases = [
        (["promote", "automl-churn:zzz", *flag], "no version 'zzz'"),
        (["promote", "zzz", *flag], "NAME:VERSION"),
        (["rollback", *flag], "no champion"),
        (["models", "--name", "nope", *flag], "no model named 'nope'"),
    ]
    for argv, words in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and words in err[0], (argv, err)


def test_empty_registry_says_so(tmp_path, capsys):
    assert main(["models", "--registry", str(tmp_path / "none")]) == 0
    assert "no models registered yet" in capsys.readouterr().out


def test_a_champion_without_an_archive_digest_is_warned_about(tmp_path, capsys):
    """Registered before digests were recorded: the gate and `deploy --champion` refuse it."""
    reg, flag = _setup(tmp_path)
    reg.register("automl-churn", "ccc", {"metric": "roc_auc", "bento_sha256": "c" * 64})
    assert main(["promote", "automl-churn:aaa", *flag]) == 0
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("warning: the registry records no archive sha256")
    assert "automl-churn:aaa" in err[0] and "deploy --champion" in err[0]
    assert main(["promote", "automl-churn:ccc", *flag]) == 0
    assert capsys.readouterr().err == ""  # its digest is recorded
    assert main(["rollback", *flag]) == 0
    assert "no archive sha256 for automl-churn:aaa" in capsys.readouterr().err
