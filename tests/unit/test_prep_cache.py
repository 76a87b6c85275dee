"""Trials on one worker share a split's preprocessing: the cache's rules, and that a trial
scores the same with it as without it."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse

from kfp_automl.components.tune import trial
from kfp_automl.components.tune.families import initial_configs, select_families
from kfp_automl.components.tune.trial import PrepCache, prep_cache_bytes
from kfp_automl.errors import UserError
from tests.support.frames import schema_for, synthetic_frame


def _maker(calls: list, nbytes: int = 800):
    def make():
        calls.append(1)
        return np.zeros(nbytes // 16), np.zeros(nbytes // 16)

    return make


def test_a_key_is_made_once_per_plan_and_a_new_plan_starts_empty():
    cache, calls = PrepCache(10_000), []
    first = cache.get("plan-a", (0, 1, "auto", None), _maker(calls))
    again = cache.get("plan-a", (0, 1, "auto", None), _maker(calls))
    assert again is first and len(calls) == 1 and cache.hits == 1
    cache.get("plan-a", (0, 1, "target", None), _maker(calls))  # another encoding: made
    assert len(calls) == 2
    cache.get("plan-b", (0, 1, "auto", None), _maker(calls))  # another search: made again
    assert len(calls) == 3 and len(cache.entries) == 1


def test_no_plan_or_a_zero_limit_keeps_nothing():
    calls: list = []
    for cache, plan in ((PrepCache(10_000), ""), (PrepCache(0), "plan")):
        cache.get(plan, (0,), _maker(calls))
        cache.get(plan, (0,), _maker(calls))
        assert not cache.entries
    assert len(calls) == 4


def test_the_least_recently_used_entry_leaves_first_and_big_entries_are_not_kept():
    cache, calls = PrepCache(4_000), []
    for i in range(4):
        cache.get("p", (i,), _maker(calls, 900))
    assert cache.size <= 4_000
    cache.get("p", (1,), _maker(calls, 900))  # used again: (0,) is now the oldest
    cache.get("p", (9,), _maker(calls, 900))
    assert (0,) not in cache.entries and (1,) in cache.entries
    cache.get("p", ("big",), _maker(calls, 2_000))  # over a quarter of the limit
    assert ("big",) not in cache.entries


def test_sparse_matrices_count_their_arrays():
    m = sparse.random(100, 50, density=0.1, format="csr", random_state=0)
    assert PrepCache.nbytes(m) == m.data.nbytes + m.indices.nbytes + m.indptr.nbytes


@pytest.mark.parametrize("value", ["lots", "-1", "nan"])
def test_a_bad_limit_is_a_user_error(monkeypatch, value):
    monkeypatch.setenv(trial.PREP_CACHE_ENV, value)
    with pytest.raises(UserError, match="KFP_AUTOML_PREP_CACHE_MB must be a number"):
        prep_cache_bytes()


def test_a_trial_scores_the_same_with_the_cache_and_reuses_it(monkeypatch):
    import ray.tune

    reports: list[dict] = []
    monkeypatch.setattr(ray.tune, "report", lambda result: reports.append(dict(result)))
    monkeypatch.setattr(trial, "node_info", lambda: {})
    monkeypatch.setattr(trial, "PREP_CACHE", PrepCache(64 * 1024 * 1024))
    schema = schema_for("classification")
    df = synthetic_frame(300)
    X, y = df.drop(columns=["target"]), df["target"]
    n = len(df)
    splits = [(np.arange(0, 200), np.arange(200, 300)), (np.arange(100, 300), np.arange(0, 100))]
    keep = np.arange(200)
    configs = [
        initial_configs(select_families(f), n, "classification")[0]
        for f in ("hist_gb", "random_forest")
    ]

    def final(config, plan):
        reports.clear()
        trial.train_fn(config, (X, y, splits), schema, "roc_auc", 0, keep, plan_id=plan)
        return reports[-1]

    plain = [final(c, "") for c in configs]
    cached = [final(c, "plan") for c in configs]
    for a, b in zip(plain, cached, strict=True):
        assert a["score"] == b["score"]
        assert np.array_equal(a["preds"], b["preds"])
    # the second family shares the first one's encoding: both splits came from the cache
    assert trial.PREP_CACHE.hits == len(splits) and trial.PREP_CACHE.misses == len(splits)
