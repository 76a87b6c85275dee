"""Render the serving manifests for one model version (pure functions, no cluster).

The input is the multi-document YAML that `kubectl kustomize manifests/serving/overlays/<env>`
prints. The contract with those manifests: a Deployment (default name `automl-serving`) whose
pod template is labelled `app.kubernetes.io/name: automl-serving`, with an initContainer
`fetch-bento` that reads the Bento archive's URL from env `BENTO_URL` and a container `serving`.
Rendering sets BENTO_URL, the `app.kubernetes.io/version` label and the namespace; it never
touches the Deployment's selector (immutable on a live object). A Namespace object (overlays may
carry one for `kubectl apply -k`) is left out: the namespace is the deploy's parameter and must
exist; other cluster-scoped objects are refused. When an HPA or a KEDA ScaledObject scales the
Deployment, its `spec.replicas` is left out, so a deploy never resets the autoscaler's count.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import yaml

from kfp_automl.contracts.release import RELEASE_ANNOTATION, Release
from kfp_automl.errors import UserError

DEFAULT_NAME = "automl-serving"
APP_LABEL = "app.kubernetes.io/name"
APP_NAME = "automl-serving"
VERSION_LABEL = "app.kubernetes.io/version"
INIT_CONTAINER = "fetch-bento"
SERVING_CONTAINER = "serving"
BENTO_URL_ENV = "BENTO_URL"

# Applied first to last; anything else (custom resources) comes after these.
_APPLY_RANK = {
    "ServiceAccount": 0,
    "ConfigMap": 0,
    "Secret": 0,
    "Role": 0,
    "RoleBinding": 0,
    "Service": 1,
    "Deployment": 2,
    "HorizontalPodAutoscaler": 3,
    "PodDisruptionBudget": 3,
    "NetworkPolicy": 3,
}
_CUSTOM_RANK = 4
# Cluster-wide kinds: the deploy step changes one namespace only.
CLUSTER_SCOPED = frozenset(
    {
        "Namespace",
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "PriorityClass",
        "StorageClass",
        "PersistentVolume",
        "APIService",
        "IngressClass",
        "RuntimeClass",
        "ValidatingWebhookConfiguration",
        "MutatingWebhookConfiguration",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    }
)
_LABEL_VALUE = re.compile(r"^(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)$")
_DNS_LABEL = re.compile(r"^[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?$")


def parse_manifests(text: str, source: str = "manifests") -> list[dict[str, Any]]:
    """Parse multi-document YAML into objects; each must have apiVersion, kind and metadata.name."""
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        first = str(exc).strip().splitlines()[0]
        raise UserError(f"{source} is not valid YAML: {first}") from None
    if not docs:
        raise UserError(f"{source} holds no objects")
    for i, doc in enumerate(docs, 1):
        where = f"{source}: document {i}"
        if not isinstance(doc, dict):
            raise UserError(f"{where} is not a Kubernetes object (a mapping)")
        for field in ("apiVersion", "kind"):
            if not isinstance(doc.get(field), str) or not doc[field]:
                raise UserError(f"{where} has no {field}")
        meta = doc.get("metadata")
        if not isinstance(meta, dict) or not isinstance(meta.get("name"), str) or not meta["name"]:
            raise UserError(f"{where} ({doc['kind']}) has no metadata.name")
    return docs


def _is_deployment(obj: dict[str, Any], name: str) -> bool:
    return obj.get("kind") == "Deployment" and obj["metadata"]["name"] == name


def _named(items: Any, name: str) -> dict[str, Any] | None:
    if not isinstance(items, list):
        return None
    return next((c for c in items if isinstance(c, dict) and c.get("name") == name), None)


def check_contract(objects: list[dict[str, Any]], name: str = DEFAULT_NAME) -> dict[str, Any]:
    """Return the serving Deployment; a UserError names the first broken part of the contract."""
    found = [o for o in objects if _is_deployment(o, name)]
    if len(found) != 1:
        kinds = sorted({f"{o['kind']}/{o['metadata']['name']}" for o in objects})
        what = "no" if not found else f"{len(found)}"
        raise UserError(
            f"manifests: {what} Deployment named {name!r} (found: {', '.join(kinds)}); "
            "pass the serving Deployment's name with --name / the name parameter"
        )
    dep = found[0]
    where = f"manifests: Deployment {name!r}"
    template = (dep.get("spec") or {}).get("template")
    if not isinstance(template, dict) or not isinstance(template.get("spec"), dict):
        raise UserError(f"{where} has no spec.template.spec")
    labels = (template.get("metadata") or {}).get("labels") or {}
    if labels.get(APP_LABEL) != APP_NAME:
        raise UserError(
            f"{where}: the pod template must be labelled {APP_LABEL}: {APP_NAME} "
            f"(found {labels.get(APP_LABEL)!r})"
        )
    pod = template["spec"]
    init = _named(pod.get("initContainers"), INIT_CONTAINER)
    if init is None:
        raise UserError(f"{where} has no initContainer named {INIT_CONTAINER!r}")
    if _named(init.get("env"), BENTO_URL_ENV) is None:
        raise UserError(
            f"{where}: initContainer {INIT_CONTAINER!r} has no env var {BENTO_URL_ENV!r}"
        )
    if _named(pod.get("containers"), SERVING_CONTAINER) is None:
        raise UserError(f"{where} has no container named {SERVING_CONTAINER!r}")
    return dep


def check_inputs(version: str, bento_url: str, namespace: str) -> None:
    """Refuse a version, URL or namespace the API server would reject, naming the field."""
    if not _LABEL_VALUE.match(version or ""):
        raise UserError(
            f"version {version!r} is not a valid label value "
            "(up to 63 letters, digits, '-', '_', '.'; starts and ends alphanumeric)"
        )
    if not bento_url:
        raise UserError("the Bento URL is empty")
    if not _DNS_LABEL.match(namespace or ""):
        raise UserError(
            f"namespace {namespace!r} is not a valid namespace name "
            "(lower-case letters, digits and '-', up to 63)"
        )


def _apply_rank(obj: dict[str, Any]) -> int:
    group = obj["apiVersion"].rpartition("/")[0]
    builtin = "." not in group or group.endswith(".k8s.io")
    return _APPLY_RANK.get(obj["kind"], _CUSTOM_RANK) if builtin else _CUSTOM_RANK


def render(
    objects: list[dict[str, Any]],
    bento_url: str,
    version: str,
    namespace: str,
    name: str = DEFAULT_NAME,
) -> Release:
    """The objects for `version`: namespace set, BENTO_URL and version label set, in apply order."""
    check_inputs(version, bento_url, namespace)
    check_contract(objects, name)
    out = []
    for original in objects:
        obj = copy.deepcopy(original)
        kind = obj["kind"]
        if kind == "Namespace":
            continue  # the target namespace is a parameter; it must exist already
        if kind in CLUSTER_SCOPED:
            raise UserError(
                f"manifests: {kind} {obj['metadata']['name']!r} is cluster-scoped; the deploy step "
                f"applies namespaced objects only (apply it separately)"
            )
        obj["metadata"]["namespace"] = namespace
        if _is_deployment(obj, name):
            _set_version(obj, bento_url, version)
            if autoscaled(objects, name):
                # the autoscaler owns the replica count: applying it would reset the scale
                obj["spec"].pop("replicas", None)
        out.append(obj)
    out.sort(key=_apply_rank)  # stable: document order within a rank
    return Release(version, bento_url, namespace, name, out)


def autoscaled(objects: list[dict[str, Any]], name: str = DEFAULT_NAME) -> bool:
    """True when an HPA (or a KEDA ScaledObject) in `objects` scales the Deployment `name`."""
    for obj in objects:
        if obj["kind"] not in ("HorizontalPodAutoscaler", "ScaledObject"):
            continue
        ref = (obj.get("spec") or {}).get("scaleTargetRef") or {}
        if ref.get("name") == name and ref.get("kind", "Deployment") == "Deployment":
            return True
    return False


def _set_version(dep: dict[str, Any], bento_url: str, version: str) -> None:
    dep["metadata"].setdefault("labels", {})[VERSION_LABEL] = version
    template = dep["spec"]["template"]
    template["metadata"]["labels"][VERSION_LABEL] = version
    init = _named(template["spec"]["initContainers"], INIT_CONTAINER)
    env = _named(init["env"], BENTO_URL_ENV)
    env.pop("valueFrom", None)
    env["value"] = bento_url


def with_record(release: Release) -> list[dict[str, Any]]:
    """The objects to apply: the Deployment also carries the release record annotation."""
    value = release.encode()
    objects = copy.deepcopy(release.objects)
    for obj in objects:
        if _is_deployment(obj, release.name):
            obj["metadata"].setdefault("annotations", {})[RELEASE_ANNOTATION] = value
    return objects


def to_yaml(objects: list[dict[str, Any]]) -> str:
    """Objects as multi-document YAML, in the given order."""
    return yaml.safe_dump_all(objects, sort_keys=False, default_flow_style=False)
