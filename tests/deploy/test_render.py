"""Rendering the serving manifests for a version: contract checks, namespace, kinds, order, the
archive's digest, the record; and a record read back, checked like a new render."""

from __future__ import annotations

import copy

import pytest
import yaml

from kfp_automl.components.deploy import render as rendering
from kfp_automl.components.deploy.deploy import rollout_status
from kfp_automl.components.deploy.render import (
    decode_release,
    parse_manifests,
    to_yaml,
    with_record,
)
from kfp_automl.contracts.release import RELEASE_ANNOTATION, Release
from kfp_automl.errors import UserError

URL = "s3://models/automl-churn/v7.bento"
DIGEST = "5" * 64


def render(objects, url, version, namespace, name="automl-serving", bento_sha256=DIGEST):
    return rendering.render(objects, url, version, namespace, name, bento_sha256=bento_sha256)


def _deployment(objects):
    return next(o for o in objects if o["kind"] == "Deployment")


def test_render_sets_url_version_namespace_and_apply_order(manifests_text):
    objects = parse_manifests(manifests_text)
    original = copy.deepcopy(objects)
    release = render(objects, URL, "v7", "prod")
    assert objects == original  # the input is not changed
    assert [o["kind"] for o in release.objects] == [
        "ServiceAccount",
        "ConfigMap",
        "Service",
        "Deployment",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "PrometheusRule",
        "ServiceMonitor",
    ]
    assert {o["metadata"]["namespace"] for o in release.objects} == {"prod"}
    dep = release.deployment
    assert dep["metadata"]["labels"]["app.kubernetes.io/version"] == "v7"
    template = dep["spec"]["template"]
    assert template["metadata"]["labels"] == {
        "app.kubernetes.io/name": "automl-serving",
        "app.kubernetes.io/version": "v7",
    }
    assert dep["spec"]["selector"] == _deployment(original)["spec"]["selector"]  # immutable
    (init,) = template["spec"]["initContainers"]
    assert init["env"] == [
        {"name": "BENTO_URL", "value": URL},
        {"name": "BENTO_SHA256", "value": DIGEST},  # what fetch-bento checks the archive against
    ]
    assert release.bento_sha256 == DIGEST
    (serving,) = template["spec"]["containers"]  # `serve` checks the fetched file again
    assert {"name": "BENTO_SHA256", "value": DIGEST} in serving["env"]
    # everything else is carried over unchanged
    for before, after in zip(
        sorted(original, key=lambda o: (o["kind"], o["metadata"]["name"])),
        sorted(release.objects, key=lambda o: (o["kind"], o["metadata"]["name"])),
        strict=True,
    ):
        if before["kind"] != "Deployment":
            assert {**before, "metadata": {**before["metadata"], "namespace": "prod"}} == after


def test_replicas_are_left_to_an_autoscaler(manifests_text):
    objects = parse_manifests(manifests_text)
    assert "replicas" not in render(objects, URL, "v1", "prod").deployment["spec"]
    no_hpa = [o for o in objects if o["kind"] != "HorizontalPodAutoscaler"]
    assert render(no_hpa, URL, "v1", "prod").deployment["spec"]["replicas"] == 2
    keda = {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": "automl-serving"},
        "spec": {"scaleTargetRef": {"name": "automl-serving"}},
    }
    assert "replicas" not in render([*no_hpa, keda], URL, "v1", "prod").deployment["spec"]
    other = copy.deepcopy(keda)
    other["spec"]["scaleTargetRef"]["name"] = "another"
    assert render([*no_hpa, other], URL, "v1", "prod").deployment["spec"]["replicas"] == 2


def test_a_namespace_object_is_left_out(manifests_text):
    ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kfp-automl"}}
    release = render([ns, *parse_manifests(manifests_text)], URL, "v1", "prod")
    assert "Namespace" not in {o["kind"] for o in release.objects}
    assert len(release.objects) == 9


def test_bento_url_from_value_from_is_replaced(manifests_text):
    objects = parse_manifests(manifests_text)
    env = _deployment(objects)["spec"]["template"]["spec"]["initContainers"][0]["env"]
    env[0] = {"name": "BENTO_URL", "valueFrom": {"configMapKeyRef": {"name": "x", "key": "url"}}}
    init = render(objects, URL, "v1", "prod").deployment["spec"]["template"]["spec"]
    assert init["initContainers"][0]["env"][0] == {"name": "BENTO_URL", "value": URL}


def test_release_record_round_trips_and_rides_on_the_deployment(manifests_text):
    release = render(parse_manifests(manifests_text), URL, "v7", "prod")
    applied = with_record(release)
    value = _deployment(applied)["metadata"]["annotations"][RELEASE_ANNOTATION]
    back = Release.decode(value, "prod")
    assert (back.version, back.bento_url, back.name) == ("v7", URL, "automl-serving")
    assert back.bento_sha256 == DIGEST
    assert decode_release(value, "prod") == back  # it passes the checks of a new render
    assert back.objects == release.objects  # the record holds the objects without itself
    assert RELEASE_ANNOTATION not in (release.deployment["metadata"].get("annotations") or {})
    assert [o for o in applied if o["kind"] != "Deployment"] == [
        o for o in release.objects if o["kind"] != "Deployment"
    ]
    with pytest.raises(ValueError, match="not a kfp-automl.io/release record"):
        Release.decode("bm90IGd6aXA=", "prod")


def test_a_record_too_large_for_an_annotation_is_refused(manifests_text):
    import os

    objects = parse_manifests(manifests_text)
    cm = next(o for o in objects if o["kind"] == "ConfigMap")
    cm["data"]["dashboard.json"] = os.urandom(200 * 1024).hex()  # incompressible
    release = render(objects, URL, "v1", "prod")
    with pytest.raises(UserError, match="over the 200 KiB"):
        release.encode()


def test_dry_run_yaml_parses_back_to_the_same_objects(manifests_text):
    objects = with_record(render(parse_manifests(manifests_text), URL, "v1", "prod"))
    assert list(yaml.safe_load_all(to_yaml(objects))) == objects


def _break(path: str):
    """Edit functions for the bad-manifests table."""

    def edit(objects):
        dep = _deployment(objects)
        pod = dep["spec"]["template"]["spec"]
        if path == "no-init":
            pod["initContainers"][0]["name"] = "download"
        elif path == "no-env":
            pod["initContainers"][0]["env"] = [{"name": "URL", "value": "x"}]
        elif path == "no-serving":
            pod["containers"][0]["name"] = "main"
        elif path == "label":
            dep["spec"]["template"]["metadata"]["labels"] = {"app": "serving"}
        elif path == "rename":
            dep["metadata"]["name"] = "other"
        elif path == "two":
            objects.append(copy.deepcopy(dep))
        elif path == "cluster-role":
            role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole"}
            objects.append({**role, "metadata": {"name": "p"}})
        elif path == "no-template":
            del dep["spec"]["template"]
        elif path == "secret":
            objects.append({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}})
        return objects

    return edit


@pytest.mark.parametrize(
    "how, message",
    [
        ("no-init", "no initContainer named 'fetch-bento'"),
        ("no-env", "initContainer 'fetch-bento' has no env var 'BENTO_URL'"),
        ("no-serving", "no container named 'serving'"),
        ("label", "must be labelled app.kubernetes.io/name: automl-serving"),
        ("rename", "no Deployment named 'automl-serving' (found: "),
        ("two", "2 Deployment named 'automl-serving'"),
        ("cluster-role", "ClusterRole 'p' is cluster-scoped"),
        ("no-template", "has no spec.template.spec"),
        ("secret", "Secret 's' (v1) is not a kind the deploy step applies"),
    ],
)
def test_manifests_that_break_the_contract_are_refused(manifests_text, how, message):
    objects = _break(how)(parse_manifests(manifests_text))
    with pytest.raises(UserError) as err:
        render(objects, URL, "v1", "prod")
    assert message in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "holds no objects"),
        ("a: [1,\n", "is not valid YAML"),
        ("- 1\n- 2\n", "document 1 is not a Kubernetes object"),
        ("kind: ConfigMap\nmetadata: {name: x}\n", "document 1 has no apiVersion"),
        ("apiVersion: v1\nkind: ConfigMap\n", "document 1 (ConfigMap) has no metadata.name"),
    ],
)
def test_unparseable_manifests_are_refused(text, message):
    with pytest.raises(UserError, match="^manifests") as err:
        parse_manifests(text, "manifests")
    assert message in str(err.value)


@pytest.mark.parametrize(
    "version, url, namespace, message",
    [
        ("v 1", URL, "prod", "version 'v 1' is not a valid label value"),
        ("x" * 64, URL, "prod", "is not a valid label value"),
        ("-v1", URL, "prod", "is not a valid label value"),
        ("v1", "", "prod", "the Bento URL is empty"),
        ("v1", URL, "Prod", "namespace 'Prod' is not a valid namespace name"),
        ("v1", URL, "", "namespace '' is not a valid"),
    ],
)
def test_bad_version_url_or_namespace_is_refused(manifests_text, version, url, namespace, message):
    with pytest.raises(UserError) as err:
        render(parse_manifests(manifests_text), url, version, namespace)
    assert message in str(err.value)


@pytest.mark.parametrize(
    "digest, message",
    [
        ("", "the Bento's sha256 is not known"),
        ("abc", "the Bento's sha256 'abc' is not a sha256 digest"),
    ],
)
def test_nothing_is_rendered_without_the_archives_digest(manifests_text, digest, message):
    with pytest.raises(UserError, match=message):
        render(parse_manifests(manifests_text), URL, "v1", "prod", bento_sha256=digest)


def test_a_record_from_before_digests_still_decodes_for_a_rollback(manifests_text):
    """A release recorded before digests were recorded carries none, nor does its Deployment."""
    release = render(parse_manifests(manifests_text), URL, "v1", "prod")
    old = copy.deepcopy(release.objects)
    init = _deployment(old)["spec"]["template"]["spec"]["initContainers"][0]
    init["env"] = [e for e in init["env"] if e["name"] != "BENTO_SHA256"]
    legacy = Release("v1", URL, "prod", "automl-serving", old)
    assert decode_release(legacy.encode(), "prod").bento_sha256 == ""


def _dep(generation=2, replicas=2, **status):
    return {
        "metadata": {"generation": generation},
        "spec": {"replicas": replicas},
        "status": status,
    }


@pytest.mark.parametrize(
    "dep, done, failure",
    [
        (
            _dep(observedGeneration=1, replicas=2, updatedReplicas=2, availableReplicas=2),
            False,
            None,
        ),
        (
            _dep(observedGeneration=2, replicas=2, updatedReplicas=2, availableReplicas=2),
            True,
            None,
        ),
        (
            _dep(observedGeneration=2, replicas=3, updatedReplicas=2, availableReplicas=3),
            False,
            None,
        ),
        (
            _dep(observedGeneration=2, replicas=2, updatedReplicas=1, availableReplicas=2),
            False,
            None,
        ),
        (
            _dep(observedGeneration=2, replicas=2, updatedReplicas=2, availableReplicas=1),
            False,
            None,
        ),
        (_dep(observedGeneration=2), False, None),
        (
            _dep(
                observedGeneration=2,
                replicas=2,
                updatedReplicas=2,
                conditions=[
                    {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}
                ],
            ),
            False,
            "ProgressDeadlineExceeded",
        ),
    ],
)
def test_rollout_status(dep, done, failure):
    got_done, got_failure, _ = rollout_status(dep)
    assert got_done is done
    assert (got_failure or "").startswith(failure or "")
    assert (got_failure is None) == (failure is None)
