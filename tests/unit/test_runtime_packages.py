"""The recorded package versions of a model against the installed ones
(kfp_automl/runtime/packages.py): what counts as a mismatch, and what the message says."""

from __future__ import annotations

from importlib import metadata

import pytest
from prometheus_client import CollectorRegistry

from kfp_automl.components.package.bento import RUNTIME_PACKAGES, runtime_versions
from kfp_automl.runtime.packages import (
    MODEL_PACKAGES,
    RECORD_KEY,
    Mismatch,
    check_model_packages,
    installed_versions,
    mismatch_message,
    mismatches,
    recorded_versions,
)
from kfp_automl.serving.monitoring import package_mismatch

SAME = {
    "scikit-learn": "1.9.1",
    "numpy": "2.4.6",
    "scipy": "1.17.1",
    "pandas": "3.1.1",
    "joblib": "1.6.0",
    "lightgbm": "4.7.0",
    "pyarrow": "26.0.1",
    "prometheus-client": "0.26.0",
}


def test_every_checked_package_is_one_the_package_step_records():
    assert set(MODEL_PACKAGES) <= set(RUNTIME_PACKAGES)
    assert {"scikit-learn", "numpy", "scipy", "pandas", "joblib", "lightgbm"} <= set(MODEL_PACKAGES)


def test_the_same_versions_are_no_mismatch():
    assert mismatches(SAME, dict(SAME)) == []


@pytest.mark.parametrize(
    ("package", "installed"),
    [
        ("scikit-learn", "1.9.0"),  # a patch release counts: scikit-learn pickles are exact
        ("scikit-learn", "1.10.1"),
        ("numpy", "2.4.7"),
        ("scipy", "1.16.0"),
        ("pandas", "3.1.1rc1"),
        ("joblib", "1.5.0"),
        ("lightgbm", "4.7.0.post1"),
    ],
)
def test_any_other_version_of_a_model_package_is_a_mismatch(package, installed):
    here = {**SAME, package: installed}
    assert mismatches(SAME, here) == [Mismatch(package, SAME[package], installed)]


def test_a_recorded_package_that_is_not_installed_is_a_mismatch():
    (found,) = mismatches(SAME, {**SAME, "lightgbm": None})
    assert found == Mismatch("lightgbm", "4.7.0", None)
    assert found.describe() == "lightgbm recorded 4.7.0, installed not installed"


def test_packages_that_do_not_touch_the_model_and_unrecorded_ones_are_not_compared():
    here = {**SAME, "pyarrow": "99.0.0", "prometheus-client": "0.1.0"}
    assert mismatches(SAME, here) == []
    only_sklearn = {"scikit-learn": "1.9.1"}
    assert mismatches(only_sklearn, {"numpy": "0.1"} | only_sklearn) == []


def test_several_mismatches_come_in_a_fixed_order():
    here = {**SAME, "lightgbm": "4.0.0", "scikit-learn": "1.8.0", "numpy": "2.0.0"}
    assert [m.package for m in mismatches(SAME, here)] == ["scikit-learn", "numpy", "lightgbm"]


def test_recorded_versions_of_old_or_odd_metadata_are_empty():
    assert recorded_versions({}) == {}
    assert recorded_versions({RECORD_KEY: "scikit-learn==1.9.1"}) == {}
    assert recorded_versions({RECORD_KEY: {"numpy": 2}}) == {"numpy": "2"}
    assert check_model_packages({"sha256": "abc"}) == []  # packaged before versions were recorded


def test_installed_versions_are_what_the_package_metadata_says():
    found = installed_versions(["scikit-learn", "no-such-package-kfp-automl"])
    assert found == {
        "scikit-learn": metadata.version("scikit-learn"),
        "no-such-package-kfp-automl": None,
    }


def test_a_model_packaged_here_matches_and_one_from_elsewhere_does_not():
    recorded = runtime_versions()
    assert set(recorded) == set(RUNTIME_PACKAGES)
    assert check_model_packages({RECORD_KEY: recorded}) == []
    older = {**recorded, "scikit-learn": "0.24.2"}
    assert check_model_packages({RECORD_KEY: older}) == [
        Mismatch("scikit-learn", "0.24.2", metadata.version("scikit-learn"))
    ]


def test_the_message_names_the_model_each_package_and_both_versions_on_one_line():
    found = [Mismatch("scikit-learn", "0.24.2", "1.9.1"), Mismatch("lightgbm", "4.7.0", None)]
    text = mismatch_message("automl-churn:abc", found)
    assert "\n" not in text
    for part in ("automl-churn:abc", "scikit-learn recorded 0.24.2, installed 1.9.1",
                 "lightgbm recorded 4.7.0, installed not installed", "serving image"):  # fmt: skip
        assert part in text


def test_the_mismatch_gauge_has_one_series_per_package():
    registry = CollectorRegistry()
    found = [Mismatch("scikit-learn", "0.24.2", "1.9.1"), Mismatch("lightgbm", "4.7.0", None)]
    package_mismatch("automl-churn", "abc", found, registry=registry)
    samples = {
        (s.labels["package"], s.labels["recorded"], s.labels["installed"]): s.value
        for metric in registry.collect()
        for s in metric.samples
        if s.name == "automl_package_mismatch"
    }
    assert samples == {("scikit-learn", "0.24.2", "1.9.1"): 1.0, ("lightgbm", "4.7.0", "none"): 1.0}
