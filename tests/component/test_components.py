"""Each component's python_func called with artifacts in a tmp dir (no KFP backend).

These start a real local Ray (tune) and write to a real BentoML store (package).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest
from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Markdown, Metrics, Model

from kfp_automl.components.evaluate.component import evaluate_model
from kfp_automl.components.package.component import package_model
from kfp_automl.components.prepare.component import prepare_data
from kfp_automl.components.tune.component import tune_models
from kfp_automl.components.tune.families import FAMILIES

pytestmark = pytest.mark.slow


def _art(cls, tmp: Path, name: str):
    return cls(name=name, uri=str(tmp / name), metadata={})


def _run_chain(tmp: Path, data: str, target: str, task: str = "auto", metric: str = ""):
    arts = {n: _art(Dataset, tmp, n) for n in ("train", "valid", "test", "leaderboard")}
    arts["schema"] = _art(Artifact, tmp, "schema")
    arts["profile"] = _art(Artifact, tmp, "profile")
    arts["model"] = _art(Model, tmp, "model")
    arts["data_report"] = _art(HTML, tmp, "data_report")
    arts["data_summary"] = _art(Markdown, tmp, "data_summary")
    arts["search_report"] = _art(HTML, tmp, "search_report")
    prepare_data.python_func(
        data=data,
        target=target,
        task=task,
        train=arts["train"],
        valid=arts["valid"],
        test=arts["test"],
        schema=arts["schema"],
        profile=arts["profile"],
        data_report=arts["data_report"],
        data_summary=arts["data_summary"],
    )
    tune_models.python_func(
        train=arts["train"],
        valid=arts["valid"],
        schema=arts["schema"],
        model=arts["model"],
        leaderboard=arts["leaderboard"],
        search_report=arts["search_report"],
        metric=metric,
        time_budget_s=180,  # max_trials ends it; the budget is room for a loaded machine
        max_trials=6,
    )
    return arts


def _evaluate(tmp: Path, arts: dict):
    metrics, cls_metrics, report, summary, card, reference = (
        _art(Metrics, tmp, "metrics"),
        _art(ClassificationMetrics, tmp, "cls"),
        _art(HTML, tmp, "report"),
        _art(Markdown, tmp, "summary"),
        _art(Artifact, tmp, "model_card"),
        _art(Artifact, tmp, "prediction_reference"),
    )
    evaluate_model.python_func(
        model=arts["model"],
        test=arts["test"],
        schema=arts["schema"],
        leaderboard=arts["leaderboard"],
        train=arts["train"],
        valid=arts["valid"],
        metrics=metrics,
        classification_metrics=cls_metrics,
        report=report,
        summary=summary,
        model_card=card,
        prediction_reference=reference,
        n_bootstrap=100,
    )
    arts["prediction_reference"] = reference
    # every metric with its interval (the holdouts here have 60+ rows)
    for name in set(metrics.metadata) - {"primary_metric"}:
        if not name.endswith(("_ci_low", "_ci_high")):
            low, high = metrics.metadata[f"{name}_ci_low"], metrics.metadata[f"{name}_ci_high"]
            assert low <= metrics.metadata[name] <= high, name
    assert Path(summary.path).read_text().startswith("## ")
    card_json = json.loads((Path(card.path) / "model_card.json").read_text())
    assert card_json["model"]["sha256"] == arts["model"].metadata["sha256"]
    assert (Path(card.path) / "model_card.md").exists()
    html = Path(report.path).read_text()
    for sid in ("metrics", "learning-curve", "importance", "partial-dependence", "slices"):
        assert f'<section id="{sid}">' in html
    assert "Skipped" not in html  # the learning curve has enough rows here
    return metrics, cls_metrics, report


def test_classification_chain(tmp_path, small_churn_csv):
    arts = _run_chain(tmp_path, str(small_churn_csv), "churn")
    schema = json.loads(Path(arts["schema"].path).read_text())
    assert schema["task"] == "classification" and schema["classes"] == ["No", "Yes"]
    assert (
        arts["train"].metadata["rows"]
        + arts["valid"].metadata["rows"]
        + arts["test"].metadata["rows"]
        == 403
    )

    board = pd.read_csv(arts["leaderboard"].path)
    assert len(board) == 6
    assert set(board["family"]) <= set(FAMILIES)
    # the five cheap starting points run first, one per family
    assert board["family"].nunique() >= 4
    ok = board[board["status"] == "ok"]
    assert ok["score"].between(0, 1).all()
    assert list(ok["score"]) == sorted(ok["score"], reverse=True)  # best first (roc_auc: max)
    meta = arts["model"].metadata
    assert meta["metric"] == "roc_auc" and meta["validation"] == "cv"  # 343 rows: 5-fold CV
    if meta["family"] == "ensemble":  # the best trial is a member; the ensemble beat it
        members = json.loads(meta["params"])
        assert ok.iloc[0]["family"] in {m["family"] for m in members}
        assert meta["valid_score"] > meta["best_single_score"] - 0.02
    else:
        assert meta["family"] == ok.iloc[0]["family"]
    html = Path(arts["search_report"].path).read_text()
    assert '<section id="score-over-time">' in html and "Search history" in html
    assert len(meta["sha256"]) == 64

    metrics, cls_metrics, report = _evaluate(tmp_path, arts)
    assert {"accuracy", "roc_auc", "pr_auc", "brier", "log_loss", "f1"} <= set(metrics.metadata)
    assert {"roc_auc_ci_low", "roc_auc_ci_high"} <= set(metrics.metadata)
    assert 0.5 < metrics.metadata["roc_auc"] <= 1.0
    cm = cls_metrics.metadata["confusionMatrix"]
    assert [c["displayName"] for c in cm["annotationSpecs"]] == ["No", "Yes"]
    assert sum(map(sum, (r["row"] for r in cm["rows"]))) == arts["test"].metadata["rows"]
    assert len(cls_metrics.metadata["confidenceMetrics"]) > 2
    html = Path(report.path).read_text()
    assert "Confusion matrix" in html and "Leaderboard" in html

    bento = _art(Model, tmp_path, "bento")
    package_model.python_func(
        model=arts["model"],
        schema=arts["schema"],
        profile=arts["profile"],
        prediction_reference=arts["prediction_reference"],
        metrics=metrics,
        report=report,
        bento=bento,
        registry_root=str(tmp_path / "registry"),
    )
    assert bento.metadata["bento_tag"].startswith("automl-churn:")
    assert Path(bento.path).stat().st_size > 10_000

    from kfp_automl.bentos.lookup import load_packaged_model
    from kfp_automl.registry.registry import Registry

    [entry] = Registry(tmp_path / "registry").versions("automl-churn")
    assert entry["stage"] == "challenger" and entry["bento_tag"] == bento.metadata["bento_tag"]
    # the archive's digest, recorded outside it: the registry and the artifact's metadata
    digest = hashlib.sha256(Path(bento.path).read_bytes()).hexdigest()
    assert entry["bento_sha256"] == bento.metadata["bento_sha256"] == digest
    assert entry["test_metrics"]["roc_auc"] == metrics.metadata["roc_auc"]
    assert not any(k.endswith("_ci_low") for k in entry["test_metrics"])

    packaged = load_packaged_model(bento.path)
    assert packaged.schema.to_dict() == schema
    import bentoml

    # the archive is what BentoML writes for .bento (an xz tar of ./ paths, at a faster preset):
    # BentoML's own import, guessing the format from the name, reads it
    assert Path(bento.path).read_bytes()[:6] == b"\xfd7zXZ\x00"
    copy = tmp_path / "plain" / "model.bento"
    copy.parent.mkdir()
    copy.write_bytes(Path(bento.path).read_bytes())
    bentoml.bentos.delete(bento.metadata["bento_tag"])
    assert str(bentoml.import_bento(str(copy)).tag) == bento.metadata["bento_tag"]

    stored = bentoml.models.get(bento.metadata["model_tag"])
    # the drift references, each as the step that made it wrote it
    profile = json.loads(Path(stored.path_of("profile.json")).read_text())
    assert profile == json.loads(Path(arts["profile"].path).read_text())
    assert set(profile["features"]) == {f["name"] for f in schema["features"]}
    reference = json.loads(Path(stored.path_of("prediction_reference.json")).read_text())
    assert reference == json.loads(Path(arts["prediction_reference"].path).read_text())
    assert reference["categories"] == ["No", "Yes"] and sum(reference["shares"]) > 0.999
    assert bento.metadata["bento_tag"].split(":")[1] == bento.metadata["model_tag"].split(":")[1]


def test_regression_chain(tmp_path):
    from sklearn.datasets import load_diabetes  # ships with scikit-learn, no download

    df = load_diabetes(as_frame=True).frame
    df["sex"] = df["sex"].map(lambda v: "a" if v > 0 else "b")  # one categorical column
    path = tmp_path / "diabetes.parquet"
    df.to_parquet(path)
    arts = _run_chain(tmp_path, str(path), "target")
    assert json.loads(Path(arts["schema"].path).read_text())["task"] == "regression"
    assert arts["model"].metadata["metric"] == "rmse"
    board = pd.read_csv(arts["leaderboard"].path)
    ok = board[board["status"] == "ok"]
    assert list(ok["score"]) == sorted(ok["score"])  # rmse: lower first
    metrics, cls_metrics, report = _evaluate(tmp_path, arts)
    names = {"rmse", "mae", "r2", "mape"}
    intervals = {f"{n}_ci_{end}" for n in names for end in ("low", "high")}
    assert names | intervals == set(metrics.metadata) - {"primary_metric"}
    assert metrics.metadata["r2"] > 0.2  # diabetes is learnable; a broken pipeline scores ~0
    assert "confusionMatrix" not in cls_metrics.metadata


def test_package_refuses_a_tampered_model(tmp_path):
    from sklearn.dummy import DummyClassifier

    from kfp_automl.components.package.package import package
    from kfp_automl.contracts.model_info import ModelInfo
    from kfp_automl.contracts.schema import Schema
    from kfp_automl.runtime.model_file import ModelIntegrityError, save_model

    sha = save_model(DummyClassifier().fit([[0], [1]], [0, 1]), tmp_path)
    model_file = tmp_path / "model.joblib"
    model_file.write_bytes(model_file.read_bytes() + b"\0")
    schema = Schema.from_dict(
        {"target": "y", "task": "classification", "features": [{"name": "x", "kind": "numeric"}]}
    )
    info = ModelInfo(
        sha256=sha, family="x", params={}, metric="roc_auc", greater_is_better=True, valid_score=0.5
    )
    with pytest.raises(ModelIntegrityError):
        package(
            model_dir=tmp_path, model_info=info, schema=schema, archive_path=tmp_path / "out.bento"
        )
    assert not (tmp_path / "out.bento").exists()


def test_search_puts_the_data_in_ray_once(monkeypatch, small_churn_csv):
    """The training frame reaches Ray's object store once, however many trials run."""
    import ray

    from kfp_automl.components.prepare.prepare import prepare
    from kfp_automl.components.tune.families import select_families
    from kfp_automl.components.tune.search import run_search
    from kfp_automl.runtime.metrics import resolve_metric
    from kfp_automl.tables.io import read_table

    prepared = prepare(read_table(small_churn_csv), "churn")
    puts = []
    real_put = ray.put

    def spy(value, *args, **kwargs):
        puts.append(value)
        return real_put(value, *args, **kwargs)

    monkeypatch.setattr(ray, "put", spy)
    result = run_search(
        prepared.train,
        prepared.valid,
        prepared.schema,
        resolve_metric("", "classification", 2),
        select_families(""),
        time_budget_s=180,  # max_trials ends it; the budget is room for a loaded machine
        max_trials=6,
    )
    statuses = result.leaderboard["status"]
    assert len(statuses) == 6 and statuses.isin(["ok", "stopped"]).all()  # ASHA may stop some
    frames = [
        v for v in puts if isinstance(v, tuple) and any(isinstance(x, pd.DataFrame) for x in v)
    ]
    assert len(frames) == 1
    # train+valid: the validation plan (CV folds or the holdout) indexes into one frame
    n_rows = len(prepared.train) + len(prepared.valid)
    assert frames[0][0].shape == (n_rows, len(prepared.schema.features))
