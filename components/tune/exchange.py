"""The folder a tune step and the Ray job running its search share in the object store.

On a cluster the tune step and the Ray cluster have no disk in common, so the step puts the
search's inputs under `<search state>/job/`, the job reads them there and writes its outputs
beside them, and the step copies those into its KFP output paths:

    spec.json                   what to run: run()'s options, the state path, kfp-automl's version
    inputs/                     train.parquet, valid.parquet, schema.json (warm_start.csv)
    outputs/                    model/ (model.joblib), leaderboard.csv, search_report.html,
                                info.json (the model's metadata, written last: "outputs done")
    errors/<submission id>.json why that job failed, and whether it was the user's mistake

Paths: a local folder (a volume both sides mount), s3://, minio:// (KFP's MinIO, endpoint from
AWS_ENDPOINT_URL) or gs://, through the same pyarrow filesystems Ray Tune keeps its state on.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from kfp_automl.components.tune.search import state_filesystem
from kfp_automl.files import atomic_path

SPEC = "spec.json"
INPUTS = "inputs"
OUTPUTS = "outputs"
INFO = f"{OUTPUTS}/info.json"
ERRORS = "errors"


class Exchange:
    """Files under `url` (a path or an object-store URL), read and written whole."""

    def __init__(self, url: str):
        from pyarrow import fs as pafs

        self.url = url.rstrip("/")
        path, fs = state_filesystem(self.url)
        if fs is None and "://" in self.url:
            fs, path = pafs.FileSystem.from_uri(self.url)
        elif fs is None:
            fs, path = pafs.LocalFileSystem(), os.path.abspath(self.url)
        self.fs, self.root = fs, path.rstrip("/")
        self._local = isinstance(fs, pafs.LocalFileSystem)

    def _path(self, name: str) -> str:
        return f"{self.root}/{name}"

    def exists(self, name: str) -> bool:
        from pyarrow import fs as pafs

        return self.fs.get_file_info(self._path(name)).type != pafs.FileType.NotFound

    def write_bytes(self, name: str, data: bytes) -> None:
        """One PUT on an object store (readers see the old object or the new one); a rename
        on a local folder."""
        target = self._path(name)
        if self._local:
            with atomic_path(target) as tmp:
                tmp.write_bytes(data)
            return
        with self.fs.open_output_stream(target) as out:
            out.write(data)

    def read_bytes(self, name: str) -> bytes:
        with self.fs.open_input_stream(self._path(name)) as src:
            return src.read()

    def write_json(self, name: str, obj: Any) -> None:
        self.write_bytes(name, (json.dumps(obj, indent=2) + "\n").encode())

    def read_json(self, name: str) -> Any:
        return json.loads(self.read_bytes(name))

    def put(self, local: str | os.PathLike[str], name: str) -> None:
        self.write_bytes(name, Path(local).read_bytes())

    def get(self, name: str, local: str | os.PathLike[str]) -> None:
        """Copy `name` to `local` (written to a temporary name, then renamed)."""
        data = self.read_bytes(name)
        with atomic_path(local) as tmp:
            tmp.write_bytes(data)

    def put_tree(self, local_dir: str | os.PathLike[str], name: str) -> None:
        base = Path(local_dir)
        for path in sorted(p for p in base.rglob("*") if p.is_file()):
            self.put(path, f"{name}/{path.relative_to(base).as_posix()}")

    def get_tree(self, name: str, local_dir: str | os.PathLike[str]) -> list[str]:
        """Copy every file under `name` into `local_dir`; return their relative names."""
        from pyarrow import fs as pafs

        prefix = self._path(name)
        infos = self.fs.get_file_info(pafs.FileSelector(prefix, recursive=True))
        names = sorted(i.path[len(prefix) + 1 :] for i in infos if i.type == pafs.FileType.File)
        for rel in names:
            self.get(f"{name}/{rel}", Path(local_dir) / rel)
        return names

    def remove(self, name: str) -> None:
        if self.exists(name):
            self.fs.delete_file(self._path(name))

    def remove_tree(self, name: str) -> None:
        self.fs.delete_dir_contents(self._path(name), missing_dir_ok=True)
