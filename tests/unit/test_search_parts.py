"""The search's Ray-free parts: validation plans, budget steps, ensemble selection, warm start,
grids, target encoding, the search report."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from kfp_automl.components.tune import ensemble, portfolio, validation
from kfp_automl.components.tune.families import (
    FAMILIES,
    build_model,
    domains,
    family_params,
    fits_space,
    flat_config,
    grid,
    imbalanced,
    initial_configs,
    preprocessor,
)
from kfp_automl.components.tune.trial import MAX_STEP, budgets, grow, predict_output
from kfp_automl.components.tune.warm_start import read_leaderboard, seeds
from kfp_automl.errors import UserError
from kfp_automl.runtime.metrics import METRICS
from tests.support.frames import schema_for, synthetic_frame

# --- validation -------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "rows", "expected"),
    [
        ("auto", 500, "cv"),
        ("auto", validation.CV_MAX_ROWS, "cv"),
        ("auto", validation.CV_MAX_ROWS + 1, "holdout"),
        ("cv", 10**6, "cv"),
        ("holdout", 100, "holdout"),
    ],
)
def test_choose_validation_by_rows_or_forced(kind, rows, expected):
    assert validation.choose(kind, rows) == expected


def test_choose_validation_rejects_unknown():
    with pytest.raises(UserError, match="unknown validation 'kfold'"):
        validation.choose("kfold", 10)


def _split(task: str, n_train: int = 160, n_valid: int = 40):
    df = synthetic_frame(n_train + n_valid, task, seed=3)
    return df.iloc[:n_train], df.iloc[n_train:], schema_for(task)


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_cv_plan_covers_train_and_valid_once(task):
    train, valid, schema = _split(task)
    plan = validation.plan(train, valid, schema, "cv", folds=4, seed=0, repeats=1)
    assert plan.kind == "cv" and len(plan.splits) == 4 and len(plan.X) == 200
    assert sorted(plan.eval_positions) == list(range(200))  # every row scored exactly once
    for fit, score in plan.splits:
        assert not set(fit) & set(score)
        assert len(fit) + len(score) == 200
    if task == "classification":  # stratified: each fold keeps the class share
        share = (plan.y == "yes").mean()
        for _, score in plan.splits:
            assert abs((plan.y.iloc[score] == "yes").mean() - share) < 0.06


def test_holdout_plan_fits_train_scores_valid():
    train, valid, schema = _split("classification")
    plan = validation.plan(train, valid, schema, "holdout")
    [(fit, score)] = plan.splits
    assert list(fit) == list(range(160)) and list(score) == list(range(160, 200))
    assert plan.y.iloc[score].tolist() == valid["target"].tolist()


def test_cv_folds_shrink_to_the_smallest_class():
    train, valid, schema = _split("classification")
    train = pd.concat([train[train["target"] == "no"], train[train["target"] == "yes"].head(2)])
    valid = valid[valid["target"] == "no"]
    plan = validation.plan(train, valid, schema, "cv", folds=5, repeats=1)
    assert len(plan.splits) == 2


def test_cv_repeats_folds_on_small_data_only():
    train, valid, schema = _split("classification")
    plan = validation.plan(train, valid, schema, "cv", folds=4, seed=0)  # 200 rows: repeated
    assert plan.repeats == validation.REPEATS and len(plan.splits) == 4 * validation.REPEATS
    assert "4 folds x 3 repeats" in plan.describe()
    # every row is scored once per repeat, and the repeats shuffle differently
    counts = np.bincount(plan.eval_positions, minlength=200)
    assert (counts == validation.REPEATS).all()
    first, second = plan.splits[0][1], plan.splits[4][1]
    assert set(first) != set(second)
    n = validation.CV_REPEAT_MAX_ROWS + 1
    big = synthetic_frame(n, "classification", seed=4)
    plan = validation.plan(big.iloc[: n - 100], big.iloc[n - 100 :], schema, "cv", folds=4)
    assert plan.repeats == 1 and len(plan.splits) == 4 and plan.describe().endswith("(4 folds)")


def test_keep_positions_bounded_and_fixed():
    assert list(validation.keep_positions(10, 20)) == list(range(10))
    a, b = validation.keep_positions(10_000, 500, seed=1), validation.keep_positions(10_000, 500, 1)
    assert len(a) == 500 and (a == b).all() and (np.diff(a) > 0).all()


# --- budget steps ------------------------------------------------------------


def test_budgets_grow_to_the_full_rounds():
    hgb = FAMILIES["hist_gb"]
    assert budgets(hgb, {"max_iter": 90}) == [(1, 10), (3, 30), (MAX_STEP, 90)]
    assert budgets(hgb, {"max_iter": 2}) == [(1, 1), (MAX_STEP, 2)]  # no repeated budget
    assert budgets(FAMILIES["linear"], {"C": 1.0}) == [(MAX_STEP, None)]


@pytest.mark.parametrize("family", ["hist_gb", "random_forest", "lightgbm", "catboost"])
def test_grown_model_matches_one_fitted_at_full_budget(family):
    """Growing a model in budget steps ends where fitting the full budget at once does."""
    df = synthetic_frame(300, "classification", seed=2)
    X, y = df.drop(columns="target"), df["target"].to_numpy()
    schema = schema_for("classification")
    config = initial_configs([FAMILIES[family]], 300, "classification")[0]
    fam = FAMILIES[family]
    params = {**fam.initial, **family_params(config)}
    pipe = build_model(schema, config, seed=0)
    Xt = pipe[:-1].fit_transform(X, y)
    est = pipe[-1]
    for _, rounds in budgets(fam, params):
        est = grow(est, fam, Xt, y, rounds)
    once = build_model(schema, config, seed=0)
    once.fit(X, y)
    classes = np.unique(y)
    _, grown = predict_output(est, Xt, "classification", classes)
    _, direct = predict_output(once[-1], once[:-1].transform(X), "classification", classes)
    if family == "random_forest":  # same number of trees; warm start draws other seeds
        assert len(est.estimators_) == params["n_estimators"]
        assert np.mean(np.argmax(grown, 1) == np.argmax(direct, 1)) > 0.9
    else:
        np.testing.assert_allclose(grown, direct, atol=1e-6)


# --- ensemble selection -----------------------------------------------------


def _noisy_probs(y01: np.ndarray, noise: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    p = np.clip(0.5 + (y01 - 0.5) * 0.4 + rng.normal(scale=noise, size=len(y01)), 0.01, 0.99)
    return np.column_stack([1 - p, p])


def test_ensemble_of_independent_errors_beats_the_best_single():
    rng = np.random.default_rng(0)
    y01 = rng.integers(0, 2, size=600)
    y = np.where(y01 == 1, "yes", "no")
    preds = {f"t{i}": _noisy_probs(y01, 0.3, seed=i) for i in range(5)}
    sel = ensemble.select(preds, y, METRICS["roc_auc"], np.array(["no", "yes"]))
    assert sel.improves
    assert sel.score > sel.best_single
    assert len(sel.members) >= 3
    assert sum(w for _, w in sel.members) <= ensemble.ROUNDS


def test_ensemble_not_kept_when_one_model_dominates():
    rng = np.random.default_rng(1)
    y01 = rng.integers(0, 2, size=400)
    y = np.where(y01 == 1, "yes", "no")
    perfect = np.column_stack([1.0 - y01, y01.astype(float)])
    preds = {"good": perfect, "bad": _noisy_probs(y01, 0.4, seed=5)}
    sel = ensemble.select(preds, y, METRICS["log_loss"], np.array(["no", "yes"]))
    assert not sel.improves and sel.members == [("good", 1)]


def test_ensemble_regression_minimises_rmse():
    rng = np.random.default_rng(2)
    y = rng.normal(size=500)
    preds = {f"t{i}": y + rng.normal(scale=1.0, size=500) for i in range(4)}
    sel = ensemble.select(preds, y, METRICS["rmse"], np.array([]))
    assert sel.improves and sel.score < sel.best_single


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_ensemble_estimator_is_plain_sklearn(task):
    import pickle

    df = synthetic_frame(200, task, seed=4)
    X, y = df.drop(columns="target"), df["target"]
    schema = schema_for(task)
    members = [
        (build_model(schema, {"family": "linear"}), 2),
        (build_model(schema, {"family": "hist_gb"}), 1),
    ]
    model = ensemble.build(schema.task, members).fit(X, y)
    back = pickle.loads(pickle.dumps(model))
    assert type(back).__module__.startswith("sklearn.")
    if task == "classification":
        proba = back.predict_proba(X)
        np.testing.assert_allclose(proba.sum(axis=1), 1.0)
        assert list(back.classes_) == ["no", "yes"]
        assert set(back.predict(X)) <= {"no", "yes"}
    else:
        assert np.isfinite(back.predict(X)).all()


# --- warm start --------------------------------------------------------------


def _board(rows):
    return pd.DataFrame(
        [
            {"rank": i + 1, "family": f, "params": json.dumps(p), "status": s}
            for i, (f, p, s) in enumerate(rows)
        ]
    )


def test_warm_start_keeps_best_fitting_configs_in_order():
    board = _board(
        [
            ("hist_gb", {"learning_rate": 0.05, "max_iter": 80, "max_leaf_nodes": 16,
                         "min_samples_leaf": 10, "l2_regularization": 0.1}, "ok"),
            ("linear", {"C": 1e6}, "ok"),  # outside today's domain
            ("xgboost", {"eta": 0.1}, "ok"),  # no such family
            ("linear", {"C": 2.0}, "error"),  # failed: never a seed
            ("linear", {"C": 0.5}, "ok"),
            ("random_forest", {"n_estimators": 40}, "ok"),  # a parameter missing
        ]
    )  # fmt: skip
    chosen, skipped = seeds(board, list(FAMILIES.values()), 1000, "classification")
    assert [c["family"] for c in chosen] == ["hist_gb", "linear"]
    # a board from before preprocessing was searched: today's start values fill the gap
    assert chosen[1] == {
        "family": "linear",
        "linear.C": 0.5,
        "linear.encoding": "auto",
        "linear.scaling": "standard",
    }
    assert len(skipped) == 3
    assert any("outside today's space" in s for s in skipped)
    assert any("no such family" in s for s in skipped)


def test_warm_start_adapts_preprocessing_to_todays_data():
    params = {"C": 0.5, "encoding": "target", "scaling": "quantile"}
    board = _board([("linear", params, "ok")])
    [kept], _ = seeds(board, [FAMILIES["linear"]], 1000, "classification")
    assert family_params(kept) == params  # searched today too: kept as it was
    [dropped], _ = seeds(board, [FAMILIES["linear"]], 1000, "classification", has_categorical=False)
    assert family_params(dropped) == {"C": 0.5, "scaling": "quantile"}  # no categories today
    bad = _board([("linear", {**params, "encoding": "hashing"}, "ok")])
    chosen, skipped = seeds(bad, [FAMILIES["linear"]], 1000, "classification")
    assert chosen == [] and "outside today's space" in skipped[0]


def test_warm_start_skips_families_not_searched():
    board = _board([("linear", {"C": 0.5}, "ok")])
    chosen, skipped = seeds(board, [FAMILIES["hist_gb"]], 1000, "classification")
    assert chosen == [] and skipped == ["linear: family not searched"]


def test_read_leaderboard_errors(tmp_path):
    with pytest.raises(UserError, match="leaderboard not found"):
        read_leaderboard(str(tmp_path / "nope.csv"))
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(UserError, match="not a leaderboard \\(no column 'family'\\)"):
        read_leaderboard(str(bad))


# --- grid and space checks ---------------------------------------------------


def test_grid_starts_cheap_and_alternates_families():
    fams = [FAMILIES["linear"], FAMILIES["hist_gb"]]
    points = grid(fams, 1000, "classification")
    assert points[:2] == initial_configs(fams, 1000, "classification")
    assert [p["family"] for p in points[2:6]] == ["linear", "hist_gb"] * 2
    assert len({json.dumps(p, sort_keys=True) for p in points}) == len(points)
    assert all(fits_space(FAMILIES[p["family"]], family_params(p), 1000, "classification")
               for p in points)  # fmt: skip


def test_fits_space_checks_types_and_bounds():
    rf = FAMILIES["random_forest"]
    good = {"n_estimators": 50, "min_samples_leaf": 2, "max_features": 0.5, "encoding": "ordinal"}
    assert fits_space(rf, good, 1000, "classification")
    assert not fits_space(rf, {**good, "encoding": "hashing"}, 1000, "classification")
    bare = {k: v for k, v in good.items() if k != "encoding"}
    assert fits_space(rf, bare, 1000, "classification", has_categorical=False)
    assert not fits_space(rf, {**good, "n_estimators": 5000}, 1000, "classification")
    assert not fits_space(rf, {**good, "n_estimators": 50.5}, 1000, "classification")
    assert not fits_space(rf, {**good, "extra": 1}, 1000, "classification")
    assert not fits_space(rf, {**good, "max_features": "sqrt"}, 1000, "classification")


def test_flat_config_of_grid_builds():
    config = flat_config("lightgbm", FAMILIES["lightgbm"].initial)
    est = build_model(schema_for("classification"), config)[-1]
    assert type(est).__name__ == "LGBMClassifier" and est.n_jobs == 1


# --- class weights -------------------------------------------------------------


def test_imbalanced_only_for_a_rare_class():
    assert imbalanced(pd.Series([0] * 90 + [1] * 10), "classification")
    assert not imbalanced(pd.Series([0] * 60 + [1] * 40), "classification")
    assert not imbalanced(pd.Series(["a"] * 30 + ["b"] * 30 + ["c"] * 40), "classification")
    assert imbalanced(pd.Series(["a"] * 45 + ["b"] * 45 + ["c"] * 10), "classification")
    assert not imbalanced(pd.Series([0.0] * 90 + [1.0] * 10), "regression")
    assert not imbalanced(pd.Series([1] * 50), "classification")  # one class: nothing to weigh


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_class_weights_are_searched_for_an_imbalanced_target_only(name):
    family = FAMILIES[name]
    assert "class_weight" not in domains(family, 1000, "classification")
    assert "class_weight" not in domains(family, 1000, "regression", imbalanced=True)
    space = domains(family, 1000, "classification", imbalanced=True)
    assert set(space["class_weight"].options) == {"none", "balanced"}
    [start] = initial_configs([family], 1000, "classification", imbalanced=True)
    assert fits_space(family, family_params(start), 1000, "classification", imbalanced=True)
    assert not fits_space(family, family_params(start), 1000, "classification")
    for c in portfolio.configs([family], 1000, "classification", imbalanced=True):
        assert fits_space(family, family_params(c), 1000, "classification", imbalanced=True)
    balanced = flat_config(name, {**family_params(start), "class_weight": "balanced"})
    est = build_model(schema_for("classification"), balanced)[-1]
    plain = build_model(schema_for("classification"), start)[-1]
    if name == "catboost":  # CatBoost names it auto_class_weights
        assert est.get_params()["auto_class_weights"] == "Balanced"
        assert "auto_class_weights" not in plain.get_params()
    else:
        assert est.get_params()["class_weight"] == "balanced"
        assert plain.get_params()["class_weight"] is None


def test_balanced_weights_raise_recall_of_the_rare_class():
    df = synthetic_frame(600, "classification", seed=3)
    rare = df["target"] == df["target"].value_counts().index[-1]
    df = pd.concat([df[~rare], df[rare].head(40)])  # the rare class is about 1 row in 10
    X, y = df.drop(columns="target"), df["target"]
    assert imbalanced(y, "classification")
    schema = schema_for("classification")
    start = initial_configs([FAMILIES["linear"]], len(df), "classification", imbalanced=True)[0]
    recall = {}
    for weight in ("none", "balanced"):
        model = build_model(schema, {**start, "linear.class_weight": weight}).fit(X, y)
        label = y.value_counts().index[-1]
        recall[weight] = float((model.predict(X[y == label]) == label).mean())
    assert recall["balanced"] > recall["none"]


def test_warm_start_fills_or_drops_class_weights_by_todays_target():
    params = {"C": 0.5, "encoding": "target", "scaling": "quantile"}
    board = _board([("linear", params, "ok")])
    [kept], _ = seeds(board, [FAMILIES["linear"]], 1000, "classification", imbalanced=True)
    assert family_params(kept) == {**params, "class_weight": "none"}
    weighted = _board([("linear", {**params, "class_weight": "balanced"}, "ok")])
    [plain], _ = seeds(weighted, [FAMILIES["linear"]], 1000, "classification")
    assert family_params(plain) == params


# --- target encoding ----------------------------------------------------------


def test_target_encoding_gives_one_column_per_categorical():
    df = synthetic_frame(200, "regression", seed=5)
    X, y = df.drop(columns="target"), df["target"]
    onehot = preprocessor(schema_for("regression"), False).fit_transform(X, y)
    target = preprocessor(schema_for("regression"), False, "target").fit_transform(X, y)
    assert onehot.shape[1] > target.shape[1]
    # x1, x2, x1's missing indicator, one encoded colour column
    assert target.shape[1] == 4
    with pytest.raises(UserError, match="unknown categorical encoding 'hash'"):
        preprocessor(schema_for("regression"), False, "hash")


# --- report -----------------------------------------------------------------


def test_search_report_has_every_section():
    from kfp_automl.components.tune import report
    from kfp_automl.components.tune.search import SearchResult

    board = pd.DataFrame(
        {
            "rank": [1, 2, 3],
            "trial_id": ["a", "b", "c"],
            "family": ["linear", "hist_gb", "hist_gb"],
            "score": [0.8, 0.7, 0.6],
            "step": [9, 9, 1],
            "finished_at_s": [1.0, 2.0, 3.0],
            "status": ["ok", "ok", "stopped"],
            "params": ['{"C": 1.0}', "{}", "{}"],
        }
    )
    result = SearchResult(board, {"family": "linear", "linear.C": 1.0}, 0.8, 4.0, "cv")
    page = report.render(result, METRICS["roc_auc"])
    for sid in ("score-over-time", "best", "families", "history"):
        assert f'<section id="{sid}">' in page
    assert "data:image/png;base64," in page and "3 trials (2 ok, 1 stopped)" in page


# --- where the search state lives ---------------------------------------------


MODEL = "minio://mlpipeline/v2/artifacts/kfp-automl-training/run-1/tune-models/model"


@pytest.mark.parametrize(
    ("explicit", "output_uri", "expected"),
    [
        # beside the task's outputs, on the pipeline root's own store (a retried pod gets the
        # same output URIs from KFP's driver, so it finds the state)
        (
            "",
            MODEL,
            "minio://mlpipeline/v2/artifacts/kfp-automl-training/run-1/tune-models/search-state",
        ),
        (
            "",
            "/data/root/training-1/tune-models/model",
            "/data/root/training-1/tune-models/search-state",
        ),
        ("", "file:///data/root/t/tune-models/model", "/data/root/t/tune-models/search-state"),
        (
            "s3://bucket/state",
            MODEL,
            "s3://bucket/state/kfp-automl-training/run-1/tune-models/search-state",
        ),
        (
            "file:///srv/state/",
            MODEL,
            "/srv/state/kfp-automl-training/run-1/tune-models/search-state",
        ),
        ("none", MODEL, ""),
        ("", "", ""),
    ],
)
def test_state_path(explicit, output_uri, expected):
    from kfp_automl.components.tune.tune import state_path

    assert state_path(explicit, output_uri) == expected


def test_state_filesystem_puts_minio_on_the_configured_endpoint(monkeypatch):
    from pyarrow import fs

    from kfp_automl.components.tune.search import state_filesystem

    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    path, filesystem = state_filesystem("minio://mlpipeline/v2/x/search-state/")
    assert path == "mlpipeline/v2/x/search-state"
    assert isinstance(filesystem, fs.S3FileSystem)
    assert state_filesystem("/tmp/state") == ("/tmp/state", None)
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    assert state_filesystem("s3://b/k") == ("s3://b/k", None)  # AWS itself: Ray's own choice


def test_search_time_use_splits_the_cpu_time_into_fitting_preprocessing_and_the_rest():
    from kfp_automl.components.tune.search import SearchResult

    board = pd.DataFrame(
        {
            "family": ["linear", "hist_gb", "hist_gb"],
            "fit_time_s": [2.0, 8.0, 2.0],  # includes preprocessing
            "prep_time_s": [1.0, 0.5, 0.5],
        }
    )
    result = SearchResult(board, {"family": "linear"}, 0.8, 10.0, "cv", ray_start_s=1.5, cpus=2)
    use = result.time_use()
    assert use == pytest.approx({"fit": 0.5, "prep": 0.1, "other": 0.4})
    line = result.describe_time()
    assert line.startswith("3 trials in 10s (18 a minute) on 2 CPUs: 50% fitting")
    assert "10% preprocessing, 40% other (Ray's start 1.5s" in line


def test_ensemble_not_kept_for_a_gain_below_the_minimum():
    """A blend that beats the best single trial by less than MIN_GAIN of its score costs its
    members' serving time for noise: the best single trial is kept."""
    rng = np.random.default_rng(3)
    y = rng.normal(size=2000)
    shared = rng.normal(scale=1.0, size=2000)
    # two trials whose errors are mostly shared, each with a sliver of its own: averaging
    # them helps, but by less than MIN_GAIN
    preds = {t: y + shared + rng.normal(scale=0.03, size=2000) for t in ("a", "b")}
    sel = ensemble.select(preds, y, METRICS["rmse"], np.array([]))
    assert sel.score < sel.best_single  # the blend is better on the rows ...
    assert 0 < sel.gain < ensemble.MIN_GAIN and not sel.improves  # ... by too little
