"""components/evaluate: holdout metrics and intervals, diagnostics, report, summary, model card."""

from __future__ import annotations

import json
import math
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_curve

import kfp_automl
from kfp_automl.components.evaluate.bootstrap import MIN_ROWS, bootstrap_intervals
from kfp_automl.components.evaluate.evaluate import MAX_ROC_POINTS, diagnose, evaluate, run
from kfp_automl.components.evaluate.learning_curve import FRACTIONS, learning_curve
from kfp_automl.components.evaluate.learning_curve import MIN_ROWS as LC_MIN_ROWS
from kfp_automl.components.evaluate.model_card import (
    limitations,
    model_card,
    model_card_markdown,
    summary_markdown,
)
from kfp_automl.components.evaluate.report import render_report, section_ids
from kfp_automl.components.evaluate.slices import MISSING, default_slice_column, slice_metrics
from kfp_automl.components.tune.families import build_model
from kfp_automl.contracts.model_info import ModelInfo
from kfp_automl.contracts.profile import Bins
from kfp_automl.contracts.schema import Schema
from kfp_automl.runtime.metrics import METRICS, task_metrics
from tests.support.frames import schema_dict, schema_for, synthetic_frame


def _fit(task: str, n_train: int = 240, family: str = "linear"):
    df = synthetic_frame(n_train, task, seed=11)
    model = build_model(schema_for(task), {"family": family})
    return model.fit(df.drop(columns=["target"]), df["target"])


def _schema(task: str) -> Schema:
    """The hand-written schema with what prepare also records (categories, missing rates)."""
    return Schema.from_dict(_schema_json(task))


def _schema_json(task: str) -> dict:
    schema = schema_dict(task)
    schema["features"][0]["missing_rate"] = 0.1
    schema["features"][2] |= {"n_categories": 4, "missing_rate": 0.1}
    schema["data_fingerprint"] = "f" * 64
    schema["rows"] = {"input": 700, "train": 400, "valid": 100, "test": 200}
    return schema


@pytest.fixture(scope="module")
def binary_model():
    return _fit("classification")


@pytest.fixture(scope="module")
def binary_eval(binary_model):
    test = synthetic_frame(90, "classification", seed=12)
    return evaluate(binary_model, test, schema_for("classification")), test


def test_binary_metrics_and_confusion(binary_eval, binary_model):
    ev, test = binary_eval
    assert ev.task == "classification"
    assert ev.metric == "roc_auc"  # the binary default
    assert set(ev.metrics) == {m.name for m in task_metrics("classification", 2)}
    assert {"pr_auc", "brier"} <= set(ev.metrics)
    assert all(math.isfinite(v) for v in ev.metrics.values())
    assert ev.undefined == {}
    assert ev.primary_score == ev.metrics["roc_auc"]
    assert ev.metrics["roc_auc"] > 0.8  # a learnable problem: the model is really scored
    assert ev.n_test == len(test) == 90
    assert ev.labels == ["no", "yes"] == list(binary_model.classes_)
    cm = np.array(ev.confusion)
    assert cm.shape == (2, 2)
    assert cm.sum() == len(test)
    # rows are the actual classes
    assert cm.sum(axis=1).tolist() == [int((test["target"] == c).sum()) for c in ev.labels]
    assert np.trace(cm) / cm.sum() == pytest.approx(ev.metrics["accuracy"])
    per_class = {c["class"]: c for c in ev.per_class()}
    assert per_class["yes"]["rows"] == cm[1].sum()
    assert per_class["yes"]["recall"] == pytest.approx(cm[1, 1] / cm[1].sum())
    assert per_class["yes"]["precision"] == pytest.approx(cm[1, 1] / cm[:, 1].sum())
    assert per_class["yes"]["f1"] == pytest.approx(ev.metrics["f1"])


def test_every_metric_has_an_interval_around_it(binary_eval):
    ev, _ = binary_eval
    assert set(ev.intervals) == set(ev.metrics)
    assert ev.n_bootstrap == 200
    for name, value in ev.metrics.items():
        iv = ev.intervals[name]
        assert iv.defined and iv.reason == "", name
        assert iv.low <= value <= iv.high, name
        assert iv.low < iv.high
        assert iv.n_resamples >= 180  # at most 10 % undefined


def test_binary_roc_points(binary_eval):
    ev, _ = binary_eval
    roc = ev.roc
    assert roc is not None and set(roc) == {"fpr", "tpr", "threshold"}
    fpr, tpr, thr = (np.array(roc[k]) for k in ("fpr", "tpr", "threshold"))
    assert len(fpr) == len(tpr) == len(thr) <= MAX_ROC_POINTS
    for arr in (fpr, tpr, thr):
        assert np.isfinite(arr).all()
        assert ((arr >= 0) & (arr <= 1)).all()
    assert (np.diff(fpr) >= 0).all() and (np.diff(tpr) >= 0).all()
    assert (fpr[0], tpr[0]) == (0.0, 0.0) and (fpr[-1], tpr[-1]) == (1.0, 1.0)
    json.dumps(roc)  # stored as KFP metadata / JSON: no inf


def test_roc_is_thinned_to_max_points():
    # many test rows with overlapping classes: the raw curve has far more points than allowed
    model = _fit("classification", n_train=300)
    test = synthetic_frame(4000, "classification", seed=13)
    test["target"] = np.where(
        np.random.default_rng(0).random(len(test)) < 0.3, "yes", test["target"]
    )
    proba = model.predict_proba(test.drop(columns=["target"]))[:, 1]
    raw_fpr, _, _ = roc_curve(test["target"], proba, pos_label="yes")
    assert len(raw_fpr) > MAX_ROC_POINTS
    ev = evaluate(model, test, schema_for("classification"), n_bootstrap=0)
    fpr, tpr = np.array(ev.roc["fpr"]), np.array(ev.roc["tpr"])
    assert 0.9 * MAX_ROC_POINTS <= len(fpr) <= MAX_ROC_POINTS
    assert (np.diff(fpr) >= 0).all() and (np.diff(tpr) >= 0).all()
    assert (fpr[0], tpr[0]) == (0.0, 0.0) and (fpr[-1], tpr[-1]) == (1.0, 1.0)
    # thinned points lie on the raw curve
    assert set(zip(fpr, tpr, strict=True)) <= set(
        zip(*roc_curve(test["target"], proba, pos_label="yes")[:2], strict=True)
    )


def test_evaluate_uses_requested_metric(binary_model):
    test = synthetic_frame(60, "classification", seed=14)
    ev = evaluate(binary_model, test, schema_for("classification"), metric="log_loss")
    assert ev.metric == "log_loss"
    assert ev.primary_score == ev.metrics["log_loss"] > 0


def test_multiclass_has_confusion_but_no_roc():
    model = _fit("multiclass")
    test = synthetic_frame(120, "multiclass", seed=15)
    ev = evaluate(model, test, schema_for("multiclass"), n_bootstrap=50)
    assert ev.metric == "f1_macro"
    assert "f1" not in ev.metrics and {"roc_auc", "pr_auc", "brier"} <= set(ev.metrics)
    assert 0 <= ev.metrics["brier"] <= 2
    assert ev.roc is None
    assert np.array(ev.confusion).shape == (3, 3)
    assert np.array(ev.confusion).sum() == 120


def test_regression_path():
    model = _fit("regression")
    test = synthetic_frame(80, "regression", seed=16)
    ev = evaluate(model, test, schema_for("regression"))
    assert ev.task == "regression"
    assert ev.metric == "rmse"
    assert set(ev.metrics) == {"rmse", "mae", "r2", "mape"}
    assert ev.metrics["rmse"] >= ev.metrics["mae"] > 0  # RMSE is never below MAE
    assert ev.metrics["r2"] > 0.5
    assert ev.confusion == [] and ev.labels == [] and ev.roc is None
    assert ev.n_test == 80
    assert all(ev.intervals[m].defined for m in ev.metrics)


def test_regression_with_a_zero_target_reports_mape_as_undefined():
    model = _fit("regression")
    test = synthetic_frame(80, "regression", seed=16)
    test.loc[3, "target"] = 0.0
    ev = evaluate(model, test, schema_for("regression"))
    assert "mape" not in ev.metrics and "mape" not in ev.intervals
    assert ev.undefined == {"mape": "a true value is 0"}
    page = render_report(ev, _schema("regression"), None, _info())
    assert "not defined" in page and "a true value is 0" in page
    assert "inf" not in page.replace("info", "")
    assert any("mape is not defined" in w for w in limitations(ev, _schema("regression")))


# --- bootstrap ---------------------------------------------------------------


def _scores(n: int, seed: int):
    """Binary truth, labels and probabilities of a decent model on n rows."""
    r = np.random.default_rng(seed)
    y = r.choice(["no", "yes"], size=n, p=[0.6, 0.4])
    p = np.clip(0.35 * (y == "yes") + 0.65 * r.random(n), 0, 1)
    return y, np.where(p > 0.5, "yes", "no"), np.column_stack([1 - p, p])


BINARY = task_metrics("classification", 2)


def test_bootstrap_interval_narrows_with_more_rows():
    small = bootstrap_intervals(BINARY, *_scores(100, 1), ["no", "yes"], 100, seed=0)
    large = bootstrap_intervals(BINARY, *_scores(2000, 1), ["no", "yes"], 100, seed=0)
    for m in BINARY:
        width_small = small[m.name].high - small[m.name].low
        width_large = large[m.name].high - large[m.name].low
        assert width_large < 0.5 * width_small, m.name  # ~ 1/sqrt(20) in theory


def test_bootstrap_is_reproducible_with_the_seed():
    args = (BINARY, *_scores(200, 2), ["no", "yes"], 40)
    assert bootstrap_intervals(*args, seed=7) == bootstrap_intervals(*args, seed=7)
    assert bootstrap_intervals(*args, seed=7) != bootstrap_intervals(*args, seed=8)


def test_bootstrap_missing_with_reason_for_a_tiny_holdout():
    out = bootstrap_intervals(BINARY, *_scores(MIN_ROWS - 1, 3), ["no", "yes"], 200)
    for iv in out.values():
        assert not iv.defined and iv.low is None
        assert iv.reason == f"the holdout has {MIN_ROWS - 1} rows; an interval needs at least 30"


def test_bootstrap_missing_when_resamples_lack_a_class():
    y, pred, proba = _scores(60, 4)
    y[:] = "no"
    y[0] = "yes"  # one positive row: ~37 % of resamples have none
    out = bootstrap_intervals(BINARY, y, pred, proba, ["no", "yes"], 200, seed=0)
    for name in ("roc_auc", "pr_auc"):
        assert not out[name].defined
        assert "resamples (no row of class 'yes')" in out[name].reason
        assert "too small" in out[name].reason
    assert out["accuracy"].defined and out["brier"].defined


def test_bootstrap_turned_off():
    out = bootstrap_intervals(BINARY, *_scores(100, 5), ["no", "yes"], 0)
    assert all(iv.reason == "bootstrap turned off (n_bootstrap=0)" for iv in out.values())


def test_bootstrap_regression_and_multiclass():
    r = np.random.default_rng(6)
    y = r.normal(10, 2, size=300)
    pred = y + r.normal(0, 1, size=300)
    reg = bootstrap_intervals(task_metrics("regression"), y, pred, None, [], 200)
    rmse = float(np.sqrt(np.mean((y - pred) ** 2)))
    assert reg["rmse"].low < rmse < reg["rmse"].high
    classes = ["a", "b", "c"]
    y3 = r.choice(classes, size=300)
    raw = r.random((300, 3)) + np.column_stack([y3 == c for c in classes])
    proba = raw / raw.sum(axis=1, keepdims=True)
    pred3 = np.array(classes)[proba.argmax(axis=1)]
    multi = bootstrap_intervals(task_metrics("classification", 3), y3, pred3, proba, classes, 100)
    assert all(iv.defined for iv in multi.values())


def test_tiny_holdout_is_reported(binary_model):
    test = synthetic_frame(20, "classification", seed=18)
    ev = evaluate(binary_model, test, schema_for("classification"))
    assert not any(iv.defined for iv in ev.intervals.values())
    page = render_report(ev, _schema("classification"), None, _info())
    assert "missing: the holdout has 20 rows; an interval needs at least 30" in page
    assert "Some intervals are missing" in page
    warnings = limitations(ev, _schema("classification"))
    assert warnings[0].startswith("Tiny holdout (20 rows): no confidence intervals")
    assert "Tiny holdout" in summary_markdown(ev, _schema("classification"), _info())


# --- diagnostics ---------------------------------------------------------------


@pytest.fixture(scope="module")
def binary_diag(binary_model):
    test = synthetic_frame(200, "classification", seed=21)
    train_valid = synthetic_frame(400, "classification", seed=22)
    schema = _schema("classification")
    ev = evaluate(binary_model, test, schema, seed=1)
    return ev, diagnose(binary_model, ev, test, schema, train_valid, seed=1), test


def test_permutation_importance_ranks_the_signal_first(binary_diag):
    _, diag, _ = binary_diag
    imp = diag.importance
    assert imp.metric == "roc_auc" and imp.skipped == ""
    assert sorted(imp.features) == ["colour", "x1", "x2"]  # the input columns
    assert imp.features[0] == "x1"  # the target is mostly 1.5 * x1
    assert imp.mean == sorted(imp.mean, reverse=True)
    assert imp.mean[0] > 0.1


def test_partial_dependence_of_the_top_features(binary_diag):
    _, diag, _ = binary_diag
    deps = {d.feature: d for d in diag.dependence}
    assert list(deps) == diag.importance.top(3)
    x1, colour = deps["x1"], deps["colour"]
    assert x1.kind == "numeric" and len(x1.grid) == 20 and x1.outputs == ["P(yes)"]
    assert x1.average[0][-1] > x1.average[0][0]  # more x1, more 'yes'
    # categorical: its observed categories (missing values are not a grid point)
    assert colour.kind == "categorical" and sorted(colour.grid) == ["amber", "blue", "green", "red"]
    by_colour = dict(zip(colour.grid, colour.average[0], strict=True))
    assert by_colour["red"] == max(by_colour.values())  # 'red' adds to the signal


def test_learning_curve_is_cheap_and_sized(binary_diag):
    _, diag, _ = binary_diag
    lc = diag.learning
    assert lc.skipped == "" and lc.metric == "roc_auc" and lc.n_rows == 400
    assert 2 <= len(lc.sizes) <= len(FRACTIONS) and lc.sizes == sorted(lc.sizes)
    assert lc.sizes[-1] == 400 * 2 // 3  # a whole training fold of 3-fold CV
    assert all(0.5 < v <= 1 for v in lc.cv_mean)


def test_learning_curve_skipped_with_reason():
    model = _fit("classification")
    metric = METRICS["roc_auc"]
    tiny = synthetic_frame(LC_MIN_ROWS - 1, "classification", seed=23)
    lc = learning_curve(model, tiny, "target", "classification", metric)
    assert lc.sizes == [] and lc.skipped == (
        f"train+valid has {LC_MIN_ROWS - 1} rows; a learning curve needs at least {LC_MIN_ROWS}"
    )
    lc = learning_curve(model, None, "target", "classification", metric)
    assert lc.skipped == "no training rows were given to evaluate"


class TickingClock:
    """Each reading one second after the one before: every size of the curve 'takes' 1 s."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def test_learning_curve_leaves_out_the_sizes_past_its_allowance():
    model = _fit("classification")
    data = synthetic_frame(600, "classification", seed=25)
    metric = METRICS["roc_auc"]
    full = learning_curve(model, data, "target", "classification", metric, allowance_s=1e9)
    assert len(full.sizes) == len(FRACTIONS) and full.note == ""
    # 1 s a size on a clock read 3 times a size: the third size would end past 10 s
    boxed = learning_curve(
        model, data, "target", "classification", metric, allowance_s=10, clock=TickingClock()
    )
    assert boxed.sizes == full.sizes[:3] and boxed.cv_mean == full.cv_mean[:3]
    assert boxed.note == f"sizes {full.sizes[3]:,} left out: past the 10s allowance"
    only_one = learning_curve(
        model, data, "target", "classification", metric, allowance_s=0.5, clock=TickingClock()
    )
    assert only_one.sizes == [] and only_one.skipped.startswith(
        f"only its smallest size ({full.sizes[0]:,} rows, 3 fits in 1.0s) fitted within"
    )


def test_a_model_slower_to_fit_than_the_allowance_gets_no_curve(binary_model):
    data = synthetic_frame(400, "classification", seed=26)
    lc = learning_curve(
        binary_model, data, "target", "classification", METRICS["roc_auc"], fit_s=40
    )
    assert lc.sizes == [] and lc.skipped == (
        "the model took 40s to fit on 400 rows, more than the curve's 6s allowance"
    )


def test_diagnose_passes_the_refit_time_to_the_curve(binary_model):
    test = synthetic_frame(200, "classification", seed=27)
    schema = _schema("classification")
    ev = evaluate(binary_model, test, schema)
    train_valid = synthetic_frame(300, "classification", seed=28)
    diag = diagnose(binary_model, ev, test, schema, train_valid, fit_s=60)
    assert "took 60s to fit" in diag.learning.skipped


def test_learning_curve_for_regression_reports_losses_as_they_are():
    model = _fit("regression", family="random_forest")
    data = synthetic_frame(300, "regression", seed=24)
    lc = learning_curve(model, data, "target", "regression", METRICS["rmse"])
    assert lc.skipped == ""
    assert all(v > 0 for v in lc.cv_mean + lc.train_mean)  # rmse, not -rmse
    assert lc.cv_mean[-1] < lc.cv_mean[0]  # more rows, lower error


def test_slices_use_the_default_column(binary_diag):
    ev, diag, test = binary_diag
    sr = diag.slices
    assert sr.column == "colour" and sr.metric == "roc_auc" and sr.skipped == ""
    assert sum(s.rows for s in sr.slices) == len(test)
    assert {s.value for s in sr.slices} == {"red", "green", "blue", "amber", MISSING}
    assert sr.overall == ev.metrics["roc_auc"]


def test_default_slice_column_is_the_categorical_with_fewest_categories():
    def schema(*features):
        return Schema.from_dict({"target": "t", "task": "regression", "features": list(features)})

    many = schema(
        {"name": "n", "kind": "numeric"},
        {"name": "many", "kind": "categorical", "n_categories": 9},
        {"name": "one", "kind": "categorical", "n_categories": 1},
        {"name": "few", "kind": "categorical", "n_categories": 3},
        {"name": "few2", "kind": "categorical", "n_categories": 3},
    )
    assert default_slice_column(many) == "few"
    assert default_slice_column(schema({"name": "n", "kind": "numeric"})) == ""


def test_slice_much_worse_than_overall_is_flagged():
    r = np.random.default_rng(25)
    n = 200
    column = pd.Series(np.where(np.arange(n) < 150, "good", "bad"))
    column[:5] = None
    y = r.choice(["no", "yes"], size=n)
    p = np.where(y == "yes", 0.8, 0.2)
    p[150:] = r.random(50)  # the 'bad' rows: a coin flip
    proba = np.column_stack([1 - p, p])
    pred = np.where(p > 0.5, "yes", "no")
    metric = METRICS["accuracy"]
    overall = float(np.mean(pred == y))
    sr = slice_metrics(column, "segment", metric, overall, y, pred, proba, ["no", "yes"])
    by = {s.value: s for s in sr.slices}
    assert set(by) == {"good", "bad", MISSING}
    assert by["bad"].flagged and not by["good"].flagged
    assert not by[MISSING].flagged  # 5 rows: too few to judge
    assert by["good"].score == 1.0 and by["bad"].rows == 50
    assert sr.flagged == [by["bad"]]


def test_slice_metric_undefined_on_a_one_class_slice():
    y = np.array(["no"] * 40 + ["yes", "no"] * 20)
    p = np.linspace(0, 1, 80)
    column = pd.Series(["a"] * 40 + ["b"] * 40)
    sr = slice_metrics(
        column,
        "c",
        METRICS["roc_auc"],
        0.7,
        y,
        np.where(p > 0.5, "yes", "no"),
        np.column_stack([1 - p, p]),
        ["no", "yes"],
    )
    a = next(s for s in sr.slices if s.value == "a")
    assert a.score is None and a.undefined == "no row of class 'yes'" and not a.flagged


def test_numeric_slice_column_is_cut_into_quartiles():
    r = np.random.default_rng(26)
    column = pd.Series(r.normal(size=400))
    y = r.normal(size=400)
    sr = slice_metrics(column, "x", METRICS["rmse"], 1.0, y, y + 0.1, None, [])
    assert len(sr.slices) == 4 and all(s.rows == 100 for s in sr.slices)
    lows = [float(s.value.strip("(").split(",")[0]) for s in sr.slices]
    assert lows == sorted(lows)  # low to high, not alphabetical


def test_unknown_slice_column_is_skipped_with_reason(binary_model):
    test = synthetic_frame(60, "classification", seed=27)
    schema = _schema("classification")
    ev = evaluate(binary_model, test, schema, n_bootstrap=0)
    diag = diagnose(binary_model, ev, test, schema, None, slice_column="nope")
    assert diag.slices.skipped == "'nope' is not an input column"
    assert diag.learning.skipped == "no training rows were given to evaluate"


# --- report --------------------------------------------------------------------


class _Page(HTMLParser):
    """Sections (id and whether they have a heading), images, scripts and external links."""

    def __init__(self):
        super().__init__()
        self.sections: dict[str, bool] = {}
        self.images: list[dict] = []
        self.external: list[str] = []
        self.scripts = 0
        self._open: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self._open.append(a["id"])
            self.sections[a["id"]] = False
        elif tag in ("h2", "h3") and self._open:
            self.sections[self._open[-1]] = True
        elif tag == "img":
            self.images.append(a)
        elif tag == "script":
            self.scripts += 1
        for key in ("src", "href"):
            if a.get(key, "").startswith(("http:", "https:", "//")):
                self.external.append(a[key])

    def handle_endtag(self, tag):
        if tag == "section":
            self._open.pop()


def _parse(page: str) -> _Page:
    parsed = _Page()
    parsed.feed(page)
    return parsed


def _check_page(page: str, task: str) -> _Page:
    parsed = _parse(page)
    assert list(parsed.sections)[: len(section_ids(task))] == section_ids(task)
    assert all(parsed.sections.values()), "every section has a heading"
    assert parsed.scripts == 0 and parsed.external == []
    assert parsed.images
    for img in parsed.images:
        assert img["src"].startswith("data:image/png;base64,")
        assert len(img["src"]) > 2000  # a real picture
        assert img.get("alt", "").strip()
    assert "Skipped" not in page
    return parsed


INFO = {
    "family": "linear",
    "params": '{"C": 1.0}',
    "metric": "roc_auc",
    "valid_score": 0.9123,
    "n_trials": 2,
    "sha256": "a" * 64,
}


def _info(**changes) -> ModelInfo:
    """INFO (the tune step's artifact metadata, params as KFP carries them) with `changes`."""
    return ModelInfo.from_metadata({**INFO, **changes})


def test_report_binary_has_every_section(binary_diag):
    ev, diag, _ = binary_diag
    board = pd.DataFrame(
        {"family": ["linear", "hist_gb"], "score": [0.91, 0.88], "status": ["ok", "ok"]}
    )
    page = render_report(ev, _schema("classification"), board, _info(), diag)
    assert page.startswith("<!doctype html>") and page.rstrip().endswith("</html>")
    parsed = _check_page(page, "classification")
    assert "residuals" not in parsed.sections
    # roc, pr, calibration, confusion, learning curve, importance, 3 partial dependences
    assert len(parsed.images) == 9
    assert f"Holdout metrics ({ev.n_test} rows)" in page
    for name, value in ev.metrics.items():
        iv = ev.intervals[name]
        assert f"{value:.4f}" in page
        assert f"[{iv.low:.4f}, {iv.high:.4f}]" in page
    assert "<td><b>roc_auc</b></td>" in page  # the primary metric stands out
    assert "pred no" in page and "pred yes" in page
    for row in ev.confusion:
        for count in row:
            assert f"<td>{count}</td>" in page
    assert "validation roc_auc: 0.9123" in page
    assert "Leaderboard (top 25 of 2 trials)" in page
    assert "Metrics by slice of colour" in page


def test_report_multiclass_has_every_section():
    model = _fit("multiclass", family="random_forest")
    schema = _schema("multiclass")
    test = synthetic_frame(150, "multiclass", seed=28)
    ev = evaluate(model, test, schema, n_bootstrap=50)
    diag = diagnose(model, ev, test, schema, synthetic_frame(300, "multiclass", seed=29))
    page = render_report(ev, schema, None, _info(family="random_forest"), diag)
    parsed = _check_page(page, "classification")
    assert "(one vs rest)" in page
    assert {d.outputs[0] for d in diag.dependence} == {"P(a)"}
    assert all(len(d.outputs) == 3 for d in diag.dependence)
    assert len(parsed.images) == 9


def test_report_regression_has_every_section():
    model = _fit("regression", family="random_forest")
    schema = _schema("regression")
    test = synthetic_frame(120, "regression", seed=30)
    ev = evaluate(model, test, schema, n_bootstrap=50)
    diag = diagnose(model, ev, test, schema, synthetic_frame(300, "regression", seed=31))
    page = render_report(ev, schema, pd.DataFrame(), _info(), diag)
    parsed = _check_page(page, "regression")
    assert not {"roc", "pr", "calibration", "confusion"} & set(parsed.sections)
    assert "Confusion matrix" not in page
    assert "Leaderboard (no trials)" in page
    assert "<td><b>rmse</b></td>" in page and f"{ev.metrics['rmse']:.4f}" in page
    assert "mape is a fraction" in page
    # residuals, learning curve, importance, 3 partial dependences
    assert len(parsed.images) == 6


def test_report_without_diagnostics_says_why(binary_eval):
    ev, _ = binary_eval
    page = render_report(ev, _schema("classification"), None, _info())
    parsed = _parse(page)
    assert list(parsed.sections)[:7] == section_ids("classification")[:7]
    assert page.count("Skipped: not computed.") == 4


def _report_schema():
    schema = schema_dict("classification")
    schema["features"] = [
        {**schema["features"][0], "min": -1.0, "max": 2.0, "missing_rate": 0.1},
        {"name": "<b>x</b>", "kind": "categorical", "dtype": "str", "n_categories": 3},
    ]
    schema["dropped"] = [
        {"name": "cust_id", "reason": "identifier: a different value in every row"}
    ]
    return schema


def test_render_report_features_and_dropped(binary_eval):
    ev, _ = binary_eval
    page = render_report(ev, Schema.from_dict(_report_schema()), None, _info())
    assert '<section id="dropped">' in page and "cust_id" in page
    assert "<td>3</td>" in page  # n_categories as a count, not 3.0000
    assert "NaN" not in page


def test_render_report_escapes_html(binary_eval):
    ev, _ = binary_eval
    schema = _report_schema()
    schema["target"] = "<script>alert(1)</script>"
    info = _info(family="<i>fam</i>", params={"C": "<img>"}, valid_score=0.5, n_trials=1)
    page = render_report(ev, Schema.from_dict(schema), None, info)
    assert "<b>x</b>" not in page
    assert "&lt;b&gt;x&lt;/b&gt;" in page
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "<i>fam</i>" not in page and "<img>" not in page


# --- summary and model card ------------------------------------------------------


def test_the_report_and_the_model_card_say_which_threshold_answers(binary_diag):
    ev, diag, _ = binary_diag
    schema = Schema.from_dict(_schema_json("classification"))
    info = _info(decision_threshold=0.297, threshold_class="yes", threshold_score=0.64)
    card = model_card(ev, schema, info, diag)
    assert card["model"]["decision_threshold"] == 0.297
    assert card["model"]["threshold_class"] == "yes"
    assert "decision threshold: yes when its probability is at least 0.297" in (
        model_card_markdown(card)
    )
    page = render_report(ev, Schema.from_dict(_report_schema()), None, info)
    assert "answers <b>yes</b> when its probability is at least 0.297" in page


def test_model_card_fields(binary_diag):
    ev, diag, _ = binary_diag
    raw = _schema_json("classification")
    raw["features"][1]["missing_rate"] = 0.35
    schema = Schema.from_dict(raw)
    card = model_card(ev, schema, _info(), diag)
    json.dumps(card, allow_nan=False)  # strict JSON
    assert card["code_version"] == kfp_automl.__version__
    assert card["task"] == "classification" and card["target"] == "target"
    assert card["classes"] == ["no", "yes"]
    assert card["data"]["fingerprint"] == "f" * 64
    assert card["data"]["rows"] == schema.rows
    assert [(f["name"], f["kind"]) for f in card["data"]["features"]] == [
        ("x1", "numeric"),
        ("x2", "numeric"),
        ("colour", "categorical"),
    ]
    assert card["model"] == {
        "family": "linear",
        "params": {"C": 1.0},
        "tuned_metric": "roc_auc",
        "validation_score": 0.9123,
        "n_trials": 2,
        "sha256": "a" * 64,
        "decision_threshold": None,  # roc_auc: the most probable class
        "threshold_class": None,
    }
    e = card["evaluation"]
    assert e["holdout_rows"] == 200 and e["primary_metric"] == "roc_auc"
    assert e["bootstrap"] == {"resamples": 200, "seed": 1, "level": 0.95}
    assert set(e["metrics"]) == set(ev.metrics)
    roc = e["metrics"]["roc_auc"]
    assert roc["value"] == ev.metrics["roc_auc"]
    assert (roc["ci_low"], roc["ci_high"]) == (
        ev.intervals["roc_auc"].low,
        ev.intervals["roc_auc"].high,
    )
    assert e["top_features"] == diag.importance.top(3)
    assert [c["class"] for c in e["per_class"]] == ["no", "yes"]
    assert e["slices"]["column"] == "colour"
    assert "Feature 'x2' is missing in 35% of rows (imputed)." in card["limitations"]

    md = model_card_markdown(card)
    assert md.startswith("# Model card: target (classification)")
    for text in ("f" * 64, "| colour | categorical | 10.0% |", "## Known limitations", "x2"):
        assert text in md
    assert f"95% CI [{roc['ci_low']:.4f}, {roc['ci_high']:.4f}]" in md


def test_limitations_name_weak_classes_and_slices():
    model = _fit("multiclass")
    schema = _schema("multiclass")
    test = synthetic_frame(150, "multiclass", seed=32)
    test["target"] = np.where(np.arange(150) % 3 == 0, "b", test["target"])  # noise on 'b'
    ev = evaluate(model, test, schema, n_bootstrap=50)
    weak = [w for w in limitations(ev, schema) if w.startswith("Weak on class")]
    weak_classes = {c["class"] for c in ev.per_class() if min(c["f1"], c["recall"]) < 0.5}
    assert weak_classes and len(weak) == len(weak_classes)
    for c in weak_classes:
        assert any(f"class {c!r}" in w for w in weak)


def test_summary_markdown(binary_diag):
    ev, diag, _ = binary_diag
    md = summary_markdown(ev, _schema("classification"), _info(), diag)
    iv = ev.intervals["roc_auc"]
    assert md.startswith("## target: classification")
    assert "**linear**" in md
    assert f"{ev.metrics['roc_auc']:.4f} (95% CI {iv.low:.4f} to {iv.high:.4f})" in md
    assert "top features: " + ", ".join(diag.importance.top(3)) in md
    assert len(md.splitlines()) < 20


def test_run_writes_report_summary_and_card(tmp_path, binary_model):
    from kfp_automl.runtime.model_file import save_model

    schema = _schema("classification")
    sha = save_model(binary_model, tmp_path / "model")
    for name, n, seed in (("train", 300, 40), ("valid", 100, 41), ("test", 120, 42)):
        synthetic_frame(n, "classification", seed=seed).to_parquet(tmp_path / f"{name}.parquet")
    schema.write(tmp_path / "schema.json")
    ev = run(
        model_dir=str(tmp_path / "model"),
        model_info=_info(sha256=sha),
        test_path=str(tmp_path / "test.parquet"),
        schema_path=str(tmp_path / "schema.json"),
        leaderboard_path=str(tmp_path / "missing-leaderboard.csv"),
        report_path=str(tmp_path / "report.html"),
        prediction_reference_path=str(tmp_path / "prediction.json"),
        train_path=str(tmp_path / "train.parquet"),
        valid_path=str(tmp_path / "valid.parquet"),
        summary_path=str(tmp_path / "summary.md"),
        model_card_dir=str(tmp_path / "card"),
        n_bootstrap=50,
        seed=3,
    )
    assert ev.n_bootstrap == 50 and ev.seed == 3
    # the reference of prediction drift: the model's test-row predictions, one bin per class
    reference = Bins.read(tmp_path / "prediction.json")
    assert reference.categories == ("no", "yes") and sum(reference.shares) == pytest.approx(1)
    assert reference.shares[1] == pytest.approx(np.mean(ev.pred == "yes"))
    assert reference.thresholds["psi"] > 0
    page = (tmp_path / "report.html").read_text()
    _check_page(page, "classification")
    assert "train+valid (400 rows)" in page
    card = json.loads((tmp_path / "card" / "model_card.json").read_text())
    assert card["model"]["sha256"] == sha
    assert (tmp_path / "card" / "model_card.md").read_text().startswith("# Model card")
    assert (tmp_path / "summary.md").read_text().startswith("## target: classification")
