"""Talk to a Kubeflow Pipelines API server with `kfp.Client`: create runs and recurring runs.

No click here: `kfp_automl/cli/cluster.py` (the `submit` and `schedule` commands)
and `kfp_automl/retrain/trigger.py` (the alert receiver) both use it.

Authentication is what `kfp.Client` supports, never a pipeline parameter:
- with a host and a token file (`token_path`, else $KF_PIPELINES_SA_TOKEN_PATH,
  else the projected service-account token at
  /var/run/secrets/kubeflow/pipelines/token when it exists), the token is sent
  as `Authorization: Bearer ...` and re-read before each request;
- with a host and no token file, no credentials (a port-forward, a local install);
- without a host, the client finds the in-cluster service, else the current
  kubeconfig context (its API server's service proxy, with its credentials).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import re
import warnings
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from kfp_automl.errors import UserError

# the compiled training pipeline shipped with the package (pipelines/compiled/, `make compile`)
DEFAULT_PIPELINE = Path(str(resources.files("kfp_automl.pipelines"))) / "compiled" / "training.yaml"
DEFAULT_EXPERIMENT = "kfp-automl"
SA_TOKEN_ENV = "KF_PIPELINES_SA_TOKEN_PATH"  # the variable kfp.Client reads
SA_TOKEN_PATH = "/var/run/secrets/kubeflow/pipelines/token"
REQUEST_TIMEOUT_S = 15.0  # connect and read, per attempt (urllib3 retries 3 times)


class KfpApiError(Exception):
    """The KFP API could not be reached (status 0) or answered an error (HTTP status)."""

    def __init__(self, message: str, status: int = 0):
        super().__init__(message)
        self.status = status


# ---------------------------------------------------------------- parameters


def declared_parameters(pipeline: str | Path) -> dict[str, dict[str, Any]]:
    """The pipeline's declared input parameters: name -> {parameterType, defaultValue, ...}."""
    path = Path(pipeline)
    try:
        doc = next(yaml.safe_load_all(path.read_text()))
        return dict(doc["root"]["inputDefinitions"]["parameters"])
    except FileNotFoundError:
        raise UserError(f"--pipeline {str(path)!r} does not exist") from None
    except (OSError, yaml.YAMLError, KeyError, TypeError, StopIteration) as exc:
        raise UserError(f"--pipeline {str(path)!r} is not a compiled KFP pipeline: {exc}") from None


_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}


def coerce_parameter(name: str, value: Any, declared: dict[str, dict[str, Any]]) -> Any:
    """`value` converted to the declared type of parameter `name`; UserError if it does not fit."""
    if name not in declared:
        known = ", ".join(sorted(declared))
        raise UserError(f"--param {name}: the pipeline has no such parameter (it has: {known})")
    kind = declared[name].get("parameterType", "STRING")
    text = value if isinstance(value, str) else None
    try:
        if kind == "STRING":
            if text is None:
                raise ValueError
            return text
        if kind == "NUMBER_INTEGER":
            if isinstance(value, bool):
                raise ValueError
            return int(text.strip()) if text is not None else _exact_int(value)
        if kind == "NUMBER_DOUBLE":
            number = float(text) if text is not None else float(value)
            if isinstance(value, bool) or not math.isfinite(number):
                raise ValueError
            return number
        if kind == "BOOLEAN":
            if isinstance(value, bool):
                return value
            word = text.strip().lower() if text is not None else None
            if word in _TRUE or word in _FALSE:
                return word in _TRUE
            raise ValueError
        if kind in ("LIST", "STRUCT"):
            parsed = json.loads(text) if text is not None else value
            if not isinstance(parsed, list if kind == "LIST" else dict):
                raise ValueError
            return parsed
    except (ValueError, TypeError, AttributeError):
        pass
    expected = {
        "NUMBER_INTEGER": "an integer",
        "NUMBER_DOUBLE": "a finite number",
        "BOOLEAN": "true or false",
        "LIST": "a JSON list",
        "STRUCT": "a JSON object",
    }.get(kind, "text")
    raise UserError(f"--param {name}: expected {expected}, got {value!r}")


# Kubernetes quantities as KFP's set_cpu_limit / set_memory_limit accept them as constants
# (a parameter is not checked at compile time: these checks stand in for them).
_QUANTITIES = {
    "_cpu": (re.compile(r"([0-9]*[.])?[0-9]+m?"), "CPUs such as 2, 0.5 or 500m"),
    "_memory": (
        re.compile(r"[0-9]+(E|Ei|P|Pi|T|Ti|G|Gi|M|Mi|K|Ki)?"),
        "memory such as 4Gi, 512Mi or 8G",
    ),
}


def check_quantity(name: str, value: Any) -> Any:
    """`value` if parameter `name` is not a resource or `value` is a valid quantity for it."""
    for suffix, (pattern, example) in _QUANTITIES.items():
        if name.endswith(suffix) and not (isinstance(value, str) and pattern.fullmatch(value)):
            raise UserError(f"--{name.replace('_', '-')} {value!r}: expected {example}")
    return value


def _exact_int(value: Any) -> int:
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        return int(value)
    raise ValueError


def parse_assignments(pairs: tuple[str, ...] | list[str]) -> dict[str, str]:
    """NAME=VALUE strings -> dict; a pair without `=` or a repeated name is a UserError."""
    out: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        name = name.strip()
        if not sep or not name:
            raise UserError(f"--param {pair!r}: expected NAME=VALUE")
        if name in out:
            raise UserError(f"--param {name} is given twice")
        out[name] = value
    return out


def build_arguments(
    pipeline: str | Path, flags: dict[str, Any], params: dict[str, Any]
) -> dict[str, Any]:
    """Runtime parameters from named flags (None: not given) and --param pairs, type-checked.

    Only what the user gave is sent: the pipeline's compiled defaults cover the rest.
    """
    declared = declared_parameters(pipeline)
    given = {k: v for k, v in flags.items() if v is not None}
    for name in set(given) & set(params):
        raise UserError(f"--param {name} repeats a flag that sets the same parameter")
    merged = {**given, **params}
    arguments = {
        name: check_quantity(name, coerce_parameter(name, value, declared))
        for name, value in merged.items()
    }
    if arguments.get("data") and not arguments.get("target"):
        raise UserError("--target is required with --data")
    if arguments.get("registry_root"):
        from kfp_automl.registry.backends import parse_root

        parse_root(arguments["registry_root"])  # a scheme the steps know, no credentials in it
    return arguments


# ---------------------------------------------------------------- the client


def _client_class():
    import kfp

    class Client(kfp.Client):
        """kfp.Client that checks health once (the caller reports a failure, no 5 x 5 s retries)
        and keeps the kubeconfig's service-proxy URL (see `_keep_proxy_host`)."""

        def get_kfp_healthz(self, sleep_duration: int = 5):  # noqa: ARG002 (signature kept)
            _keep_proxy_host(self._existing_config)
            _set_timeout(self._healthz_api.api_client)
            return self._healthz_api.healthz_service_get_healthz()

    return Client


def _set_timeout(api_client) -> None:
    """A connect and read timeout on every request (kfp.Client sets none: a silent host hangs).

    The generated REST client passes `timeout=None` (wait forever) to urllib3 unless a call
    gives `_request_timeout`, which kfp.Client never does; all of the client's service APIs
    share this one REST client, so its `request` supplies the timeout instead.
    """
    rest = api_client.rest_client
    if getattr(rest, "has_default_timeout", False):
        return
    original = rest.request

    def request(method, url, *args, _request_timeout=None, **kwargs):
        timeout = _request_timeout or (REQUEST_TIMEOUT_S, REQUEST_TIMEOUT_S)
        return original(method, url, *args, _request_timeout=timeout, **kwargs)

    rest.request = request
    rest.has_default_timeout = True


def _keep_proxy_host(config) -> None:
    """Keep the API-server proxy path in the host when the kubeconfig's token is refreshed.

    Without --host, kfp.Client (2.17.0) points at the kube-apiserver's service proxy
    (`<server>/api/v1/namespaces/kubeflow/services/ml-pipeline:http/proxy/`), but the
    kubernetes client's token refresh hook, run before every request, sets the host back
    to the bare server (and installs itself again), so every request after the first misses
    the proxy. Re-apply the host, and this wrapper, after the hook.
    """
    hook = getattr(config, "refresh_api_key_hook", None)
    if hook is None or getattr(hook, "keeps_host", False) or "/proxy/" not in config.host:
        return
    host = config.host.rstrip("/")  # the API paths start with /: no "proxy//apis"

    def refresh(cfg) -> None:
        hook(cfg)  # sets the host, and installs a fresh hook of its own: put ours back
        cfg.host = host
        cfg.refresh_api_key_hook = refresh

    refresh.keeps_host = True  # type: ignore[attr-defined]
    config.refresh_api_key_hook = refresh


@contextlib.contextmanager
def _kfp_call(where: str):
    """Map what kfp.Client raises to KfpApiError, and keep its prints off our stdout."""
    import kfp_server_api
    import urllib3

    sink = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink):
            warnings.simplefilter("ignore", FutureWarning)
            yield
    except kfp_server_api.ApiException as exc:
        status = int(exc.status or 0)
        detail = _api_detail(exc)
        if status in (401, 403):
            raise KfpApiError(
                f"the KFP API at {where} refused the credentials (HTTP {status}{detail}); "
                f"check the token file (${SA_TOKEN_ENV}) or the kubeconfig context",
                status,
            ) from None
        raise KfpApiError(
            f"the KFP API at {where} answered HTTP {status}{detail}", status
        ) from None
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise KfpApiError(f"cannot reach the KFP API at {where}: {reason}") from None


def _api_detail(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if not body:
        return f" {exc.reason}" if getattr(exc, "reason", None) else ""
    try:
        parsed = json.loads(body)
        message = parsed.get("message") or parsed.get("error") or body
    except (ValueError, AttributeError):
        message = body
    return ": " + " ".join(str(message).split())[:300]


@dataclass
class Connection:
    """Where and how to reach the KFP API."""

    host: str | None = None
    token_path: str | None = None
    kube_context: str | None = None
    ui_url: str | None = None

    @property
    def where(self) -> str:
        return self.host or "the kubeconfig/in-cluster endpoint"

    def dashboard(self, fragment: str) -> str | None:
        base = self.ui_url or os.environ.get("KF_PIPELINES_UI_ENDPOINT") or self.host
        return f"{base.rstrip('/')}/#/{fragment}" if base else None


def _token_file(conn: Connection) -> str | None:
    path = conn.token_path or os.environ.get(SA_TOKEN_ENV)
    if path:
        if not Path(path).is_file():
            raise UserError(f"token file {path!r} does not exist")
        return path
    return SA_TOKEN_PATH if Path(SA_TOKEN_PATH).is_file() else None


def connect(conn: Connection):
    """A kfp.Client for `conn`; KfpApiError if the server cannot be reached or refuses us."""
    if conn.host and not conn.host.startswith(("http://", "https://")):
        raise UserError(f"--host {conn.host!r} must start with http:// or https://")
    if not conn.host and not _has_cluster_config():
        raise UserError("pass --host URL (or run inside the cluster, or configure kubectl)")
    # urllib3 logs each retry as a warning; the caller reports the failure once
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
    kwargs: dict[str, Any] = {"host": conn.host, "kube_context": conn.kube_context}
    token = _token_file(conn) if conn.host else None
    if token:
        from kfp.client import ServiceAccountTokenVolumeCredentials

        kwargs["credentials"] = ServiceAccountTokenVolumeCredentials(path=token)
    with _kfp_call(conn.where):
        return _client_class()(**kwargs)


def _has_cluster_config() -> bool:
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        return True
    paths = os.environ.get("KUBECONFIG", str(Path.home() / ".kube" / "config"))
    return any(Path(p).is_file() for p in paths.split(os.pathsep) if p)


@dataclass
class Created:
    """A run or recurring run the API created."""

    id: str
    name: str
    experiment_id: str
    url: str | None


def _experiment_id(client, conn: Connection, experiment: str, namespace: str | None) -> str:
    healthz = client.get_kfp_healthz()
    if getattr(healthz, "multi_user", False) and not namespace:
        raise UserError("this Kubeflow Pipelines is multi-user: pass --namespace (your profile)")
    return client.create_experiment(name=experiment, namespace=namespace).experiment_id


def create_run(
    conn: Connection,
    arguments: dict[str, Any],
    run_name: str,
    experiment: str = DEFAULT_EXPERIMENT,
    namespace: str | None = None,
    pipeline: str | Path = DEFAULT_PIPELINE,
    service_account: str | None = None,
    enable_caching: bool | None = None,
) -> Created:
    """Create one run of the compiled `pipeline` with `arguments`; `enable_caching` as
    kfp.Client takes it (None: each step's compiled setting; False: no step cached)."""
    client = connect(conn)
    with _kfp_call(conn.where):
        exp_id = _experiment_id(client, conn, experiment, namespace)
        result = client.create_run_from_pipeline_package(
            pipeline_file=str(pipeline),
            arguments=arguments,
            run_name=run_name,
            experiment_id=exp_id,
            service_account=service_account,
            enable_caching=enable_caching,
        )
    run_id = result.run_id
    return Created(run_id, run_name, exp_id, conn.dashboard(f"runs/details/{run_id}"))


def find_run(
    conn: Connection,
    run_name: str,
    experiment: str = DEFAULT_EXPERIMENT,
    namespace: str | None = None,
) -> Created | None:
    """The newest run named exactly `run_name` in `experiment`, or None when it has none
    (a caller that gives each run a unique name learns whether an earlier attempt created it)."""
    client = connect(conn)
    predicate = {"operation": "EQUALS", "key": "display_name", "stringValue": run_name}
    with _kfp_call(conn.where):
        exp_id = _experiment_id(client, conn, experiment, namespace)
        found = client.list_runs(
            experiment_id=exp_id,
            filter=json.dumps({"predicates": [predicate]}),
            sort_by="created_at desc",
            page_size=1,
        )
    runs = [r for r in (found.runs or []) if r.display_name == run_name]
    if not runs:
        return None
    run_id = runs[0].run_id
    return Created(run_id, run_name, exp_id, conn.dashboard(f"runs/details/{run_id}"))


KFP_CRON_HELP = (
    "6 fields: second minute hour day-of-month month day-of-week, e.g. '0 0 3 * * *' "
    "(03:00 every day), or @hourly/@daily/@weekly/@monthly/@yearly"
)


def check_cron(expr: str) -> str:
    """Return `expr` if the KFP scheduler (robfig/cron, seconds first) accepts it."""
    from croniter import croniter

    text = " ".join(expr.split())
    fields = text.split(" ")
    descriptor = len(fields) == 1 and fields[0] in {
        "@yearly",
        "@annually",
        "@monthly",
        "@weekly",
        "@daily",
        "@midnight",
        "@hourly",
    }
    if not descriptor and (
        len(fields) != 6 or not croniter.is_valid(text, second_at_beginning=True)
    ):
        raise UserError(f"--cron {expr!r} is not a KFP cron expression ({KFP_CRON_HELP})")
    return text


def create_recurring_run(
    conn: Connection,
    arguments: dict[str, Any],
    name: str,
    cron: str,
    experiment: str = DEFAULT_EXPERIMENT,
    namespace: str | None = None,
    pipeline: str | Path = DEFAULT_PIPELINE,
    max_concurrency: int = 1,
    catchup: bool = False,
    service_account: str | None = None,
    enable_caching: bool | None = None,
) -> Created:
    """Create a recurring run of `pipeline` on the cron schedule `cron` (`enable_caching`
    as in `create_run`)."""
    cron = check_cron(cron)
    client = connect(conn)
    with _kfp_call(conn.where):
        exp_id = _experiment_id(client, conn, experiment, namespace)
        created = client.create_recurring_run(
            experiment_id=exp_id,
            job_name=name,
            cron_expression=cron,
            max_concurrency=max_concurrency,
            no_catchup=not catchup,
            params=arguments,
            pipeline_package_path=str(pipeline),
            service_account=service_account,
            enable_caching=enable_caching,
        )
    rid = created.recurring_run_id
    return Created(rid, name, exp_id, conn.dashboard(f"recurringrun/details/{rid}"))
