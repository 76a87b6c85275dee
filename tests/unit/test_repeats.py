"""Exact repeats of a row are observations: prepare keeps them, and neither the split nor the
search's validation folds put a row and its copy on two sides."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold

from kfp_automl.components.prepare.prepare import Options, prepare
from kfp_automl.components.tune.validation import plan
from kfp_automl.tables.repeats import first_positions, repeat_keys


def coarse_table(n: int = 3000, seed: int = 0) -> pd.DataFrame:
    """A few coarse features (many zeros), so distinct records often look the same; how often
    a record pattern comes with each label is the signal."""
    r = np.random.default_rng(seed)
    df = pd.DataFrame({f"x{i}": r.choice([0, 0, 0, 1, 2], size=n) for i in range(4)})
    p = 1 / (1 + np.exp(-(df["x0"] - df["x1"] + 0.5 * df["x2"] - 0.5)))
    df["label"] = np.where(r.random(n) < p, "yes", "no")
    return df


def test_keys_number_the_distinct_rows():
    df = pd.DataFrame({"a": [1, 2, 1, 3, 2], "b": ["x", "y", "x", "x", "y"]})
    keys = repeat_keys(df)
    assert len(set(keys)) == 3 and keys[0] == keys[2] and keys[1] == keys[4] != keys[3]
    first = first_positions(keys)
    assert sorted(first) == [0, 1, 3] and all(keys[first[k]] == k for k in range(3))
    assert repeat_keys(df.iloc[:0]).shape == (0,)


def test_the_default_keeps_repeats_on_one_side_and_keeps_the_score():
    df = coarse_table()
    assert df.duplicated().mean() > 0.9  # nearly every row repeats another
    kept = prepare(df, "label")
    assert kept.schema.rows["duplicates"] == int(df.duplicated().sum())
    inputs = [p.drop(columns="label") for p in (kept.train, kept.valid, kept.test)]
    sides = [set(map(tuple, p.astype(str).to_numpy())) for p in inputs]
    assert not (sides[0] & sides[2]) and not (sides[1] & sides[2]) and not (sides[0] & sides[1])
    # the same test rows scored by a model of the kept training rows and one of the distinct
    # ones: repeats carry how often a pattern comes with each label, and dropping them loses it
    X, y = kept.train.drop(columns="label"), kept.train["label"]
    Xt, yt = kept.test.drop(columns="label"), kept.test["label"] == "yes"

    def auc(X_fit, y_fit):
        model = HistGradientBoostingClassifier(max_iter=50, random_state=0).fit(X_fit, y_fit)
        return roc_auc_score(yt, model.predict_proba(Xt)[:, list(model.classes_).index("yes")])

    distinct = kept.train.drop_duplicates()
    with_repeats, without = auc(X, y), auc(distinct.drop(columns="label"), distinct["label"])
    assert with_repeats > without + 0.05, (with_repeats, without)
    dropped = prepare(df, "label", options=Options(drop_duplicates=True))
    assert dropped.schema.rows["train"] + dropped.schema.rows["valid"] + dropped.schema.rows[
        "test"
    ] == len(df.drop_duplicates())


def test_validation_folds_keep_identical_rows_together():
    prepared = prepare(coarse_table(600, seed=1), "label")
    p = plan(prepared.train, prepared.valid, prepared.schema, kind="cv", folds=5, repeats=1)
    data = pd.concat([prepared.train, prepared.valid], ignore_index=True)
    keys = repeat_keys(data.drop(columns="label"))
    assert len(p.splits) == 5
    for fit, held in p.splits:
        assert not set(keys[fit]) & set(keys[held])
        assert len(fit) + len(held) == len(data)


def test_without_repeats_the_folds_are_the_plain_stratified_ones():
    r = np.random.default_rng(2)
    df = pd.DataFrame({"x": r.normal(size=400), "z": r.normal(size=400)})
    df["label"] = np.where(df["x"] + r.normal(size=400) > 0, "yes", "no")
    prepared = prepare(df, "label")
    p = plan(prepared.train, prepared.valid, prepared.schema, kind="cv", folds=5, repeats=1)
    data = pd.concat([prepared.train, prepared.valid], ignore_index=True)
    plain = StratifiedKFold(n_splits=5, shuffle=True, random_state=0).split(
        data.drop(columns="label"), data["label"]
    )
    for (fit, held), (fit0, held0) in zip(p.splits, plain, strict=True):
        assert np.array_equal(fit, fit0) and np.array_equal(held, held0)
