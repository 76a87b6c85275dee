"""The search with a real Ray: algorithms, warm start, a two-node cluster on 127.0.0.1,
a trial whose worker is killed, a driver that is killed and resumed."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest

from kfp_automl.components.prepare.prepare import prepare
from kfp_automl.components.tune.families import select_families
from kfp_automl.components.tune.search import run_search
from kfp_automl.runtime.metrics import resolve_metric
from kfp_automl.tables.io import read_table, write_parquet
from tests.support.ray_cluster import ray_cluster as start_ray_cluster

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def prepared(small_churn_csv):
    return prepare(read_table(small_churn_csv), "churn")


def _search(prepared, **kwargs):
    defaults = dict(time_budget_s=60, max_trials=6)
    return run_search(
        prepared.train,
        prepared.valid,
        prepared.schema,
        resolve_metric(kwargs.pop("metric", ""), "classification", 2),
        select_families(kwargs.pop("families", "linear,hist_gb,lightgbm")),
        **{**defaults, **kwargs},
    )


@pytest.mark.parametrize("algorithm", ["random", "grid"])
def test_other_algorithms_finish_with_a_best_model(prepared, algorithm):
    result = _search(prepared, algorithm=algorithm, validation_kind="holdout")
    board = result.leaderboard
    assert len(board) == 6 and result.validation == "holdout"
    ok = board[board["status"] == "ok"]
    assert len(ok) >= 2 and ok["score"].between(0.5, 1).all()
    # every family's cheap starting point is among the first trials
    assert set(board["family"]) == {"linear", "hist_gb", "lightgbm"}
    if algorithm == "grid":  # the grid's points are deterministic: linear C=1e-3 is next
        params = [json.loads(p) for p in board[board["family"] == "linear"]["params"]]
        start = {"C": 1.0, "encoding": "auto", "scaling": "standard"}
        assert start in params and any(abs(p["C"] - 1e-3) < 1e-9 for p in params)


def test_asha_stops_iterative_trials_at_a_budget_step(prepared):
    result = _search(
        prepared, families="hist_gb", max_trials=10, algorithm="random", validation_kind="holdout"
    )
    board = result.leaderboard
    stopped = board[board["status"] == "stopped"]
    assert len(stopped) >= 1
    assert set(stopped["step"]) <= {1, 3}  # cut at the first or second budget step
    assert (board[board["status"] == "ok"]["step"] == 9).all()
    # a stopped trial spent less fitting time than the finished ones, on the median
    assert stopped["fit_time_s"].median() < board[board["status"] == "ok"]["fit_time_s"].median()


def test_a_budget_shorter_than_rays_start_still_ends_with_a_model(prepared, capsys):
    # Ray's start alone outlasts a 1 s budget: the search waits for its first finished trial
    result = _search(prepared, families="random_forest", time_budget_s=1, max_trials=4)
    ok = result.leaderboard[result.leaderboard["status"] == "ok"]
    assert len(ok) >= 1 and result.best_config["family"] == "random_forest"
    assert "waiting up to 30s more for the first one" in capsys.readouterr().out


def test_f1_ships_a_decision_threshold_tuned_on_out_of_fold_predictions(prepared):
    """For f1 on a binary target the chosen model's threshold is tuned on its out-of-fold
    predictions; the refitted model answers with it (and without tuning, argmax)."""
    from kfp_automl.components.tune.search import refit_best
    from kfp_automl.runtime.threshold import threshold_of

    kwargs = dict(metric="f1", families="linear", max_trials=3, use_ensemble=False)
    tuned = _search(prepared, **kwargs)
    t = tuned.threshold
    positive = sorted(prepared.train["churn"].unique())[1]
    assert t is not None and t.pos_label == positive and 0 < t.threshold < 1
    assert t.score > t.at_half  # on the rows it was tuned on
    model = refit_best(
        prepared.train, prepared.valid, prepared.schema, tuned.best_config, 42, None, t
    )
    assert threshold_of(model) == (t.threshold, positive)
    X = prepared.test.drop(columns=["churn"])
    proba = model.predict_proba(X)[:, 1]
    expected = np.where(proba >= t.threshold, positive, model.classes_[0])
    np.testing.assert_array_equal(model.predict(X), expected)
    assert _search(prepared, tune_decision_threshold=False, **kwargs).threshold is None


def test_warm_start_configs_run_first(prepared):
    seed_config = {"family": "linear", "linear.C": 0.0123}
    result = _search(prepared, warm_start=[seed_config], max_trials=4, early_stopping=False)
    board = result.leaderboard
    params = [json.loads(p) for p in board[board["family"] == "linear"]["params"]]
    assert any(p["C"] == 0.0123 for p in params)  # what the seed leaves open is sampled
    first = board.sort_values("finished_at_s").iloc[:2]
    assert "linear" in set(first["family"])  # the seed runs in the first wave


@pytest.fixture(scope="module")
def ray_cluster():
    """A head node and a worker node started with `ray start`, 1 CPU each, on 127.0.0.1,
    joined by the GCS address (the driver runs on a node of the cluster, as here).

    Ray 2.60 turns token authentication on for clusters it starts; the nodes and the
    driver share the token through RAY_AUTH_MODE=token and RAY_AUTH_TOKEN. Ray Client
    (`ray://`) is refused (tests/component/test_tune_address_errors.py); a pipeline pod
    submits the search as a Ray job instead (tests/component/test_tune_jobs.py).
    """
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    with start_ray_cluster(env, workers=1, cpus=1) as cluster:
        yield cluster.gcs_address, env


def _write_inputs(prepared, tmp: Path) -> list[str]:
    write_parquet(tmp / "train.parquet", prepared.train)
    write_parquet(tmp / "valid.parquet", prepared.valid)
    prepared.schema.write(tmp / "schema.json")
    return [str(tmp / n) for n in ("train.parquet", "valid.parquet", "schema.json")]


DRIVER = """
import json, sys
from kfp_automl.components.tune.tune import run
args = json.loads(sys.argv[1])
names = ("train_path", "valid_path", "schema_path", "model_dir", "leaderboard_path")
paths = dict(zip(names, args.pop("files")))
print("META " + json.dumps(run(**paths, **args).to_metadata()), flush=True)
"""


def _driver(files, tmp: Path, env=None, **kwargs) -> subprocess.Popen:
    args = {
        "files": [*files, str(tmp / "model"), str(tmp / "leaderboard.csv")],
        "time_budget_s": 180,  # max_trials ends a search; room for a loaded machine
        "max_trials": 6,
        **kwargs,
    }
    return subprocess.Popen(
        [sys.executable, "-c", DRIVER, json.dumps(args)],
        env=env or os.environ.copy(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _meta(output: str) -> dict:
    [line] = [x for x in output.splitlines() if x.startswith("META ")]
    return json.loads(line[5:])


def test_search_on_a_two_node_cluster_uses_both_nodes(prepared, tmp_path, ray_cluster):
    address, env = ray_cluster
    files = _write_inputs(prepared, tmp_path)
    proc = _driver(
        files, tmp_path, env, ray_address=address, families="linear,hist_gb", early_stopping=False
    )
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    assert "on 2 CPUs" in out
    board = pd.read_csv(tmp_path / "leaderboard.csv")
    assert (board["status"] == "ok").sum() == 6
    assert board["node_id"].nunique() == 2, board[["family", "node_id"]]
    assert _meta(out)["n_trials"] == 6


def test_cluster_refuses_a_driver_without_its_token(prepared, tmp_path, ray_cluster):
    address, env = ray_cluster
    files = _write_inputs(prepared, tmp_path)
    # a refused driver retries once a second, 20 times by default; 2 are enough here
    wrong = {**env, "RAY_AUTH_TOKEN": secrets.token_hex(32), "RAY_gcs_server_port_wait_time_s": "2"}
    proc = _driver(files, tmp_path, wrong, ray_address=address)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0
    assert not (tmp_path / "leaderboard.csv").exists()


def _trial_workers(root: int) -> list[psutil.Process]:
    """Ray's trial actors under the driver (their process title names the trainable)."""
    found = []
    for p in psutil.Process(root).children(recursive=True):
        try:
            if "ImplicitFunc" in " ".join(p.cmdline()):
                found.append(p)
        except psutil.Error:
            continue
    return found


def test_a_trial_whose_worker_dies_is_retried(prepared, tmp_path):
    files = _write_inputs(prepared, tmp_path)
    # slow trials (many trees, no early stopping) so a worker is busy when it is killed
    proc = _driver(
        files,
        tmp_path,
        families="random_forest",
        max_trials=4,
        early_stopping=False,
        validation="cv",
    )
    killed = None
    deadline = time.monotonic() + 90
    while killed is None and time.monotonic() < deadline and proc.poll() is None:
        workers = _trial_workers(proc.pid)
        if workers:
            time.sleep(1.0)  # let it start fitting
            try:
                workers[0].kill()
                killed = workers[0].pid
            except psutil.NoSuchProcess:  # it ended on its own meanwhile: take the next one
                continue
        time.sleep(0.3)
    out, _ = proc.communicate(timeout=300)
    assert killed is not None, "no trial worker seen"
    assert proc.returncode == 0, out[-3000:]
    assert "lost its worker; retrying it" in out
    meta = _meta(out)
    assert meta["n_retried"] >= 1 and meta["n_trials"] == 4
    board = pd.read_csv(tmp_path / "leaderboard.csv")
    assert (board["status"] == "ok").all()


def test_a_killed_driver_resumes_without_repeating_finished_trials(prepared, tmp_path):
    files = _write_inputs(prepared, tmp_path)
    state = tmp_path / "state"
    env = {**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "1"}  # save the experiment every second
    kwargs = dict(
        families="linear,hist_gb",
        max_trials=10,
        early_stopping=False,
        storage_path=str(state),
        validation="holdout",
    )
    first = _driver(files, tmp_path, env, **kwargs)
    state_file = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and first.poll() is None:
        files_now = list((state / "search").glob("experiment_state-*.json"))
        if files_now:
            text = files_now[0].read_text()
            if text.count('"TERMINATED"') >= 3 or text.count("TERMINATED") >= 3:
                state_file = files_now[0]
                break
        time.sleep(0.5)
    assert state_file is not None, "the first run saved no experiment state with finished trials"
    for p in psutil.Process(first.pid).children(recursive=True):
        p.kill()  # the driver's Ray dies with it, as in a killed pod
    first.kill()
    first.communicate(timeout=60)
    finished_before = _finished_trials(state_file)
    assert len(finished_before) >= 3

    second = _driver(files, tmp_path, env, **kwargs)
    out, _ = second.communicate(timeout=300)
    assert second.returncode == 0, out[-3000:]
    assert "resuming the search" in out
    meta = _meta(out)
    board = pd.read_csv(tmp_path / "leaderboard.csv")
    assert len(board) == 10 and board["trial_id"].is_unique
    assert finished_before <= set(board["trial_id"])
    assert meta["n_restored"] >= len(finished_before)
    # the second run finished only the trials the first did not
    assert out.count("trials done") <= 10


def _finished_trials(state_file: Path) -> set[str]:
    data = json.loads(state_file.read_text())
    ids = set()
    for entry in data.get("trial_data", []):
        trial_json = json.loads(entry[0]) if isinstance(entry, list) else entry
        if trial_json.get("status") == "TERMINATED":
            ids.add(trial_json["trial_id"])
    return ids
