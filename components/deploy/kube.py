"""Talking to the Kubernetes API with the official client: config, server-side apply, reads.

Server-side apply goes through `kubernetes.dynamic.DynamicClient.server_side_apply` (PATCH with
content type `application/apply-patch+yaml`, a field manager and force): the typed APIs of
client 30.x cannot choose that content type, and discovery gives every kind's resource name and
scope, custom resources (ServiceMonitor, PrometheusRule, ...) included.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kfp_automl.errors import UserError

FIELD_MANAGER = "kfp-automl"


def api_client(context: str = "") -> Any:
    """An ApiClient from the pod's service account, else from the kubeconfig (never a parameter)."""
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    try:
        config.load_incluster_config()
        return client.ApiClient()
    except ConfigException:
        pass
    try:
        cfg = client.Configuration()
        # $KUBECONFIG as it is now (the client reads it once, at import)
        path = os.environ.get("KUBECONFIG") or None
        config.load_kube_config(path, context=context or None, client_configuration=cfg)
    except (ConfigException, FileNotFoundError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            "no Kubernetes credentials: not running in a cluster and the kubeconfig "
            f"($KUBECONFIG or ~/.kube/config) cannot be used: {first}"
        ) from None
    return client.ApiClient(cfg)


class ApiProblem(Exception):
    """An API call failed; the message is one line naming the call and the server's reason."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


def _describe(exc: Exception, action: str) -> ApiProblem:
    """One line for any failure of the client: HTTP status and the API server's message."""
    from kubernetes.client.exceptions import ApiException
    from kubernetes.dynamic.exceptions import DynamicApiError, ResourceNotFoundError
    from urllib3.exceptions import HTTPError

    if isinstance(exc, ResourceNotFoundError):
        return ApiProblem(f"{action}: the API server does not serve this kind ({exc})")
    if isinstance(exc, DynamicApiError | ApiException):
        status = getattr(exc, "status", None)
        body = getattr(exc, "body", None) or ""
        reason = getattr(exc, "reason", "") or ""
        message = ""
        try:
            message = json.loads(body).get("message", "")
        except (ValueError, AttributeError, TypeError):
            message = body.decode() if isinstance(body, bytes) else str(body)
        text = f"HTTP {status} {reason}".strip() + (f": {message}" if message else "")
        return ApiProblem(f"{action}: {' '.join(text.split())}", status)
    if isinstance(exc, HTTPError | OSError):
        reason = re.sub(r"<[^>]*>:\s*", "", str(getattr(exc, "reason", None) or exc))
        return ApiProblem(f"{action}: cannot reach the API server: {' '.join(reason.split())}")
    return ApiProblem(f"{action}: {type(exc).__name__}: {' '.join(str(exc).split())}")


def _ref(obj: dict[str, Any]) -> str:
    meta = obj["metadata"]
    return f"{obj['kind']} {meta.get('namespace', '')}/{meta['name']}"


@dataclass
class Cluster:
    """The few calls the deploy step makes, each failure turned into a one-line ApiProblem."""

    client: Any  # kubernetes.client.ApiClient

    def __post_init__(self) -> None:
        from kubernetes.dynamic import DynamicClient

        # A private discovery cache: never one left in /tmp by another cluster's run.
        self._cache_dir = tempfile.TemporaryDirectory(prefix="kfp-automl-discovery-")
        cache = str(Path(self._cache_dir.name) / "discovery.json")
        try:
            self.dynamic = DynamicClient(self.client, cache_file=cache)
        except Exception as exc:  # discovery is the first call: bad host, no permission, ...
            raise _describe(exc, "API discovery") from None

    def _resource(self, api_version: str, kind: str) -> Any:
        try:
            return self.dynamic.resources.get(api_version=api_version, kind=kind)
        except Exception as exc:
            raise _describe(exc, f"looking up {api_version} {kind}") from None

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply of one object (field manager kfp-automl, force); the server's answer."""
        resource = self._resource(obj["apiVersion"], obj["kind"])
        meta = obj["metadata"]
        try:
            answer = self.dynamic.server_side_apply(
                resource,
                body=obj,
                name=meta["name"],
                namespace=meta.get("namespace") if resource.namespaced else None,
                field_manager=FIELD_MANAGER,
                force_conflicts=True,
            )
        except Exception as exc:
            raise _describe(exc, f"applying {_ref(obj)}") from None
        return answer.to_dict()

    def get_deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The Deployment with its status, or None when there is none."""
        from kubernetes.dynamic.exceptions import NotFoundError

        resource = self._resource("apps/v1", "Deployment")
        try:
            return self.dynamic.get(resource, name=name, namespace=namespace).to_dict()
        except NotFoundError:
            return None
        except Exception as exc:
            raise _describe(exc, f"reading Deployment {namespace}/{name}") from None

    def close(self) -> None:
        self._cache_dir.cleanup()
        self.client.close()
