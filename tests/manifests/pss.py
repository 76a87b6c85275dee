"""A checker for the Kubernetes Pod Security Standards, profile `restricted` (v1.30+).

Written from the documented controls (kubernetes.io/docs/concepts/security/
pod-security-standards/): every baseline control, then the restricted ones. It reads
a PodSpec as a dict (the rendered manifest), plus the pod's annotations for the
AppArmor control. `violations()` returns one line per broken control; empty means
the pod would be admitted to a namespace labelled
pod-security.kubernetes.io/enforce=restricted.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

# Baseline "Sysctls": the safe set.
SAFE_SYSCTLS = frozenset(
    {
        "kernel.shm_rmid_forced",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.ip_unprivileged_port_start",
        "net.ipv4.tcp_syncookies",
        "net.ipv4.ping_group_range",
        "net.ipv4.ip_local_reserved_ports",
        "net.ipv4.tcp_keepalive_time",
        "net.ipv4.tcp_fin_timeout",
        "net.ipv4.tcp_keepalive_intvl",
        "net.ipv4.tcp_keepalive_probes",
    }
)
# Baseline "SELinux": allowed types.
SELINUX_TYPES = frozenset(
    {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
)
# Restricted "Volume Types": the only allowed volume sources.
VOLUME_TYPES = frozenset(
    {
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    }
)
APPARMOR_PREFIX = "container.apparmor.security.beta.kubernetes.io/"


def _containers(spec: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    for kind in ("initContainers", "containers", "ephemeralContainers"):
        for c in spec.get(kind) or []:
            yield f"{kind[:-1]} {c.get('name', '?')}", c


def _baseline(spec: Mapping[str, Any], annotations: Mapping[str, str]) -> list[str]:
    out: list[str] = []
    pod_sc = spec.get("securityContext") or {}
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            out.append(f"pod: {field} must be unset or false")
    if (pod_sc.get("windowsOptions") or {}).get("hostProcess"):
        out.append("pod: windowsOptions.hostProcess must be unset or false")
    for v in spec.get("volumes") or []:
        if "hostPath" in v:
            out.append(f"volume {v.get('name')}: hostPath volumes are forbidden")
    for key, value in annotations.items():
        if key.startswith(APPARMOR_PREFIX) and not (
            value == "runtime/default" or value.startswith("localhost/")
        ):
            out.append(f"pod: AppArmor annotation {key}={value} is not allowed")
    out += _seccomp_baseline("pod", pod_sc)
    out += _apparmor("pod", pod_sc)
    out += _selinux("pod", pod_sc)
    for sysctl in pod_sc.get("sysctls") or []:
        if sysctl.get("name") not in SAFE_SYSCTLS:
            out.append(f"pod: sysctl {sysctl.get('name')} is not in the safe set")
    for where, c in _containers(spec):
        sc = c.get("securityContext") or {}
        if sc.get("privileged"):
            out.append(f"{where}: privileged must be unset or false")
        if (sc.get("windowsOptions") or {}).get("hostProcess"):
            out.append(f"{where}: windowsOptions.hostProcess must be unset or false")
        for port in c.get("ports") or []:
            if port.get("hostPort"):
                out.append(f"{where}: hostPort must be unset or 0")
        if sc.get("procMount", "Default") != "Default":
            out.append(f"{where}: procMount must be unset or Default")
        out += _seccomp_baseline(where, sc)
        out += _apparmor(where, sc)
        out += _selinux(where, sc)
    return out


def _seccomp_baseline(where: str, sc: Mapping[str, Any]) -> list[str]:
    if (sc.get("seccompProfile") or {}).get("type") == "Unconfined":
        return [f"{where}: seccompProfile.type must not be Unconfined"]
    return []


def _apparmor(where: str, sc: Mapping[str, Any]) -> list[str]:
    kind = (sc.get("appArmorProfile") or {}).get("type")
    if kind not in (None, "RuntimeDefault", "Localhost"):
        return [f"{where}: appArmorProfile.type must be RuntimeDefault or Localhost"]
    return []


def _selinux(where: str, sc: Mapping[str, Any]) -> list[str]:
    opts = sc.get("seLinuxOptions") or {}
    out = []
    if opts.get("type", "") not in SELINUX_TYPES:
        out.append(f"{where}: seLinuxOptions.type {opts['type']} is not allowed")
    for field in ("user", "role"):
        if opts.get(field):
            out.append(f"{where}: seLinuxOptions.{field} must be unset")
    return out


def _restricted(spec: Mapping[str, Any]) -> list[str]:
    out: list[str] = []
    pod_sc = spec.get("securityContext") or {}
    for v in spec.get("volumes") or []:
        kinds = set(v) - {"name"}
        if not kinds <= VOLUME_TYPES:
            out.append(f"volume {v.get('name')}: type {sorted(kinds)} is not allowed")
    if pod_sc.get("runAsUser") == 0:
        out.append("pod: runAsUser must not be 0")
    pod_non_root = pod_sc.get("runAsNonRoot") is True
    if pod_sc.get("runAsNonRoot") is False:
        out.append("pod: runAsNonRoot must not be false")
    pod_seccomp = (pod_sc.get("seccompProfile") or {}).get("type")
    for where, c in _containers(spec):
        sc = c.get("securityContext") or {}
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{where}: allowPrivilegeEscalation must be false")
        non_root = sc.get("runAsNonRoot")
        if non_root is False or (non_root is None and not pod_non_root):
            out.append(f"{where}: runAsNonRoot must be true (here or on the pod)")
        if sc.get("runAsUser") == 0:
            out.append(f"{where}: runAsUser must not be 0")
        seccomp = (sc.get("seccompProfile") or {}).get("type")
        effective = pod_seccomp if seccomp is None else seccomp  # the container's wins
        if effective not in ("RuntimeDefault", "Localhost"):
            out.append(f"{where}: seccompProfile.type must be RuntimeDefault or Localhost")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            out.append(f"{where}: capabilities.drop must include ALL")
        extra = set(caps.get("add") or []) - {"NET_BIND_SERVICE"}
        if extra:
            out.append(f"{where}: capabilities.add may only hold NET_BIND_SERVICE, not {extra}")
    return out


def violations(spec: Mapping[str, Any], annotations: Mapping[str, str] | None = None) -> list[str]:
    """Every restricted-profile control that `spec` (a PodSpec dict) breaks."""
    return _baseline(spec, annotations or {}) + _restricted(spec)
