"""components/tune/families.py: search spaces, starting points and the sklearn pipelines."""

from __future__ import annotations

import dataclasses
import math
import pickle

import numpy as np
import optuna
import pandas as pd
import pytest

from kfp_automl.components.tune.families import (
    FAMILIES,
    Choice,
    Float,
    Int,
    SearchSpace,
    build_model,
    domains,
    family_params,
    flat_config,
    has_categorical,
    initial_configs,
    select_families,
)
from kfp_automl.errors import UserError
from tests.support.frames import schema_for, synthetic_frame

optuna.logging.set_verbosity(optuna.logging.WARNING)

TASKS = ("classification", "regression")


def _in_domain(value, dom) -> bool:
    if isinstance(dom, Float):
        return isinstance(value, float) and dom.low <= value <= dom.high
    if isinstance(dom, Int):
        return (
            isinstance(value, int) and not isinstance(value, bool) and dom.low <= value <= dom.high
        )
    assert isinstance(dom, Choice)
    return value in dom.options


# --- fitting every family --------------------------------------------------


def _unseen(df: pd.DataFrame) -> pd.DataFrame:
    out = df.copy()
    out.loc[out.index[:3], "colour"] = ["violet", "never-seen", "(missing)"]
    out.loc[out.index[3], "x1"] = np.nan
    out.loc[out.index[4], "x2"] = np.nan
    return out


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("task", ["classification", "multiclass", "regression"])
def test_every_family_fits_and_predicts(family, task):
    df = synthetic_frame(200, task, seed=1)
    schema = schema_for(task)
    X, y = df.drop(columns=["target"]), df["target"]
    assert X["x1"].isna().any() and X["colour"].isna().any()
    model = build_model(schema, {"family": family}, seed=0)
    model.fit(X, y)
    new = _unseen(X.head(20))
    pred = model.predict(new)
    assert np.shape(pred) == (20,)  # one answer per row, as scikit-learn's estimators give
    if task == "regression":
        assert np.isfinite(pred.astype(float)).all()
        assert not hasattr(model, "predict_proba")
    else:
        assert set(pred) <= set(y.unique())
        proba = model.predict_proba(new)
        assert proba.shape == (20, y.nunique())
        np.testing.assert_allclose(proba.sum(axis=1), 1.0)
        # the answer is the most probable class (serving and the evaluation assume it)
        assert (pred == model.classes_[np.argmax(proba, axis=1)]).all()
        # well above chance on its own training data: the features are really used
        assert (model.predict(X) == y).mean() > 0.6


def test_catboost_writes_nothing_where_it_runs(tmp_path, monkeypatch):
    """CatBoost writes training logs (catboost_info/) into the working directory unless told
    not to: a pod's read-only filesystem or a user's folder must not get them."""
    monkeypatch.chdir(tmp_path)
    df = synthetic_frame(200, "multiclass", seed=1)
    model = build_model(schema_for("multiclass"), {"family": "catboost"}, seed=0)
    model.fit(df.drop(columns=["target"]), df["target"])
    again = pickle.loads(pickle.dumps(model))
    X = df.drop(columns=["target"]).head(5)
    np.testing.assert_array_equal(again.predict_proba(X), model.predict_proba(X))
    assert list(tmp_path.iterdir()) == []


def test_build_model_uses_config_params_over_initial():
    schema = schema_for("classification")
    model = build_model(
        schema, flat_config("hist_gb", {"learning_rate": 0.05, "max_iter": 42}), seed=9
    )
    est = model.named_steps["model"]
    assert est.learning_rate == 0.05
    assert est.max_iter == 42
    assert est.max_leaf_nodes == FAMILIES["hist_gb"].initial["max_leaf_nodes"]  # filled in
    assert est.random_state == 9


def test_build_model_ignores_other_families_params():
    schema = schema_for("regression")
    config = {"family": "linear", "linear.alpha": 3.0, "hist_gb.max_iter": 7}
    est = build_model(schema, config).named_steps["model"]
    assert type(est).__name__ == "Ridge"
    assert est.alpha == 3.0


def test_linear_family_scales_and_trees_do_not():
    schema = schema_for("classification")
    linear = build_model(schema, {"family": "linear"}).named_steps["preprocess"]
    forest = build_model(schema, {"family": "random_forest"}).named_steps["preprocess"]
    numeric_linear = dict((n, t) for n, t, _ in linear.transformers)["numeric"]
    numeric_forest = dict((n, t) for n, t, _ in forest.transformers)["numeric"]
    assert "standardscaler" in numeric_linear.named_steps
    assert "standardscaler" not in numeric_forest.named_steps


def test_preprocessor_only_uses_schema_features():
    df = synthetic_frame(120, "classification")
    df["leak"] = (df["target"] == "yes").astype(float)  # not in the schema: must be ignored
    model = build_model(schema_for("classification"), {"family": "linear"})
    model.fit(df.drop(columns=["target"]), df["target"])
    names = list(model.named_steps["preprocess"].get_feature_names_out())
    assert not any("leak" in n for n in names)
    assert "x1" in names and any(n.startswith("colour_") for n in names)


# --- search space ----------------------------------------------------------


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("n_rows", [500, 100_000])
def test_search_space_with_optuna_stays_in_domains(task, n_rows):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    space = SearchSpace(tuple(FAMILIES), n_rows, task)
    seen = set()
    for _ in range(60):
        trial = study.ask()
        space(trial)
        params = trial.params
        family = params["family"]
        seen.add(family)
        space_ = domains(FAMILIES[family], n_rows, task)
        assert set(params) == {"family"} | {f"{family}.{k}" for k in space_}
        for name, dom in space_.items():
            value = params[f"{family}.{name}"]
            assert _in_domain(value, dom), (family, name, value, dom)
        study.tell(trial, 0.0)
        # what Optuna suggests is exactly what build_model gives the estimator
        est = build_model(schema_for(task), params).named_steps["model"]
        for name in FAMILIES[family].space(n_rows, task):
            assert est.get_params()[name] == params[f"{family}.{name}"]
    assert seen == set(FAMILIES)


def test_search_space_respects_family_subset():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    space = SearchSpace(("linear", "hist_gb"), 1000, "classification")
    families = set()
    for _ in range(20):
        trial = study.ask()
        space(trial)
        families.add(trial.params["family"])
    assert families == {"linear", "hist_gb"}


def test_forest_space_shrinks_for_large_tables():
    small = FAMILIES["random_forest"].space(1_000, "classification")["n_estimators"]
    large = FAMILIES["random_forest"].space(1_000_000, "classification")["n_estimators"]
    assert large.high < small.high


def test_search_space_is_picklable():
    space = SearchSpace(("linear", "extra_trees"), 1234, "regression")
    back = pickle.loads(pickle.dumps(space))
    assert back == space
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    back(trial)
    assert trial.params["family"] in {"linear", "extra_trees"}


# --- initial configurations ------------------------------------------------


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("n_rows", [60, 10_000, 1_000_000])
def test_initial_configs_are_searched_params_inside_domains(task, n_rows):
    configs = initial_configs(list(FAMILIES.values()), n_rows, task)
    assert [c["family"] for c in configs] == list(FAMILIES)
    for config in configs:
        family = config["family"]
        space_ = domains(FAMILIES[family], n_rows, task)
        params = family_params(config)
        assert set(params) == set(space_)
        for name, value in params.items():
            assert _in_domain(value, space_[name]), (family, name, value)


def test_initial_linear_config_depends_on_task():
    clf = initial_configs([FAMILIES["linear"]], 100, "classification")[0]
    reg = initial_configs([FAMILIES["linear"]], 100, "regression")[0]
    assert set(clf) == {"family", "linear.C", "linear.encoding", "linear.scaling"}
    assert set(reg) == {"family", "linear.alpha", "linear.encoding", "linear.scaling"}
    assert clf["linear.encoding"] == "auto" and clf["linear.scaling"] == "standard"


# --- preprocessing choices in the space --------------------------------------


def test_preprocessing_choices_per_family():
    linear, forest = FAMILIES["linear"], FAMILIES["random_forest"]
    lin = domains(linear, 1000, "classification")
    assert lin["encoding"].options == ("auto", "onehot", "target")
    assert lin["scaling"].options == ("standard", "quantile")
    trees = domains(forest, 1000, "classification")
    assert trees["encoding"].options == ("auto", "ordinal", "target")
    assert "scaling" not in trees  # trees do not care how numbers are scaled
    # no categorical column: encoding is not searched at all
    assert "encoding" not in domains(forest, 1000, "classification", has_categorical=False)
    assert "encoding" not in domains(linear, 1000, "regression", has_categorical=False)
    assert has_categorical(schema_for("classification"))
    regression = schema_for("regression")
    numeric_only = dataclasses.replace(
        regression, features=tuple(f for f in regression.features if f.numeric)
    )
    assert not has_categorical(numeric_only)


def _encoder_of(pipe):
    from sklearn.pipeline import Pipeline as SkPipeline

    pre = pipe.named_steps["preprocess"]
    [enc] = [t for name, t, _ in pre.transformers if name == "categorical_colour"]
    return enc[-1] if isinstance(enc, SkPipeline) else enc


@pytest.mark.parametrize(
    ("family", "encoding", "expected"),
    [
        ("random_forest", "ordinal", "OrdinalEncoder"),
        ("random_forest", "target", "TargetEncoder"),
        ("linear", "onehot", "OneHotEncoder"),
        ("linear", "auto", "OneHotEncoder"),  # 4 colours: few enough for one-hot
    ],
)
def test_build_model_applies_the_encoding(family, encoding, expected):
    schema = schema_for("classification")
    config = flat_config(family, {**FAMILIES[family].initial, "encoding": encoding})
    pipe = build_model(schema, config)
    assert type(_encoder_of(pipe)).__name__ == expected
    df = synthetic_frame(200, "classification", seed=5)
    X, y = df.drop(columns="target"), df["target"]
    proba = pipe.fit(X, y).predict_proba(X)
    assert proba.shape == (200, 2) and np.isfinite(proba).all()


@pytest.mark.parametrize("task", TASKS)
def test_quantile_scaling_gives_normal_shaped_numbers(task):
    schema = schema_for(task)
    df = synthetic_frame(300, task, seed=6)
    df["x2"] = np.exp(df["x2"] / 10.0)  # heavily skewed
    X, y = df.drop(columns="target"), df["target"]
    standard = build_model(schema, flat_config("linear", {"scaling": "standard"}))
    quantile = build_model(schema, flat_config("linear", {"scaling": "quantile"}))
    outs = {}
    for name, pipe in [("standard", standard), ("quantile", quantile)]:
        pre = pipe.named_steps["preprocess"]
        Xt = pd.DataFrame(pre.fit_transform(X, y), columns=pre.get_feature_names_out())
        outs[name] = Xt
        pipe.fit(X, y)  # the whole pipeline fits and predicts with either scaling
        assert np.isfinite(np.asarray(pipe.predict(X), dtype=float) if task == "regression"
                           else pipe.predict_proba(X)).all()  # fmt: skip
    skew = {name: float(Xt["x2"].skew()) for name, Xt in outs.items()}
    assert skew["standard"] > 2 and abs(skew["quantile"]) < 0.5, skew
    # missing indicators stay 0/1 under quantile scaling
    assert set(np.unique(outs["quantile"]["missingindicator_x1"])) <= {0.0, 1.0}


# --- names and configs -----------------------------------------------------


@pytest.mark.parametrize("names", ["", " ", ",", []])
def test_select_families_empty_means_all(names):
    assert [f.name for f in select_families(names)] == list(FAMILIES)


def test_select_families_by_name_keeps_order():
    assert [f.name for f in select_families(" hist_gb , linear")] == ["hist_gb", "linear"]
    assert [f.name for f in select_families(["extra_trees"])] == ["extra_trees"]


def test_select_families_unknown_name():
    with pytest.raises(UserError, match=r"unknown model family 'xgboost'; choose from linear"):
        select_families("linear,xgboost")


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_flat_config_round_trip(family):
    params = dict(FAMILIES[family].initial)
    config = flat_config(family, params)
    assert config["family"] == family
    assert all(k == "family" or k.startswith(f"{family}.") for k in config)
    assert family_params(config) == params


def test_family_params_ignores_other_prefixes():
    config = {
        "family": "linear",
        "linear.C": 2.0,
        "hist_gb.max_iter": 10,
        "linearX.C": 9.0,  # shares the name but not the dotted prefix
    }
    assert family_params(config) == {"C": 2.0}


def test_domains_are_well_formed():
    for family in FAMILIES.values():
        for task in TASKS:
            for name, dom in domains(family, 1000, task).items():
                if isinstance(dom, Float | Int):
                    assert dom.low < dom.high, (family.name, name)
                    if dom.log:
                        assert dom.low > 0, (family.name, name)
                        assert math.isfinite(math.log(dom.low))
                else:
                    assert len(dom.options) >= 2
