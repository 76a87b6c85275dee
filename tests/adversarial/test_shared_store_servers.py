"""Two real `kfp-automl serve` replicas on one real PostgreSQL store (`--log-store` through
AUTOML_LOG_STORE, as the prod overlay gives it from a Secret).

A label joins whichever replica it reaches; both export the fleet's live quality, equal to
the metric computed offline over the same predictions and labels, and each its own; many
clients labelling the same ids on both leave exactly one label per id; with
the database stopped mid-traffic predictions keep flowing, /status says degraded, and once
it is back the backlog is written and the outage's predictions take labels.
"""

from __future__ import annotations

import contextlib
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from kfp_automl.serving.quality import live_metrics
from tests.adversarial.conftest import good_records
from tests.support.servers import CLI, free_port, start, stop, wait_ready

pytestmark = pytest.mark.slow


@contextlib.contextmanager
def _replicas(archive, tmp_path, store_url: str, names=("a", "b")):
    """The replicas started together (each its own BentoML home); yields {name: base URL}."""
    procs, bases = [], {}
    try:
        for name in names:
            port = free_port()
            env = {
                "BENTOML_HOME": str(tmp_path / f"home-{name}"),
                "AUTOML_LOG_STORE": store_url,  # never a flag: it holds a password
                "AUTOML_REPLICA": name,
            }
            cmd = [*CLI, "serve", "--model", str(archive), "--port", str(port)]
            cmd += ["--log-predictions", "on", "--feedback-auth", "none"]
            procs.append(start(cmd, env=env))
            bases[name] = f"http://127.0.0.1:{port}"
        for proc, base in zip(procs, bases.values(), strict=True):
            wait_ready(f"{base}/readyz", proc)
        yield bases
    finally:
        for proc in procs:
            stop(proc)


def _metric(base: str, name: str, **labels: str) -> float | None:
    for line in httpx.get(f"{base}/metrics", timeout=10).text.splitlines():
        if line.startswith((name + "{", name + " ")) and all(
            f'{k}="{v}"' in line for k, v in labels.items()
        ):
            return float(line.rsplit(" ", 1)[1])
    return None


def _wait(check, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.3)


def _predict(base: str, n: int) -> list[dict]:
    r = httpx.post(f"{base}/predict", json={"records": good_records(n)}, timeout=30)
    assert r.status_code == 200, r.text[:300]
    return r.json()


def _label(base: str, labels: list[dict]) -> httpx.Response:
    return httpx.post(f"{base}/feedback", json={"labels": labels}, timeout=30)


def _other(answer: dict) -> str:
    return next(c for c in answer["probabilities"] if c != answer["prediction"])


def test_two_replicas_share_one_join_one_window_and_survive_the_database(
    small_bento, tmp_path, postgres, store_url
):
    with _replicas(small_bento, tmp_path, store_url) as bases:
        a, b = bases["a"], bases["b"]
        right, wrong = _predict(a, 30), _predict(b, 30)  # a is right, b is wrong
        # every label goes to the other replica, at once (b's rows may not be written yet:
        # the join waits for them up to the grace time)
        labels_of_a = [{"id": x["id"], "label": x["prediction"]} for x in right]
        labels_of_b = [{"id": x["id"], "label": _other(x)} for x in wrong]
        with ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(lambda job: _label(*job), [(b, labels_of_a), (a, labels_of_b)]))
        for r in answers:
            assert r.status_code == 200 and r.json()["matched"] == 30, r.text[:300]
        # the same id labelled again on either replica: the first label stands
        again = _label(a, [{"id": right[0]["id"], "label": _other(right[0])}]).json()
        assert again["duplicate"] == 1
        # the fleet's window on both, equal to the metric computed offline
        offline = live_metrics(
            "classification",
            sorted(right[0]["probabilities"]),
            [
                (x["prediction"], [x["probabilities"][c] for c in sorted(x["probabilities"])], y)
                for x, y in [(x, x["prediction"]) for x in right] + [(x, _other(x)) for x in wrong]
            ],
        )
        for base in (a, b):
            _wait(
                lambda base=base: _metric(base, "automl_live_window_labels") == 60,
                30,
                f"the fleet's window on {base}",
            )
            for name in ("accuracy", "log_loss"):
                live = _metric(base, "automl_live_metric", metric=name)
                assert live == pytest.approx(offline[name], abs=1e-9), (base, name)
        assert _metric(a, "automl_live_replica_metric", metric="accuracy") == 1.0
        assert _metric(b, "automl_live_replica_metric", metric="accuracy") == 0.0
        assert _metric(b, "automl_live_replica_window_labels") == 30
        rows = postgres.sql(
            "SELECT replica, count(*), count(label) FROM automl_predictions "
            "GROUP BY replica ORDER BY replica",
            store_url,
        )
        assert rows == [("a", 30, 30), ("b", 30, 30)]

        # many clients labelling the same fresh ids on both replicas, with differing labels:
        # exactly one label per id, and every answer says which
        contested = _predict(a, 25) + _predict(b, 25)
        classes = sorted(contested[0]["probabilities"])
        jobs = [
            (
                base,
                [{"id": x["id"], "label": classes[(k + j) % 2]} for j, x in enumerate(contested)],
            )
            for k in range(8)
            for base in (a, b)
        ]
        with ThreadPoolExecutor(8) as pool:
            reports = [r.json() for r in pool.map(lambda job: _label(*job), jobs)]
        assert sum(r["matched"] for r in reports) == 50
        assert sum(r["duplicate"] for r in reports) == 50 * (len(jobs) - 1)
        ids = tuple(x["id"] for x in contested)
        labelled = postgres.sql(
            "SELECT count(*), count(label) FROM automl_predictions WHERE id IN ("
            + ",".join(f"'{i}'" for i in ids)
            + ")",
            store_url,
        )
        assert labelled == [(50, 50)]

        # the database goes away mid-traffic: predictions keep flowing, status degraded
        postgres.stop("immediate")
        try:
            during = {a: _predict(a, 20), b: _predict(b, 20)}
            for base in (a, b):
                _wait(
                    lambda base=base: (
                        httpx.get(f"{base}/status", timeout=10).json()["status"] == "degraded"
                        and _metric(base, "automl_prediction_log_backlog") == 20
                    ),
                    20,
                    f"{base} to say degraded with its 20 rows waiting",
                )
                assert httpx.get(f"{base}/readyz", timeout=10).status_code == 200
            r = _label(a, [{"id": during[a][0]["id"], "label": during[a][0]["prediction"]}])
            assert r.status_code == 503 and postgres.password not in r.text, r.text[:300]
        finally:
            postgres.start()
        for base in (a, b):
            _wait(
                lambda base=base: (
                    httpx.get(f"{base}/status", timeout=10).json()["status"] == "ok"
                    and _metric(base, "automl_prediction_log_backlog") == 0
                ),
                30,
                f"{base} to write its backlog",
            )
            dropped = _metric(base, "automl_prediction_log_dropped_total", reason="store_down")
            assert not dropped
        # the outage's predictions are in the store and take labels on the other replica
        outage = [{"id": x["id"], "label": x["prediction"]} for x in during[a]]
        r = _label(b, outage)
        assert r.status_code == 200 and r.json()["matched"] == 20, r.text[:300]
        total = postgres.sql("SELECT count(*) FROM automl_predictions", store_url)
        assert total == [(150,)]
