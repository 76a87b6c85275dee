"""Render the serving manifests for one model version (pure functions, no cluster).

The input is the multi-document YAML that `kubectl kustomize manifests/serving/overlays/<env>`
prints. The contract with those manifests: a Deployment (default name `automl-serving`) whose
pod template is labelled `app.kubernetes.io/name: automl-serving`, with an initContainer
`fetch-bento` that reads the Bento archive's URL from env `BENTO_URL` and a container `serving`.
Rendering sets BENTO_URL, BENTO_SHA256 (the archive's digest, which `fetch-bento` checks), the
`app.kubernetes.io/version` label and the namespace; it never touches the Deployment's selector
(immutable on a live object). A Namespace object (overlays may carry one for `kubectl apply
-k`) is left out: the namespace is the deploy's parameter and must exist; other cluster-scoped
objects, and any kind the serving manifests do not hold (ALLOWED_KINDS), are refused. When an
HPA or a KEDA ScaledObject scales the Deployment, its `spec.replicas` is left out, so a deploy
never resets the autoscaler's count.

A release read back from the live Deployment's record (`decode_release`) passes the same
checks before it may be rolled back to (`check_release`): anyone who can edit the annotation
can write anything into it.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import yaml

from kfp_automl.contracts.errors import ContractError
from kfp_automl.contracts.release import RELEASE_ANNOTATION, Release
from kfp_automl.errors import UserError
from kfp_automl.runtime.model_file import parse_sha256

DEFAULT_NAME = "automl-serving"
APP_LABEL = "app.kubernetes.io/name"
APP_NAME = "automl-serving"
VERSION_LABEL = "app.kubernetes.io/version"
INIT_CONTAINER = "fetch-bento"
SERVING_CONTAINER = "serving"
BENTO_URL_ENV = "BENTO_URL"
BENTO_SHA256_ENV = "BENTO_SHA256"

# (API group, kind) of everything manifests/serving holds (its overlays and components): the
# only objects the deploy step applies. No Secret, no RBAC: the deploy step's Role
# (manifests/deploy-access) grants neither.
ALLOWED_KINDS = frozenset(
    {
        ("", "ServiceAccount"),
        ("", "ConfigMap"),
        ("", "Service"),
        ("apps", "Deployment"),
        ("autoscaling", "HorizontalPodAutoscaler"),
        ("policy", "PodDisruptionBudget"),
        ("networking.k8s.io", "NetworkPolicy"),
        ("monitoring.coreos.com", "ServiceMonitor"),
        ("monitoring.coreos.com", "PodMonitor"),
        ("monitoring.coreos.com", "PrometheusRule"),
        ("keda.sh", "ScaledObject"),
    }
)
RECORD = "the record"

# Applied first to last; anything else (custom resources) comes after these.
_APPLY_RANK = {
    "ServiceAccount": 0,
    "ConfigMap": 0,
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
_DNS_NAME = re.compile(r"^[a-z0-9](?:[-a-z0-9.]{0,251}[a-z0-9])?$")


def parse_manifests(text: str, source: str = "manifests") -> list[dict[str, Any]]:
    """Parse multi-document YAML into objects; each must have apiVersion, kind and metadata.name."""
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        first = str(exc).strip().splitlines()[0]
        raise UserError(f"{source} is not valid YAML: {first}") from None
    if not docs:
        raise UserError(f"{source} holds no objects")
    check_documents(docs, source)
    return docs


def check_documents(docs: list[Any], source: str) -> None:
    """Each document is a mapping with apiVersion, kind and metadata.name."""
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


def check_kinds(objects: list[dict[str, Any]], namespace: str, source: str = "manifests") -> None:
    """Refuse cluster-scoped objects, kinds the serving manifests do not hold, objects of
    another namespace and names the API server would reject."""
    for obj in objects:
        kind, meta = obj["kind"], obj["metadata"]
        ref = f"{kind} {str(meta['name'])[:100]!r}"
        if kind in CLUSTER_SCOPED:
            raise UserError(
                f"{source}: {ref} is cluster-scoped; the deploy step applies namespaced objects "
                "only" + (" (apply it separately)" if source == "manifests" else "")
            )
        group = obj["apiVersion"].rpartition("/")[0]
        if (group, kind) not in ALLOWED_KINDS:
            allowed = ", ".join(sorted({k for _, k in ALLOWED_KINDS}))
            raise UserError(
                f"{source}: {ref} ({obj['apiVersion']}) is not a kind the deploy step applies "
                f"(only what the serving manifests hold: {allowed})"
            )
        if not _DNS_NAME.match(meta["name"]):
            raise UserError(f"{source}: {ref} is not a valid object name")
        theirs = meta.get("namespace")
        if theirs not in (None, namespace):
            raise UserError(
                f"{source}: {ref} names namespace {str(theirs)[:100]!r}; the deploy step changes "
                f"namespace {namespace!r} only"
            )


def _is_deployment(obj: dict[str, Any], name: str) -> bool:
    return obj.get("kind") == "Deployment" and obj["metadata"]["name"] == name


def _named(items: Any, name: str) -> dict[str, Any] | None:
    if not isinstance(items, list):
        return None
    return next((c for c in items if isinstance(c, dict) and c.get("name") == name), None)


def check_contract(
    objects: list[dict[str, Any]], name: str = DEFAULT_NAME, source: str = "manifests"
) -> dict[str, Any]:
    """Return the serving Deployment; a UserError names the first broken part of the contract."""
    found = [o for o in objects if _is_deployment(o, name)]
    if len(found) != 1:
        kinds = sorted({f"{o['kind']}/{o['metadata']['name']}" for o in objects})
        what = "no" if not found else f"{len(found)}"
        raise UserError(
            f"{source}: {what} Deployment named {name!r} (found: {', '.join(kinds)}); "
            "pass the serving Deployment's name with --name / the name parameter"
        )
    dep = found[0]
    where = f"{source}: Deployment {name!r}"
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


def check_inputs(version: str, bento_url: str, namespace: str, bento_sha256: str = "") -> None:
    """Refuse a version, URL, digest or namespace the API server (or fetch-bento) would
    reject, naming the field."""
    if not isinstance(version, str) or not _LABEL_VALUE.match(version or ""):
        raise UserError(
            f"version {version!r} is not a valid label value "
            "(up to 63 letters, digits, '-', '_', '.'; starts and ends alphanumeric)"
        )
    if not bento_url:
        raise UserError("the Bento URL is empty")
    if bento_sha256:
        parse_sha256(bento_sha256, "the Bento's sha256")
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
    *,
    bento_sha256: str,
) -> Release:
    """The objects for `version`: namespace set, BENTO_URL, BENTO_SHA256 and version label
    set, in apply order."""
    if not bento_sha256:
        raise UserError(
            "the Bento's sha256 is not known: the serving pod checks the archive against it, so "
            "nothing is deployed without it (--sha256, or the registry's bento_sha256)"
        )
    bento_sha256 = parse_sha256(bento_sha256, "the Bento's sha256")
    check_inputs(version, bento_url, namespace, bento_sha256)
    check_contract(objects, name)
    kept = [o for o in objects if o["kind"] != "Namespace"]  # the namespace must exist already
    check_kinds(
        [{**o, "metadata": {**o["metadata"], "namespace": namespace}} for o in kept], namespace
    )
    out = []
    for original in kept:
        obj = copy.deepcopy(original)
        obj["metadata"]["namespace"] = namespace
        if _is_deployment(obj, name):
            _set_version(obj, bento_url, version, bento_sha256)
            if autoscaled(objects, name):
                # the autoscaler owns the replica count: applying it would reset the scale
                obj["spec"].pop("replicas", None)
        out.append(obj)
    out.sort(key=_apply_rank)  # stable: document order within a rank
    return Release(version, bento_url, namespace, name, out, bento_sha256=bento_sha256)


def check_release(release: Release, namespace: str, name: str, source: str = RECORD) -> Release:
    """`release` as read back from a record, checked like a new render (the inputs, the
    serving contract, the kinds, the namespace) and consistent with itself (its Deployment
    fetches its URL with its digest and carries its version); its objects in `namespace`."""
    try:
        check_inputs(release.version, release.bento_url, namespace, release.bento_sha256)
    except UserError as exc:
        raise UserError(f"{source}: {exc}") from None
    if release.name != name:
        raise UserError(f"{source} is for Deployment {release.name[:100]!r}, not {name!r}")
    check_documents(release.objects, source)
    check_kinds(release.objects, namespace, source)
    dep = check_contract(release.objects, name, source)
    template = dep["spec"]["template"]
    init = _named(template["spec"]["initContainers"], INIT_CONTAINER) or {}
    env = {e.get("name"): e for e in init["env"] if isinstance(e, dict)}
    if env[BENTO_URL_ENV].get("value") != release.bento_url:
        raise UserError(f"{source}: its Deployment fetches another URL than the record names")
    if (env.get(BENTO_SHA256_ENV) or {}).get("value", "") != release.bento_sha256:
        raise UserError(
            f"{source}: its Deployment checks another archive sha256 than the record names"
        )
    if (template.get("metadata") or {}).get("labels", {}).get(VERSION_LABEL) != release.version:
        raise UserError(
            f"{source}: its Deployment's pod template is not version {release.version!r}"
        )
    objects = copy.deepcopy(release.objects)
    for obj in objects:
        obj["metadata"]["namespace"] = namespace
    return Release(
        release.version,
        release.bento_url,
        namespace,
        name,
        objects,
        release.previous,
        release.bento_sha256,
    )


def decode_release(value: str, namespace: str, name: str = DEFAULT_NAME) -> Release:
    """The release in a record annotation, and the one it rolls back to, both checked
    (`check_release`); a UserError saying why it is refused."""
    from functools import partial

    from kfp_automl.runtime.jsonbody import loads

    try:
        release = Release.decode(value, namespace, loads=partial(loads, max_depth=64))
    except ContractError as exc:  # a JsonBodyError (a ValueError) becomes one too
        raise UserError(str(exc)) from None
    try:
        previous = None
        if release.previous is not None:
            previous = check_release(
                release.previous, namespace, name, f"{RECORD}'s previous release"
            )
        checked = check_release(release, namespace, name)
    except (AttributeError, TypeError, KeyError, IndexError) as exc:  # a malformed object
        raise UserError(f"{RECORD}: an object is malformed ({type(exc).__name__})") from None
    return Release(
        checked.version,
        checked.bento_url,
        namespace,
        name,
        checked.objects,
        previous,
        checked.bento_sha256,
    )


def autoscaled(objects: list[dict[str, Any]], name: str = DEFAULT_NAME) -> bool:
    """True when an HPA (or a KEDA ScaledObject) in `objects` scales the Deployment `name`."""
    for obj in objects:
        if obj["kind"] not in ("HorizontalPodAutoscaler", "ScaledObject"):
            continue
        ref = (obj.get("spec") or {}).get("scaleTargetRef") or {}
        if ref.get("name") == name and ref.get("kind", "Deployment") == "Deployment":
            return True
    return False


def _set_version(dep: dict[str, Any], bento_url: str, version: str, bento_sha256: str) -> None:
    dep["metadata"].setdefault("labels", {})[VERSION_LABEL] = version
    template = dep["spec"]["template"]
    template["metadata"]["labels"][VERSION_LABEL] = version
    init = _named(template["spec"]["initContainers"], INIT_CONTAINER)
    _set_env(init, BENTO_URL_ENV, bento_url)
    _set_env(init, BENTO_SHA256_ENV, bento_sha256)  # fetch-bento refuses another archive
    # and `serve` checks the fetched file again (its --sha256 reads BENTO_SHA256)
    _set_env(
        _named(template["spec"]["containers"], SERVING_CONTAINER), BENTO_SHA256_ENV, bento_sha256
    )


def _set_env(container: Any, key: str, value: str) -> None:
    env = _named(container.setdefault("env", []), key)
    if env is None:
        env = {"name": key}
        container["env"].append(env)
    env.pop("valueFrom", None)
    env["value"] = value


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
