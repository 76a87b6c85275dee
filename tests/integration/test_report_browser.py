"""The evaluation report as a person sees it: rendered by headless Chromium.

Needs the Debian packages `chromium` and `chromium-driver` (chromedriver at
/usr/bin/chromedriver) and selenium from PyPI; without them the test fails
and says what to install.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

pytestmark = pytest.mark.slow

CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,1600",
]


def _chromium() -> str:
    binary = shutil.which("chromium")
    if binary is None or not CHROMEDRIVER.exists():
        pytest.fail(
            "headless Chromium is needed to check the report: install the Debian packages "
            "`chromium` and `chromium-driver` (apt-get install -y chromium chromium-driver)",
            pytrace=False,
        )
    return binary


def _evaluate(tmp: Path, df: pd.DataFrame, target: str) -> tuple[Path, str]:
    """prepare -> fit the random forest's starting configuration -> evaluate.run: (report, task)."""
    from kfp_automl.components.evaluate.evaluate import run
    from kfp_automl.components.prepare.prepare import prepare
    from kfp_automl.components.tune.families import build_model
    from kfp_automl.contracts.model_info import ModelInfo
    from kfp_automl.runtime.model_file import save_model
    from kfp_automl.tables.io import write_parquet

    prepared = prepare(df, target)
    paths = {}
    for name in ("train", "valid", "test"):
        paths[name] = tmp / f"{name}.parquet"
        write_parquet(paths[name], getattr(prepared, name))
    prepared.schema.write(tmp / "schema.json")
    data = pd.concat([prepared.train, prepared.valid], ignore_index=True)
    model = build_model(prepared.schema, {"family": "random_forest"}, seed=0)
    model.fit(data.drop(columns=[target]), data[target])
    sha = save_model(model, tmp / "model")
    board = tmp / "leaderboard.csv"
    pd.DataFrame(
        {"family": ["random_forest"], "params": ["{}"], "score": [0.5], "status": ["ok"]}
    ).to_csv(board, index=False)
    metric = "roc_auc" if prepared.schema.classification else "rmse"
    info = ModelInfo(
        sha256=sha,
        family="random_forest",
        params={},
        metric=metric,
        greater_is_better=metric == "roc_auc",
        valid_score=0.5,
    )
    run(
        model_dir=str(tmp / "model"),
        model_info=info,
        test_path=str(paths["test"]),
        schema_path=str(tmp / "schema.json"),
        leaderboard_path=str(board),
        report_path=str(tmp / "report.html"),
        train_path=str(paths["train"]),
        valid_path=str(paths["valid"]),
        summary_path=str(tmp / "summary.md"),
        model_card_dir=str(tmp / "card"),
        n_bootstrap=100,
    )
    return tmp / "report.html", prepared.schema.task


def _diabetes() -> pd.DataFrame:
    from sklearn.datasets import load_diabetes  # ships with scikit-learn, no download

    df = load_diabetes(as_frame=True).frame
    df["sex"] = df["sex"].map(lambda v: "a" if v > 0 else "b")
    return df


@contextlib.contextmanager
def _browser(tmp_path: Path):
    """A headless Chromium under selenium; fails the test (not skips) when it is missing."""
    binary = _chromium()
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail("selenium is needed: pip install -e '.[dev]'", pytrace=False)
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()


@pytest.mark.parametrize("table", ["churn", "diabetes"])
def test_report_renders_in_chromium(tmp_path, table, small_churn_csv):
    _chromium()  # before the evaluation: fail fast when there is no browser
    df, target = (
        (pd.read_csv(small_churn_csv), "churn") if table == "churn" else (_diabetes(), "target")
    )
    report, task = _evaluate(tmp_path, df, target)
    with _browser(tmp_path) as browser:
        _check_report(browser, report, task, tmp_path)


def _check_report(browser, report: Path, task: str, tmp_path: Path) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    from kfp_automl.components.evaluate.report import section_ids

    browser.get(report.as_uri())
    WebDriverWait(browser, 30).until(
        lambda d: d.execute_script(
            "return document.readyState === 'complete' && "
            "[...document.images].every(i => i.complete)"
        )
    )
    errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert errors == [], json.dumps(errors, indent=1)

    images = browser.execute_script(
        "return [...document.images].map(i => ({alt: i.alt, width: i.naturalWidth, "
        "height: i.naturalHeight, scheme: i.src.slice(0, 22)}))"
    )
    expected_images = 9 if task == "classification" else 6
    assert len(images) == expected_images, images
    for img in images:
        assert img["width"] > 0 and img["height"] > 0, img  # decoded and drawn
        assert img["alt"].strip(), img
        assert img["scheme"] == "data:image/png;base64,", img

    ids = browser.execute_script("return [...document.querySelectorAll('section')].map(s => s.id)")
    assert set(section_ids(task)) <= set(ids), ids
    headed = browser.execute_script(
        "return [...document.querySelectorAll('section')].every(s => s.querySelector('h2'))"
    )
    assert headed
    # every link in the navigation lands on a section
    anchors = browser.execute_script(
        "return [...document.querySelectorAll('nav a')].map(a => a.getAttribute('href'))"
    )
    assert sorted(a.lstrip("#") for a in anchors) == sorted(ids)
    # nothing is fetched from anywhere: one document, no other resources
    resources = browser.execute_script(
        "return performance.getEntriesByType('resource').map(r => r.name)"
    )
    assert [r for r in resources if not r.startswith("data:")] == []

    shot = tmp_path / "report_top.png"
    assert browser.save_screenshot(str(shot))
    from PIL import Image

    with Image.open(shot) as im:
        colours = im.convert("RGB").getcolors(maxcolors=1_000_000)
    assert colours is not None and len(colours) > 50  # text and figures, not a blank page
