"""manifests/retraining renders with kubectl kustomize, validates strictly, and runs our CLI.

Kubernetes itself cannot run here: these tests go up to that edge. Every rendered
object validates against the Kubernetes 1.30 and 1.32 schemas (`kubernetes-validate`,
strict: no unknown fields); the pods meet the restricted Pod Security Standard; the
containers' commands parse with the real `kfp-automl` CLI; the example Alertmanager
configuration passes `amtool check-config`.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import click
import kubernetes_validate
import pytest
import yaml

from kfp_automl.cli.main import cli
from kfp_automl.cluster.client import check_cron
from kfp_automl.components._image import COMPONENTS_IMAGE
from kfp_automl.registry.registry import model_name_for
from kfp_automl.retrain import policy
from kfp_automl.retrain.trigger import TOKEN_ENV

ROOT = Path(__file__).resolve().parents[2] / "manifests" / "retraining"
KUSTOMIZATIONS = [ROOT, ROOT / "schedule"]
VERSIONS = ["1.30.0", "1.32.0"]


def render(path: Path) -> list[dict]:
    if shutil.which("kubectl") is None:
        raise RuntimeError("kubectl (with kustomize) is needed to render the manifests")
    out = subprocess.run(
        ["kubectl", "kustomize", str(path)], check=True, capture_output=True, text=True
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


@pytest.fixture(scope="module")
def objects() -> dict[str, list[dict]]:
    return {p.name: render(p) for p in KUSTOMIZATIONS}


def _by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def test_renders_the_expected_objects(objects):
    kinds = sorted(d["kind"] for d in objects["retraining"])
    assert kinds == [
        "ConfigMap",
        "Deployment",
        "NetworkPolicy",
        "PersistentVolumeClaim",
        "Service",
        "ServiceAccount",
    ]
    assert sorted(d["kind"] for d in objects["schedule"]) == ["ConfigMap", "Job"]
    for docs in objects.values():
        assert {d["metadata"]["namespace"] for d in docs} == {"kfp-automl"}


@pytest.mark.parametrize("version", VERSIONS)
def test_every_object_validates_strictly(objects, version):
    for docs in objects.values():
        for doc in docs:
            kubernetes_validate.validate(doc, version, strict=True)


def test_strict_validation_is_not_vacuous():
    doc = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "x"},
        "spec": {"ports": [{"port": 8080, "targetPrt": "http"}]},
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, VERSIONS[0], strict=True)


def _pod_specs(objects):
    for docs in objects.values():
        for d in docs:
            if d["kind"] in ("Deployment", "Job"):
                yield d["metadata"]["name"], d["spec"]["template"]["spec"]


def test_pods_meet_the_restricted_pod_security_standard(objects):
    specs = list(_pod_specs(objects))
    assert len(specs) == 2
    for name, spec in specs:
        pod_sc = spec["securityContext"]
        assert pod_sc["runAsNonRoot"] is True and pod_sc["runAsUser"] != 0, name
        assert pod_sc["seccompProfile"]["type"] == "RuntimeDefault", name
        assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC")
        assert spec["automountServiceAccountToken"] is False, name
        for volume in spec["volumes"]:
            assert set(volume) - {"name"} <= {
                "emptyDir",
                "persistentVolumeClaim",
                "projected",
                "configMap",
                "secret",
            }, f"{name}: volume type not allowed by the restricted standard: {volume}"
        for c in spec["containers"] + spec.get("initContainers", []):
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["capabilities"]["drop"] == ["ALL"] and "add" not in sc["capabilities"]
            assert not sc.get("privileged"), name
            assert c["image"] == COMPONENTS_IMAGE, name
            assert "limits" in c["resources"] and "memory" in c["resources"]["limits"]
            mounts = {m["mountPath"] for m in c["volumeMounts"]}
            assert "/tmp" in mounts  # the read-only root needs a writable temp dir
            assert "/var/run/secrets/kubeflow/pipelines" in mounts  # kfp.Client's token path


def test_the_token_comes_from_a_secret_and_nothing_secret_is_inline(objects):
    [dep] = _by_kind(objects["retraining"], "Deployment")
    [container] = dep["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env[TOKEN_ENV]["valueFrom"]["secretKeyRef"] == {
        "name": "kfp-automl-retrain-token",
        "key": "token",
    }
    assert not any(d["kind"] == "Secret" for docs in objects.values() for d in docs)
    for docs in objects.values():
        for d in docs:
            text = yaml.safe_dump(d)
            assert not re.search(r"(?i)(password|bearer [a-z0-9]{8,}|credentials:)", text)
    projected = {
        v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"] if "projected" in v
    }
    [source] = projected["kfp-token"]["projected"]["sources"]
    assert source["serviceAccountToken"]["audience"] == "pipelines.kubeflow.org"


def test_service_and_network_policy_match_the_trigger_pods(objects):
    docs = objects["retraining"]
    [dep], [svc], [netpol] = (_by_kind(docs, k) for k in ("Deployment", "Service", "NetworkPolicy"))
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert all(labels[k] == v for k, v in svc["spec"]["selector"].items())
    assert all(labels[k] == v for k, v in netpol["spec"]["podSelector"]["matchLabels"].items())
    assert netpol["spec"]["policyTypes"] == ["Ingress", "Egress"]
    [rule] = netpol["spec"]["ingress"]
    assert rule["ports"] == [{"port": 8080, "protocol": "TCP"}]
    egress_ports = {p["port"] for r in netpol["spec"]["egress"] for p in r["ports"]}
    assert egress_ports == {53, 8888}  # DNS and the KFP API, nothing else
    [container] = dep["spec"]["template"]["spec"]["containers"]
    assert container["ports"][0]["containerPort"] == 8080
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert dep["spec"]["strategy"]["type"] == "Recreate"  # one writer of the state file


def _expand(args: list[str], env: dict[str, str]) -> list[str]:
    """Kubernetes' $(VAR) substitution in container args."""
    return [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], a) for a in args]


def _container_env(docs: list[dict], container: dict) -> dict[str, str]:
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        name = source["configMapRef"]["name"]
        [cm] = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == name]
        env.update(cm["data"])
    env.update({e["name"]: e.get("value", "") for e in container.get("env", [])})
    return env


@pytest.mark.parametrize("kustomization", ["retraining", "schedule"])
def test_container_commands_parse_with_the_real_cli(objects, kustomization):
    docs = objects[kustomization]
    [workload] = [d for d in docs if d["kind"] in ("Deployment", "Job")]
    [container] = workload["spec"]["template"]["spec"]["containers"]
    assert container["command"][0] == "kfp-automl"
    args = _expand(container["command"][1:] + container["args"], _container_env(docs, container))
    command = cli.commands[args[0]]
    ctx = command.make_context(args[0], args[1:])  # an unknown flag or bad value raises here
    assert isinstance(ctx, click.Context)
    if args[0] == "retrain-trigger":
        assert ctx.params["state_dir"] == "/var/lib/retrain"
        assert ctx.params["kfp_host"].startswith("http://ml-pipeline.kubeflow")
        assert ctx.params["cooldown"] == 3600
        # only the target's default model may start runs, at most 4 an hour, and an alert's
        # data_url is ignored until prefixes are configured
        models = policy.split_values(ctx.params["allow_models"])
        assert models == [model_name_for(ctx.params["param_target"])]
        assert policy.split_values(ctx.params["data_prefixes"]) == []
        assert ctx.params["max_runs_per_hour"] == 4
    else:
        assert check_cron(ctx.params["cron"]) == "0 0 3 * * *"
    assert ctx.params["param_data"].startswith("s3://") and ctx.params["param_target"] == "churn"
    # the profile namespace of a multi-user Kubeflow comes from the settings (empty: standalone)
    assert ctx.params["namespace"] == ""


def test_example_alertmanager_receiver_passes_amtool():
    amtool = shutil.which("amtool")
    if amtool is None:
        raise RuntimeError("amtool is missing: run `make system-deps` (prometheus-alertmanager)")
    path = ROOT / "alertmanager-receiver.example.yaml"
    done = subprocess.run([amtool, "check-config", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    config = yaml.safe_load(path.read_text())
    [route] = config["route"]["routes"]
    assert route["matchers"] == ['action="retrain"']  # the label the drift rules set
    [hook] = config["receivers"][1]["webhook_configs"]
    assert hook["url"].endswith(":8080/alerts") and hook["send_resolved"] is True
    assert hook["http_config"]["authorization"]["type"] == "Bearer"


def test_drift_rules_carry_the_label_the_trigger_acts_on():
    from kfp_automl.observability.rules import rule_groups
    from kfp_automl.retrain.trigger import MODEL_LABEL, RETRAIN_LABEL

    alerts = [r for g in rule_groups()["groups"] for r in g["rules"] if "alert" in r]
    retrain = [a["alert"] for a in alerts if a["labels"].get("action") == RETRAIN_LABEL[1]]
    assert RETRAIN_LABEL[0] == "action"
    assert retrain == [
        "AutomlFeatureDrift",
        "AutomlPredictionDrift",
        "AutomlQualityBelowEvaluation",
    ]
    for a in alerts:
        if a["alert"] in retrain:
            assert f"$labels.{MODEL_LABEL}" in a["annotations"]["description"]
