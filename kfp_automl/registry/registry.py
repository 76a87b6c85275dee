"""The model registry: versions of a model, their metrics and stage, and who is champion.

One JSON document per model name (`<root>/<name>.json`) is the source of truth. The root is
a folder (a shared volume on a cluster) or an object store (`s3://`, `minio://`, `gs://`
bucket/prefix, e.g. beside the pipeline root); `backends.py` keeps the document consistent
in both: every change is a read-modify-write under a file lock in a folder, and a write
conditional on the version read in an object store (retried when another writer got there
first), so readers never see a half-written document and two promotions racing each other
still leave exactly one champion. Each version's stage is mirrored into its BentoML model's
labels (`stage`), so `bentoml models list` shows it too.

Stages: `challenger` (registered, never promoted), `champion` (at most one per
name), `archived` (a former champion).
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

from kfp_automl.errors import UserError
from kfp_automl.registry.backends import open_backend

STAGES = ("challenger", "champion", "archived")


def model_name_for(target: str) -> str:
    """A BentoML-safe model name derived from the target column (the default model name)."""
    slug = re.sub(r"[^a-z0-9]+", "-", target.lower()).strip("-") or "model"
    return f"automl-{slug}"[:60]


def default_root() -> str | Path:
    """`$KFP_AUTOML_REGISTRY` (a folder or URL), else a folder beside the BentoML store."""
    if os.environ.get("KFP_AUTOML_REGISTRY"):
        return os.environ["KFP_AUTOML_REGISTRY"]
    from kfp_automl.registry.store import bentoml_home

    return bentoml_home() / "kfp-automl-registry"


REGISTRY_FOLDER = "kfp-automl-registry"
# The namespace a step's pod runs in (the pipeline sets it from the pod's metadata.namespace).
NAMESPACE_ENV = "KFP_AUTOML_NAMESPACE"
_REMOTE_SCHEMES = ("s3://", "minio://", "gs://")


def run_root(registry_root: str, artifact_uri: str) -> str:
    """The registry a pipeline task uses.

    `registry_root` when given. Else, when the backend put the task's artifacts in an object
    store (a cluster: every task is its own pod with its own disk), the registry shared by every
    run in the namespace: `<scheme>://<artifact bucket>/kfp-automl-registry/<namespace>`. It is
    read from the artifact URI the backend assigned, not from `{{$.pipeline_root}}`, which the
    KFP backend does not resolve for lightweight components and which names one run's folder
    where it is resolved. Else (kfp.local, one filesystem) "" for the default beside the
    BentoML store ($KFP_AUTOML_REGISTRY first).
    """
    if registry_root.strip():
        return registry_root.strip()
    uri = artifact_uri.strip()
    if not uri.startswith(_REMOTE_SCHEMES):
        return ""
    scheme, rest = uri.split("://", 1)
    bucket = rest.split("/", 1)[0]
    namespace = os.environ.get(NAMESPACE_ENV, "").strip().strip("/")
    root = f"{scheme}://{bucket}/{REGISTRY_FOLDER}"
    return f"{root}/{namespace}" if namespace else root


def describe_root(registry_root: str, artifact_uri: str) -> str:
    """One line saying which registry a task uses and why."""
    chosen = run_root(registry_root, artifact_uri)
    if registry_root.strip():
        return f"registry {chosen} (registry_root)"
    if chosen:
        return (
            f"registry {chosen} (shared by the namespace's runs, in the artifact store's bucket: "
            "registry_root is empty)"
        )
    if os.environ.get("KFP_AUTOML_REGISTRY"):
        return f"registry {default_root()} ($KFP_AUTOML_REGISTRY: registry_root is empty)"
    return f"registry {default_root()} (the local default: registry_root is empty)"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Registry:
    def __init__(self, root: str | os.PathLike[str] | None = None, **backend_options: Any):
        self.backend = open_backend(root or default_root(), **backend_options)
        self.root = self.backend.root  # a Path for a folder, the URL for an object store

    # ---- reading ----------------------------------------------------------------------------

    def _read(self, name: str) -> dict[str, Any]:
        return self.backend.read(name)

    def names(self) -> list[str]:
        return self.backend.names()

    def versions(self, name: str) -> list[dict[str, Any]]:
        """Every version of `name`, oldest first, each with its `stage`."""
        return _versions(self._read(name))

    def champion(self, name: str) -> dict[str, Any] | None:
        state = self._read(name)
        v = state["champion"]
        return {"version": v, **state["versions"][v], "stage": "champion"} if v else None

    def events(self, name: str) -> list[dict[str, Any]]:
        return self._read(name)["events"]

    # ---- changing (one read-modify-write each, see backends.py) -------------------------------

    def register(self, name: str, version: str, info: dict[str, Any]) -> dict[str, Any]:
        """Add `version` as a challenger (registering it again only updates its info)."""

        def change(state: dict[str, Any]) -> dict[str, Any]:
            entry = state["versions"].setdefault(version, {"registered_at": _now()})
            entry.update(info)
            state["events"].append({"at": _now(), "event": "register", "version": version})
            return {"version": version, **entry, "stage": _stage(state, version)}

        entry = self.backend.update(name, change)
        _mirror_stage(name, version, entry["stage"])
        return entry

    def promote(self, name: str, version: str, reason: str = "") -> dict[str, Any]:
        """Make `version` the champion; the former champion becomes archived."""

        def change(state: dict[str, Any]) -> dict[str, Any]:
            if version not in state["versions"]:
                known = ", ".join(state["versions"]) or "none"
                raise UserError(f"model {name!r} has no version {version!r} (versions: {known})")
            before = state["champion"]
            if before and before != version:
                state["versions"][before]["was_champion"] = True
            state["champion"] = version
            state["versions"][version]["was_champion"] = True
            state["events"].append(
                {
                    "at": _now(),
                    "event": "promote",
                    "version": version,
                    "from": before,
                    "reason": reason,
                }
            )
            return {
                "version": version,
                **state["versions"][version],
                "stage": "champion",
                "previous": before,
            }

        entry = self.backend.update(name, change)
        before = entry["previous"]
        if before and before != version:
            _mirror_stage(name, before, "archived")
        _mirror_stage(name, version, "champion")
        return entry

    def rollback(self, name: str, reason: str = "") -> dict[str, Any]:
        """Make champion again the version the current champion replaced when it was promoted."""

        def change(state: dict[str, Any]) -> dict[str, Any]:
            current = state["champion"]
            if current is None:
                raise UserError(f"model {name!r} has no champion to roll back from")
            # a promotion repeated (the promote step retried) records the champion as its own
            # predecessor: skip it, it is not what the champion replaced
            earlier = [
                e["from"]
                for e in reversed(state["events"])
                if e["event"] == "promote"
                and e["version"] == current
                and e.get("from")
                and e["from"] != current
            ]
            if not earlier:
                raise UserError(
                    f"model {name!r}: {current} is the first champion; there is nothing to roll back to"
                )
            target = earlier[0]
            state["champion"] = target
            state["events"].append(
                {
                    "at": _now(),
                    "event": "rollback",
                    "version": target,
                    "from": current,
                    "reason": reason,
                }
            )
            return {
                "version": target,
                **state["versions"][target],
                "stage": "champion",
                "previous": current,
            }

        entry = self.backend.update(name, change)
        _mirror_stage(name, entry["previous"], "archived")
        _mirror_stage(name, entry["version"], "champion")
        return entry


def _stage(state: dict[str, Any], version: str) -> str:
    if state["champion"] == version:
        return "champion"
    return "archived" if state["versions"][version].get("was_champion") else "challenger"


def _versions(state: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"version": v, **entry, "stage": _stage(state, v)}
        for v, entry in sorted(state["versions"].items(), key=lambda kv: kv[1]["registered_at"])
    ]


def _mirror_stage(name: str, version: str, stage: str) -> None:
    """Best effort: show the stage in the BentoML model's labels (the registry file decides)."""
    try:
        import bentoml

        model = bentoml.models.get(f"{name}:{version}")
        model.info.labels["stage"] = stage
        model.flush()
    except Exception:  # the model may live in another store (a cluster's pipeline root)
        pass


def promote_tag(model_tag: str, reason: str = "", root: str = "") -> dict[str, Any]:
    """Promote BentoML model `name:version` in the registry at `root` (empty: the default)."""
    from kfp_automl.progress import say

    name, version = model_tag.split(":", 1)
    entry = Registry(root or None).promote(name, version, reason)
    say("promote", f"{model_tag} is the champion (before: {entry['previous'] or 'none'})")
    return entry
