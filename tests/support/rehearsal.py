"""A rehearsal of a Kubeflow Pipelines backend: runs the compiled pipeline YAML as a cluster would.

`kfp.local` runs every step in one filesystem and one BentoML store, never caches and never
retries, so it cannot see what goes wrong on a cluster. This harness runs
`pipelines/compiled/training.yaml` (not the Python pipeline function) the way KFP's driver and
launcher do, as far as that is possible without Kubernetes:

- every task attempt is its own process with its own HOME, TMPDIR, BENTOML_HOME and working
  directory (a pod with a fresh disk; a retried attempt gets a fresh one too), sharing nothing
  on disk with other tasks;
- artifacts travel only through an S3-compatible store on 127.0.0.1 (the moto server the tests
  use) under a `minio://` pipeline root: before a task runs its input artifacts are downloaded
  into its own `/minio` mount, after it succeeds its outputs are uploaded, and an output's URI
  is `<root>/<pipeline>/<run id>/<task>/<uuid>/<output>` as KFP's driver makes it;
- a task's environment is what the pod would get: the image's ENV, the Secrets its platform
  spec maps (`secretAsEnv`, optional ones skipped when absent), `fieldPathAsEnv`, and nothing
  from the test process; the components see only the packages the components image installs
  (`images/components.Dockerfile`: the project with its `ray-cluster` and `storage` extras),
  every other installed distribution is hidden from their imports;
- runtime placeholders are resolved as KFP's driver resolves them (`{{$.pipeline_root}}` is not:
  the driver passes it through), resources are parsed as Kubernetes quantities;
- KFP's cache: a task whose caching is on reuses the outputs of an earlier successful
  execution with the same key (component outputs spec, container image and command, resolved
  input parameters and the identities of its input artifacts), within one namespace and
  pipeline; `enable_caching=False` at submission turns it off for every task;
- KFP's retry policy: a failed or killed attempt is rerun (up to `maxRetryCount`) with the same
  executor input, as Argo retries the executor pod; backoff is not waited for;
- conditions (`triggerPolicy.condition`) over the condition's inputs, and nested DAGs.

It reuses KFP's own code where that does the work: the components run through
`kfp.dsl.executor_main` (the components image's entry point) and their outputs are read back with
kfp.local's `get_outputs_for_task`. It is a test tool, not a pipeline engine: it implements the
subset of the IR the project's pipeline uses and refuses the rest loudly.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
COMPILED = REPO / "pipelines" / "compiled" / "training.yaml"
# The components image's ENV (images/components.Dockerfile), HOME and BENTOML_HOME per task.
IMAGE_ENV = {
    "BENTOML_DO_NOT_TRACK": "true",
    "RAY_USAGE_STATS_ENABLED": "0",
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    "PYTHONUNBUFFERED": "1",
    "PYTHONDONTWRITEBYTECODE": "1",
    "LANG": "C.UTF-8",
}
IMAGE_EXTRAS = ("ray-cluster", "storage")
_QUANTITY = re.compile(r"^([0-9]+(\.[0-9]+)?|\.[0-9]+)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
_CONDITION = re.compile(r"^inputs\.parameter_values\['([^']+)'\]\s*(==|!=)\s*(.+)$")
_PARAM_READ = re.compile(r"\{\{\$\.inputs\.parameters\['([^']+)'\]\}\}")


class RehearsalError(RuntimeError):
    """The pipeline uses IR the rehearsal does not implement, or a task could not be set up."""


# ---- what the components image installs ------------------------------------------------------


def _requirement_closure(root: str, extras: Iterable[str]) -> set[str]:
    """Normalised names of `root[extras]` and everything it requires, as installed here."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen: set[str] = set()
    todo: list[tuple[str, frozenset[str]]] = [(root, frozenset(extras))]
    while todo:
        name, wanted = todo.pop()
        key = canonicalize_name(name)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # an optional requirement not installed here
        first = key not in seen
        seen.add(key)
        for raw in dist.requires or []:
            req = Requirement(raw)
            envs = [{"extra": e} for e in wanted] or [{"extra": ""}]
            if req.marker is not None and not any(req.marker.evaluate(e) for e in envs):
                continue
            if first or req.extras or wanted:
                todo.append((req.name, frozenset(req.extras)))
    return seen


def hidden_modules() -> list[str]:
    """Where the top-level modules of installed distributions the components image does not
    install live (`<site-packages>/<module>`): a component importing one fails as in the image.
    Paths, not names: a package can carry its own copy (ray's thirdparty_files has colorama)."""
    import site
    from importlib import metadata

    from packaging.utils import canonicalize_name

    allowed = _requirement_closure("kfp-automl", IMAGE_EXTRAS)
    hidden: set[str] = set()
    # what pip installed: not the copies a package puts on sys.path once imported (ray adds
    # its thirdparty_files, colorama among them, to sys.path when this process imports it)
    for dist in metadata.distributions(path=site.getsitepackages()):
        if canonicalize_name(dist.metadata["Name"]) in allowed:
            continue
        for file in dist.files or []:
            top = file.parts[0]
            if top.endswith((".dist-info", ".egg-info", ".pth", "__pycache__", "..")):
                continue
            module = top.removesuffix(".py")
            if module.isidentifier() and module not in sys.stdlib_module_names:
                hidden.add(str(Path(dist.locate_file(top)).resolve()))
    return sorted(hidden)


_SITECUSTOMIZE = '''\
"""The rehearsal's view of a components pod (tests/support/rehearsal.py)."""
import importlib.abc
import importlib.machinery
import os
import sys

_HIDDEN = [p for p in os.environ.get("REHEARSAL_HIDDEN_MODULES", "").split(os.pathsep) if p]
_NAMES = {os.path.basename(p).removesuffix(".py") for p in _HIDDEN}
_MOUNT = os.environ.get("REHEARSAL_MINIO_MOUNT", "")


class _Pod(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if "." not in name and name in _NAMES:
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            where = []
            if spec is not None:
                where = list(spec.submodule_search_locations or []) + [spec.origin or ""]
            real = [os.path.realpath(w) for w in where if w]
            if any(r == h or r.startswith(h + os.sep) for r in real for h in _HIDDEN):
                raise ModuleNotFoundError(
                    f"No module named {name!r} (not installed in the components image)",
                    name=name,
                )
            return spec
        if name == "kfp.dsl.types.artifact_types" and _MOUNT:
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            if spec is not None and spec.loader is not None:
                run = spec.loader.exec_module

                def exec_module(module, _run=run):
                    _run(module)
                    module._MINIO_LOCAL_MOUNT_PREFIX = _MOUNT  # this pod's /minio

                spec.loader.exec_module = exec_module
            return spec
        return None


sys.meta_path.insert(0, _Pod())
'''


# ---- results ---------------------------------------------------------------------------------


@dataclass
class RArtifact:
    id: str
    name: str
    uri: str
    schema_title: str
    metadata: dict[str, Any] = field(default_factory=dict)

    def runtime(self) -> dict[str, Any]:
        return {
            "name": self.id,
            "uri": self.uri,
            "metadata": self.metadata,
            "type": {"schemaTitle": self.schema_title, "schemaVersion": "0.0.1"},
        }


@dataclass
class TaskRun:
    name: str
    state: str = "pending"  # succeeded, cached, skipped, failed
    attempts: int = 0
    parameters: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, RArtifact] = field(default_factory=dict)
    inputs: dict[str, Any] = field(default_factory=dict)
    resources: dict[str, str] = field(default_factory=dict)
    env_names: set[str] = field(default_factory=set)
    logs: list[Path] = field(default_factory=list)
    cache_key: str = ""

    def log(self, attempt: int = -1) -> str:
        return self.logs[attempt].read_text(errors="replace") if self.logs else ""


@dataclass
class RunResult:
    run_id: str
    state: str
    tasks: dict[str, TaskRun]
    failed_task: str = ""

    def __getitem__(self, name: str) -> TaskRun:
        return self.tasks[name]

    def explain(self) -> str:
        lines = [f"run {self.run_id}: {self.state}"]
        for t in self.tasks.values():
            lines.append(f"  {t.name}: {t.state} (attempts {t.attempts})")
        if self.failed_task:
            lines.append(self.tasks[self.failed_task].log()[-4000:])
        return "\n".join(lines)


# ---- the backend -----------------------------------------------------------------------------


class Rehearsal:
    """One KFP backend over one object store: runs share its cache and its artifacts.

    `s3` is a boto3 client for the store at `endpoint` (the launcher's own credentials);
    `secrets` maps Secret name -> {key: value} in the run's namespace.
    """

    def __init__(
        self,
        s3,
        endpoint: str,
        bucket: str,
        secrets: dict[str, dict[str, str]],
        workdir: Path | None = None,
        namespace: str = "team-a",
        pipeline_file: Path = COMPILED,
        root_prefix: str = "v2/artifacts",
        kubeconfig: Path | None = None,
    ):
        import tempfile

        self.s3, self.endpoint, self.bucket = s3, endpoint, bucket
        self.secrets, self.namespace = secrets, namespace
        # the pods' service account: a kubeconfig for an API server stands in for the token
        # Kubernetes mounts into each pod
        self.kubeconfig = kubeconfig
        self.root = f"minio://{bucket}/{root_prefix}"
        # short: Ray's socket paths live under each task's TMPDIR
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="rh-", dir="/tmp"))
        docs = [d for d in yaml.safe_load_all(pipeline_file.read_text()) if d]
        self._use(docs[0], next((d for d in docs[1:] if "platforms" in d), {}))
        self.cache: dict[str, tuple[dict[str, Any], dict[str, RArtifact]]] = {}
        self._n_artifacts = 0
        self._n_pods = 0
        site = self.workdir / "site"
        site.mkdir(parents=True, exist_ok=True)
        (site / "sitecustomize.py").write_text(_SITECUSTOMIZE)
        self._site = site
        self._hidden = os.pathsep.join(hidden_modules())

    def _use(self, spec: dict[str, Any], platform: dict[str, Any]) -> None:
        self.spec = spec
        self.platform = (
            (platform or {}).get("platforms", {}).get("kubernetes", {}).get("deploymentSpec", {})
        )

    # -- a run ---------------------------------------------------------------------------------

    def run_request(self, body: dict[str, Any], **kw: Any) -> RunResult:
        """Run what a client sent to KFP's `POST /apis/v2beta1/runs`: its pipeline spec (and
        platform spec), with its runtime parameters."""
        sent = body["pipeline_spec"]
        if "pipeline_spec" in sent:
            self._use(sent["pipeline_spec"], sent.get("platform_spec") or {})
        else:
            self._use(sent, {})
        params = (body.get("runtime_config") or {}).get("parameters") or {}
        return self.run(params, **kw)

    def run(
        self,
        arguments: dict[str, Any] | None = None,
        enable_caching: bool | None = None,
        kill: dict[str, Callable[[], bool]] | None = None,
        extra_env: dict[str, dict[str, str]] | None = None,
        timeout_s: float = 900,
    ) -> RunResult:
        """Run the pipeline once. `kill[task]` is polled while the task's first attempt runs; when
        it returns True the attempt's process group is killed (a lost pod). `extra_env[task]` adds
        variables to that task's environment (test knobs, e.g. how often Tune saves)."""
        run_id = str(uuid.uuid4())
        root_inputs = self.spec["root"].get("inputDefinitions", {}).get("parameters", {})
        params = {k: v.get("defaultValue") for k, v in root_inputs.items()}
        unknown = set(arguments or {}) - set(params)
        if unknown:
            raise RehearsalError(f"not pipeline parameters: {sorted(unknown)}")
        params.update(arguments or {})
        result = RunResult(run_id=run_id, state="running", tasks={})
        ctx = _RunContext(
            run_id=run_id,
            enable_caching=enable_caching,
            kill=kill or {},
            extra_env=extra_env or {},
            deadline=time.monotonic() + timeout_s,
            result=result,
        )
        ok = self._dag(self.spec["root"], params, {}, ctx)
        result.state = "succeeded" if ok else "failed"
        return result

    def _dag(
        self,
        component: dict[str, Any],
        params: dict[str, Any],
        artifacts: dict[str, RArtifact],
        ctx: _RunContext,
    ) -> bool:
        tasks = component["dag"]["tasks"]
        outputs: dict[str, TaskRun] = {}
        for name in _topological(tasks):
            spec = tasks[name]
            run = TaskRun(name=name)
            ctx.result.tasks[name] = run
            outputs[name] = run
            upstream = [outputs[d] for d in spec.get("dependentTasks", [])]
            if any(u.state in ("failed", "not run") for u in upstream):
                run.state = "not run"
                continue
            in_params, in_artifacts = self._resolve(spec, params, artifacts, outputs)
            run.inputs = {**in_params, **{k: a.uri for k, a in in_artifacts.items()}}
            condition = spec.get("triggerPolicy", {}).get("condition")
            if condition and not _evaluate(condition, in_params):
                run.state = "skipped"
                self._skip_inner(spec, ctx)
                outputs[name] = run
                continue
            target = self.spec["components"][spec["componentRef"]["name"]]
            if "dag" in target:
                ok = self._dag(target, in_params, in_artifacts, ctx)
                run.state = "succeeded" if ok else "failed"
            else:
                self._container(name, spec, target, in_params, in_artifacts, run, ctx)
            outputs[name] = run
            if run.state == "failed":
                ctx.result.failed_task = ctx.result.failed_task or name
        return all(o.state not in ("failed", "not run") for o in outputs.values())

    def _skip_inner(self, spec: dict[str, Any], ctx: _RunContext) -> None:
        target = self.spec["components"][spec["componentRef"]["name"]]
        for inner, inner_spec in target.get("dag", {}).get("tasks", {}).items():
            ctx.result.tasks[inner] = TaskRun(name=inner, state="skipped")
            self._skip_inner(inner_spec, ctx)

    def _resolve(self, spec, params, artifacts, outputs):
        in_params: dict[str, Any] = {}
        for key, value in spec.get("inputs", {}).get("parameters", {}).items():
            if "componentInputParameter" in value:
                in_params[key] = params[value["componentInputParameter"]]
            elif "taskOutputParameter" in value:
                ref = value["taskOutputParameter"]
                in_params[key] = outputs[ref["producerTask"]].parameters[ref["outputParameterKey"]]
            elif "runtimeValue" in value:
                in_params[key] = value["runtimeValue"]["constant"]
            else:
                raise RehearsalError(f"input parameter spec not implemented: {value}")
        for key, value in list(in_params.items()):  # runtime constants reading other inputs
            if isinstance(value, str):
                in_params[key] = _substitute(value, in_params)
        in_artifacts: dict[str, RArtifact] = {}
        for key, value in spec.get("inputs", {}).get("artifacts", {}).items():
            if "componentInputArtifact" in value:
                in_artifacts[key] = artifacts[value["componentInputArtifact"]]
            elif "taskOutputArtifact" in value:
                ref = value["taskOutputArtifact"]
                in_artifacts[key] = outputs[ref["producerTask"]].artifacts[ref["outputArtifactKey"]]
            else:
                raise RehearsalError(f"input artifact spec not implemented: {value}")
        return in_params, in_artifacts

    # -- one container task --------------------------------------------------------------------

    def _container(self, name, spec, component, in_params, in_artifacts, run: TaskRun, ctx):
        label = component["executorLabel"]
        container = self.spec["deploymentSpec"]["executors"][label]["container"]
        run.resources = self._resources(container, in_params)
        declared = component.get("inputDefinitions", {}).get("parameters", {})
        exec_params = {k: v for k, v in in_params.items() if k in declared}
        for key, definition in declared.items():
            if key not in exec_params and "defaultValue" in definition:
                exec_params[key] = definition["defaultValue"]
        caching = spec.get("cachingOptions", {}).get("enableCache", False)
        if ctx.enable_caching is False:
            caching = False
        run.cache_key = self._cache_key(component, container, exec_params, in_artifacts)
        if caching and run.cache_key in self.cache:
            run.parameters, run.artifacts = copy.deepcopy(self.cache[run.cache_key])
            run.state = "cached"
            return
        outputs_spec = component.get("outputDefinitions", {})
        salt = str(uuid.uuid4())
        base = f"{self.root}/{self.spec['pipelineInfo']['name']}/{ctx.run_id}/{name}/{salt}"
        out_artifacts = {}
        for key, definition in outputs_spec.get("artifacts", {}).items():
            self._n_artifacts += 1
            out_artifacts[key] = RArtifact(
                id=f"artifact-{self._n_artifacts}",
                name=key,
                uri=f"{base}/{key}",
                schema_title=definition["artifactType"]["schemaTitle"],
            )
        retries = int(spec.get("retryPolicy", {}).get("maxRetryCount", 0))
        for attempt in range(retries + 1):
            run.attempts = attempt + 1
            ok = self._attempt(
                name, component, container, exec_params, in_artifacts, out_artifacts, run, ctx
            )
            if ok:
                run.state = "succeeded"
                if caching:
                    self.cache[run.cache_key] = copy.deepcopy((run.parameters, run.artifacts))
                return
        run.state = "failed"

    def _attempt(self, name, component, container, params, in_artifacts, out_artifacts, run, ctx):
        self._n_pods += 1  # short: Ray's socket paths (at most 107 bytes) live under TMPDIR
        pod = self.workdir / f"p{self._n_pods}"
        mount = pod / "minio"
        for sub in ("home", "tmp", "work", "outputs", "bin"):
            (pod / sub).mkdir(parents=True, exist_ok=True)
        mount.mkdir(exist_ok=True)
        for artifact in in_artifacts.values():
            # a Metrics artifact is its metadata: nothing is stored for it
            optional = artifact.schema_title == "system.Metrics"
            self._download(artifact.uri, _local(mount, artifact.uri), optional)
        outputs_spec = component.get("outputDefinitions", {})
        executor_input = {
            "inputs": {
                "parameterValues": _protojson(params),
                "artifacts": {k: {"artifacts": [a.runtime()]} for k, a in in_artifacts.items()},
            },
            "outputs": {
                "parameters": {
                    k: {"outputFile": str(pod / "outputs" / k)}
                    for k in outputs_spec.get("parameters", {})
                },
                "artifacts": {
                    k: {"artifacts": [{**a.runtime(), "name": k, "metadata": {}}]}
                    for k, a in out_artifacts.items()
                },
                "outputFile": str(pod / "outputs" / "output_metadata.json"),
            },
        }
        for artifact in out_artifacts.values():
            _local(mount, artifact.uri).parent.mkdir(parents=True, exist_ok=True)
        command = [
            _placeholder(part, executor_input)
            for part in list(container.get("command", [])) + list(container.get("args", []))
        ]
        python3 = pod / "bin" / "python3"
        python3.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
        python3.chmod(0o755)
        env = self._env(pod, mount, container, component, name, ctx)
        run.env_names = set(env)
        log = pod / f"{name}-{run.attempts}.log"
        run.logs.append(log)
        with log.open("w") as fh:
            proc = subprocess.Popen(
                command,
                cwd=pod / "work",
                env=env,
                stdout=fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            killer = ctx.kill.get(name) if run.attempts == 1 else None
            code = self._wait(proc, killer, ctx)
        if code != 0:
            return False
        from google.protobuf import json_format
        from kfp.local import executor_output_utils
        from kfp.pipeline_spec import pipeline_spec_pb2

        message = json_format.ParseDict(executor_input, pipeline_spec_pb2.ExecutorInput())
        comp = json_format.ParseDict(component, pipeline_spec_pb2.ComponentSpec())
        outputs = executor_output_utils.get_outputs_for_task(message, comp)
        for key, value in outputs.items():
            if key in out_artifacts:
                art = out_artifacts[key]
                art.metadata = dict(getattr(value, "metadata", {}) or {})
                self._upload(_local(mount, art.uri), art.uri)
                run.artifacts[key] = art
            else:
                run.parameters[key] = value
        return True

    def _wait(self, proc: subprocess.Popen, killer, ctx) -> int:
        while True:
            try:
                return proc.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                pass
            if time.monotonic() > ctx.deadline or (killer is not None and killer()):
                with _quiet():
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(30)
                if time.monotonic() > ctx.deadline:
                    raise RehearsalError("the run took longer than its timeout")
                return -9

    def _env(self, pod, mount, container, component, name, ctx) -> dict[str, str]:
        label = component["executorLabel"]
        env = {
            **IMAGE_ENV,
            "PATH": f"{pod / 'bin'}:{Path(sys.executable).parent}:/usr/bin:/bin",
            "HOME": str(pod / "home"),
            "TMPDIR": str(pod / "tmp"),
            "BENTOML_HOME": str(pod / "home" / "bentoml"),
            "PYTHONPATH": str(self._site),
            "REHEARSAL_MINIO_MOUNT": f"{mount}/",
            "REHEARSAL_HIDDEN_MODULES": self._hidden,
        }
        for item in container.get("env", []):
            env[item["name"]] = item.get("value", "")
        platform = self.platform.get("executors", {}).get(label, {})
        for item in platform.get("secretAsEnv", []):
            secret = self.secrets.get(item["secretName"])
            if secret is None and not item.get("optional"):
                raise RehearsalError(f"{name}: Secret {item['secretName']} not found")
            for pair in item.get("keyToEnv", []):
                if secret is not None and pair["secretKey"] in secret:
                    env[pair["envVar"]] = secret[pair["secretKey"]]
        for item in platform.get("fieldPathAsEnv", []):
            fields = {"metadata.namespace": self.namespace, "metadata.name": f"{name}-pod"}
            if item["fieldPath"] not in fields:
                raise RehearsalError(f"field path not implemented: {item['fieldPath']}")
            env[item["name"]] = fields[item["fieldPath"]]
        unknown = set(platform) - {"secretAsEnv", "fieldPathAsEnv"}
        if unknown:
            raise RehearsalError(f"{name}: platform settings not implemented: {sorted(unknown)}")
        if self.kubeconfig is not None:
            env["KUBECONFIG"] = str(self.kubeconfig)
        env.update(ctx.extra_env.get(name, {}))
        return env

    @staticmethod
    def _resources(container, params) -> dict[str, str]:
        """Resolve requests/limits as KFP's driver does; a bad quantity fails the task."""
        found = {}
        for key, value in container.get("resources", {}).items():
            if key.startswith("resource"):
                resolved = _substitute(str(value), params)
                if not _QUANTITY.match(resolved):
                    raise RehearsalError(f"{key}={resolved!r} is not a Kubernetes quantity")
                found[key] = resolved
        return found

    def _cache_key(self, component, container, params, in_artifacts) -> str:
        outputs = component.get("outputDefinitions", {})
        key = {
            "inputArtifactNames": {k: [a.id] for k, a in sorted(in_artifacts.items())},
            "inputParameterValues": params,
            "outputArtifactsSpec": outputs.get("artifacts", {}),
            "outputParametersSpec": outputs.get("parameters", {}),
            "containerSpec": {
                "image": container.get("image"),
                "cmdArgs": list(container.get("command", [])) + list(container.get("args", [])),
            },
            "scope": [self.namespace, self.spec["pipelineInfo"]["name"]],
        }
        return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()

    # -- the launcher's transfers --------------------------------------------------------------

    def _split(self, uri: str) -> tuple[str, str]:
        bucket, _, key = uri.removeprefix("minio://").partition("/")
        return bucket, key

    def _download(self, uri: str, dest: Path, optional: bool = False) -> None:
        bucket, key = self._split(uri)
        listed = [
            o
            for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key)
            for o in page.get("Contents", [])
        ]
        if not listed and not optional:
            raise RehearsalError(f"input artifact {uri} is not in the store")
        for obj in listed:
            if obj["Key"] == key:
                target = dest
            elif obj["Key"].startswith(key + "/"):
                target = dest / obj["Key"][len(key) + 1 :]
            else:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            body = self.s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"]
            with target.open("wb") as fh:
                shutil.copyfileobj(body, fh)

    def _upload(self, src: Path, uri: str) -> None:
        bucket, key = self._split(uri)
        if src.is_dir():
            for path in sorted(p for p in src.rglob("*") if p.is_file()):
                self._put(bucket, f"{key}/{path.relative_to(src)}", path)
        elif src.exists():
            self._put(bucket, key, src)

    def _put(self, bucket: str, key: str, path: Path) -> None:
        with path.open("rb") as fh:
            self.s3.put_object(Bucket=bucket, Key=key, Body=fh)

    def read(self, artifact: RArtifact) -> bytes:
        """An artifact's bytes (a file artifact) from the store."""
        bucket, key = self._split(artifact.uri)
        return self.s3.get_object(Bucket=bucket, Key=key)["Body"].read()

    def keys(self, prefix: str) -> list[str]:
        """Keys in the bucket under `prefix`."""
        paginator = self.s3.get_paginator("list_objects_v2")
        return [
            obj["Key"]
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix)
            for obj in page.get("Contents", [])
        ]

    def close(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)


@dataclass
class _RunContext:
    run_id: str
    enable_caching: bool | None
    kill: dict[str, Callable[[], bool]]
    extra_env: dict[str, dict[str, str]]
    deadline: float
    result: RunResult


def _protojson(value: Any) -> Any:
    """Values as KFP's Go backend writes them: a protobuf number that is whole prints as an
    integer (the compiled YAML says `42.0`; the component receives `42`)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _protojson(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_protojson(v) for v in value]
    return value


def _local(mount: Path, uri: str) -> Path:
    return mount / uri.removeprefix("minio://")


def _topological(tasks: dict[str, Any]) -> list[str]:
    needs = {}
    for name, spec in tasks.items():
        deps = set(spec.get("dependentTasks", []))
        for value in spec.get("inputs", {}).get("parameters", {}).values():
            if "taskOutputParameter" in value:
                deps.add(value["taskOutputParameter"]["producerTask"])
        for value in spec.get("inputs", {}).get("artifacts", {}).values():
            if "taskOutputArtifact" in value:
                deps.add(value["taskOutputArtifact"]["producerTask"])
        needs[name] = deps
    order: list[str] = []
    while needs:
        ready = sorted(n for n, d in needs.items() if d <= set(order))
        if not ready:
            raise RehearsalError(f"the DAG has a cycle among {sorted(needs)}")
        order.extend(ready)
        for n in ready:
            del needs[n]
    return order


def _substitute(value: str, params: dict[str, Any]) -> Any:
    """`{{$.inputs.parameters['k']}}` as KFP resolves it; a whole-string read keeps the type.
    Other placeholders stay as they are (`{{$.pipeline_root}}`: KFP's driver does not resolve
    it in an input parameter)."""
    whole = _PARAM_READ.fullmatch(value)
    if whole:
        return params[whole.group(1)]
    return _PARAM_READ.sub(lambda m: str(params[m.group(1)]), value)


def _placeholder(part: str, executor_input: dict[str, Any]) -> str:
    part = part.replace("{{$}}", json.dumps(executor_input))
    if "{{$" in part and "executor_main" not in part and not part.lstrip().startswith("\n"):
        raise RehearsalError(f"command placeholder not implemented: {part[:80]}")
    return part


def _evaluate(condition: str, params: dict[str, Any]) -> bool:
    """The CEL conditions KFP's compiler writes for `dsl.If(x == y)` / `!=`."""
    m = _CONDITION.match(condition.strip())
    if not m:
        raise RehearsalError(f"condition not implemented: {condition}")
    name, op, raw = m.groups()
    raw = raw.strip()
    if raw in ("true", "false"):
        expected: Any = raw == "true"
    elif raw.startswith("'") and raw.endswith("'"):
        expected = raw[1:-1]
    else:
        expected = json.loads(raw)
    value = params[name]
    return (value == expected) if op == "==" else (value != expected)


class _quiet:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return exc[0] is ProcessLookupError


def wait_for(predicate: Callable[[], bool], every_s: float = 0.5) -> Callable[[], bool]:
    """A `kill` predicate that checks at most every `every_s` (a store listing is not free)."""
    last = [0.0]
    lock = threading.Lock()

    def check() -> bool:
        with lock:
            if time.monotonic() - last[0] < every_s:
                return False
            last[0] = time.monotonic()
        return predicate()

    return check
