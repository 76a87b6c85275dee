"""The Prometheus rules: committed copy up to date, valid for promtool, and alerting as intended.

promtool (Debian package `prometheus`) runs the rules on synthetic series:
rules_test.yaml holds the alert scenarios; the PSI/JS value check is generated
here so the expected numbers come from the same shares, computed by hand.
"""

from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from kfp_automl.observability import render, series
from kfp_automl.observability.rules import render_rules
from kfp_automl.runtime.drift import EPS

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "manifests" / "monitoring" / "prometheus-rules.yaml"
TESTS_FILE = Path(__file__).with_name("rules_test.yaml")
# what rules_test.yaml is written for
TEST_RULES = {"window": "5m", "alert_for": "1m", "quality_for": "3m", "min_labels": 100}

# One categorical feature served by two replicas, each scoring half the records.
# q: reference shares (the unseen-category and missing bins are 0 there, so EPS applies);
# per minute and replica: records per bin.
REFERENCE = {"c0": 0.5, "c1": 0.3, "c2": 0.2, "other": 0.0, "missing": 0.0}
PER_MINUTE = {"c0": 20, "c1": 15, "c2": 10, "other": 3, "missing": 2}
REPLICAS = ("pod-a:3000", "pod-b:3000")


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool is not on PATH: install the Debian package prometheus "
            "(apt-get install prometheus), which provides /usr/bin/promtool"
        )
    return path


def run_promtool(promtool: str, *args: str, cwd: Path | None = None) -> None:
    done = subprocess.run(
        [promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, f"promtool {' '.join(args)} failed:\n{done.stdout}{done.stderr}"


def shares_by_hand() -> tuple[float, float]:
    """PSI and Jensen-Shannon divergence (natural log) of PER_MINUTE against REFERENCE."""
    total = sum(PER_MINUTE.values())
    p = {b: max(n / total, EPS) for b, n in PER_MINUTE.items()}
    q = {b: max(share, EPS) for b, share in REFERENCE.items()}
    psi = sum((p[b] - q[b]) * math.log(p[b] / q[b]) for b in p)
    m = {b: (p[b] + q[b]) / 2 for b in p}
    js = 0.5 * sum(p[b] * math.log(p[b] / m[b]) + q[b] * math.log(q[b] / m[b]) for b in p)
    return psi, js


def value_tests() -> dict:
    """A promtool test file checking PSI and JS against `shares_by_hand`."""
    psi, js = shares_by_hand()
    ids = 'model="automl-churn", version="v1", feature="contract"'
    series = []
    for instance in REPLICAS:
        ids_here = f'{ids}, instance="{instance}"'
        for b, n in PER_MINUTE.items():
            series.append(
                {
                    "series": f'automl_feature_bin_total{{{ids_here}, bin="{b}"}}',
                    "values": f"0+{n}x15",
                }
            )
            series.append(
                {
                    "series": f'automl_feature_reference_share{{{ids_here}, bin="{b}"}}',
                    "values": f"{REFERENCE[b]!r}x15",
                }
            )

    def close_to(metric: str, expected: float) -> dict:
        return {
            "expr": f"abs({metric} - {expected!r}) < bool 1e-12",
            "eval_time": "10m",
            "exp_samples": [{"labels": f"{{{ids}}}", "value": 1}],
        }

    records = 5 * sum(PER_MINUTE.values()) * len(REPLICAS)
    return {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "name": "PSI and JS equal the values computed by hand",
                "interval": "1m",
                "input_series": series,
                "promql_expr_test": [
                    close_to("automl:feature_psi:window", psi),
                    close_to("automl:feature_js:window", js),
                    {
                        "expr": "automl:feature_records:increase_window",
                        "eval_time": "10m",
                        "exp_samples": [
                            {
                                "labels": f"automl:feature_records:increase_window{{{ids}}}",
                                "value": records,
                            }
                        ],
                    },
                ],
            }
        ],
    }


def test_committed_rules_are_up_to_date():
    assert COMMITTED.read_text() == render_rules(), (
        f"{COMMITTED.relative_to(ROOT)} is stale: run "
        "`python -m kfp_automl.observability.render --output manifests/monitoring/prometheus-rules.yaml`"
    )


def test_committed_rules_pass_promtool_check(promtool):
    run_promtool(promtool, "check", "rules", str(COMMITTED))


def test_rules_behave_as_intended(promtool, tmp_path):
    assert yaml.safe_load(TESTS_FILE.read_text())["rule_files"] == ["rules.yaml"]
    (tmp_path / "rules.yaml").write_text(render_rules(**TEST_RULES))
    shutil.copyfile(TESTS_FILE, tmp_path / TESTS_FILE.name)
    (tmp_path / "values_test.yaml").write_text(yaml.safe_dump(value_tests(), sort_keys=False))
    run_promtool(promtool, "check", "rules", "rules.yaml", cwd=tmp_path)
    run_promtool(promtool, "test", "rules", TESTS_FILE.name, "values_test.yaml", cwd=tmp_path)


def test_hand_computed_shares_are_a_real_shift():
    psi, js = shares_by_hand()
    assert 0.1 < psi < 10 and 0 < js < math.log(2)  # JS with natural log is at most ln 2


def test_rule_and_alert_names():
    groups = yaml.safe_load(render_rules())["groups"]
    assert [g["name"] for g in groups] == ["automl-drift", "automl-alerts"]
    assert [r["record"] for r in groups[0]["rules"]] == [
        series.BIN_RECORDS,
        series.RECORDS,
        series.SHARE,
        series.REFERENCE_SHARE,
        series.PSI,
        series.JS,
    ]
    alerts = {r["alert"]: r for r in groups[1]["rules"]}
    assert list(alerts) == [
        "AutomlFeatureDrift",
        "AutomlPredictionDrift",
        "AutomlHighLatencyP99",
        "AutomlHighErrorRate",
        "AutomlHighRejectedRate",
        "AutomlQualityBelowEvaluation",
        "AutomlReplicaQualityBelowEvaluation",
        "AutomlPredictionLogUnhealthy",
        "AutomlPredictionsNotLogged",
    ]
    for name, alert in alerts.items():
        quality = name.endswith("QualityBelowEvaluation")
        assert alert["for"] == ("15m" if quality else "5m")
        assert alert["labels"]["severity"] in {"warning", "critical"}
        assert set(alert["annotations"]) == {"summary", "description"}
        # one replica's quality is not the model's: it is looked at, not retrained
        retrain = name.endswith("Drift") or name == "AutomlQualityBelowEvaluation"
        assert (alert["labels"].get("action") == "retrain") == retrain, name


def test_window_changes_ranges_not_names():
    short, default = render_rules(window="5m"), render_rules()
    assert "[5m]" in short and "[10m]" not in short
    names = [
        [r.get("record") or r.get("alert") for r in g["rules"]]
        for g in yaml.safe_load(short)["groups"]
    ]
    assert names == [
        [r.get("record") or r.get("alert") for r in g["rules"]]
        for g in yaml.safe_load(default)["groups"]
    ]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"window": "10 minutes"}, "window must be a Prometheus duration"),
        ({"window": ""}, "window must be a Prometheus duration"),
        ({"window": "0m"}, "window must be longer than 0"),
        ({"alert_for": "5min"}, "alert_for must be a Prometheus duration"),
        ({"error_ratio": -0.1}, r"error_ratio must be a fraction in \[0, 1\)"),
        ({"rejected_ratio": 1.5}, r"rejected_ratio must be a fraction in \[0, 1\)"),
        ({"rejected_ratio": math.nan}, "rejected_ratio must be a fraction"),
        ({"latency_p99_s": 0}, "latency_p99_s must be a number of seconds > 0"),
        ({"latency_p99_s": -1.0}, "latency_p99_s must be a number of seconds > 0"),
        ({"min_records": 0}, "min_records must be an integer >= 1"),
        ({"min_records": 2.5}, "min_records must be an integer >= 1"),
        ({"quality_for": "1 hour"}, "quality_for must be a Prometheus duration"),
        ({"min_labels": 0}, "min_labels must be an integer >= 1"),
        ({"min_labels": True}, "min_labels must be an integer >= 1"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        render_rules(**kwargs)


@pytest.mark.parametrize("duration", ["90s", "1h30m", "500ms", "2d"])
def test_prometheus_durations_are_accepted(duration):
    assert f"[{duration}]" in render_rules(window=duration, alert_for=duration)


def test_main_writes_the_file_or_prints_it(tmp_path, capsys):
    out = tmp_path / "monitoring" / "rules.yaml"
    assert render.main(["--window", "5m", "--for", "1m", "--output", str(out)]) == 0
    assert out.read_text() == render_rules(window="5m", alert_for="1m")
    assert [p.name for p in out.parent.iterdir()] == ["rules.yaml"]  # no temp file left
    capsys.readouterr()
    assert render.main([]) == 0
    assert capsys.readouterr().out == render_rules()


def test_main_reports_bad_arguments_in_one_line(capsys):
    assert render.main(["--window", "10 minutes"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: window must be a Prometheus duration") and err.count("\n") == 1
