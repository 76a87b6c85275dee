"""Every kustomization renders; built-in objects validate strictly; custom resources have
their required fields; every pod passes the restricted Pod Security Standard."""

from __future__ import annotations

import pytest

from kfp_automl import __version__
from tests.manifests import pss
from tests.manifests.render import KUSTOMIZATIONS, find, one, pod_specs, render

# Kubernetes versions whose strict schemas (kubernetes-validate) the built-in objects must
# pass: the oldest supported here and the newest the package carries.
K8S_VERSIONS = ("1.30.0", "1.37.0")
CUSTOM_KINDS = {
    "ServiceMonitor",
    "PodMonitor",
    "PrometheusRule",
    "ScaledObject",
    "InferenceService",
    "RayCluster",
}


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_renders(name):
    objects = render(name)
    assert objects, f"{name} rendered nothing"
    for o in objects:
        assert o["metadata"]["labels"]["app.kubernetes.io/part-of"] == "kfp-automl", o["kind"]


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_built_in_objects_validate_strictly(name, version):
    import kubernetes_validate

    checked = 0
    for o in render(name):
        if o["kind"] in CUSTOM_KINDS:
            continue
        try:
            kubernetes_validate.validate(o, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{o['kind']}/{o['metadata']['name']} in {name}: {exc.message}")
        checked += 1
    assert checked >= 3


def test_strict_validation_catches_an_unknown_field():
    """The validation above can fail: a misspelt field is an error in strict mode."""
    import kubernetes_validate

    deployment = one(render("serving/base"), "Deployment", "automl-serving")
    bad = {**deployment, "spec": {**deployment["spec"], "replica": 3}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, "1.30.0", strict=True)


def test_every_kind_is_known():
    import kubernetes_validate

    for name in KUSTOMIZATIONS:
        for o in render(name):
            if o["kind"] in CUSTOM_KINDS:
                with pytest.raises(kubernetes_validate.SchemaNotFoundError):
                    kubernetes_validate.validate(o, "1.30.0", strict=True)


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_pod_passes_the_restricted_pod_security_standard(name):
    specs = [s for o in render(name) for s in pod_specs(o)]
    assert specs, f"{name} has no pods"
    for where, spec, pod_annotations in specs:
        assert pss.violations(spec, pod_annotations) == [], where


def test_namespaces_enforce_restricted():
    for name in ("serving/overlays/dev", "serving/overlays/prod"):
        ns = one(render(name), "Namespace")
        assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
        for o in render(name):
            if o["kind"] != "Namespace":
                assert o["metadata"]["namespace"] == ns["metadata"]["name"], o["kind"]


# ---- custom resources: required fields and references --------------------------------------


def _labels_match(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector["matchLabels"].items())


@pytest.mark.parametrize("name", ["serving/base", "serving/overlays/prod"])
def test_service_monitor_scrapes_the_serving_service(name):
    objects = render(name)
    monitor = one(objects, "ServiceMonitor")
    service = one(objects, "Service", "automl-serving")
    assert _labels_match(monitor["spec"]["selector"], service["metadata"]["labels"])
    endpoints = monitor["spec"]["endpoints"]
    assert endpoints and all(e["path"] == "/metrics" for e in endpoints)
    port_names = {p["name"] for p in service["spec"]["ports"]}
    assert {e["port"] for e in endpoints} <= port_names


def test_prometheus_rule_has_groups_of_valid_rules():
    rule = one(render("serving/base"), "PrometheusRule")
    groups = rule["spec"]["groups"]
    assert groups
    for group in groups:
        assert group["name"] and group["rules"]
        for r in group["rules"]:
            assert ("record" in r) != ("alert" in r) and r["expr"]


def test_scaled_object_replaces_the_hpa():
    objects = render("serving/overlays/prod-keda")
    assert not find(objects, "HorizontalPodAutoscaler")  # KEDA owns the HPA
    scaled = one(objects, "ScaledObject")
    spec = scaled["spec"]
    target = spec["scaleTargetRef"]
    assert target["name"] == one(objects, "Deployment")["metadata"]["name"]
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    kinds = {t["type"]: t for t in spec["triggers"]}
    assert set(kinds) == {"prometheus", "cpu"}
    prom = kinds["prometheus"]["metadata"]
    assert prom["serverAddress"].startswith("http") and float(prom["threshold"]) > 0
    assert "bentoml_service_request_in_progress" in prom["query"]
    assert 'namespace="kfp-automl"' in prom["query"]


def test_inference_service_runs_the_same_serving_contract():
    objects = render("serving/overlays/prod-kserve")
    assert not find(objects, "Deployment") and not find(objects, "HorizontalPodAutoscaler")
    assert not find(objects, "ServiceMonitor")
    isvc = one(objects, "InferenceService")
    assert isvc["metadata"]["namespace"] == "kfp-automl"
    predictor = isvc["spec"]["predictor"]
    assert predictor["containers"][0]["name"] == "kserve-container"
    _check_serving_contract(predictor, "kserve-container")
    monitor = one(objects, "PodMonitor")
    assert _labels_match(monitor["spec"]["selector"], predictor["labels"])
    ports = {p["name"] for p in predictor["containers"][0]["ports"]}
    assert {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]} <= ports


def test_ray_cluster_autoscales_with_token_auth_and_no_external_service():
    cluster = one(render("tuning"), "RayCluster")
    spec = cluster["spec"]
    assert spec["rayVersion"].startswith("2.60")
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["headGroupSpec"]["serviceType"] == "ClusterIP"
    assert spec["headGroupSpec"]["template"]["spec"]["containers"]
    assert "rayStartParams" in spec["headGroupSpec"]
    for group in spec["workerGroupSpecs"]:
        assert group["groupName"] and "rayStartParams" in group
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        assert group["maxReplicas"] >= 1
    # Every Ray process (head, workers, autoscaler) runs with token authentication.
    env_lists = [spec["autoscalerOptions"]["env"]]
    for _, pod, _ in pod_specs(cluster):
        env_lists += [c.get("env", []) for c in pod["containers"] if c["name"] != "autoscaler"]
    for env in env_lists:
        values = {e["name"]: e for e in env}
        assert values["RAY_AUTH_MODE"]["value"] == "token"
        ref = values["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "automl-ray-auth", "key": "auth_token"}
    # The search's driver and trials reach the object store with the storage Secret of the
    # cluster's namespace (optional), as the pipeline's steps do: no credentials in a job.
    for where, pod, _ in pod_specs(cluster):
        for c in pod["containers"]:
            if c["name"] != "autoscaler":
                refs = [e["secretRef"] for e in c.get("envFrom", [])]
                assert refs == [{"name": "kfp-automl-storage", "optional": True}], where
    # The head's Service ports are its container's ports: the Jobs API, no Ray Client.
    (_, head, _), *_ = pod_specs(cluster)
    ports = {p["containerPort"] for p in head["containers"][0]["ports"]}
    assert 8265 in ports and 10001 not in ports
    # Probes are HTTP GETs of Ray's public health endpoints: the image has no wget for
    # KubeRay's default exec probes.
    for where, pod, _ in pod_specs(cluster):
        for c in pod["containers"]:
            if c["name"] == "autoscaler":
                continue
            for probe in ("readinessProbe", "livenessProbe"):
                assert c[probe]["httpGet"]["path"].endswith("healthz"), (where, probe)
    # The Ray image is the components image: the client in the tune pod must match it.
    images = {
        c["image"] for _, pod, _ in pod_specs(cluster) for c in pod["containers"] if "image" in c
    }
    assert images == {f"ghcr.io/kfp-automl/components:{__version__}"}


# ---- the serving Deployment's contract ------------------------------------------------------


def _env(container) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def _mebibytes(quantity: str) -> float:
    units = {"Mi": 1, "Gi": 1024}
    return float(quantity[:-2]) * units[quantity[-2:]]


def _check_prediction_log_and_feedback(main: dict, volumes: dict) -> None:
    """The log and its store fit their volume with room for one file per worker, and labels
    need a token from an optional, read-only Secret."""
    env = _env(main)
    mounts = {m["mountPath"]: m for m in main["volumeMounts"]}
    log_volume = volumes[mounts[env["AUTOML_LOG_DIR"]]["name"]]
    size = _mebibytes(log_volume["emptyDir"]["sizeLimit"])
    assert float(env["AUTOML_LOG_VOLUME_MB"]) == size  # the server checks the limit against it
    workers = int(env.get("AUTOML_WORKERS", "1"))
    worst = float(env["AUTOML_LOG_MAX_TOTAL_MB"]) + workers * 64  # one 64 MiB file per worker
    assert worst <= 0.9 * size, (worst, size)
    tokens = mounts[env["AUTOML_FEEDBACK_TOKENS"]]
    assert tokens["readOnly"] is True
    secret = volumes[tokens["name"]]["secret"]
    assert secret["secretName"] == "kfp-automl-feedback-tokens" and secret["optional"] is True
    assert secret["defaultMode"] & 0o007 == 0  # not readable by other users
    assert "AUTOML_FEEDBACK_AUTH" not in env  # never "none" by default


def _check_serving_contract(pod: dict, main_name: str) -> None:
    init = {c["name"]: c for c in pod["initContainers"]}["fetch-bento"]
    assert init["command"] == [
        "kfp-automl",
        "fetch-bento",
        "--url",
        "$(BENTO_URL)",
        "--sha256",
        "$(BENTO_SHA256)",
        "--dest",
        "/bento/model.bento",
    ]
    assert _env(init)["BENTO_URL"]
    assert _env(init)["BENTO_SHA256"] == ""  # set per version with BENTO_URL (deploy step)
    # the store's credentials come from the pipeline's optional Secret, never from literals
    assert init["envFrom"] == [{"secretRef": {"name": "kfp-automl-storage", "optional": True}}]
    secrets = [
        e
        for e in init.get("env", [])
        if e["name"] in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    ]
    assert all("valueFrom" in e and "value" not in e for e in secrets)
    main = {c["name"]: c for c in pod["containers"]}[main_name]
    assert main["command"] == [
        "kfp-automl",
        "serve",
        "--model",
        "/bento/model.bento",
        "--host",
        "0.0.0.0",
        "--port",
        "3000",
    ]
    assert main["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert main["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert main["resources"]["requests"] and main["resources"]["limits"]
    # Read-only root filesystem: every path the server writes is an emptyDir (the feedback
    # tokens are a Secret mounted read-only).
    volumes = {v["name"]: v for v in pod["volumes"]}
    for c in (init, main):
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        for m in c["volumeMounts"]:
            assert "emptyDir" in volumes[m["name"]] or m.get("readOnly") is True, m
    _check_prediction_log_and_feedback(main, volumes)
    mounts = {m["mountPath"]: m for m in main["volumeMounts"]}
    home = _env(main)["BENTOML_HOME"]
    assert {"/tmp", "/bento", home, f"{home}/prometheus_multiproc_dir"} <= set(mounts)
    assert volumes[mounts[f"{home}/prometheus_multiproc_dir"]["name"]]["emptyDir"]["medium"] == (
        "Memory"
    )
    assert "/bento" in {m["mountPath"] for m in init["volumeMounts"]}
    # Graceful shutdown: the grace period covers the preStop pause plus BentoML's
    # traffic timeout (60 s, kfp_automl/serving/service.py) for requests in flight.
    sleep = int(main["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod["terminationGracePeriodSeconds"] >= sleep + 60


@pytest.mark.parametrize("name", ["serving/base", "serving/overlays/dev", "serving/overlays/prod"])
def test_serving_deployment_contract(name):
    objects = render(name)
    deployment = one(objects, "Deployment", "automl-serving")
    template = deployment["spec"]["template"]
    labels = template["metadata"]["labels"]
    assert labels["app.kubernetes.io/name"] == "automl-serving"
    assert labels["app.kubernetes.io/version"]
    assert deployment["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/name": "automl-serving"
    }
    _check_serving_contract(template["spec"], "serving")
    assert template["spec"]["automountServiceAccountToken"] is False
    service = one(objects, "Service", "automl-serving")
    assert service["spec"]["type"] == "ClusterIP"
    assert _labels_match({"matchLabels": service["spec"]["selector"]}, labels)
    pdb = one(objects, "PodDisruptionBudget")
    assert _labels_match(pdb["spec"]["selector"], labels)


def test_overlays_differ_in_replicas_resources_and_images():
    dev, prod = (
        one(render(f"serving/overlays/{n}"), "Deployment", "automl-serving")
        for n in ("dev", "prod")
    )
    assert dev["spec"]["replicas"] < prod["spec"]["replicas"]

    def cpu(d):
        main = d["spec"]["template"]["spec"]["containers"][0]
        return main["resources"]["requests"]["cpu"]

    assert (cpu(dev), cpu(prod)) == ("250m", "2")
    for d in (dev, prod):
        for c in (
            d["spec"]["template"]["spec"]["initContainers"]
            + d["spec"]["template"]["spec"]["containers"]
        ):
            assert c["image"] == f"ghcr.io/kfp-automl/serving:{__version__}"
    hpa = {
        n: one(render(f"serving/overlays/{n}"), "HorizontalPodAutoscaler") for n in ("dev", "prod")
    }
    assert hpa["dev"]["spec"]["maxReplicas"] < hpa["prod"]["spec"]["maxReplicas"]
    assert hpa["prod"]["spec"]["minReplicas"] == prod["spec"]["replicas"]


def test_hpa_scales_on_cpu_and_requests_in_flight():
    import yaml

    from tests.manifests.render import MANIFESTS

    hpa = one(render("serving/base"), "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["name"] == "automl-serving"
    metrics = {m["type"]: m for m in hpa["spec"]["metrics"]}
    assert metrics["Resource"]["resource"]["name"] == "cpu"
    pods_metric = metrics["Pods"]["pods"]["metric"]["name"]
    adapter = yaml.safe_load((MANIFESTS / "monitoring/prometheus-adapter/values.yaml").read_text())
    rules = {r["name"]["as"]: r for r in adapter["rules"]["custom"]}
    assert pods_metric in rules  # prometheus-adapter serves exactly this name
    assert rules[pods_metric]["seriesQuery"].startswith("bentoml_service_request_in_progress{")


# ---- network policies -----------------------------------------------------------------------


def _policies_for(objects, labels: dict) -> list[dict]:
    return [
        p for p in find(objects, "NetworkPolicy") if _labels_match(p["spec"]["podSelector"], labels)
    ]


def test_serving_network_policy_denies_by_default_and_opens_only_what_is_needed():
    objects = render("serving/overlays/prod")
    labels = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    policies = _policies_for(objects, labels)
    deny = [p for p in policies if "ingress" not in p["spec"] and "egress" not in p["spec"]]
    assert deny and set(deny[0]["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    ingress = [r for p in policies for r in p["spec"].get("ingress", [])]
    assert {port["port"] for r in ingress for port in r["ports"]} == {3000}
    egress = [r for p in policies for r in p["spec"].get("egress", [])]
    ports = {(port["port"], port["protocol"]) for r in egress for port in r["ports"]}
    assert (53, "UDP") in ports and (443, "TCP") in ports and (9000, "TCP") in ports
    for r in egress:  # never the cloud metadata endpoint
        for peer in r["to"]:
            if "ipBlock" in peer:
                assert "169.254.0.0/16" in peer["ipBlock"]["except"]


def test_ray_ports_are_reachable_only_from_pipeline_pods():
    objects = render("tuning")
    pipeline_pods = {"matchLabels": {"pipelines.kubeflow.org/v2_component": "true"}}
    policies = _policies_for(objects, {"ray.io/cluster": "automl-ray", "ray.io/node-type": "head"})
    assert any(not p["spec"].get("ingress") and not p["spec"].get("egress") for p in policies)
    control = {8265}  # the Jobs API only: no GCS (6379) or Ray Client (10001) from outside
    for p in policies:
        for rule in p["spec"].get("ingress", []):
            ports = {port["port"] for port in rule.get("ports", [])}
            peers = rule["from"]
            if not ports:  # all ports: only the cluster's own Ray pods
                assert peers == [{"podSelector": {"matchLabels": {"ray.io/cluster": "automl-ray"}}}]
            elif ports & control:
                assert ports <= control
                # never a pod label alone (any pod can carry it): with the name of the Ray
                # cluster's namespace, or with the label of Kubeflow profile namespaces
                # (tests/manifests/test_multi_user.py)
                assert peers == [
                    {
                        "namespaceSelector": {
                            "matchLabels": {
                                "kubernetes.io/metadata.name": p["metadata"]["namespace"]
                            }
                        },
                        "podSelector": pipeline_pods,
                    },
                    {
                        "namespaceSelector": {
                            "matchLabels": {"app.kubernetes.io/part-of": "kubeflow-profile"}
                        },
                        "podSelector": pipeline_pods,
                    },
                ]


@pytest.mark.parametrize(
    "name", ["serving/overlays/dev", "serving/overlays/prod", "serving/overlays/prod-keda"]
)
def test_the_deploy_step_renders_the_overlays(name):
    """components/deploy accepts these manifests and sets a version's URL and label."""
    import copy

    from kfp_automl.components.deploy import render as deploy

    objects = copy.deepcopy(list(render(name)))
    release = deploy.render(
        objects, "s3://models/automl-churn.bento", "v2", "ml-serving", bento_sha256="a" * 64
    )
    assert "Namespace" not in {o["kind"] for o in release.objects}
    pod = release.deployment["spec"]["template"]
    assert pod["metadata"]["labels"]["app.kubernetes.io/version"] == "v2"
    init = {c["name"]: c for c in pod["spec"]["initContainers"]}["fetch-bento"]
    env = {e["name"]: e.get("value") for e in init["env"]}
    assert env["BENTO_URL"] == "s3://models/automl-churn.bento"
    assert env["BENTO_SHA256"] == "a" * 64
    assert "replicas" not in release.deployment["spec"]  # the autoscaler owns the count


# ---- the shared prediction store --------------------------------------------------------


def _serving_container(objects) -> dict:
    isvcs = find(objects, "InferenceService")
    if isvcs:
        return isvcs[0]["spec"]["predictor"]["containers"][0]
    return one(objects, "Deployment", "automl-serving")["spec"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize(
    "name", ["serving/overlays/prod", "serving/overlays/prod-keda", "serving/overlays/prod-kserve"]
)
def test_production_logs_to_the_shared_store_from_a_secret(name):
    """Every production replica logs to one PostgreSQL store, its URL (a password) from a
    Secret, never inline: a label sent to any pod joins."""
    main = _serving_container(render(name))
    env = {e["name"]: e for e in main["env"]}
    assert env["AUTOML_LOG_PREDICTIONS"]["value"] == "on"
    store = env["AUTOML_LOG_STORE"]
    assert "value" not in store
    assert store["valueFrom"]["secretKeyRef"] == {
        "name": "kfp-automl-prediction-store",
        "key": "url",
    }
    assert "optional" not in store["valueFrom"]["secretKeyRef"]  # no store: the pod waits
    assert int(env["AUTOML_LOG_STORE_MAX_ROWS"]["value"]) >= 1_000_000


@pytest.mark.parametrize("name", ["serving/base", "serving/overlays/dev"])
def test_one_host_overlays_keep_logging_off_and_no_store(name):
    env = _env(_serving_container(render(name)))
    assert "AUTOML_LOG_STORE" not in env and env.get("AUTOML_LOG_PREDICTIONS", "off") == "off"


def test_the_serving_pods_reach_the_store_only_on_its_port():
    serving = render("serving/overlays/prod")
    store = render("prediction-store")
    labels = one(serving, "Deployment")["spec"]["template"]["metadata"]["labels"]
    store_pod = one(store, "StatefulSet")["spec"]["template"]["metadata"]["labels"]
    to_store = [
        r
        for p in _policies_for(serving, labels)
        for r in p["spec"].get("egress", [])
        if any(
            _labels_match(peer.get("podSelector", {"matchLabels": {"-": "-"}}), store_pod)
            for peer in r["to"]
        )
    ]
    assert len(to_store) == 1
    assert to_store[0]["ports"] == [{"port": 5432, "protocol": "TCP"}]
    assert all(set(peer) == {"podSelector"} for peer in to_store[0]["to"])  # this namespace
    # the database's side: the serving pods may come in on 5432, it reaches nothing
    policy = one(store, "NetworkPolicy")
    assert _labels_match(policy["spec"]["podSelector"], store_pod)
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    assert policy["spec"].get("egress", []) == []
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"port": 5432, "protocol": "TCP"}]
    assert any(
        set(p) == {"podSelector"} and _labels_match(p["podSelector"], labels) for p in rule["from"]
    )
    pipeline_step = {"pipelines.kubeflow.org/v2_component": "true"}
    assert not any(_labels_match(p["podSelector"], {"app": "other"}) for p in rule["from"])
    assert any(_labels_match(p["podSelector"], pipeline_step) for p in rule["from"])


def test_the_store_recipe_creates_the_secret_both_sides_read():
    """The Secret command in manifests/prediction-store gives the database its password and
    the serving pods a URL that names the store's Service, port and database."""
    import re
    import shlex
    from urllib.parse import urlsplit

    from kfp_automl.cli.feedback import _store_url
    from tests.manifests.render import MANIFESTS

    text = (MANIFESTS / "prediction-store/kustomization.yaml").read_text()
    command = " ".join(
        line.lstrip("# ").rstrip("\\ ")
        for line in text.splitlines()
        if line.startswith("#   ") and "PASSWORD=" not in line
    )
    words = shlex.split(command.replace('"$PASSWORD"', "pw").replace("$PASSWORD", "pw"))
    assert words[:5] == ["kubectl", "-n", "kfp-automl", "create", "secret"]
    literals = dict(
        w.split("=", 1)[1].split("=", 1) for w in words if w.startswith("--from-literal=")
    )
    store = render("prediction-store")
    container = one(store, "StatefulSet")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    ref = env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert ref["name"] == words[6] == "kfp-automl-prediction-store"
    assert literals[ref["key"]] == "pw"
    url = urlsplit(_store_url(literals["url"]))
    service = one(store, "Service")
    assert (url.username, url.password) == (env["POSTGRES_USER"]["value"], "pw")
    assert url.hostname == service["metadata"]["name"]
    assert url.port == service["spec"]["ports"][0]["port"] == 5432
    assert url.path == "/" + env["POSTGRES_DB"]["value"]
    assert _labels_match(
        {"matchLabels": service["spec"]["selector"]},
        one(store, "StatefulSet")["spec"]["template"]["metadata"]["labels"],
    )
    assert re.search(r"PASSWORD=\"\$\(openssl rand", text)
