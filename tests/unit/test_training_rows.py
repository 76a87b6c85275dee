"""The hashes of a model's training inputs: stable across how a table was read, trusted only
through the digest the registry records, and what the gate reads of a champion's entry."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from kfp_automl.components.gate.gate import champion_rows
from kfp_automl.errors import UserError
from kfp_automl.registry import training_rows
from kfp_automl.registry.store import UnverifiedArchive
from kfp_automl.runtime.model_file import sha256_file
from tests.support.frames import schema_for, synthetic_frame

SCHEMA = schema_for("classification")


def test_the_same_records_hash_alike_however_the_table_was_typed():
    df = synthetic_frame(300, seed=1)
    keys = training_rows.input_keys(df, SCHEMA)
    assert keys.dtype == np.uint64 and np.all(np.diff(keys.astype(np.float64)) >= 0)
    assert len(keys) == len(df.drop(columns="target").drop_duplicates())
    # a CSV read that typed the integer column as floats, columns in another order, the
    # target changed: the inputs are the same records
    other = df.astype({"x2": "float64"})[["colour", "target", "x2", "x1"]].assign(target="no")
    np.testing.assert_array_equal(training_rows.input_keys(other, SCHEMA), keys)
    assert training_rows.seen(other, SCHEMA, keys).all()
    changed = df.assign(x1=df["x1"] + 1.0)  # other inputs: not seen
    assert not training_rows.seen(changed.dropna(subset=["x1"]), SCHEMA, keys).any()


def test_the_file_is_read_only_with_the_recorded_digest(tmp_path):
    keys = training_rows.input_keys(synthetic_frame(200), SCHEMA)
    digest = training_rows.write(keys, tmp_path)
    path = tmp_path / training_rows.ROWS_FILE
    assert digest == sha256_file(path)
    np.testing.assert_array_equal(training_rows.read(str(path), digest), keys)
    with pytest.raises(UserError, match="the registry records"):
        training_rows.read(str(path), "0" * 64)
    with pytest.raises(training_rows.RowsMissing, match="gone"):
        training_rows.read(str(tmp_path / "nothing.npy"), digest)


def test_a_pickle_in_its_place_is_refused_unopened(tmp_path):
    """The file is numbers: an object array (a pickle inside .npy) is never unpickled, even
    with a matching digest."""
    path = tmp_path / training_rows.ROWS_FILE
    np.save(path, np.array([object()], dtype=object), allow_pickle=True)
    with pytest.raises(UserError, match="not a file of training-row hashes"):
        training_rows.read(str(path), sha256_file(path))
    path.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(UserError, match="not a file of training-row hashes"):
        training_rows.read(str(path), sha256_file(path))
    np.save(path, np.zeros((2, 2), dtype=np.uint64))
    with pytest.raises(UserError, match="2-d"):
        training_rows.read(str(path), sha256_file(path))


def test_what_the_gate_makes_of_a_champions_entry(tmp_path):
    keys = training_rows.input_keys(synthetic_frame(100), SCHEMA)
    digest = training_rows.write(keys, tmp_path)
    uri = str(tmp_path / training_rows.ROWS_FILE)
    rows, note = champion_rows({"training_rows_uri": uri, "training_rows_sha256": digest})
    np.testing.assert_array_equal(rows, keys)
    assert note == ""
    # registered before the rows were recorded: every holdout row is compared, and said so
    rows, note = champion_rows({})
    assert rows is None and "records no training rows" in note
    # the file is gone (a cleaned artifact store): the same, with the reason
    gone = {"training_rows_uri": str(tmp_path / "x.npy"), "training_rows_sha256": digest}
    rows, note = champion_rows(gone)
    assert rows is None and "gone" in note
    # a file that is not the recorded one: nothing replaces the champion automatically
    with pytest.raises(UnverifiedArchive, match="not trusted"):
        champion_rows({"training_rows_uri": uri, "training_rows_sha256": "f" * 64})
