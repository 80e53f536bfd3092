"""A small stand-in for the Kubernetes API server with Kubeflow Trainer v2.3 installed, for the
TrainJob launcher's tests.

A real HTTP server on 127.0.0.1 (a free port), reached by the real ``kubernetes`` client through
a kubeconfig (``FakeKubernetes.kubeconfig``). It serves what the launcher uses and answers as the
API server does (JSON ``Status`` bodies with ``reason`` and ``code``):

- ``trainjobs`` (``trainer.kubeflow.org/v1alpha1``): create, get, delete. A created TrainJob is
  validated against the OpenAPI schema of the vendored CRD (tests/data/kubeflow-trainer-v2.3.0),
  strictly when the request asks for ``fieldValidation=Strict`` (unknown fields rejected), and
  against the CRD's name rules: ``400 BadRequest`` / ``422 Invalid`` otherwise. The schema's
  defaults for ``runtimeRef``, ``suspend`` and ``managedBy`` are filled in. ``409
  AlreadyExists`` for a name in use, ``404 NotFound`` for a missing one, ``401`` without the
  token.
- ``pods`` list (equality label selectors) and ``pods/log`` (``container``, ``timestamps``,
  ``sinceSeconds``; ``400`` while the container waits to start).

A simulated Trainer controller moves each TrainJob through the ``Scenario``'s states, one per
GET of the job (the last one repeats): ``Created`` (no status, pods Pending), ``Running``
(``jobsStatus`` active, pods Running, each node printing the next of its log lines per GET),
``Complete`` / ``Failed`` (JobSet's conditions, pods Succeeded / Failed, the rest of the
logs). The pods carry the labels JobSet and the Job controller give them. ``Scenario.forbidden``
answers ``403 Forbidden`` to chosen verbs, ``Scenario.transient`` ``503`` a few times;
``on_complete`` runs when a job completes (the tests
publish the trainer's result there, as rank 0 would). A foreground deletion keeps the job,
with a deletion timestamp, for ``Scenario.deleting_gets`` GETs.

Every request is recorded (method, path, query, JSON body) for the tests' assertions.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import jsonschema
import yaml

CRD_DIR = Path(__file__).resolve().parent / "data" / "kubeflow-trainer-v2.3.0"
TRAINJOB_CRD = CRD_DIR / "trainer.kubeflow.org_trainjobs.yaml"
GROUP, VERSION, PLURAL = "trainer.kubeflow.org", "v1alpha1", "trainjobs"
TOKEN = "fake-k8s-token"
NAME_RULE = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
#: What Go's strconv.ParseBool, which parses the API server's boolean query parameters, reads
#: as true (the Python client sends ``True``).
GO_TRUE = {"1", "t", "T", "TRUE", "true", "True"}


@functools.cache
def crd_schema(path: Path, version: str = VERSION) -> dict[str, Any]:
    """The openAPIV3Schema of ``version`` in a CRD file (read once; do not change it)."""
    crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    return served["schema"]["openAPIV3Schema"]


def strict(schema: Any) -> Any:
    """The schema with unknown fields rejected wherever the API server would prune them
    (objects with ``properties`` and neither ``additionalProperties`` nor
    ``x-kubernetes-preserve-unknown-fields``), as ``fieldValidation=Strict`` does."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    result = {key: strict(value) for key, value in schema.items()}
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        result["additionalProperties"] = False
    return result


def validation_errors(body: Any, schema: dict[str, Any]) -> list[str]:
    """Every schema violation, as ``path: message``."""
    validator = jsonschema.Draft7Validator(schema)
    errors = []
    for error in sorted(validator.iter_errors(body), key=lambda e: list(e.absolute_path)):
        where = ".".join(str(p) for p in error.absolute_path) or "<root>"
        errors.append(f"{where}: {error.message}")
    return errors


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _nano_stamp(moment: datetime) -> str:
    """The kubelet's log timestamp (RFC 3339 with nanoseconds, trailing zeros trimmed as Go's
    RFC3339Nano does)."""
    fraction = f"{moment.microsecond:06d}000".rstrip("0")
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + (f".{fraction}" if fraction else "") + "Z"


def status_body(code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    body = {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code,
    }
    if details:
        body["details"] = details
    return body


@dataclass
class Scenario:
    """What the simulated controller does with a TrainJob (see the module docstring)."""

    #: States on successive GETs of a job; the last one repeats.
    states: list[str] = field(default_factory=lambda: ["Created", "Running", "Running", "Complete"])
    #: Log lines of node i, printed one per GET while Running, the rest at the end.
    logs: dict[int, list[str]] = field(default_factory=lambda: {0: ["node 0 says hello"], 1: ["node 1 says hello"]})
    failure_reason: str = "FailedJobs"
    failure_message: str = "jobset failed due to one or more job failures"
    #: Verbs answered with 403 Forbidden: "create", "get", "delete", "list pods", "log".
    forbidden: set[str] = field(default_factory=set)
    #: Called with the TrainJob when it becomes Complete.
    on_complete: Callable[[dict[str, Any]], None] | None = None
    #: GETs a foreground deletion takes before the job is gone.
    deleting_gets: int = 1
    #: How many times a verb ("create", "get", ...) is first answered 503 ServiceUnavailable.
    transient: dict[str, int] = field(default_factory=dict)


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    body: Any


@dataclass
class _Job:
    obj: dict[str, Any]
    scenario: Scenario
    gets: int = 0
    state: str = "Created"
    printed: dict[int, int] = field(default_factory=dict)
    deleting: int | None = None
    completed: bool = False


class FakeKubernetes:
    def __init__(self, scenario: Scenario | None = None, namespace: str = "kubeflow") -> None:
        self.scenario = scenario or Scenario()
        self.namespace = namespace
        self.jobs: dict[tuple[str, str], _Job] = {}
        self.pods: dict[tuple[str, str], dict[str, Any]] = {}
        self.logs: dict[tuple[str, str], list[tuple[datetime, str]]] = {}
        self.requests: list[Request] = []
        self.created: list[dict[str, Any]] = []
        self._schema = crd_schema(TRAINJOB_CRD)
        self._strict_schema = strict(self._schema)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def kubeconfig(self, path: Path, token: str = TOKEN) -> Path:
        """A kubeconfig for this server (context namespace: ``namespace``)."""
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "launcher", "user": {"token": token}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "launcher", "namespace": self.namespace}}],
        }
        path.write_text(yaml.safe_dump(config))
        return path

    def sent(self, method: str, suffix: str = "") -> list[Request]:
        return [r for r in self.requests if r.method == method and r.path.endswith(suffix)]

    def add_job(self, body: dict[str, Any], state: str, scenario: Scenario | None = None) -> None:
        """A TrainJob that exists already (an earlier attempt's), in ``state``, which it keeps
        unless ``scenario`` says otherwise."""
        obj = self._admit(copy.deepcopy(body), body["metadata"].get("namespace", self.namespace))
        job = _Job(obj, scenario or Scenario(states=[state], logs={}))
        self.jobs[(obj["metadata"]["namespace"], obj["metadata"]["name"])] = job
        self._set_state(job, state)

    # --- HTTP ---------------------------------------------------------------------------------

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # answers in one piece, no delayed-ACK stalls

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def _serve(self, method: str) -> None:
                url = urlparse(self.path)
                query = {k: v[-1] for k, v in parse_qs(url.query).items()}
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = raw.decode(errors="replace")
                with fake._lock:
                    fake.requests.append(Request(method, url.path, query, body))
                    if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                        code, payload = 401, status_body(401, "Unauthorized", "Unauthorized")
                    else:
                        code, payload = fake._route(method, url.path, query, body)
                if isinstance(payload, str):
                    data, kind = payload.encode(), "text/plain"
                else:
                    data, kind = json.dumps(payload).encode(), "application/json"
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._serve("GET")

            def do_POST(self) -> None:
                self._serve("POST")

            def do_DELETE(self) -> None:
                self._serve("DELETE")

        return Handler

    def _route(self, method: str, path: str, query: dict[str, str], body: Any) -> tuple[int, Any]:
        parts = path.strip("/").split("/")
        # /apis/trainer.kubeflow.org/v1alpha1/namespaces/{ns}/trainjobs[/{name}]
        if parts[:3] == ["apis", GROUP, VERSION] and len(parts) in (6, 7) and parts[3] == "namespaces" and parts[5] == PLURAL:
            namespace, name = parts[4], (parts[6] if len(parts) == 7 else None)
            if method == "POST" and name is None:
                return self._create(namespace, query, body)
            if method == "GET" and name is not None:
                return self._get(namespace, name)
            if method == "DELETE" and name is not None:
                return self._delete(namespace, name, query, body)
        # /api/v1/namespaces/{ns}/pods[/{name}/log]
        if parts[:3] == ["api", "v1", "namespaces"] and len(parts) >= 5 and parts[4] == "pods":
            namespace = parts[3]
            if method == "GET" and len(parts) == 5:
                return self._list_pods(namespace, query)
            if method == "GET" and len(parts) == 7 and parts[6] == "log":
                return self._log(namespace, parts[5], query)
        return 404, status_body(404, "NotFound", f"the server could not find the requested resource ({method} {path})")

    def _forbidden(self, verb: str, resource: str, namespace: str) -> tuple[int, Any] | None:
        """403 for a forbidden verb, 503 while the verb is to hiccup, else None."""
        if self.scenario.transient.get(verb, 0) > 0:
            self.scenario.transient[verb] -= 1
            return 503, status_body(503, "ServiceUnavailable", "the server is currently unable to handle the request")
        if verb not in self.scenario.forbidden:
            return None
        group = GROUP if resource == PLURAL else ""
        api_verb = {"list pods": "list", "log": "get"}.get(verb, verb)
        message = (
            f'{resource}{"." + group if group else ""} is forbidden: User '
            f'"system:serviceaccount:{namespace}:default-editor" cannot {api_verb} resource '
            f'"{resource}" in API group "{group}" in the namespace "{namespace}"'
        )
        return 403, status_body(403, "Forbidden", message, {"group": group, "kind": resource})

    # --- trainjobs ----------------------------------------------------------------------------

    def _admit(self, body: dict[str, Any], namespace: str) -> dict[str, Any]:
        """What the API server stores: the object with its defaults and server-set metadata."""
        metadata = body.setdefault("metadata", {})
        metadata.update({
            "namespace": namespace, "uid": str(uuid.uuid4()), "resourceVersion": "1",
            "generation": 1, "creationTimestamp": _stamp(_now()),
        })
        spec = body.setdefault("spec", {})
        spec["runtimeRef"].setdefault("apiGroup", GROUP)
        spec["runtimeRef"].setdefault("kind", "ClusterTrainingRuntime")
        spec.setdefault("suspend", False)
        spec.setdefault("managedBy", "trainer.kubeflow.org/trainjob-controller")
        return body

    def _create(self, namespace: str, query: dict[str, str], body: Any) -> tuple[int, Any]:
        denied = self._forbidden("create", PLURAL, namespace)
        if denied:
            return denied
        if not isinstance(body, dict):
            return 400, status_body(400, "BadRequest", "the body of the request was in an unknown format")
        name = (body.get("metadata") or {}).get("name", "")
        kind_ok = body.get("apiVersion") == f"{GROUP}/{VERSION}" and body.get("kind") == "TrainJob"
        if not kind_ok:
            return 400, status_body(400, "BadRequest", f"the API version in the data ({body.get('apiVersion')}) "
                                    f"does not match the expected API version ({GROUP}/{VERSION})")
        # Strict field validation answers 400 with the unknown fields; schema errors are 422.
        schema = self._strict_schema if query.get("fieldValidation") == "Strict" else self._schema
        unknown = [e for e in validation_errors(body, schema) if "Additional properties" in e]
        if unknown:
            return 400, status_body(400, "BadRequest", "strict decoding error: " + "; ".join(unknown))
        errors = validation_errors(body, self._schema)
        if not re.match(NAME_RULE, name):
            errors.append("<root>: Invalid value: metadata.name must match RFC 1035 DNS label format")
        if len(name) > 63:
            errors.append("<root>: Invalid value: metadata.name must be no more than 63 characters")
        if errors:
            return 422, status_body(
                422, "Invalid", f'TrainJob.{GROUP} "{name}" is invalid: ' + "; ".join(errors),
                {"name": name, "group": GROUP, "kind": "TrainJob"},
            )
        if (namespace, name) in self.jobs:
            return 409, status_body(409, "AlreadyExists", f'trainjobs.{GROUP} "{name}" already exists',
                                    {"name": name, "group": GROUP, "kind": PLURAL})
        obj = self._admit(copy.deepcopy(body), namespace)
        self.created.append(copy.deepcopy(obj))
        job = _Job(obj, self.scenario)
        self.jobs[(namespace, name)] = job
        self._set_state(job, "Created")
        return 201, obj

    def _get(self, namespace: str, name: str) -> tuple[int, Any]:
        denied = self._forbidden("get", PLURAL, namespace)
        if denied:
            return denied
        job = self.jobs.get((namespace, name))
        if job is None:
            return 404, status_body(404, "NotFound", f'trainjobs.{GROUP} "{name}" not found',
                                    {"name": name, "group": GROUP, "kind": PLURAL})
        if job.deleting is not None:
            if job.deleting <= 0:
                self._remove(namespace, name)
                return self._get(namespace, name)
            job.deleting -= 1
            return 200, copy.deepcopy(job.obj)
        states = job.scenario.states
        self._set_state(job, states[min(job.gets, len(states) - 1)])
        job.gets += 1
        return 200, copy.deepcopy(job.obj)

    def _delete(self, namespace: str, name: str, query: dict[str, str], body: Any) -> tuple[int, Any]:
        denied = self._forbidden("delete", PLURAL, namespace)
        if denied:
            return denied
        job = self.jobs.get((namespace, name))
        if job is None:
            return 404, status_body(404, "NotFound", f'trainjobs.{GROUP} "{name}" not found',
                                    {"name": name, "group": GROUP, "kind": PLURAL})
        policy = query.get("propagationPolicy") or (body.get("propagationPolicy") if isinstance(body, dict) else None)
        if policy == "Foreground" and job.scenario.deleting_gets > 0:
            job.obj["metadata"]["deletionTimestamp"] = _stamp(_now())
            job.obj["metadata"]["finalizers"] = ["foregroundDeletion"]
            job.deleting = job.scenario.deleting_gets
            return 200, copy.deepcopy(job.obj)
        self._remove(namespace, name)
        return 200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                     "details": {"name": name, "group": GROUP, "kind": PLURAL}}

    def _remove(self, namespace: str, name: str) -> None:
        del self.jobs[(namespace, name)]
        for key in [k for k, pod in self.pods.items()
                    if k[0] == namespace and pod["metadata"]["labels"]["jobset.sigs.k8s.io/jobset-name"] == name]:
            del self.pods[key]

    # --- the simulated controller -------------------------------------------------------------

    def _set_state(self, job: _Job, state: str) -> None:
        obj, now = job.obj, _now()
        namespace, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
        nodes = int(obj["spec"].get("trainer", {}).get("numNodes", 1))
        job.state = state
        counts = {"active": 0, "ready": 0, "succeeded": 0, "failed": 0, "suspended": 0}
        conditions = []
        phase = {"Created": "Pending", "Running": "Running", "Complete": "Succeeded", "Failed": "Failed"}[state]
        if state == "Running":
            counts.update(active=1, ready=1)
        elif state == "Complete":
            counts.update(succeeded=1)
            conditions.append({"type": "Complete", "status": "True", "reason": "AllJobsCompleted",
                               "message": "jobset completed successfully", "lastTransitionTime": _stamp(now)})
        elif state == "Failed":
            counts.update(failed=1)
            conditions.append({"type": "Failed", "status": "True", "reason": job.scenario.failure_reason,
                               "message": job.scenario.failure_message, "lastTransitionTime": _stamp(now)})
        if state == "Created":
            obj.pop("status", None)
        else:
            obj["status"] = {"jobsStatus": [{"name": "node", **counts}]}
            if conditions:
                obj["status"]["conditions"] = conditions
        for index in range(nodes):
            pod = self._pod(namespace, name, index, phase, obj)
            lines = job.scenario.logs.get(index, [])
            done = job.printed.get(index, 0)
            upto = done + 1 if state == "Running" else (len(lines) if state in ("Complete", "Failed") else done)
            for text in lines[done:upto]:
                self.logs.setdefault((namespace, pod), []).append((_now(), text))
            job.printed[index] = max(done, min(upto, len(lines)))
        if state == "Complete" and not job.completed:
            job.completed = True
            if job.scenario.on_complete is not None:
                job.scenario.on_complete(copy.deepcopy(obj))

    def _pod(self, namespace: str, job: str, index: int, phase: str, obj: dict[str, Any]) -> str:
        """Node ``index``'s pod (one per node; a JobSet restart would make new ones) with the
        labels JobSet and the Indexed Job give it."""
        name = f"{job}-node-0-{index}-{uuid.uuid5(uuid.NAMESPACE_DNS, obj['metadata']['uid'] + str(index)).hex[:5]}"
        key = (namespace, name)
        if key not in self.pods:
            self.pods[key] = {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {
                    "name": name, "namespace": namespace, "uid": str(uuid.uuid4()),
                    "creationTimestamp": _stamp(_now()),
                    "labels": {
                        "jobset.sigs.k8s.io/jobset-name": job,
                        "jobset.sigs.k8s.io/replicatedjob-name": "node",
                        "jobset.sigs.k8s.io/job-index": "0",
                        "jobset.sigs.k8s.io/restart-attempt": "0",
                        "batch.kubernetes.io/job-completion-index": str(index),
                        "batch.kubernetes.io/job-name": f"{job}-node-0",
                        "trainer.kubeflow.org/trainjob-ancestor-step": "trainer",
                        **(obj["metadata"].get("labels") or {}),
                    },
                    "annotations": {"batch.kubernetes.io/job-completion-index": str(index)},
                },
                "spec": {"containers": [{"name": "node", "image": obj["spec"]["trainer"].get("image", "")}]},
                "status": {},
            }
        self.pods[key]["status"]["phase"] = phase
        return name

    # --- pods ---------------------------------------------------------------------------------

    def _list_pods(self, namespace: str, query: dict[str, str]) -> tuple[int, Any]:
        denied = self._forbidden("list pods", "pods", namespace)
        if denied:
            return denied
        wanted = {}
        for term in filter(None, query.get("labelSelector", "").split(",")):
            key, sep, value = term.partition("=")
            if not sep:
                return 400, status_body(400, "BadRequest", f"unable to parse requirement: {term}")
            wanted[key.strip()] = value.lstrip("=").strip()
        items = [
            copy.deepcopy(pod) for (ns, _), pod in sorted(self.pods.items())
            if ns == namespace and all(pod["metadata"]["labels"].get(k) == v for k, v in wanted.items())
        ]
        return 200, {"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": items}

    def _log(self, namespace: str, pod: str, query: dict[str, str]) -> tuple[int, Any]:
        denied = self._forbidden("log", "pods", namespace)
        if denied:
            return denied
        found = self.pods.get((namespace, pod))
        if found is None:
            return 404, status_body(404, "NotFound", f'pods "{pod}" not found', {"name": pod, "kind": "pods"})
        container = query.get("container", "node")
        if container != "node":
            return 400, status_body(400, "BadRequest", f"container {container} is not valid for pod {pod}")
        if found["status"]["phase"] == "Pending":
            return 400, status_body(400, "BadRequest",
                                    f'container "node" in pod "{pod}" is waiting to start: ContainerCreating')
        lines = self.logs.get((namespace, pod), [])
        if "sinceSeconds" in query:
            start = _now() - timedelta(seconds=int(query["sinceSeconds"]))
            lines = [(t, text) for t, text in lines if t >= start]
        stamps = query.get("timestamps") in GO_TRUE
        return 200, "".join(f"{_nano_stamp(t) + ' ' if stamps else ''}{text}\n" for t, text in lines)
