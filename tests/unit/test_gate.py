"""The champion/challenger gate on a real holdout."""

from __future__ import annotations

import pandas as pd
import pytest
from sklearn.dummy import DummyClassifier

from kfp_automl.components.gate.gate import decide as _decide
from kfp_automl.components.gate.gate import schema_differences
from kfp_automl.components.prepare.prepare import prepare
from kfp_automl.components.tune.families import FAMILIES, build_model, flat_config
from kfp_automl.contracts.schema import Schema


def decide(*args, **kwargs):
    """The gate with 200 paired resamples (its default 500 only narrows the p-value)."""
    return _decide(*args, **{"n_bootstrap": 200, **kwargs})


@pytest.fixture(scope="module")
def churn(churn_df):
    p = prepare(churn_df.head(3000), "churn")
    X, y = p.train.drop(columns="churn"), p.train["churn"]
    good = build_model(p.schema, flat_config("hist_gb", FAMILIES["hist_gb"].initial)).fit(X, y)
    weak = DummyClassifier(strategy="prior").fit(X, y)  # roc_auc 0.5
    return p, good, weak


def test_no_champion_deploys(churn):
    p, good, _ = churn
    d = decide(good, p.test, p.schema)
    assert d.deploy and "no champion" in d.reason and d.metric == "roc_auc"


def test_a_clearly_better_challenger_deploys_and_a_worse_one_does_not(churn):
    p, good, weak = churn
    up = decide(good, p.test, p.schema, champion=(weak, p.schema, "old"))
    assert up.deploy, up.reason
    assert up.improvement > 0 and up.p_value < 0.05 and up.improvement_ci[0] > 0
    down = decide(weak, p.test, p.schema, champion=(good, p.schema, "old"))
    assert not down.deploy and down.improvement < 0 and "not better" in down.reason


def test_the_same_model_is_not_a_gain(churn):
    p, good, _ = churn
    d = decide(good, p.test, p.schema, champion=(good, p.schema, "old"))
    assert not d.deploy and d.improvement == 0


def test_min_improvement_is_required(churn):
    p, good, weak = churn
    d = decide(good, p.test, p.schema, champion=(weak, p.schema, "old"), min_improvement=0.5)
    assert not d.deploy and "required 0.5" in d.reason


def test_a_champion_with_another_schema_is_refused_not_crashed(churn):
    p, good, weak = churn
    raw = p.schema.to_dict()
    raw["features"].append({"name": "gone_column", "kind": "numeric"})
    raw["features"][0] |= {"kind": "categorical", "role": "categorical"}
    old = Schema.from_dict(raw)
    problems = schema_differences(old, p.schema)
    assert any("'gone_column' is gone" in x for x in problems)
    assert any("changed from categorical to numeric" in x for x in problems)
    d = decide(good, p.test, p.schema, champion=(weak, old, "old"))
    assert not d.deploy and "gone_column" in d.reason and list(d.problems) == problems


def test_a_tiny_holdout_cannot_justify_a_replacement(churn):
    p, good, _ = churn
    d = decide(good, p.test.head(20), p.schema, champion=(churn[2], p.schema, "old"))
    assert not d.deploy and "too few" in d.reason


# --- rows the champion was fitted on -------------------------------------------------------


def test_holdout_rows_the_champion_was_fitted_on_are_left_out(churn):
    """A champion fitted on half of today's holdout (yesterday's split of a table that has
    grown) scores well there for having learned those rows; the gate compares on the rest."""
    from kfp_automl.registry.training_rows import input_keys

    p, good, _ = churn
    seen_half = p.test.iloc[: len(p.test) // 2]
    fitted_on = pd.concat([p.train, seen_half], ignore_index=True)
    forest = build_model(p.schema, flat_config("random_forest", FAMILIES["random_forest"].initial))
    champion = forest.fit(fitted_on.drop(columns="churn"), fitted_on["churn"])
    blind = decide(good, p.test, p.schema, champion=(champion, p.schema, "old"))
    fair = decide(
        good,
        p.test,
        p.schema,
        champion=(champion, p.schema, "old"),
        champion_rows=input_keys(fitted_on, p.schema),
    )
    assert blind.left_out_rows == 0 and blind.compared_rows == len(p.test)
    assert fair.left_out_rows == len(seen_half)
    assert fair.compared_rows == len(p.test) - len(seen_half)
    # scored where it learned the answers, the champion looked better than it is
    assert blind.champion_score > fair.champion_score + 0.02
    assert f"{len(seen_half)} of {len(p.test)} left out" in fair.reason
    # the challenger is scored on the same rows as the champion
    X_rest = p.test.iloc[len(seen_half) :]
    from kfp_automl.runtime.metrics import METRICS, score

    expected = score(METRICS["roc_auc"], good, X_rest.drop(columns="churn"), X_rest["churn"])
    assert fair.challenger_score == pytest.approx(expected)


def test_a_champion_fitted_on_every_holdout_row_cannot_be_compared(churn):
    from kfp_automl.registry.training_rows import input_keys

    p, good, weak = churn
    everything = pd.concat([p.train, p.test], ignore_index=True)
    d = decide(
        good,
        p.test,
        p.schema,
        champion=(weak, p.schema, "old"),
        champion_rows=input_keys(everything, p.schema),
    )
    assert not d.deploy and d.compared_rows == 0 and d.left_out_rows == len(p.test)
    assert "only 0 holdout rows are left to compare" in d.reason and "too few" in d.reason


def test_without_the_champions_rows_the_reason_says_every_row_was_compared(churn):
    p, good, weak = churn
    d = decide(good, p.test, p.schema, champion=(weak, p.schema, "old"), rows_note="none recorded")
    assert d.deploy and f"on all {len(p.test)} holdout rows (none recorded)" in d.reason
