"""The search's portfolio: the committed file, how an entry fits a run's space, what the
search tries first, and the offline selection that produced it."""

from __future__ import annotations

import math

import pytest

from kfp_automl.components.tune import portfolio
from kfp_automl.components.tune.families import (
    FAMILIES,
    family_params,
    fits_space,
    initial_configs,
    select_families,
)
from kfp_automl.components.tune.search import first_points
from tests.bench import build_portfolio, search_bench

TASKS = ("classification", "regression")


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("n_rows", [200, 5_000, 200_000])
@pytest.mark.parametrize("categorical", [True, False])
def test_every_entry_fits_the_space_of_any_run(task, n_rows, categorical):
    configs = portfolio.configs(list(FAMILIES.values()), n_rows, task, categorical)
    assert len(configs) >= 8
    assert len({c["family"] for c in configs}) >= 3  # across families, not one family's grid
    for c in configs:
        assert fits_space(FAMILIES[c["family"]], family_params(c), n_rows, task, categorical)


def test_the_committed_portfolio_is_what_its_script_builds_from_the_committed_scores():
    rebuilt = build_portfolio.render(build_portfolio.build(build_portfolio.read_scores()))
    assert rebuilt == portfolio.PATH.read_text(encoding="utf-8")


def test_the_portfolio_tables_are_in_no_benchmark():
    doc = portfolio.document()
    learned_on = {t for task in TASKS for t in doc["tables"][task]}
    assert learned_on == set(build_portfolio.TABLES)
    benchmark = set(search_bench.TABLES) | {"AER/CPS1988", "modeldata/wa_churn"}
    assert not learned_on & benchmark


def test_an_entry_is_clipped_into_a_smaller_domain_and_loses_what_is_not_searched():
    rf = FAMILIES["random_forest"]
    params = {"n_estimators": 300, "min_samples_leaf": 1, "max_features": 0.4, "encoding": "target"}
    big = portfolio.fit_to_space(rf, params, 100_000, "classification", has_categorical=False)
    assert big == {"n_estimators": 150, "min_samples_leaf": 1, "max_features": 0.4}
    small = portfolio.fit_to_space(rf, params, 1_000, "classification")
    assert small == params


def test_an_entry_with_a_choice_the_space_does_not_offer_is_skipped():
    linear = FAMILIES["linear"]
    params = {"C": 1.0, "encoding": "ordinal", "scaling": "standard"}
    assert portfolio.fit_to_space(linear, params, 1_000, "classification") is None
    assert portfolio.fit_to_space(linear, {**params, "C": "big"}, 1_000, "classification") is None


def test_first_points_are_every_family_start_then_the_portfolio():
    families = list(FAMILIES.values())
    starts = initial_configs(families, 3_000, "classification")
    front = portfolio.configs(families, 3_000, "classification")
    points = first_points(families, 3_000, "classification")
    assert points[: len(starts)] == starts
    assert points[len(starts) :] == [c for c in front if c not in starts]
    assert len(points) > len(starts)
    off = first_points(families, 3_000, "classification", use_portfolio=False)
    assert off == starts


def test_one_family_gets_only_its_own_entries():
    points = first_points(select_families("hist_gb"), 3_000, "regression")
    assert points and {p["family"] for p in points} == {"hist_gb"}


def test_the_searcher_is_handed_the_portfolio_after_the_warm_start():
    from kfp_automl.components.tune.search import _searcher
    from kfp_automl.runtime.metrics import METRICS

    families = list(FAMILIES.values())
    warm = [initial_configs([FAMILIES["linear"]], 3_000, "classification")[0]]
    searcher, n = _searcher(
        "tpe", families, 3_000, "classification", METRICS["roc_auc"], warm, seed=0
    )
    assert n is None
    points = searcher._points_to_evaluate
    expected = [p for p in first_points(families, 3_000, "classification") if p not in warm]
    assert points == warm + expected


# --- the offline selection ----------------------------------------------------


def test_rescale_maps_best_to_zero_median_to_one_and_failures_to_one():
    out = build_portfolio.rescale({"a": 0.1, "b": 0.2, "c": 0.3, "d": 0.9, "e": math.nan})
    assert out["a"] == 0.0 and out["d"] == 1.0 and out["e"] == 1.0
    assert 0.0 < out["b"] < out["c"] <= 1.0


def test_greedy_selection_covers_tables_before_repeating_strength():
    # x is best on t1, y on t2, z is decent on both: z first, then the specialists
    losses = {
        "t1": {"x": 0.10, "y": 0.50, "z": 0.20, "w": 0.60},
        "t2": {"x": 0.50, "y": 0.10, "z": 0.20, "w": 0.60},
    }
    chosen = build_portfolio.select(losses, size=4, min_gain=1e-9)
    names = [c for c, _ in chosen]
    assert names[0] == "z"
    assert set(names[1:3]) == {"x", "y"}
    values = [v for _, v in chosen]
    assert values == sorted(values, reverse=True) and values[-1] == 0.0
    assert "w" not in names  # it gains nothing once x and y are in


def test_greedy_selection_stops_when_the_gain_is_below_the_floor():
    losses = {"t1": {"x": 0.10, "y": 0.1001, "z": 0.5}, "t2": {"x": 0.2, "y": 0.2, "z": 0.5}}
    chosen = build_portfolio.select(losses, size=10, min_gain=0.01)
    assert [c for c, _ in chosen] == ["x"]


def test_candidates_are_every_family_start_and_draws_inside_the_space():
    for task in TASKS:
        configs = build_portfolio.candidates(task)
        assert configs == build_portfolio.candidates(task)  # seeded
        starts = initial_configs(list(FAMILIES.values()), build_portfolio.MAX_ROWS, task)
        assert all(s in configs for s in starts)
        for c in configs:
            family = FAMILIES[c["family"]]
            assert fits_space(family, family_params(c), build_portfolio.MAX_ROWS, task)
