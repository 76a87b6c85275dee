"""Model families: each owns its search space and its estimator, next to each other.

A space maps parameter names to small domain objects. `suggest` is the one
place where they become Optuna suggestions (Ray Tune's OptunaSearch drives
them define-by-run), so a family never imports a search library itself.
Every family also names a cheap starting configuration, tried first, and,
when it is iterative (boosting rounds, trees), the parameter that sets its
budget, so a trial can report scores at growing budgets for ASHA.
FAMILIES is the registry by name; `grid` turns the same spaces into a grid.

Preprocessing choices are part of the space where they change the model: how
categories are encoded (one-hot, target or ordinal, or "auto", which picks by
the number of categories) for every family when the data has categorical
columns, and how numbers are scaled (standard or quantile) for the linear
family; trees are indifferent to scaling, so it is not searched for them.
`domains` merges a family's own space with these.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sklearn.compose import ColumnTransformer
from sklearn.ensemble import (
    ExtraTreesClassifier,
    ExtraTreesRegressor,
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import Pipeline

from kfp_automl.contracts.schema import Schema
from kfp_automl.errors import UserError


@dataclass(frozen=True)
class Float:
    low: float
    high: float
    log: bool = False


@dataclass(frozen=True)
class Int:
    low: int
    high: int
    log: bool = False


@dataclass(frozen=True)
class Choice:
    options: tuple


Domain = Float | Int | Choice


@dataclass(frozen=True)
class Family:
    name: str
    space: Callable[[int, str], dict[str, Domain]]  # (n_rows, task) -> the estimator's domains
    initial: dict[str, Any]  # a cheap, sensible first configuration
    make: Callable[[str, dict[str, Any], int], Any]  # (task, params, seed) -> estimator
    budget_param: str | None = None  # iterative families: rounds / trees, grown step by step
    encodings: tuple[str, ...] = ("auto", "ordinal", "target")  # searched category encodings
    scalings: tuple[str, ...] = ()  # searched numeric scalings (linear models only)


IMBALANCED_SHARE = 0.2  # a classification target whose rarest class is rarer than this
WEIGHTINGS = ("none", "balanced")  # class weights searched for imbalanced targets


def imbalanced(y, task: str) -> bool:
    """True when `y` is a classification target whose rarest class holds under
    IMBALANCED_SHARE of the rows: then class weights are part of every family's space."""
    if task != "classification" or len(y) == 0:
        return False
    import pandas as pd

    shares = pd.Series(y).value_counts(normalize=True)
    return len(shares) > 1 and float(shares.min()) < IMBALANCED_SHARE


def _weights(p: dict[str, Any]) -> str | None:
    """The estimator's class_weight from the searched choice ("none" is no weighting)."""
    value = p.get("class_weight", "none")
    return None if value == "none" else value


PREPROCESSING = ("encoding", "scaling")  # parameter names that configure preprocessing
# parameters a family searches on some data and not on other (categories, an imbalanced target)
CONDITIONAL = (*PREPROCESSING, "class_weight")


def domains(
    family: Family,
    n_rows: int,
    task: str,
    has_categorical: bool = True,
    imbalanced: bool = False,
) -> dict[str, Domain]:
    """The family's searched parameters: its estimator's space plus the preprocessing choices
    that matter for it (category encoding only when the data has categorical columns), and
    class weights when the classification target is imbalanced (`imbalanced`)."""
    out = dict(family.space(n_rows, task))
    if imbalanced and task == "classification":
        out["class_weight"] = Choice(WEIGHTINGS)
    if has_categorical and len(family.encodings) > 1:
        out["encoding"] = Choice(family.encodings)
    if len(family.scalings) > 1:
        out["scaling"] = Choice(family.scalings)
    return out


def has_categorical(schema: Schema) -> bool:
    return bool(schema.by_role("categorical"))


def _linear(task, p, seed):
    if task == "classification":
        return LogisticRegression(
            C=p["C"], max_iter=2000, class_weight=_weights(p), random_state=seed
        )
    return Ridge(alpha=p["alpha"], random_state=seed)


def _linear_space(n_rows, task):
    if task == "classification":
        return {"C": Float(1e-3, 1e2, log=True)}
    return {"alpha": Float(1e-3, 1e3, log=True)}


def _forest_space(n_rows, task):
    return {
        "n_estimators": Int(30, 300 if n_rows < 50_000 else 150, log=True),
        "min_samples_leaf": Int(1, 32, log=True),
        "max_features": Float(0.1, 1.0),
    }


def _forest(cls_clf, cls_reg):
    def make(task, p, seed):
        weights = {"class_weight": _weights(p)} if task == "classification" else {}
        cls = cls_clf if task == "classification" else cls_reg
        return cls(
            **weights,
            n_estimators=p["n_estimators"],
            min_samples_leaf=p["min_samples_leaf"],
            max_features=p["max_features"],
            n_jobs=1,
            random_state=seed,
        )

    return make


def _hgb_space(n_rows, task):
    return {
        "learning_rate": Float(0.01, 0.3, log=True),
        "max_iter": Int(30, 500, log=True),
        "max_leaf_nodes": Int(4, 64, log=True),
        "min_samples_leaf": Int(5, 100, log=True),
        "l2_regularization": Float(1e-6, 10.0, log=True),
    }


def _hgb(task, p, seed):
    cls = (
        HistGradientBoostingClassifier
        if task == "classification"
        else HistGradientBoostingRegressor
    )
    weights = {"class_weight": _weights(p)} if task == "classification" else {}
    return cls(
        **weights,
        learning_rate=p["learning_rate"],
        max_iter=p["max_iter"],
        max_leaf_nodes=p["max_leaf_nodes"],
        min_samples_leaf=p["min_samples_leaf"],
        l2_regularization=p["l2_regularization"],
        random_state=seed,
    )


def _lgbm_space(n_rows, task):
    return {
        "n_estimators": Int(20, 500 if n_rows < 100_000 else 300, log=True),
        "learning_rate": Float(0.01, 0.3, log=True),
        "num_leaves": Int(4, 128, log=True),
        "min_child_samples": Int(5, 100, log=True),
        "subsample": Float(0.5, 1.0),
        "colsample_bytree": Float(0.3, 1.0),
        "reg_lambda": Float(1e-6, 10.0, log=True),
    }


LGBM_INITIAL = {
    "n_estimators": 50,
    "learning_rate": 0.1,
    "num_leaves": 15,
    "min_child_samples": 20,
    "subsample": 1.0,
    "colsample_bytree": 1.0,
    "reg_lambda": 1e-6,
}


def _lgbm(task, p, seed):
    import lightgbm  # imported only when the family is used

    cls = lightgbm.LGBMClassifier if task == "classification" else lightgbm.LGBMRegressor
    weights = {"class_weight": _weights(p)} if task == "classification" else {}
    return cls(
        **weights,
        **{k: p[k] for k in LGBM_INITIAL},
        subsample_freq=1 if p["subsample"] < 1.0 else 0,
        n_jobs=1,
        random_state=seed,
        verbose=-1,
    )


def _catboost_space(n_rows, task):
    return {
        "iterations": Int(50, 1000 if n_rows < 50_000 else 500, log=True),
        "learning_rate": Float(0.01, 0.3, log=True),
        "depth": Int(3, 8),
        "l2_leaf_reg": Float(0.5, 30.0, log=True),
        "random_strength": Float(1e-3, 10.0, log=True),
    }


CATBOOST_INITIAL = {
    "iterations": 150,
    "learning_rate": 0.1,
    "depth": 6,
    "l2_leaf_reg": 3.0,
    "random_strength": 1.0,
}


def _catboost(task, p, seed):
    import catboost  # imported only when the family is used

    from kfp_automl.runtime.catboost_model import CatBoostClassifier

    cls = CatBoostClassifier if task == "classification" else catboost.CatBoostRegressor
    weights = {}
    if task == "classification" and _weights(p) == "balanced":
        weights = {"auto_class_weights": "Balanced"}
    return cls(
        **weights,
        **{k: p[k] for k in CATBOOST_INITIAL},
        thread_count=1,
        random_seed=seed,
        verbose=0,
        # no catboost_info/ training logs in the working directory (a read-only pod, a package)
        allow_writing_files=False,
    )


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in [
        Family(
            "linear",
            _linear_space,
            {
                "C": 1.0,
                "alpha": 1.0,
                "encoding": "auto",
                "scaling": "standard",
                "class_weight": "none",
            },
            _linear,
            encodings=("auto", "onehot", "target"),  # ordinal codes mean nothing to a line
            scalings=("standard", "quantile"),
        ),
        Family(
            "random_forest",
            _forest_space,
            {
                "n_estimators": 50,
                "min_samples_leaf": 2,
                "max_features": 0.5,
                "encoding": "auto",
                "class_weight": "none",
            },
            _forest(RandomForestClassifier, RandomForestRegressor),
            "n_estimators",
        ),
        Family(
            "extra_trees",
            _forest_space,
            {
                "n_estimators": 50,
                "min_samples_leaf": 2,
                "max_features": 0.5,
                "encoding": "auto",
                "class_weight": "none",
            },
            _forest(ExtraTreesClassifier, ExtraTreesRegressor),
            "n_estimators",
        ),
        Family(
            "hist_gb",
            _hgb_space,
            {
                "learning_rate": 0.1,
                "max_iter": 100,
                "max_leaf_nodes": 31,
                "min_samples_leaf": 20,
                "l2_regularization": 1e-6,
                "encoding": "auto",
                "class_weight": "none",
            },
            _hgb,
            "max_iter",
        ),
        Family(
            "lightgbm",
            _lgbm_space,
            {**LGBM_INITIAL, "encoding": "auto", "class_weight": "none"},
            _lgbm,
            "n_estimators",
        ),
        Family(
            "catboost",
            _catboost_space,
            {**CATBOOST_INITIAL, "encoding": "auto", "class_weight": "none"},
            _catboost,
            "iterations",
        ),
    ]
}


def select_families(names: str | list[str] = "") -> list[Family]:
    """Families by comma-separated names; empty means all of them."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    if not names:
        return list(FAMILIES.values())
    unknown = [n for n in names if n not in FAMILIES]
    if unknown:
        raise UserError(f"unknown model family {unknown[0]!r}; choose from {', '.join(FAMILIES)}")
    return [FAMILIES[n] for n in names]


def family_params(config: dict[str, Any]) -> dict[str, Any]:
    """The family's own parameters from a flat search config ({'family': f, 'f.p': v})."""
    prefix = f"{config['family']}."
    return {k[len(prefix) :]: v for k, v in config.items() if k.startswith(prefix)}


def flat_config(family: str, params: dict[str, Any]) -> dict[str, Any]:
    return {"family": family, **{f"{family}.{k}": v for k, v in params.items()}}


def fits_space(
    family: Family,
    params: dict[str, Any],
    n_rows: int,
    task: str,
    has_categorical: bool = True,
    imbalanced: bool = False,
) -> bool:
    """True when `params` are exactly the family's searched parameters, each inside its domain."""
    space = domains(family, n_rows, task, has_categorical, imbalanced)
    if set(params) != set(space):
        return False
    for name, dom in space.items():
        value = params[name]
        if isinstance(dom, Choice):
            ok = value in dom.options
        elif isinstance(value, bool) or not isinstance(value, int | float):
            ok = False
        elif isinstance(dom, Int):
            ok = float(value).is_integer() and dom.low <= value <= dom.high
        else:
            ok = dom.low <= value <= dom.high
        if not ok:
            return False
    return True


def _grid_values(dom: Domain, n: int) -> list[Any]:
    if isinstance(dom, Choice):
        return list(dom.options)
    if dom.log:
        import math

        lo, hi = math.log(dom.low), math.log(dom.high)
        values = [math.exp(lo + (hi - lo) * i / (n - 1)) for i in range(n)]
    else:
        values = [dom.low + (dom.high - dom.low) * i / (n - 1) for i in range(n)]
    if isinstance(dom, Int):
        return sorted({min(dom.high, max(dom.low, round(v))) for v in values})
    return [float(min(dom.high, max(dom.low, v))) for v in values]


def grid(
    families: list[Family],
    n_rows: int,
    task: str,
    points_per_axis: int = 3,
    has_categorical: bool = True,
    imbalanced: bool = False,
) -> list[dict[str, Any]]:
    """Every family's grid (`points_per_axis` values per numeric axis), as flat configs.

    Each family's starting point comes first; then the families take turns, so a
    budget that ends the grid early has still seen every family.
    """
    import itertools

    per_family = []
    for f in families:
        space = domains(f, n_rows, task, has_categorical, imbalanced)
        names = list(space)
        axes = [_grid_values(space[n], points_per_axis) for n in names]
        configs = [
            flat_config(f.name, dict(zip(names, combo, strict=True)))
            for combo in itertools.product(*axes)
        ]
        per_family.append(configs)
    ordered = initial_configs(families, n_rows, task, has_categorical, imbalanced)
    seen = {tuple(sorted(c.items())) for c in ordered}
    for round_ in itertools.zip_longest(*per_family):
        for c in round_:
            key = None if c is None else tuple(sorted(c.items()))
            if key is not None and key not in seen:
                seen.add(key)
                ordered.append(c)
    return ordered


def initial_configs(
    families: list[Family],
    n_rows: int,
    task: str,
    has_categorical: bool = True,
    imbalanced: bool = False,
) -> list[dict[str, Any]]:
    """Each family's cheap starting point, restricted to the parameters its space searches."""
    return [
        flat_config(
            f.name,
            {k: f.initial[k] for k in domains(f, n_rows, task, has_categorical, imbalanced)},
        )
        for f in families
    ]


@dataclass(frozen=True)
class SearchSpace:
    """Define-by-run search space for Optuna: pick a family, then its parameters.

    A picklable callable (Ray Tune checkpoints the searcher with it).
    """

    families: tuple[str, ...]
    n_rows: int
    task: str
    has_categorical: bool = True
    imbalanced: bool = False

    def __call__(self, trial) -> None:
        suggest(trial, self.families, self.n_rows, self.task, self.has_categorical, self.imbalanced)


def suggest(
    trial,
    families: tuple[str, ...],
    n_rows: int,
    task: str,
    has_categorical: bool = True,
    imbalanced: bool = False,
) -> None:
    name = trial.suggest_categorical("family", list(families))
    for param, dom in domains(FAMILIES[name], n_rows, task, has_categorical, imbalanced).items():
        key = f"{name}.{param}"
        if isinstance(dom, Float):
            trial.suggest_float(key, dom.low, dom.high, log=dom.log)
        elif isinstance(dom, Int):
            trial.suggest_int(key, dom.low, dom.high, log=dom.log)
        else:
            trial.suggest_categorical(key, list(dom.options))


def preprocessor(
    schema: Schema,
    scaling: str = "none",
    categorical_encoding: str = "auto",
    seed: int = 0,
) -> ColumnTransformer:
    """The schema's in-model preprocessing (kfp_automl/runtime/transformers.py), fitted with the model.

    `scaling`: "none", "standard" or "quantile" (numeric columns). `categorical_encoding`:
    "auto" (one-hot for few categories, cross-fitted target encoding for many), "onehot",
    "target" or "ordinal".
    """
    from kfp_automl.runtime.transformers import build_preprocessor

    return build_preprocessor(
        schema, numeric_scaling=scaling, categorical_encoding=categorical_encoding, seed=seed
    )


def build_model(schema: Schema, config: dict[str, Any], seed: int = 0) -> Pipeline:
    """One sklearn Pipeline: preprocessing + the family's estimator with `config`'s parameters."""
    family = FAMILIES[config["family"]]
    params = {**family.initial, **family_params(config)}
    prep = {k: params.pop(k) for k in PREPROCESSING if k in params}
    return Pipeline(
        [
            (
                "preprocess",
                preprocessor(
                    schema, prep.get("scaling", "none"), prep.get("encoding", "auto"), seed
                ),
            ),
            ("model", family.make(schema.task, params, seed)),
        ]
    )
