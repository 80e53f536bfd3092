"""Run a command on several nodes as a Kubeflow Trainer v2 ``TrainJob`` and see it through.

``launch_trainjob`` creates the TrainJob (``trainer.kubeflow.org/v1alpha1``) in the namespace of
the pod it runs in, referencing the project's namespaced ``TrainingRuntime`` (k8s/components/
kubeflow-trainer: the CUDA image, torchrun, ``/dev/shm``, the MinIO Secret and ConfigMap as
environment, the pod label MinIO's NetworkPolicy admits). The Trainer's torch runtime injects
``PET_NNODES``, ``PET_NPROC_PER_NODE``, ``PET_NODE_RANK``, ``PET_MASTER_ADDR`` and
``PET_MASTER_PORT`` into every node, which ``torchrun`` reads. Then it polls the job's conditions
until ``Complete`` or ``Failed`` (or its own deadline), copies node 0's log into its own output
as it goes, and deletes the job at the end, whatever the outcome.

The name is deterministic (``job_name``: run id and step), so a retried step finds the job of
its earlier attempt: on ``409 AlreadyExists`` it adopts that job (or, when it had already
failed, replaces it; the trainer resumes from its last checkpoint in storage).

Why the ``kubernetes`` client against the custom resource and not the ``kubeflow`` SDK
(``TrainerClient``): the SDK's custom-container trainer takes an image, node count, resources and
environment but no command and no volumes, so it cannot start our component under torchrun with
its arguments; a raw TrainJob through ``CustomObjectsApi`` can, and the ``kubernetes`` client is
already in the images (kfp depends on it).

Every failure is a ``TrainJobError`` with one line that names the job.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from mammo.errors import MammoError

log = logging.getLogger(__name__)

GROUP = "trainer.kubeflow.org"
VERSION = "v1alpha1"
PLURAL = "trainjobs"
KIND = "TrainJob"
#: The namespaced TrainingRuntime of k8s/components/kubeflow-trainer (a TrainJob can reference
#: a namespaced runtime of its own namespace only).
TRAINING_RUNTIME = "mammo-torch"
RUNTIME_KIND = "TrainingRuntime"
#: Name of the trainer's replicated job and container in Trainer's torch runtimes.
NODE = "node"
#: Labels on the pods of a TrainJob: Trainer makes a JobSet of the TrainJob's name, whose
#: replicated job ``node`` is one Indexed Job; node ``i`` is the pod of completion index ``i``
#: (a label since Kubernetes 1.28, an annotation before).
JOBSET_NAME_LABEL = "jobset.sigs.k8s.io/jobset-name"
REPLICATED_JOB_LABEL = "jobset.sigs.k8s.io/replicatedjob-name"
JOB_INDEX_LABEL = "jobset.sigs.k8s.io/job-index"
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
GPU_RESOURCE = "nvidia.com/gpu"
#: Where a pod finds its own namespace.
SERVICEACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
#: DNS-1035 label (the TrainJob CRD's rule for metadata.name).
NAME_PATTERN = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
#: Longest name we give: the JobSet's pods are called ``<name>-node-<job>-<index>-<5 chars>``
#: and their hostnames must stay within 63 characters.
MAX_NAME = 40
#: Seconds for one API request.
REQUEST_TIMEOUT = 30
#: Extra seconds asked of the log endpoint beyond the time since the last read (lines seen
#: twice are dropped by their timestamps).
LOG_OVERLAP_SECONDS = 5
#: Statuses worth asking again (the API server or its proxy was busy or restarting).
TRANSIENT = {0, 429, 500, 502, 503, 504}
RBAC_HINT = (
    "the pipeline's ServiceAccount needs the Role of k8s/components/kubeflow-trainer "
    "(trainjobs create/get/delete, pods list, pods/log get): apply that component "
    "and submit the run as ServiceAccount mammo-pipeline"
)

Emit = Callable[[str], None]


class TrainJobError(MammoError):
    """A TrainJob could not be created, failed, vanished or did not finish in time."""


class TrainJobGoneError(TrainJobError):
    """The TrainJob was deleted by someone else while the step waited for it."""


def job_name(run_id: str, component: str) -> str:
    """``mammo-<step>-<run id>`` (e.g. ``mammo-baseline-3f2a...``): the same for every attempt
    of a step of one run, a DNS-1035 label of at most ``MAX_NAME`` characters. A run id that
    would not fit is replaced by a digest of run id and step."""
    short = re.sub(r"[^a-z0-9]+", "-", component.lower().removesuffix("_trainer")).strip("-") or "trainer"
    name = f"mammo-{short}-{run_id}"
    if NAME_PATTERN.fullmatch(name) and len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha256(f"{run_id}\0{component}".encode()).hexdigest()[:16]
    return f"mammo-{short[:MAX_NAME - 23].strip('-')}-{digest}"


def build_trainjob(
    *,
    name: str,
    command: Sequence[str],
    image: str,
    nodes: int,
    gpus_per_node: int,
    runtime: str = TRAINING_RUNTIME,
    deadline_seconds: float | None = None,
    env: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The TrainJob: ``nodes`` nodes of ``image`` running ``command``, each with
    ``gpus_per_node`` GPUs and as many torchrun processes (CPU, memory, volumes, environment
    from the runtime)."""
    if not NAME_PATTERN.fullmatch(name) or len(name) > 63:
        raise TrainJobError(f"TrainJob name {name!r}: not a DNS-1035 label of at most 63 characters")
    if nodes < 1:
        raise TrainJobError(f"TrainJob {name}: nodes must be 1 or more, got {nodes}")
    if gpus_per_node < 0:
        raise TrainJobError(f"TrainJob {name}: GPUs per node must be 0 or more, got {gpus_per_node}")
    # One process per GPU; without GPUs one per node (Trainer's "auto" would start one per CPU).
    trainer: dict[str, Any] = {
        "image": image, "command": list(command), "numNodes": nodes, "numProcPerNode": max(gpus_per_node, 1),
    }
    if gpus_per_node:
        gpus = {GPU_RESOURCE: gpus_per_node}
        trainer["resourcesPerNode"] = {"requests": dict(gpus), "limits": dict(gpus)}
    if env:
        trainer["env"] = [{"name": key, "value": value} for key, value in sorted(env.items())]
    spec: dict[str, Any] = {
        "runtimeRef": {"apiGroup": GROUP, "kind": RUNTIME_KIND, "name": runtime},
        "trainer": trainer,
    }
    if deadline_seconds is not None:
        # The cluster ends the job by itself even when no launcher is left to do it.
        spec["activeDeadlineSeconds"] = max(1, math.ceil(deadline_seconds))
    metadata: dict[str, Any] = {"name": name}
    if labels:
        metadata["labels"] = dict(labels)
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "metadata": metadata, "spec": spec}


def passthrough_env(names: Sequence[str], environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables of ``names`` that are set here, to hand on to the job's nodes."""
    environ = os.environ if environ is None else environ
    return {name: environ[name] for name in names if name in environ}


# --- the API ----------------------------------------------------------------------------------


def api_client(kubeconfig: str | None = None) -> Any:
    """A ``kubernetes`` ApiClient: in-cluster (the pod's ServiceAccount) when running in a pod
    and no kubeconfig is named, else the kubeconfig (``$KUBECONFIG`` or ``~/.kube/config``)."""
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    configuration = client.Configuration()
    try:
        if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config(client_configuration=configuration)
        else:
            config.load_kube_config(config_file=_kubeconfig(kubeconfig), client_configuration=configuration)
    except (ConfigException, OSError) as exc:
        raise TrainJobError(
            f"no access to a Kubernetes API: {_one_line(str(exc))} (run in a pod, or set KUBECONFIG)"
        ) from None
    return client.ApiClient(configuration)


def current_namespace(explicit: str | None = None, kubeconfig: str | None = None) -> str:
    """``explicit``, else this pod's namespace, else the kubeconfig context's namespace."""
    if explicit:
        return explicit
    try:
        found = SERVICEACCOUNT_NAMESPACE.read_text().strip()
    except OSError:
        found = ""
    if not found:
        from kubernetes import config

        try:
            _, context = config.list_kube_config_contexts(config_file=_kubeconfig(kubeconfig))
            found = (context or {}).get("context", {}).get("namespace", "")
        except Exception:  # noqa: BLE001 - no kubeconfig is "no namespace", said below
            found = ""
    if not found:
        raise TrainJobError(
            f"no namespace for the TrainJob: not in a pod ({SERVICEACCOUNT_NAMESPACE} is missing) "
            "and none given or set in the kubeconfig context"
        )
    return found


def _kubeconfig(explicit: str | None) -> str | None:
    """The kubeconfig to read: ``explicit``, else ``$KUBECONFIG`` as it is now (the client
    reads the variable once, at import), else the client's default."""
    return explicit or os.environ.get("KUBECONFIG") or None


def _one_line(text: str, limit: int = 400) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _status_message(exc: Any) -> str:
    """The ``message`` of the API server's Status body, else the reason."""
    import json

    body = getattr(exc, "body", None)
    if body:
        try:
            message = json.loads(body).get("message")
        except (ValueError, AttributeError):
            message = body if isinstance(body, str) else None
        if message:
            return _one_line(message)
    return _one_line(getattr(exc, "reason", None) or str(exc))


def condition(job: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    """The ``kind`` condition of a TrainJob when it is true."""
    for entry in (job.get("status") or {}).get("conditions") or []:
        if entry.get("type") == kind and entry.get("status") == "True":
            return entry
    return None


def job_state(job: Mapping[str, Any]) -> str:
    """``Complete``, ``Failed``, ``Suspended``, ``Running`` (a child Job has pods) or
    ``Created`` (nothing reported yet); ``Deleting`` once it has a deletion timestamp."""
    for kind in ("Complete", "Failed", "Suspended"):
        if condition(job, kind) is not None:
            return kind
    if (job.get("metadata") or {}).get("deletionTimestamp"):
        return "Deleting"
    for child in (job.get("status") or {}).get("jobsStatus") or []:
        if (child.get("active") or 0) + (child.get("ready") or 0) + (child.get("succeeded") or 0) > 0:
            return "Running"
    return "Created"


class _Api:
    """The calls the launcher makes, with transient errors asked again until ``deadline``
    (monotonic) and the rest turned into one-line ``TrainJobError``s naming the job."""

    def __init__(self, client: Any, namespace: str, name: str, deadline: float, poll_s: float) -> None:
        from kubernetes import client as k8s

        self.custom = k8s.CustomObjectsApi(client)
        self.core = k8s.CoreV1Api(client)
        self.namespace = namespace
        self.name = name
        self.deadline = deadline
        self.poll_s = poll_s
        self.where = f"TrainJob {namespace}/{name}"

    def _call(self, action: str, call: Callable[[], Any], allowed: tuple[int, ...] = ()) -> Any:
        """``call()``; an ApiException whose status is in ``allowed`` is returned, not raised."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        while True:
            try:
                return call()
            except ApiException as exc:
                if exc.status in allowed:
                    return exc
                if exc.status not in TRANSIENT or time.monotonic() >= self.deadline:
                    raise self.error(exc, action) from None
                problem = f"{exc.status} {_status_message(exc)}"
            except HTTPError as exc:  # connection refused, reset, timed out
                if time.monotonic() >= self.deadline:
                    raise TrainJobError(
                        f"{self.where}: {action}: Kubernetes API unreachable: {_one_line(str(exc))}"
                    ) from None
                problem = _one_line(str(exc), 200)
            log.warning("%s: %s: %s; asking again", self.where, action, problem)
            time.sleep(self.poll_s)

    def error(self, exc: Any, action: str) -> TrainJobError:
        message = _status_message(exc)
        if exc.status in (401, 403):
            return TrainJobError(f"{self.where}: {action} forbidden ({exc.status}): {message}; {RBAC_HINT}")
        if exc.status == 404 and action == "create":
            return TrainJobError(
                f"{self.where}: create: {message} ({GROUP}/{VERSION} {PLURAL} not served? "
                "install Kubeflow Trainer v2.3.x)"
            )
        return TrainJobError(f"{self.where}: {action} failed ({exc.status}): {message}")

    def create(self, body: Mapping[str, Any]) -> Any:
        """The created object, or the ApiException of a 409 (it exists)."""
        return self._call(
            "create",
            lambda: self.custom.create_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, body,
                field_validation="Strict", _request_timeout=REQUEST_TIMEOUT,
            ),
            allowed=(409,),
        )

    def get(self) -> dict[str, Any] | None:
        """The TrainJob, or None when it does not exist."""
        from kubernetes.client.exceptions import ApiException

        found = self._call(
            "get",
            lambda: self.custom.get_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, self.name, _request_timeout=REQUEST_TIMEOUT
            ),
            allowed=(404,),
        )
        return None if isinstance(found, ApiException) else found

    def delete(self) -> None:
        """Delete the TrainJob and (foreground) its JobSet and pods; gone already is fine."""
        self._call(
            "delete",
            lambda: self.custom.delete_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, self.name,
                propagation_policy="Foreground", _request_timeout=REQUEST_TIMEOUT,
            ),
            allowed=(404,),
        )

    def node_pod(self, index: int = 0) -> Any | None:
        """The newest pod of node ``index`` (a JobSet restart makes new ones), or None."""
        pods = self._call(
            "list pods",
            lambda: self.core.list_namespaced_pod(
                self.namespace,
                label_selector=f"{JOBSET_NAME_LABEL}={self.name},{REPLICATED_JOB_LABEL}={NODE}",
                _request_timeout=REQUEST_TIMEOUT,
            ),
        )
        wanted = str(index)

        def is_node(pod: Any) -> bool:
            labels = pod.metadata.labels or {}
            annotations = pod.metadata.annotations or {}
            completion = labels.get(COMPLETION_INDEX, annotations.get(COMPLETION_INDEX))
            return completion == wanted and labels.get(JOB_INDEX_LABEL, "0") == "0"

        candidates = [pod for pod in pods.items if is_node(pod)]
        if not candidates:
            return None
        def created(pod: Any) -> tuple[float, str]:
            stamp = pod.metadata.creation_timestamp
            return (stamp.timestamp() if stamp else 0.0, pod.metadata.name)

        return max(candidates, key=created)

    def pod_log(self, pod: str, since_seconds: int | None) -> str | None:
        """The node container's log with timestamps (the last ``since_seconds``), or None while
        there is none to read (container not started yet, pod gone)."""
        from kubernetes.client.exceptions import ApiException

        # Raw bytes: the client would otherwise try the text as JSON first.
        options: dict[str, Any] = {
            "container": NODE, "timestamps": True, "_preload_content": False, "_request_timeout": REQUEST_TIMEOUT,
        }
        if since_seconds is not None:
            options["since_seconds"] = since_seconds
        response = self._call(
            "read the log of node 0",
            lambda: self.core.read_namespaced_pod_log(pod, self.namespace, **options),
            allowed=(400, 404),
        )
        if isinstance(response, ApiException):
            return None
        return response.data.decode("utf-8", errors="replace")


# --- node 0's log -----------------------------------------------------------------------------

_STAMP = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)")


def parse_stamp(text: str) -> tuple[int, int] | None:
    """An RFC 3339 timestamp as the kubelet writes it (``...T10:00:00.123456789Z``) as
    (seconds since the epoch, nanoseconds); None when it is not one."""
    match = _STAMP.fullmatch(text)
    if match is None:
        return None
    base, fraction, zone = match.groups()
    moment = datetime.fromisoformat(base + ("+00:00" if zone == "Z" else zone))
    return int(moment.timestamp()), int((fraction or "0").ljust(9, "0"))


def _emit_stderr(line: str) -> None:
    print(f"[node-0] {line}", file=sys.stderr, flush=True)


class LogTail:
    """Copies node 0's log into this process's output, a little at a time: each ``poll`` asks
    for the lines since the previous one (with some overlap) and drops those already copied by
    their kubelet timestamps. A new node-0 pod (the JobSet restarted) is followed from its
    first line."""

    def __init__(self, api: _Api, emit: Emit | None = None) -> None:
        self.api = api
        self.emit = emit or _emit_stderr
        self.pod: str | None = None
        self.last: tuple[int, int] | None = None
        self.at_last: set[str] = set()
        self.read_at: float | None = None

    def poll(self) -> None:
        pod = self.api.node_pod(0)
        if pod is None:
            return
        name = pod.metadata.name
        if name != self.pod:
            self.pod, self.last, self.at_last, self.read_at = name, None, set(), None
            log.info("%s: node 0 is pod %s", self.api.where, name)
        if (pod.status.phase if pod.status else None) in (None, "Pending"):
            return
        since = None
        if self.read_at is not None:
            since = math.ceil(time.monotonic() - self.read_at) + LOG_OVERLAP_SECONDS
        started = time.monotonic()
        text = self.api.pod_log(name, since)
        if text is None:
            return
        self.read_at = started
        for line in text.splitlines():
            stamp, _, message = line.partition(" ")
            key = parse_stamp(stamp)
            if key is None:  # not a kubelet line: copy as it is
                self.emit(line)
                continue
            if self.last is not None and (key < self.last or (key == self.last and message in self.at_last)):
                continue
            if key != self.last:
                self.last, self.at_last = key, set()
            self.at_last.add(message)
            self.emit(message)


# --- the launcher -----------------------------------------------------------------------------


def launch_trainjob(
    *,
    name: str,
    command: Sequence[str],
    image: str,
    nodes: int,
    gpus_per_node: int,
    timeout_s: float,
    runtime: str = TRAINING_RUNTIME,
    env: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
    namespace: str | None = None,
    poll_s: float = 15.0,
    client: Any = None,
    kubeconfig: str | None = None,
    emit: Emit | None = None,
) -> dict[str, Any]:
    """Create the TrainJob ``name`` (or adopt the one an earlier attempt created), wait until it
    is Complete or Failed, at most ``timeout_s`` seconds, copying node 0's log to ``emit``
    (stderr by default), and delete it. Returns the finished TrainJob; a failed one, one still
    running at the deadline, one deleted by someone else, and every API error are
    ``TrainJobError``s."""
    body = build_trainjob(
        name=name, command=command, image=image, nodes=nodes, gpus_per_node=gpus_per_node,
        runtime=runtime, deadline_seconds=timeout_s, env=env, labels=labels,
    )
    namespace = current_namespace(namespace, kubeconfig)
    deadline = time.monotonic() + timeout_s
    api = _Api(client if client is not None else api_client(kubeconfig), namespace, name, deadline, poll_s)
    _create_or_adopt(api, body)
    tail = LogTail(api, emit)
    job: dict[str, Any] | None = None
    state = None
    try:
        while True:
            job = api.get()
            if job is None:
                raise TrainJobGoneError(f"{api.where}: deleted by someone else while this step waited for it")
            tail.poll()
            now = job_state(job)
            if now != state:
                log.info("%s: %s (%d node(s) x %d GPU(s))", api.where, now, nodes, gpus_per_node)
                state = now
            if now in ("Complete", "Failed"):
                break
            if time.monotonic() >= deadline:
                raise TrainJobError(
                    f"{api.where}: neither Complete nor Failed after {timeout_s:g} s (the step's "
                    f"deadline; last state {now}): deleted"
                )
            time.sleep(poll_s)
    finally:
        _finish(api, tail)
    if state == "Failed":
        failed = condition(job, "Failed") or {}
        raise TrainJobError(
            f"{api.where} failed: {failed.get('reason', 'Failed')}: {_one_line(failed.get('message', ''))} "
            "(node 0's log is above)"
        )
    return job


def _create_or_adopt(api: _Api, body: Mapping[str, Any]) -> None:
    from kubernetes.client.exceptions import ApiException

    created = api.create(body)
    if not isinstance(created, ApiException):
        log.info("%s: created (runtime %s)", api.where, body["spec"]["runtimeRef"]["name"])
        return
    existing = api.get()
    if existing is not None and job_state(existing) not in ("Failed", "Deleting"):
        log.info("%s: exists already (an earlier attempt of this step): adopting it, state %s",
                 api.where, job_state(existing))
        return
    if existing is not None:
        log.warning("%s: an earlier attempt's job is %s: replacing it (the trainer resumes from "
                    "its last checkpoint in storage)", api.where, job_state(existing))
        api.delete()
        while api.get() is not None:
            if time.monotonic() >= api.deadline:
                raise TrainJobError(f"{api.where}: the earlier attempt's job is still being deleted at the deadline")
            time.sleep(api.poll_s)
    again = api.create(body)
    if isinstance(again, ApiException):
        raise api.error(again, "create")
    log.info("%s: created (runtime %s)", api.where, body["spec"]["runtimeRef"]["name"])


def _finish(api: _Api, tail: LogTail) -> None:
    """Copy the rest of node 0's log, then delete the job; problems here are warnings, so
    they never hide the outcome."""
    try:
        tail.poll()
    except TrainJobError as err:
        log.warning("%s", err)
    try:
        api.delete()
        log.info("%s: deleted", api.where)
    except TrainJobError as err:
        log.warning("%s (delete it by hand: kubectl -n %s delete trainjob %s)", err, api.namespace, api.name)
