"""Ray Tune search over model families x hyperparameters (CASH).

`run_search` is plain Python: it starts (or joins) Ray, puts the validation
plan's data in the object store once, runs a Tuner with the chosen search
algorithm (Optuna TPE, random, or grid), ASHA early stopping for iterative
families, wall-clock and trial budgets, retries for trials whose worker
dies, and (with a storage path) resumable experiment state. It returns the
leaderboard and, when it beats the best single trial, a greedy ensemble.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kfp_automl.components.tune import ensemble, portfolio, validation
from kfp_automl.components.tune.families import (
    Family,
    SearchSpace,
    build_model,
    family_params,
    flat_config,
    grid,
    has_categorical,
    imbalanced,
    initial_configs,
)
from kfp_automl.components.tune.ray_private import replace_run_settings
from kfp_automl.components.tune.trial import MAX_STEP, STEPS, prep_cache_bytes, train_fn
from kfp_automl.contracts.schema import Schema
from kfp_automl.errors import UserError
from kfp_automl.progress import say
from kfp_automl.runtime.metrics import Metric
from kfp_automl.runtime.threshold import Tuned, with_threshold
from kfp_automl.runtime.threshold import tune as tune_threshold

# Ray Tune writes CSV/JSON/TensorBoard logs per trial unless told not to;
# they cost seconds per trial on 2 cores and nothing here reads them.
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")

ALGORITHMS = ("tpe", "random", "grid")
EXPERIMENT = "search"
ENSEMBLE_TOP_K = 20  # trials whose predictions are kept for ensemble selection
ENSEMBLE_ROWS = 5_000  # evaluation rows kept per trial (a fixed sample beyond that)


@dataclass
class SearchResult:
    leaderboard: pd.DataFrame  # one row per trial, best first
    best_config: dict[str, Any]
    best_score: float
    elapsed_s: float
    validation: str = "holdout"
    ensemble: list[tuple[dict[str, Any], int]] = field(default_factory=list)  # (config, weight)
    ensemble_score: float | None = None
    best_single_pooled: float | None = None
    n_restored: int = 0
    n_retried: int = 0
    ray_start_s: float = 0.0  # starting (or joining) Ray, inside elapsed_s
    cpus: int = 1  # trials run at once
    threshold: Tuned | None = None  # a binary classifier's tuned decision threshold

    def time_use(self) -> dict[str, float]:
        """Where the search's CPU time went, as shares of its wall clock x `cpus`: model fits
        and scoring, preprocessing, and the rest (Ray's start, scheduling between trials, idle
        CPUs at the end, the driver)."""
        total = max(1e-9, self.elapsed_s * self.cpus)
        spent = self.leaderboard["fit_time_s"].fillna(0).sum()
        prep = self.leaderboard["prep_time_s"].fillna(0).sum()
        fit, prep = min(1.0, (spent - prep) / total), min(1.0, prep / total)
        return {"fit": fit, "prep": prep, "other": max(0.0, 1.0 - fit - prep)}

    def describe_time(self) -> str:
        use = self.time_use()
        trials = len(self.leaderboard)
        rate = trials / max(1e-9, self.elapsed_s) * 60
        return (
            f"{trials} trials in {self.elapsed_s:.0f}s ({rate:.0f} a minute) on {self.cpus} "
            f"CPUs: {use['fit']:.0%} fitting and scoring, {use['prep']:.0%} preprocessing, "
            f"{use['other']:.0%} other (Ray's start {self.ray_start_s:.1f}s, scheduling, "
            "idle CPUs)"
        )


def _xy(df: pd.DataFrame, target: str):
    return df.drop(columns=[target]), df[target]


def _callback(
    metric: Metric,
    budget_s: float,
    started: float,
    preds_dir: Path,
    every_s=5.0,
    mirror: _Mirror | None = None,
):
    """Progress lines, retries, and the top trials' predictions (on disk, at most
    ENSEMBLE_TOP_K files): the predictions leave the result before Ray stores it."""
    from ray.tune import Callback

    class Progress(Callback):
        def __init__(self):
            self.done = self.failed = self.stopped = self.retried = 0
            self.best: tuple[float, str] | None = None
            self.last_print = time.monotonic()
            self.kept: dict[str, float] = {}  # trial id -> score, for the saved predictions

        def _status(self) -> str:
            left = max(0.0, budget_s - (time.monotonic() - started))
            extra = "".join(
                f", {n} {what}"
                for n, what in [(self.stopped, "stopped early"), (self.failed, "failed")]
                if n
            )
            best = (
                f"best {metric.name}={self.best[0]:.4f} ({self.best[1]})"
                if self.best
                else "no result yet"
            )
            return f"{self.done} trials done{extra}, {best}, {left:.0f}s left"

        def on_trial_result(self, iteration, trials, trial, result, **info):
            preds = result.pop("preds", None)  # never kept in Ray's trial state
            if preds is None or not result.get("final"):
                return
            tid, value = trial.trial_id, float(result["score"])
            if len(self.kept) >= ENSEMBLE_TOP_K:
                worst = (min if metric.greater_is_better else max)(self.kept, key=self.kept.get)
                if not metric.better(value, self.kept[worst]):
                    return
                self.kept.pop(worst)
                (preds_dir / f"{worst}.npy").unlink(missing_ok=True)
                if mirror is not None:
                    mirror.remove(preds_dir / f"{worst}.npy")
            np.save(preds_dir / f"{tid}.npy", preds)
            if mirror is not None:
                mirror.push(preds_dir / f"{tid}.npy")
            self.kept[tid] = value

        def on_trial_complete(self, iteration, trials, trial, **info):
            result = trial.last_result or {}
            if "score" not in result:
                return
            if not result.get("final"):
                self.stopped += 1
                return
            self.done += 1
            value, family = result["score"], trial.config.get("family", "?")
            improved = self.best is None or metric.better(value, self.best[0])
            if improved:
                self.best = (value, family)
            if improved or time.monotonic() - self.last_print >= every_s:
                self.last_print = time.monotonic()
                say("tune", ("new best: " if improved else "") + self._status())

        def on_trial_recover(self, iteration, trials, trial, **info):
            self.retried += 1
            say("tune", f"a {trial.config.get('family', '?')} trial lost its worker; retrying it")

        def on_trial_error(self, iteration, trials, trial, **info):
            self.failed += 1
            say(
                "tune",
                f"a {trial.config.get('family', '?')} trial failed (see run.log); the search goes on",
            )

    return Progress()


JOBS_URL_HINT = (
    "give the cluster's Ray Jobs API instead, http://HEAD:8265 (on KubeRay "
    "http://<cluster>-head-svc.<namespace>.svc.cluster.local:8265)"
)


def check_address(ray_address: str) -> None:
    """Refuse the addresses this search cannot run through (a UserError naming the way that works)."""
    address = ray_address.strip()
    if address.startswith("ray://"):
        raise UserError(
            f"ray_address {address}: Ray Client (ray://) is not supported: it runs the search's "
            "driver on the head, away from its progress lines and the predictions the ensemble "
            f"is built from; {JOBS_URL_HINT}"
        )
    if address.lower().startswith(("http://", "https://")):
        raise UserError(
            f"ray_address {address} is a Ray Jobs API: the tune step (tune.run) submits the "
            "search there as a Ray job; run_search itself joins a cluster by its GCS address"
        )


def check_algorithm(algorithm: str) -> None:
    if algorithm not in ALGORITHMS:
        raise UserError(
            f"unknown search algorithm {algorithm!r}; choose one of {', '.join(ALGORITHMS)}"
        )


def _start_ray(ray_address: str) -> bool:
    """Join `ray_address`, or start a private local Ray bound to 127.0.0.1. True if we started it.

    `auto` is the cluster a Ray job runs on; HOST:PORT a GCS address, which connects only
    through a Ray node (raylet) on this host: from a pod outside the cluster, submit a Ray job.
    """
    import ray

    if ray.is_initialized():
        return False
    if ray_address:
        if os.environ.get("RAY_AUTH_TOKEN"):  # the cluster's token (a Secret on KubeRay)
            os.environ.setdefault("RAY_AUTH_MODE", "token")
        ray.init(address=ray_address, logging_level="WARNING", log_to_driver=False)
        return True
    ray.init(
        num_cpus=len(os.sched_getaffinity(0)),  # the CPUs this process may use (containers)
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        object_store_memory=256 * 1024 * 1024,
        logging_level="WARNING",
        log_to_driver=False,
    )
    return True


def _searcher(
    algorithm: str,
    families: list[Family],
    n_rows: int,
    task: str,
    metric: Metric,
    seeds: list[dict[str, Any]],
    seed: int,
    categorical: bool = True,
    use_portfolio: bool = True,
    imbalanced: bool = False,
):
    """(search algorithm, number of samples or None for unbounded) for `algorithm`."""
    from optuna.samplers import RandomSampler, TPESampler
    from ray.tune.search.optuna import OptunaSearch

    starts = [c for c in first_points(families, n_rows, task, categorical, use_portfolio, imbalanced)
              if c not in seeds]  # fmt: skip
    if algorithm == "grid":
        grid_points = grid(
            families, n_rows, task, has_categorical=categorical, imbalanced=imbalanced
        )
        points = [c for c in grid_points if c not in seeds]
        points = seeds + points
        return _grid_searcher(points, metric), len(points)
    sampler = (
        TPESampler(seed=seed, n_startup_trials=max(5, 2 * len(families)))
        if algorithm == "tpe"
        else RandomSampler(seed=seed)
    )
    searcher = OptunaSearch(
        space=SearchSpace(tuple(f.name for f in families), n_rows, task, categorical, imbalanced),
        metric="score",
        mode=metric.mode,
        points_to_evaluate=seeds + starts,
        sampler=sampler,
    )
    return searcher, None


def first_points(
    families: list[Family],
    n_rows: int,
    task: str,
    categorical: bool = True,
    use_portfolio: bool = True,
    imbalanced: bool = False,
) -> list[dict[str, Any]]:
    """What TPE and random search try first: each family's cheap starting configuration (a
    first wave that finishes fast and spans every family), then the portfolio's entries for
    these families, in order."""
    cheap = initial_configs(families, n_rows, task, categorical, imbalanced)
    front = (
        portfolio.configs(families, n_rows, task, categorical, imbalanced) if use_portfolio else []
    )
    return cheap + [c for c in front if c not in cheap]


def _grid_searcher(points: list[dict[str, Any]], metric: Metric):
    """A Searcher that hands out `points` in order, then says it is finished."""
    import pickle

    from ray.tune.search import Searcher

    class GridSearcher(Searcher):
        def __init__(self):
            super().__init__(metric="score", mode=metric.mode)
            self.points, self.next = points, 0

        def suggest(self, trial_id):
            if self.next >= len(self.points):
                return Searcher.FINISHED
            self.next += 1
            return dict(self.points[self.next - 1])

        def on_trial_complete(self, trial_id, result=None, error=False):
            pass

        def save(self, checkpoint_path):
            with open(checkpoint_path, "wb") as f:
                pickle.dump(self.next, f)

        def restore(self, checkpoint_path):
            with open(checkpoint_path, "rb") as f:
                self.next = pickle.load(f)

    return GridSearcher()


def _scheduler(metric: Metric, early_stopping: bool):
    from ray.tune.schedulers import FIFOScheduler

    from kfp_automl.components.tune.scheduler import FamilyASHA

    if not early_stopping:
        return FIFOScheduler()
    return FamilyASHA(
        time_attr="step",
        metric="score",
        mode=metric.mode,
        max_t=MAX_STEP,
        grace_period=STEPS[0],
        reduction_factor=3,
    )


def _started_at(exp_dir: Path | None, now: float) -> float:
    """When the experiment first started (kept beside its state, so a resumed search keeps it)."""
    if exp_dir is None:
        return now
    marker = exp_dir.parent / f".{exp_dir.name}-started"
    if marker.exists():
        return float(marker.read_text())
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(str(now))
    return now


def state_filesystem(storage: str) -> tuple[str, Any]:
    """(path, pyarrow filesystem or None) for Ray's `storage_path` / `storage_filesystem`.

    KFP's `minio://bucket/key` (and `s3://` with AWS_ENDPOINT_URL[_S3] set, as the storage
    Secret sets it for MinIO) get an S3 filesystem on that endpoint; anything else is left to
    Ray (local paths, gs://, s3:// on AWS).
    """
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if storage.startswith("minio://") or (storage.startswith("s3://") and endpoint):
        from pyarrow import fs

        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        options: dict[str, Any] = {"region": region or "us-east-1"}
        if endpoint:
            options["endpoint_override"] = endpoint
        path = storage.split("://", 1)[1].rstrip("/")
        return path, fs.S3FileSystem(**options)
    return storage, None


class _Mirror:
    """The search's own files kept beside Ray's state in an object store (the top trials'
    validation predictions, when the search began): pulled into a local folder at the start,
    each change pushed as it happens, so a retried pod resumes with them."""

    def __init__(self, fs: Any, remote: str, local: Path):
        self.fs, self.remote, self.local = fs, remote.rstrip("/"), local

    def pull(self) -> None:
        from pyarrow import fs as pafs

        infos = self.fs.get_file_info(pafs.FileSelector(self.remote, allow_not_found=True))
        for info in infos:
            if info.type == pafs.FileType.File:
                with self.fs.open_input_stream(info.path) as src:
                    (self.local / info.base_name).write_bytes(src.read())

    def push(self, path: Path) -> None:
        with self.fs.open_output_stream(f"{self.remote}/{path.name}") as dst:
            dst.write(path.read_bytes())

    def remove(self, path: Path) -> None:
        import contextlib

        with contextlib.suppress(FileNotFoundError, OSError):
            self.fs.delete_file(f"{self.remote}/{path.name}")


def _remote_mirror(storage: str, storage_fs: Any, exp_dir: Path) -> _Mirror:
    """The mirror of `exp_dir` under `<storage>/<EXPERIMENT>-files` in the object store."""
    if storage_fs is None:  # gs://, s3:// on AWS: the filesystem Ray would pick
        from pyarrow import fs as pafs

        storage_fs, storage = pafs.FileSystem.from_uri(storage)
    exp_dir.mkdir(parents=True, exist_ok=True)
    return _Mirror(storage_fs, f"{storage.rstrip('/')}/{EXPERIMENT}-files", exp_dir.parent)


def _move_predictions(exp_dir: Path, preds_dir: Path) -> None:
    """Pulled files land flat beside the experiment folder: predictions go to `preds_dir`."""
    for path in exp_dir.parent.glob("*.npy"):
        path.replace(preds_dir / path.name)


def run_search(
    train: pd.DataFrame,
    valid: pd.DataFrame,
    schema: Schema,
    metric: Metric,
    families: list[Family],
    time_budget_s: float = 60,
    max_trials: int = 0,
    seed: int = 42,
    ray_address: str = "",
    *,
    algorithm: str = "tpe",
    validation_kind: str = "auto",
    cv_folds: int = validation.DEFAULT_FOLDS,
    early_stopping: bool = True,
    warm_start: list[dict[str, Any]] | None = None,
    use_ensemble: bool = True,
    storage_path: str = "",
    max_failures: int = 2,
    reserve_refit: bool = False,
    use_portfolio: bool = True,
    tune_decision_threshold: bool = True,
) -> SearchResult:
    """Search families x hyperparameters with Ray Tune; return the leaderboard and the winner.

    `tune_decision_threshold`: for a binary target and a metric of labels that weighs the
    classes (f1, balanced accuracy, macro f1), the chosen model's decision threshold is tuned
    on its out-of-fold predictions (runtime/threshold.py) and kept when it beats 0.5.

    `use_portfolio`: TPE and random search try the portfolio (portfolio.py) after each
    family's cheap starting configuration; off, the starting configurations alone.

    `reserve_refit`: the refit of the winner on train+valid comes out of `time_budget_s`
    too; the search ends early by what the finished trials' fit times say it will cost.
    """
    import ray
    from ray import tune

    from kfp_automl.components.tune.budget import (
        ENSEMBLE_MEMBERS,
        REFIT_SHARE,
        BudgetStopper,
        RefitReserve,
        grace_for,
    )

    check_algorithm(algorithm)
    check_address(ray_address)
    prep_cache_bytes()  # a bad KFP_AUTOML_PREP_CACHE_MB fails here, not in every trial
    task = schema.task
    started, started_now = time.monotonic(), time.time()  # before Ray starts: its cost counts
    plan = validation.plan(train, valid, schema, validation_kind, cv_folds, seed)
    eval_y = plan.y.to_numpy()[plan.eval_positions]
    keep = validation.keep_positions(len(eval_y), ENSEMBLE_ROWS, seed)
    where = {"": "local, 127.0.0.1", "auto": "the cluster this job runs on"}
    say("tune", f"starting Ray ({where.get(ray_address, ray_address)})")
    ray_started = time.monotonic()
    we_started = _start_ray(ray_address)
    ray_start_s = time.monotonic() - ray_started
    local_dir = tempfile.TemporaryDirectory(prefix="kfp-automl-tune-")
    try:
        concurrency = max(1, int(ray.cluster_resources().get("CPU", 1)))
        # with_parameters puts the data in the object store once; every trial reads that copy.
        trainable = tune.with_parameters(
            train_fn,
            data=(plan.X, plan.y, plan.splits),
            schema=schema,
            metric_name=metric.name,
            seed=seed,
            keep=keep,
            plan_id=uuid.uuid4().hex,  # trials on one worker share the splits' preprocessing
        )
        n_rows = len(train)
        weighted = imbalanced(train[schema.target], task)  # class weights join the space
        storage, storage_fs = state_filesystem(storage_path or local_dir.name)
        mirror = None
        if "://" in storage or storage_fs is not None:
            # an object store: our own files live in a local folder mirrored beside the state
            exp_dir = Path(local_dir.name) / "mirror" / EXPERIMENT
            mirror = _remote_mirror(storage, storage_fs, exp_dir)
        else:
            exp_dir = Path(storage) / EXPERIMENT
        preds_dir = exp_dir / "predictions"
        preds_dir.mkdir(parents=True, exist_ok=True)
        if mirror is not None:
            mirror.pull()
            _move_predictions(exp_dir, preds_dir)
        started_wall = _started_at(exp_dir if storage_path else None, started_now)
        if mirror is not None and storage_path:
            mirror.push(exp_dir.parent / f".{EXPERIMENT}-started")
        this_run_at = started_now - started_wall
        budget_left = max(1.0, time_budget_s - (time.monotonic() - started))
        callback = _callback(metric, time_budget_s, started, preds_dir, mirror=mirror)
        grace_s = grace_for(time_budget_s)
        reserve = None
        if reserve_refit:
            fitted = sum(len(fit_rows) for fit_rows, _ in plan.splits)
            reserve = RefitReserve(
                metric.greater_is_better,
                rows_ratio=len(plan.X) / max(1, fitted),
                members=ENSEMBLE_MEMBERS if use_ensemble else 1,
                cap_s=REFIT_SHARE * budget_left,
            )
        stopper = BudgetStopper(time.monotonic() + budget_left, grace_s, reserve=reserve)
        exp_path = f"{storage.rstrip('/')}/{EXPERIMENT}"
        # Per-trial result files are off (see TUNE_DISABLE_AUTO_CALLBACK_LOGGERS), so a restore
        # and the ResultGrid warn for every trial that they cannot read them; the metrics come
        # from the experiment state and memory.
        logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
        if storage_path and tune.Tuner.can_restore(exp_path, storage_filesystem=storage_fs):
            say("tune", f"resuming the search saved in {storage_path.rstrip('/')}/{EXPERIMENT}")
            tuner = tune.Tuner.restore(
                exp_path,
                trainable=trainable,
                resume_unfinished=True,
                resume_errored=True,
                storage_filesystem=storage_fs,
            )
            # the restored run config holds the dead driver's callback and budget
            replace_run_settings(tuner, [callback], stopper)
        else:
            searcher, n_points = _searcher(
                algorithm,
                families,
                n_rows,
                task,
                metric,
                warm_start or [],
                seed,
                has_categorical(schema),
                use_portfolio,
                weighted,
            )
            samples = max_trials if max_trials > 0 else -1
            if n_points is not None:
                samples = min(n_points, max_trials) if max_trials > 0 else n_points
            # the first points past the starting ones are the portfolio's (first_points)
            n_front = (
                len(first_points(families, n_rows, task, has_categorical(schema), True, weighted))
                - len(families)
                if use_portfolio and algorithm != "grid"
                else 0
            )
            say(
                "tune",
                f"searching {', '.join(f.name for f in families)} with {algorithm} for "
                f"{budget_left:.0f}s on {concurrency} CPUs, metric {metric.name} ({metric.mode}), "
                f"{plan.describe()}"
                + (
                    f", each family's starting point, then the portfolio's {n_front} configurations"
                    if n_front
                    else ""
                ),
            )
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(
                    search_alg=searcher,
                    scheduler=_scheduler(metric, early_stopping),
                    num_samples=samples,
                    max_concurrent_trials=concurrency,
                    reuse_actors=True,
                ),
                run_config=tune.RunConfig(
                    name=EXPERIMENT,
                    storage_path=storage,
                    storage_filesystem=storage_fs,
                    verbose=0,
                    callbacks=[callback],
                    stop=stopper,
                    failure_config=tune.FailureConfig(max_failures=max_failures),
                ),
            )
        results = tuner.fit()
        board = leaderboard(results, metric, started_wall)
        n_restored = int((board["finished_at_s"] < this_run_at).sum())
        preds = {p.stem: np.load(p) for p in preds_dir.glob("*.npy")}
    finally:
        if we_started:
            ray.shutdown()
    ok = board[board["status"] == "ok"]
    if ok.empty:
        errors = board[board["status"] == "error"]
        if len(errors):
            local_dir.cleanup()
            raise RuntimeError(
                f"all {len(errors)} finished trials failed; first error: {errors.iloc[0]['error']}"
            )
        local_dir.cleanup()
        raise RuntimeError(
            f"no trial finished within the time budget of {time_budget_s:.0f}s nor in the "
            f"{grace_s:.0f}s after it; raise --time-budget"
        )
    best = ok.iloc[0]
    best_config = flat_config(best["family"], json.loads(best["params"]))
    result = SearchResult(
        board,
        best_config,
        float(best["score"]),
        time.monotonic() - started,
        validation=plan.kind,
        n_restored=n_restored,
        n_retried=callback.retried,
        ray_start_s=ray_start_s,
        cpus=concurrency,
    )
    local_dir.cleanup()
    classes = np.unique(plan.y.to_numpy()) if task == "classification" else np.array([])
    chosen = preds.get(str(best["trial_id"]))  # the chosen model's predictions on those rows
    if use_ensemble:
        chosen = _select_ensemble(result, preds, eval_y[keep], metric, classes, chosen)
    if tune_decision_threshold and chosen is not None and len(classes) == 2:
        result.threshold = tune_threshold(eval_y[keep], chosen, metric, classes)
        if result.threshold is not None:
            say("tune", result.threshold.describe(metric.name))
    return result


def _select_ensemble(
    result: SearchResult, preds, y, metric: Metric, classes, best: np.ndarray | None = None
) -> np.ndarray | None:
    """Caruana selection over the kept predictions of finished trials (classes: the trials'
    probability columns, every class of train+valid; empty for regression). Returns the
    chosen model's predictions on those rows: the ensemble's weighted average when it is
    kept, else `best` (the best single trial's)."""
    ok = result.leaderboard[result.leaderboard["status"] == "ok"]
    configs = {
        r.trial_id: flat_config(r.family, json.loads(r.params))
        for r in ok.itertuples()
        if r.trial_id in preds
    }
    preds = {tid: p for tid, p in preds.items() if tid in configs}
    selection = ensemble.select(preds, y, metric, classes)
    if selection is None:
        return best
    result.best_single_pooled = selection.best_single
    if selection.improves:
        result.ensemble = [(configs[tid], w) for tid, w in selection.members]
        result.ensemble_score = selection.score
        members = ", ".join(f"{configs[t]['family']} x{w}" for t, w in selection.members)
        say(
            "tune",
            f"ensemble of {members}: {metric.name}={selection.score:.4f} on the validation rows "
            f"vs {selection.best_single:.4f} for the best single model",
        )
        weights = np.array([w for _, w in selection.members], dtype=float)
        stacked = np.stack([preds[t].astype(float) for t, _ in selection.members])
        return np.tensordot(weights / weights.sum(), stacked, axes=1)
    if len(selection.members) > 1:
        say(
            "tune",
            f"the best ensemble of the top trials ({metric.name}={selection.score:.4f}) gains "
            f"{selection.gain:.2%} over the best single model ({selection.best_single:.4f}), "
            f"under the {ensemble.MIN_GAIN:.2%} an ensemble's serving cost needs; keeping it",
        )
    else:
        say("tune", "no ensemble of the top trials beats the best single model; keeping it")
    return best


def _first_line(error: BaseException) -> str:
    """The innermost exception's first line (Ray wraps trial errors in its own)."""
    cause = getattr(error, "cause", None) or error.__cause__ or error
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[0] if text else ''}"[:300]


COLUMNS = [
    "trial_id",
    "family",
    "score",
    "step",
    "fit_time_s",
    "prep_time_s",
    "finished_at_s",
    "status",
    "node_ip",
    "node_id",
    "params",
    "error",
]


def leaderboard(results, metric: Metric, started_wall: float) -> pd.DataFrame:
    """Every trial of a ResultGrid as one row, best first.

    status: ok (ran its full budget), stopped (ASHA or the time budget ended it; its score
    is at budget step `step` of 9), error.
    """
    rows = []
    for r in results:
        config = r.config or {}
        m = r.metrics or {}
        has_score = r.error is None and "score" in m
        status = "error" if r.error is not None else ("ok" if m.get("final") else "stopped")
        rows.append(
            {
                "trial_id": m.get("trial_id", ""),
                "family": config.get("family", ""),
                "score": float(m["score"]) if has_score else float("nan"),
                "step": int(m["step"]) if "step" in m else 0,
                "fit_time_s": round(float(m.get("fit_time_s", float("nan"))), 4),
                # the part of fit_time_s spent on preprocessing (built per trial and split)
                "prep_time_s": round(float(m.get("prep_time_s", float("nan"))), 4),
                "finished_at_s": round(float(m["at"]) - started_wall, 2)
                if "at" in m
                else float("nan"),
                "status": status if (has_score or status == "error") else "stopped",
                "node_ip": m.get("node_ip", ""),
                "node_id": m.get("node_id", ""),
                "params": json.dumps(family_params(config), sort_keys=True) if config else "{}",
                "error": _first_line(r.error) if r.error is not None else "",
            }
        )
    board = pd.DataFrame(rows, columns=COLUMNS)
    # finished trials first by score, then stopped ones, then failures
    board["_order"] = board["status"].map({"ok": 0, "stopped": 1, "error": 2})
    board = board.sort_values(
        ["_order", "score"],
        ascending=[True, not metric.greater_is_better],
        na_position="last",
        kind="stable",
    ).drop(columns="_order")
    board = board.reset_index(drop=True)
    board.insert(0, "rank", range(1, len(board) + 1))
    board.attrs["metric"] = metric.name
    return board


def refit_best(
    train: pd.DataFrame,
    valid: pd.DataFrame,
    schema: Schema,
    config: dict[str, Any],
    seed: int,
    members: list[tuple[dict[str, Any], int]] | None = None,
    threshold: Tuned | None = None,
):
    """Fit the best configuration (or the ensemble `members`) on train+valid: the shipped model
    (answering with the tuned decision `threshold`, when there is one)."""
    import warnings

    data = pd.concat([train, valid], ignore_index=True)
    X, y = _xy(data, schema.target)
    if members:
        model = ensemble.build(schema.task, [(build_model(schema, c, seed), w) for c, w in members])
    else:
        model = build_model(schema, config, seed)
    model = with_threshold(model, threshold)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(X, y)
    return model
