"""The restricted Pod Security Standard checker catches each documented violation."""

from __future__ import annotations

import copy

import pytest

from tests.manifests import pss
from tests.manifests.render import one, render


@pytest.fixture
def pod() -> dict:
    """The serving pod spec as rendered: compliant, two containers (init + main)."""
    deployment = one(render("serving/base"), "Deployment", "automl-serving")
    spec = copy.deepcopy(deployment["spec"]["template"]["spec"])
    assert pss.violations(spec) == []
    return spec


def _main(spec):
    return spec["containers"][0]["securityContext"]


def _pod(spec):
    return spec["securityContext"]


MUTATIONS = {
    "hostNetwork": (lambda s: s.update(hostNetwork=True), "hostNetwork"),
    "hostPID": (lambda s: s.update(hostPID=True), "hostPID"),
    "hostIPC": (lambda s: s.update(hostIPC=True), "hostIPC"),
    "hostProcess": (
        lambda s: _main(s).update(windowsOptions={"hostProcess": True}),
        "hostProcess",
    ),
    "privileged": (lambda s: _main(s).update(privileged=True), "privileged"),
    "hostPath": (
        lambda s: s["volumes"].append({"name": "h", "hostPath": {"path": "/"}}),
        "hostPath",
    ),
    "hostPort": (lambda s: s["containers"][0]["ports"][0].update(hostPort=3000), "hostPort"),
    "apparmor annotation": (None, "AppArmor annotation"),
    "apparmor field": (
        lambda s: _main(s).update(appArmorProfile={"type": "Unconfined"}),
        "appArmorProfile",
    ),
    "selinux type": (
        lambda s: _main(s).update(seLinuxOptions={"type": "spc_t"}),
        "seLinuxOptions.type",
    ),
    "selinux user": (
        lambda s: _pod(s).update(seLinuxOptions={"user": "root"}),
        "seLinuxOptions.user",
    ),
    "procMount": (lambda s: _main(s).update(procMount="Unmasked"), "procMount"),
    "seccomp unconfined on a container": (
        lambda s: _main(s).update(seccompProfile={"type": "Unconfined"}),
        "Unconfined",
    ),
    "seccomp unset everywhere": (
        lambda s: (
            _pod(s).pop("seccompProfile"),
            [
                c["securityContext"].pop("seccompProfile")
                for c in s["initContainers"] + s["containers"]
            ],
        ),
        "seccompProfile.type must be RuntimeDefault",
    ),
    "unsafe sysctl": (
        lambda s: _pod(s).update(sysctls=[{"name": "kernel.msgmax", "value": "1"}]),
        "sysctl kernel.msgmax",
    ),
    "nfs volume": (
        lambda s: s["volumes"].append({"name": "n", "nfs": {"server": "x", "path": "/"}}),
        "type ['nfs']",
    ),
    "privilege escalation": (
        lambda s: _main(s).update(allowPrivilegeEscalation=True),
        "allowPrivilegeEscalation",
    ),
    "privilege escalation unset": (
        lambda s: s["initContainers"][0]["securityContext"].pop("allowPrivilegeEscalation"),
        "initContainer fetch-bento: allowPrivilegeEscalation",
    ),
    "runAsNonRoot false": (lambda s: _main(s).update(runAsNonRoot=False), "runAsNonRoot"),
    "runAsNonRoot unset everywhere": (
        lambda s: (
            _pod(s).pop("runAsNonRoot"),
            [
                c["securityContext"].pop("runAsNonRoot")
                for c in s["initContainers"] + s["containers"]
            ],
        ),
        "runAsNonRoot must be true",
    ),
    "runAsUser 0 on the pod": (lambda s: _pod(s).update(runAsUser=0), "pod: runAsUser"),
    "runAsUser 0 on a container": (lambda s: _main(s).update(runAsUser=0), "runAsUser"),
    "capabilities not dropped": (
        lambda s: _main(s).update(capabilities={"drop": ["NET_RAW"]}),
        "capabilities.drop must include ALL",
    ),
    "capability added": (
        lambda s: _main(s)["capabilities"].update(add=["SYS_ADMIN"]),
        "capabilities.add",
    ),
    "ephemeral container": (
        lambda s: s.update(ephemeralContainers=[{"name": "debug", "image": "busybox"}]),
        "ephemeralContainer debug",
    ),
}


@pytest.mark.parametrize("case", sorted(MUTATIONS))
def test_checker_catches(pod, case):
    mutate, expected = MUTATIONS[case]
    annotations = {}
    if mutate is None:
        annotations = {pss.APPARMOR_PREFIX + "serving": "unconfined"}
    else:
        mutate(pod)
    found = pss.violations(pod, annotations)
    assert any(expected in v for v in found), found


def test_allowed_settings_pass(pod):
    """What the standard allows is not flagged: NET_BIND_SERVICE, Localhost seccomp,
    a safe sysctl, container-level non-root instead of pod-level, projected volumes."""
    _main(pod)["capabilities"]["add"] = ["NET_BIND_SERVICE"]
    _main(pod)["seccompProfile"] = {"type": "Localhost", "localhostProfile": "p.json"}
    _pod(pod)["sysctls"] = [{"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"}]
    _pod(pod).pop("runAsNonRoot")
    pod["volumes"].append({"name": "p", "projected": {"sources": []}})
    pod["containers"][0]["securityContext"]["seLinuxOptions"] = {"type": "container_t"}
    assert pss.violations(pod, {pss.APPARMOR_PREFIX + "serving": "runtime/default"}) == []
