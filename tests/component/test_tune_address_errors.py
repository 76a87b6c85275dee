"""The tune component's bad Ray addresses: each is a UserError of one line that names what to
give instead, raised before any search starts, and no output is written.

No Ray runs here (the refusals come first); the Jobs API of a real cluster, with a wrong
token, is in test_tune_jobs.py.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from kfp.dsl import HTML, Artifact, Dataset, Model

from kfp_automl.components.prepare.prepare import prepare
from kfp_automl.components.tune.component import tune_models
from kfp_automl.components.tune.exchange import Exchange
from kfp_automl.components.tune.submit import submission_prefix
from kfp_automl.errors import UserError
from kfp_automl.tables.io import read_table, write_parquet
from tests.support.servers import free_port


@pytest.fixture(scope="module")
def web_server():
    """An HTTP server that is no Ray dashboard (a web page at every path)."""

    class Page(BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"<html>not Ray</html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def splits(small_churn_csv, tmp_path_factory):
    prepared = prepare(read_table(small_churn_csv), "churn")
    tmp = tmp_path_factory.mktemp("splits")
    write_parquet(tmp / "train", prepared.train)
    write_parquet(tmp / "valid", prepared.valid)
    prepared.schema.write(tmp / "schema")
    return tmp


def _addresses(web: str) -> list[tuple[str, str, str]]:
    closed = f"http://127.0.0.1:{free_port()}"
    return [
        # (ray_address, search_state_root, the message)
        ("ray://127.0.0.1:10001", "", "Ray Client (ray://) is not supported"),
        (closed, "", "no Ray Jobs API answers there (connection refused)"),
        ("http://no-such-host.invalid:8265", "", "the host name does not resolve"),
        (web, "", "not a Ray Jobs API (HTTP 200 for /api/version)"),
        (closed, "none", "search_state_root 'none' leaves it none"),
    ]


@pytest.mark.parametrize("case", range(5))
def test_a_bad_ray_address_is_a_clear_user_error_and_writes_nothing(
    splits, tmp_path, web_server, case
):
    address, root, message = _addresses(web_server)[case]
    out = {
        "model": Model(name="model", uri=str(tmp_path / "model"), metadata={}),
        "leaderboard": Dataset(name="leaderboard", uri=str(tmp_path / "leaderboard"), metadata={}),
        "search_report": HTML(name="search_report", uri=str(tmp_path / "report"), metadata={}),
    }
    with pytest.raises(UserError) as caught:
        tune_models.python_func(
            train=Dataset(name="train", uri=str(splits / "train"), metadata={}),
            valid=Dataset(name="valid", uri=str(splits / "valid"), metadata={}),
            schema=Artifact(name="schema", uri=str(splits / "schema"), metadata={}),
            ray_address=address,
            search_state_root=root,
            **out,
        )
    text = str(caught.value)
    assert message in text and "\n" not in text
    if root != "none":
        assert "http://HEAD:8265" in text  # the form that works
    assert list(tmp_path.iterdir()) == []  # no model, leaderboard, report or state
    assert out["model"].metadata == {}


def test_one_tasks_jobs_share_a_submission_id_and_other_tasks_do_not():
    a = "s3://b/run-1/tune/search-state/job"
    assert submission_prefix(a) == submission_prefix(a)
    assert submission_prefix(a) != submission_prefix("s3://b/run-2/tune/search-state/job")
    assert submission_prefix(a).startswith("kfp-automl-tune-")


def test_the_exchange_copies_files_and_folders_whole(tmp_path):
    ex = Exchange(str(tmp_path / "store" / "job"))
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model.joblib").write_bytes(b"\x00model")
    ex.put_tree(tmp_path / "model", "outputs/model")
    ex.write_json("outputs/info.json", {"sha256": "x"})
    assert ex.exists("outputs/info.json") and not ex.exists("outputs/missing")
    assert ex.get_tree("outputs/model", tmp_path / "back") == ["model.joblib"]
    assert (tmp_path / "back" / "model.joblib").read_bytes() == b"\x00model"
    assert ex.read_json("outputs/info.json") == {"sha256": "x"}
    ex.remove_tree("outputs")
    assert not ex.exists("outputs/info.json")
    assert Path(ex.root) == tmp_path / "store" / "job"
