"""Rendering the kustomizations under manifests/ with the real `kubectl kustomize`."""

from __future__ import annotations

import functools
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"
# Every kustomization a user applies; the components are rendered through prod-keda and
# prod-kserve (a Component cannot be built on its own).
KUSTOMIZATIONS = (
    "serving/base",
    "serving/overlays/dev",
    "serving/overlays/prod",
    "serving/overlays/prod-keda",
    "serving/overlays/prod-kserve",
    "tuning",
    "prediction-store",
)


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        raise RuntimeError("kubectl is not installed: it renders the manifests (kustomize)")
    return path


@functools.cache
def render(name: str) -> tuple[dict[str, Any], ...]:
    """The objects `kubectl kustomize manifests/<name>` prints, in order."""
    proc = subprocess.run(
        [kubectl(), "kustomize", str(MANIFESTS / name)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if proc.returncode != 0:
        raise AssertionError(f"kubectl kustomize {name} failed:\n{proc.stderr}")
    return tuple(doc for doc in yaml.safe_load_all(proc.stdout) if doc)


def find(objects, kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [
        o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]


def one(objects, kind: str, name: str | None = None) -> dict[str, Any]:
    found = find(objects, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]


def pod_specs(obj: dict[str, Any]) -> list[tuple[str, dict[str, Any], dict[str, str]]]:
    """(where, PodSpec, pod annotations) of every pod an object creates."""
    kind, name = obj["kind"], obj["metadata"]["name"]
    spec = obj.get("spec", {})
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        tmpl = spec["template"]
        return [(f"{kind}/{name}", tmpl["spec"], tmpl.get("metadata", {}).get("annotations", {}))]
    if kind == "RayCluster":
        head = spec["headGroupSpec"]["template"]
        head_spec = dict(head["spec"])
        if spec.get("enableInTreeAutoscaling"):
            # KubeRay adds the autoscaler as a sidecar of the head, with these settings.
            sidecar = {
                "name": "autoscaler",
                "securityContext": spec.get("autoscalerOptions", {}).get("securityContext"),
            }
            head_spec["containers"] = [*head_spec["containers"], sidecar]
        out = [
            (f"RayCluster/{name} head", head_spec, head.get("metadata", {}).get("annotations", {}))
        ]
        for group in spec.get("workerGroupSpecs", []):
            tmpl = group["template"]
            out.append(
                (
                    f"RayCluster/{name} worker {group['groupName']}",
                    tmpl["spec"],
                    tmpl.get("metadata", {}).get("annotations", {}),
                )
            )
        return out
    if kind == "InferenceService":
        # The predictor is a PodSpec with KServe's own fields beside it.
        return [
            (f"InferenceService/{name}", spec["predictor"], obj["metadata"].get("annotations", {}))
        ]
    return []
