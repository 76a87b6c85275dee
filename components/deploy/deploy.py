"""Deploy one model version: render, server-side apply, wait for the rollout, roll back on failure.

Plain logic (no kfp import): the component (`component.py`) and `kfp-automl deploy` call `deploy`.
Every applied Deployment carries the release it belongs to (the annotation
`kfp-automl.io/release`: the rendered objects, version, Bento URL and archive digest, and the
release it rolls back to), so when a new version is not ready within the timeout the objects of
the version that was live before are applied again. That record is read back through
render.decode_release, which checks it like a new render: a record that fails is refused before
anything is applied. A rerun of the same deploy (KFP's retry after an attempt that
applied the new version and then died) rolls back to what was live before the first attempt,
never to the half-finished new version.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, NoReturn

from kfp_automl.components.deploy.kube import ApiProblem, Cluster
from kfp_automl.components.deploy.render import (
    DEFAULT_NAME,
    decode_release,
    parse_manifests,
    render,
    with_record,
)
from kfp_automl.contracts.decision import GateDecision
from kfp_automl.contracts.release import RELEASE_ANNOTATION, DeployOutcome, Release
from kfp_automl.errors import PipelineFailed, UserError
from kfp_automl.progress import say

# The rendered serving overlay, baked into the components image at build time.
DEFAULT_MANIFESTS = "/opt/kfp-automl/serving.yaml"
STEP = "deploy"


class DeployError(PipelineFailed):
    """The new version did not become ready (or could not be applied); says what was rolled back."""


def read_manifests(source: str) -> str:
    """The manifests' text from a local path or an fsspec URL; a UserError names the source."""
    source = source or DEFAULT_MANIFESTS
    if "://" in source and not source.startswith("file://"):
        import fsspec

        try:
            with fsspec.open(source, "rt") as f:
                return f.read()
        except (OSError, ValueError, ImportError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"cannot read manifests {source}: {first}") from None
    path = Path(source.removeprefix("file://"))
    if not path.is_file():
        raise UserError(f"manifests file not found: {source}")
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read manifests {source}: {exc}") from None


def rollout_status(dep: dict[str, Any]) -> tuple[bool, str | None, str]:
    """(done, failure, summary) for a Deployment, the way `kubectl rollout status` judges it.

    Done when the controller has seen the latest spec (observedGeneration) and every desired
    replica is updated and available with no old replica left; failed when the Progressing
    condition reports ProgressDeadlineExceeded.
    """
    spec, status = dep.get("spec") or {}, dep.get("status") or {}
    desired = spec.get("replicas", 1)
    generation = (dep.get("metadata") or {}).get("generation", 0)
    observed = status.get("observedGeneration", 0)
    replicas = status.get("replicas", 0)
    updated = status.get("updatedReplicas", 0)
    available = status.get("availableReplicas", 0)
    summary = f"{updated}/{desired} updated, {available} available, {replicas} total"
    if observed < generation:
        return False, None, f"waiting for the controller to see generation {generation}"
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Progressing" and cond.get("reason") == "ProgressDeadlineExceeded":
            return False, f"ProgressDeadlineExceeded: {cond.get('message', '')}".strip(), summary
    done = updated >= desired and replicas <= updated and available >= updated
    return done, None, summary


def wait_rollout(
    cluster: Cluster,
    namespace: str,
    name: str,
    timeout_s: float,
    poll_s: float,
    clock: Callable[[], float] = time.monotonic,
) -> tuple[bool, str]:
    """Poll the Deployment until it is rolled out, failed, or `timeout_s` passed: (ready, why)."""
    deadline = clock() + timeout_s
    last = "no status yet"
    while True:
        dep = cluster.get_deployment(namespace, name)
        if dep is None:
            return False, f"Deployment {namespace}/{name} disappeared"
        done, failure, last = rollout_status(dep)
        if done:
            return True, last
        if failure:
            return False, failure
        if clock() >= deadline:
            return False, f"not ready within {timeout_s:g}s ({last})"
        time.sleep(poll_s)


def live_release(
    live: dict[str, Any] | None, namespace: str, name: str = DEFAULT_NAME
) -> Release | None:
    """The release recorded on the live Deployment, or None (none live, or not deployed by us).

    A record that is there but does not pass `decode_release` (checked like a new render) is a
    UserError: it was not written by this step, and nothing of it may be applied.
    """
    if live is None:
        return None
    value = ((live.get("metadata") or {}).get("annotations") or {}).get(RELEASE_ANNOTATION)
    if not value:
        return None
    return decode_release(value, namespace, name)


def rollback_target(
    live: dict[str, Any] | None, version: str, namespace: str, name: str = DEFAULT_NAME
) -> tuple[Release | None, str]:
    """What a failed deploy of `version` re-applies, and one phrase saying what is live.

    Another version live: that one. The same version live and rolled out (a rerun after the
    rollout finished): the same version as it is. The same version live but not rolled out (a
    rerun after an attempt applied it and died): the release that was live before that
    attempt, which its record carries; None when there was none.
    """
    current = live_release(live, namespace, name)
    if live is None or current is None:
        return None, "no recorded version live"
    if current.version != version:
        return current, f"version {current.version} live"
    if rollout_status(live)[0]:
        return current, f"version {version} live already"
    before = current.previous
    back = f"version {before.version}" if before else "no recorded version"
    return before, f"version {version} applied but not rolled out, {back} before it"


def needed_secrets(deployment: dict[str, Any]) -> list[str]:
    """The Secrets a Deployment's pods cannot start without (references not marked optional),
    sorted."""
    pod = deployment.get("spec", {}).get("template", {}).get("spec", {})
    names: set[str] = set()
    for container in pod.get("initContainers", []) + pod.get("containers", []):
        for env in container.get("env", []):
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if ref and not ref.get("optional"):
                names.add(ref["name"])
        for source in container.get("envFrom", []):
            ref = source.get("secretRef")
            if ref and not ref.get("optional"):
                names.add(ref["name"])
    for volume in pod.get("volumes", []):
        ref = volume.get("secret")
        if ref and not ref.get("optional"):
            names.add(ref["secretName"])
    return sorted(names)


def _apply_all(cluster: Cluster, release: Release) -> list[str]:
    applied = []
    for obj in with_record(release):
        cluster.apply(obj)
        ref = f"{obj['kind']}/{obj['metadata']['name']}"
        applied.append(ref)
        say(STEP, f"applied {ref}")
    return applied


def check(
    manifests: str,
    bento_url: str,
    version: str,
    namespace: str,
    name: str = DEFAULT_NAME,
    source: str = "manifests",
    *,
    bento_sha256: str,
) -> list[dict[str, Any]]:
    """The objects `deploy` would apply; every input problem is a UserError before any API call."""
    objects = parse_manifests(manifests, source)
    return with_record(
        render(objects, bento_url, version, namespace, name, bento_sha256=bento_sha256)
    )


def deploy(
    cluster: Cluster,
    manifests: str,
    bento_url: str,
    version: str,
    namespace: str,
    name: str = DEFAULT_NAME,
    timeout_s: float = 300,
    poll_s: float = 2.0,
    *,
    bento_sha256: str,
) -> DeployOutcome:
    """Apply `version` (the archive at `bento_url` with SHA-256 `bento_sha256`) and wait for
    it; on failure re-apply the previous release and raise.

    `manifests` is the rendered multi-document YAML. Raises UserError for input that breaks the
    contract, a live release record that does not pass the checks of a new render (nothing is
    applied then) or an API call the server refuses, DeployError when the rollout does not
    finish.
    """
    started = time.monotonic()
    release = render(
        parse_manifests(manifests), bento_url, version, namespace, name, bento_sha256=bento_sha256
    )
    target = f"{namespace}/{name}"
    try:
        live = cluster.get_deployment(namespace, name)
    except ApiProblem as exc:
        raise UserError(f"deploy to {target}: {exc}") from None
    try:
        before, was = rollback_target(live, version, namespace, name)
    except UserError as exc:
        raise UserError(
            f"deploy to {target}: the {RELEASE_ANNOTATION} record on the live Deployment is "
            f"refused, so nothing was applied: {exc}. This step did not write that record: find "
            "out who changed it, then remove it "
            f"(`kubectl -n {namespace} annotate deployment/{name} {RELEASE_ANNOTATION}-`) to "
            "deploy without a version to roll back to"
        ) from None
    if before is not None:
        release = replace(release, previous=replace(before, previous=None))
    say(STEP, f"deploying version {version} to {target} ({was})")
    try:
        applied = _apply_all(cluster, release)
    except ApiProblem as exc:
        if before is None:
            raise UserError(f"deploy to {target}: {exc}") from None
        # some objects of the new version may be applied: put the previous ones back
        say(STEP, f"{exc}; re-applying version {before.version}")
        failed = f"deploy of version {version} to {target} failed: {exc}"
        _rollback(cluster, before, failed, timeout_s, poll_s)
    say(STEP, f"waiting up to {timeout_s:g}s for the rollout of {target}")
    try:
        ready, why = wait_rollout(cluster, namespace, name, timeout_s, poll_s)
    except ApiProblem as exc:
        raise UserError(f"deploy to {target}: {exc}") from None
    if ready:
        say(STEP, f"version {version} is live in {target} ({why})")
        return DeployOutcome(
            deployed=True,
            version=version,
            namespace=namespace,
            name=name,
            applied=tuple(applied),
            previous_version=before.version if before else None,
            rollout=why,
            elapsed_s=round(time.monotonic() - started, 1),
            bento_sha256=release.bento_sha256,
        )
    failed = f"deploy of version {version} to {target} failed: {why}"
    secrets = needed_secrets(release.deployment)
    if secrets:  # the step may not read Secrets: say which ones a pod cannot start without
        failed += (
            f" (the pods start only once the Secret{'s' if len(secrets) > 1 else ''} "
            f"{', '.join(secrets)} exist{'' if len(secrets) > 1 else 's'} in {namespace}: "
            f"`kubectl -n {namespace} describe pods -l app.kubernetes.io/name={name}` "
            "shows why a pod waits)"
        )
    if before is None:
        raise DeployError(
            f"{failed}; nothing to roll back to (the Deployment had no earlier release recorded by "
            "this step), so the new version stays applied: inspect it with "
            f"`kubectl -n {namespace} rollout status deployment/{name}`"
        )
    say(STEP, f"{why}; rolling back to version {before.version}")
    _rollback(cluster, before, failed, timeout_s, poll_s)


def _rollback(
    cluster: Cluster, before: Release, failed: str, timeout_s: float, poll_s: float
) -> NoReturn:
    """Re-apply `before`, wait for its rollout, and raise DeployError saying how that went."""
    try:
        _apply_all(cluster, before)
        back, back_why = wait_rollout(cluster, before.namespace, before.name, timeout_s, poll_s)
    except ApiProblem as exc:
        raise DeployError(
            f"{failed}; the rollback to version {before.version} failed too: {exc}"
        ) from None
    state = "ready again" if back else f"not ready either: {back_why}"
    raise DeployError(f"{failed}; rolled back to version {before.version} ({state})")


def run(
    *,
    bento_uri: str,
    bento_metadata: dict[str, Any],
    decision: GateDecision,
    release_path: str,
    namespace: str,
    manifests: str = "",
    name: str = DEFAULT_NAME,
    timeout_s: float = 300,
    cluster_factory: Callable[[], Cluster] | None = None,
) -> DeployOutcome:
    """The deploy step: deploy the Bento at `bento_uri` if the gate passed and a namespace is
    given; write the release JSON. The pipeline promotes the model only after this returns."""
    if not decision.deploy:
        say(STEP, f"nothing deployed: the gate did not pass this model ({decision.reason})")
        outcome = DeployOutcome(deployed=False, reason=decision.reason)
        outcome.write(release_path)
        return outcome
    if not namespace.strip():
        reason = "deploy_namespace is empty"
        say(STEP, f"nothing deployed: {reason} (the model is promoted in the registry only)")
        outcome = DeployOutcome(deployed=False, reason=reason)
        outcome.write(release_path)
        return outcome
    tag = str(bento_metadata.get("bento_tag", ""))
    if ":" not in tag:
        raise UserError(f"the Bento artifact has no bento_tag name:version (got {tag!r})")
    digest = str(bento_metadata.get("bento_sha256", ""))
    if not digest:
        raise UserError(
            f"the Bento artifact of {tag} records no bento_sha256 (packaged by an earlier "
            "kfp-automl): nothing is deployed without the digest the serving pod checks"
        )
    text = read_manifests(manifests)
    version = tag.split(":", 1)[1]
    source = manifests or DEFAULT_MANIFESTS
    check(text, bento_uri, version, namespace, name, source, bento_sha256=digest)
    if cluster_factory is None:
        from kfp_automl.components.deploy.kube import api_client

        def cluster_factory() -> Cluster:
            return Cluster(api_client())

    try:
        cluster = cluster_factory()
    except ApiProblem as exc:
        raise UserError(f"deploy to {namespace}/{name}: {exc}") from None
    try:
        outcome = deploy(
            cluster, text, bento_uri, version, namespace, name, timeout_s, bento_sha256=digest
        )
    finally:
        cluster.close()
    outcome.write(release_path)
    return outcome
