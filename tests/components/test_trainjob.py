"""The several-nodes trainer step: a Kubeflow Trainer v2 TrainJob launched through the real
``kubernetes`` client against a fake API server (``tests/fake_k8s.py``) that validates every
posted TrainJob against the vendored v2.3.0 CRD schema and plays the controller: Created ->
Running -> Complete, Failed, 403 Forbidden, 409 on a retry (adopt, or replace a failed job),
a job that never finishes (deadline), API hiccups; and the KFP outputs filled from the result
the job's rank 0 published to storage. No cluster, no GPU, no torch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fake_k8s import TRAINJOB_CRD, FakeKubernetes, Scenario, crd_schema, strict, validation_errors
from mammo import storage
from mammo.config import PipelineParams
from mammo.config_files import parse_value
from mammo.storage.integrity import sha256_file
from mammo_components.publishing import publish_outputs
from mammo_components.trainjob import launcher
from mammo_components.trainjob.launcher import MAX_NAME, TrainJobError, build_trainjob, job_name
from mammo_components.spec import encode_value
from mammo_components.trainjob.step import launch, run_step, trainer_command

RUN_ID = "0123456789abcdef"
NAMESPACE = "kubeflow"
IMAGE = "registry.example/mammo-train:1"
PARAMS = {"backbone": "tinynet", "image_size": 32, "baseline_lr": 1e-05, "baseline_set": ["a.b=1"], "weights": None}


class Artifact:
    """What the step uses of KFP's Model and Metrics."""

    def __init__(self, path: Path, metadata: dict[str, Any] | None = None) -> None:
        self.path = str(path)
        self.metadata: dict[str, Any] = dict(metadata or {})
        self.metrics: dict[str, float] = {}

    def log_metric(self, name: str, value: float) -> None:
        self.metrics[name] = value


@pytest.fixture
def k8s(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The fake API server, reached through $KUBECONFIG (context namespace ``kubeflow``), as
    from outside a pod."""
    fake = FakeKubernetes(namespace=NAMESPACE)
    monkeypatch.setenv("KUBECONFIG", str(fake.kubeconfig(tmp_path / "kubeconfig")))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setattr(launcher, "SERVICEACCOUNT_NAMESPACE", tmp_path / "not-in-a-pod")
    yield fake
    fake.close()


@pytest.fixture
def store(tmp_path: Path) -> str:
    return str(tmp_path / "store")


def publish_trainer_result(store: str, component: str, work: Path) -> dict[str, Any]:
    """What the job's rank 0 leaves in storage: the run folder with its checkpoint, result.json
    and the manifest (as ``run_trainer`` publishes it)."""
    run_uri = storage.run_uri(store, RUN_ID, component)
    run_dir = work / component
    run_dir.mkdir(parents=True)
    (run_dir / "best_auc.pt").write_bytes(b"weights of " + component.encode())
    digest = sha256_file(run_dir / "best_auc.pt")
    metrics = {"auc": 0.75, "pr_auc": 0.5, "pf1": 0.25, "loss": 0.6}
    result = {
        "run_uri": run_uri,
        "best_uri": storage.join(run_uri, "best_auc.pt"),
        "best_sha256": digest,
        "checkpoints": {"best_auc.pt": {"uri": storage.join(run_uri, "best_auc.pt"), "sha256": digest}},
        "epochs_run": 3,
        "stopped_early": False,
        "metrics": metrics,
    }
    publish_outputs(run_dir, run_uri, result, {"component": component, "metrics": metrics})
    return result


def publishing(store: str, component: str, work: Path) -> Scenario:
    """Created -> Running -> Complete; node 0 prints three lines, node 1 one; rank 0 publishes."""
    return Scenario(
        logs={0: ["rank 0: epoch 1", "rank 0: epoch 2", "rank 0: published"], 1: ["rank 4: epoch 1"]},
        on_complete=lambda job: publish_trainer_result(store, component, work),
    )


def step_args(tmp_path: Path, store: str, **extra: Any) -> dict[str, Any]:
    return {
        "dataset_uri": "s3://mammo/datasets/rsna",
        "split_uri": "s3://mammo/splits/abc",
        "store_uri": store,
        "run_id": RUN_ID,
        "params": PARAMS,
        "model": Artifact(tmp_path / "model.json"),
        "metrics": Artifact(tmp_path / "metrics.json"),
        "nodes": 2,
        "gpus_per_node": 4,
        "image": IMAGE,
        "poll_seconds": 0.01,
        **extra,
    }


def test_a_finished_job_fills_the_steps_outputs_from_storage(
    k8s: FakeKubernetes, store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    k8s.scenario = publishing(store, "baseline_trainer", tmp_path / "rank0")
    args = step_args(tmp_path, store)
    result = launch("baseline_trainer", **args)

    # One TrainJob, valid for the CRD (the fake checked it strictly), as the issue describes it.
    [created] = k8s.created
    assert created["metadata"]["name"] == f"mammo-baseline-{RUN_ID}" == job_name(RUN_ID, "baseline_trainer")
    assert created["metadata"]["namespace"] == NAMESPACE  # the kubeconfig context's
    spec = created["spec"]
    assert spec["runtimeRef"] == {"apiGroup": "trainer.kubeflow.org", "kind": "TrainingRuntime", "name": "mammo-torch"}
    trainer = spec["trainer"]
    assert trainer["numNodes"] == 2 and trainer["numProcPerNode"] == 4 and trainer["image"] == IMAGE
    assert trainer["resourcesPerNode"] == {"requests": {"nvidia.com/gpu": 4}, "limits": {"nvidia.com/gpu": 4}}
    assert spec["activeDeadlineSeconds"] == 7 * 24 * 3600
    run_uri = storage.run_uri(store, RUN_ID, "baseline_trainer")
    assert trainer["command"][:3] == ["torchrun", "-m", "mammo_components.baseline_trainer"]
    assert trainer["command"][3:7] == [
        "--dataset=s3://mammo/datasets/rsna", "--split=s3://mammo/splits/abc", f"--out={run_uri}", f"--run-id={RUN_ID}",
    ]
    assert "MINIO" not in json.dumps(created)  # credentials come from the runtime's Secret
    [post] = k8s.sent("POST", "/trainjobs")
    assert post.query["fieldValidation"] == "Strict"

    # The outputs are the published result's, as the single-pod trainer step records them.
    model, metrics = args["model"], args["metrics"]
    assert model.metadata["uri"] == result["best_uri"] and model.metadata["sha256"] == result["best_sha256"]
    assert model.metadata["trainjob"] == {"name": created["metadata"]["name"], "nodes": 2, "gpus_per_node": 4}
    assert json.loads(Path(model.path).read_text()) == result
    assert metrics.metrics["val.auc"] == 0.75

    # Node 0's log, once each line, in order; node 1's stays out.
    copied = [line for line in capsys.readouterr().err.splitlines() if line.startswith("[node-0]")]
    assert copied == ["[node-0] rank 0: epoch 1", "[node-0] rank 0: epoch 2", "[node-0] rank 0: published"]

    # Deleted at the end, with its pods (foreground).
    [delete] = k8s.sent("DELETE", f"/trainjobs/{created['metadata']['name']}")
    assert delete.query["propagationPolicy"] == "Foreground"
    pod_logs = k8s.sent("GET", "/log")
    assert pod_logs and all(r.query["container"] == "node" for r in pod_logs)
    assert {r.path.split("/")[6].rsplit("-", 1)[0] for r in pod_logs} == {f"{created['metadata']['name']}-node-0-0"}


def test_the_unfreeze_job_gets_the_verified_init_checkpoint(
    k8s: FakeKubernetes, store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    baseline = publish_trainer_result(store, "baseline_trainer", tmp_path / "baseline")
    k8s.scenario = publishing(store, "unfreeze_trainer", tmp_path / "rank0")
    # In a pod: the namespace comes from the ServiceAccount's namespace file.
    namespace_file = tmp_path / "namespace"
    namespace_file.write_text("team-a\n")
    monkeypatch.setattr(launcher, "SERVICEACCOUNT_NAMESPACE", namespace_file)
    init = Artifact(tmp_path / "init.json", {"uri": baseline["best_uri"], "sha256": baseline["best_sha256"]})
    launch("unfreeze_trainer", **step_args(tmp_path, store, init=init))
    [created] = k8s.created
    assert created["metadata"] == {**created["metadata"], "name": f"mammo-unfreeze-{RUN_ID}", "namespace": "team-a"}
    command = created["spec"]["trainer"]["command"]
    assert command[2] == "mammo_components.unfreeze_trainer"
    assert f"--init={baseline['best_uri']}" in command


def test_a_changed_init_checkpoint_starts_no_job(k8s: FakeKubernetes, store: str, tmp_path: Path) -> None:
    baseline = publish_trainer_result(store, "baseline_trainer", tmp_path / "baseline")
    init = Artifact(tmp_path / "init.json", {"uri": baseline["best_uri"], "sha256": "0" * 64})
    with pytest.raises(storage.IntegrityError):
        launch("unfreeze_trainer", **step_args(tmp_path, store, init=init))
    assert not k8s.requests


def test_a_failed_job_is_one_line_naming_it_and_is_deleted(
    k8s: FakeKubernetes, store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    k8s.scenario = Scenario(
        states=["Created", "Running", "Failed"],
        logs={0: ["rank 0: epoch 1", "RuntimeError: CUDA out of memory"]},
        failure_message="jobset failed due to one or more job failures",
    )
    with pytest.raises(SystemExit) as exited:
        run_step(component="baseline_trainer", **step_args(tmp_path, store))
    assert exited.value.code == 2
    err = capsys.readouterr().err
    name = f"{NAMESPACE}/mammo-baseline-{RUN_ID}"
    [line] = [line for line in err.splitlines() if line.startswith("mammo: error:")]
    assert line == (
        f"mammo: error: TrainJob {name} failed: FailedJobs: jobset failed due to one or more job "
        "failures (node 0's log is above)"
    )
    assert "Traceback" not in err
    assert "[node-0] RuntimeError: CUDA out of memory" in err  # the cause, copied before the error
    assert k8s.sent("DELETE", f"/trainjobs/mammo-baseline-{RUN_ID}")


def test_forbidden_says_which_rbac_the_service_account_needs(
    k8s: FakeKubernetes, store: str, tmp_path: Path
) -> None:
    k8s.scenario = Scenario(forbidden={"create"})
    with pytest.raises(TrainJobError) as caught:
        launch("baseline_trainer", **step_args(tmp_path, store))
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"TrainJob {NAMESPACE}/mammo-baseline-{RUN_ID}: create forbidden (403): ")
    assert 'cannot create resource "trainjobs" in API group "trainer.kubeflow.org"' in message
    assert "k8s/components/kubeflow-trainer" in message and "mammo-pipeline" in message
    assert not k8s.created and not k8s.sent("DELETE")


def test_forbidden_logs_are_an_error_too(k8s: FakeKubernetes, store: str, tmp_path: Path) -> None:
    k8s.scenario = Scenario(forbidden={"list pods"}, states=["Running"])
    with pytest.raises(TrainJobError, match=r"list pods forbidden \(403\).*pods list, pods/log get"):
        launch("baseline_trainer", **step_args(tmp_path, store))
    assert k8s.sent("DELETE")  # it was created: it is deleted


def test_a_retry_adopts_the_job_of_the_earlier_attempt(
    k8s: FakeKubernetes, store: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The earlier attempt's pod died (evicted, OOM-killed) while its job ran on: the retried
    step gets 409, adopts the running job, and sees it through."""
    name = job_name(RUN_ID, "baseline_trainer")
    earlier = build_trainjob(name=name, command=["torchrun", "-m", "x"], image=IMAGE, nodes=2, gpus_per_node=4)
    k8s.add_job(earlier, "Running", publishing(store, "baseline_trainer", tmp_path / "rank0"))
    caplog.set_level("INFO")
    args = step_args(tmp_path, store)
    result = launch("baseline_trainer", **args)
    assert [r.method for r in k8s.requests if r.path.endswith("/trainjobs")] == ["POST"]
    assert not k8s.created  # the 409: nothing new
    assert "exists already (an earlier attempt of this step): adopting it" in caplog.text
    assert args["model"].metadata["uri"] == result["best_uri"]
    assert k8s.sent("DELETE", f"/trainjobs/{name}")


def test_a_retry_replaces_a_failed_job_of_the_earlier_attempt(
    k8s: FakeKubernetes, store: str, tmp_path: Path
) -> None:
    name = job_name(RUN_ID, "baseline_trainer")
    earlier = build_trainjob(name=name, command=["torchrun", "-m", "x"], image=IMAGE, nodes=2, gpus_per_node=4)
    k8s.add_job(earlier, "Failed")
    k8s.scenario = publishing(store, "baseline_trainer", tmp_path / "rank0")
    launch("baseline_trainer", **step_args(tmp_path, store))
    methods = [r.method for r in k8s.requests if r.path.endswith(("/trainjobs", f"/trainjobs/{name}"))]
    # 409, look, delete (foreground: still there once), gone, create anew, ..., delete at the end.
    assert methods[:6] == ["POST", "GET", "DELETE", "GET", "GET", "POST"]
    assert len(k8s.created) == 1 and k8s.created[0]["spec"]["trainer"]["command"][2] == "mammo_components.baseline_trainer"
    assert methods[-1] == "DELETE"


def test_a_job_that_never_finishes_ends_at_the_deadline(
    k8s: FakeKubernetes, store: str, tmp_path: Path
) -> None:
    k8s.scenario = Scenario(states=["Created", "Running"], logs={0: ["rank 0: still going"] * 3})
    with pytest.raises(TrainJobError) as caught:
        launch("baseline_trainer", **step_args(tmp_path, store, timeout_hours=0.3 / 3600))
    assert str(caught.value) == (
        f"TrainJob {NAMESPACE}/mammo-baseline-{RUN_ID}: neither Complete nor Failed after 0.3 s "
        "(the step's deadline; last state Running): deleted"
    )
    [created] = k8s.created
    assert created["spec"]["activeDeadlineSeconds"] == 1  # the cluster's own backstop
    assert k8s.sent("DELETE", f"/trainjobs/mammo-baseline-{RUN_ID}")


def test_api_hiccups_are_asked_again(k8s: FakeKubernetes, store: str, tmp_path: Path, caplog) -> None:
    k8s.scenario = publishing(store, "baseline_trainer", tmp_path / "rank0")
    k8s.scenario.transient = {"create": 1, "get": 2}
    launch("baseline_trainer", **step_args(tmp_path, store))
    assert len(k8s.sent("POST", "/trainjobs")) == 2
    assert "503" in caplog.text and "asking again" in caplog.text


def test_a_published_run_is_reused_without_a_job(k8s: FakeKubernetes, store: str, tmp_path: Path) -> None:
    result = publish_trainer_result(store, "baseline_trainer", tmp_path / "earlier")
    args = step_args(tmp_path, store)
    launch("baseline_trainer", **args)
    assert not k8s.requests
    assert args["model"].metadata["uri"] == result["best_uri"]


def test_a_completed_job_without_a_published_result_is_an_error(
    k8s: FakeKubernetes, store: str, tmp_path: Path
) -> None:
    k8s.scenario = Scenario()  # completes, publishes nothing
    with pytest.raises(TrainJobError, match=rf"TrainJob mammo-baseline-{RUN_ID} completed, but .* holds no published result"):
        launch("baseline_trainer", **step_args(tmp_path, store))


def test_no_kubernetes_api_is_one_line(tmp_path: Path, store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(TrainJobError, match=r"^no access to a Kubernetes API: .*\(run in a pod, or set KUBECONFIG\)$"):
        launch("baseline_trainer", **step_args(tmp_path, store, namespace="kubeflow"))


# --- the TrainJob itself ----------------------------------------------------------------------


def test_the_fake_rejects_what_the_crd_rejects(k8s: FakeKubernetes) -> None:
    """The fake's validation is real: a wrong type, an unknown field (strict) and a bad name are
    refused as the API server refuses them."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    api = client.CustomObjectsApi(launcher.api_client())
    good = build_trainjob(name="mammo-x", command=["torchrun"], image=IMAGE, nodes=2, gpus_per_node=1)
    cases = {
        "numNodes": (lambda b: b["spec"]["trainer"].update(numNodes="two"), 422, "trainer.numNodes: 'two' is not of type 'integer'"),
        "unknown": (lambda b: b["spec"]["trainer"].update(gpus=1), 400, "strict decoding error"),
        "name": (lambda b: b["metadata"].update(name="Mammo_X"), 422, "RFC 1035"),
        "runtimeRef": (lambda b: b["spec"].pop("runtimeRef"), 422, "'runtimeRef' is a required property"),
    }
    for label, (change, code, needle) in cases.items():
        body = json.loads(json.dumps(good))
        change(body)
        with pytest.raises(ApiException) as caught:
            api.create_namespaced_custom_object("trainer.kubeflow.org", "v1alpha1", NAMESPACE, "trainjobs", body,
                                                field_validation="Strict")
        assert caught.value.status == code, label
        assert needle in json.loads(caught.value.body)["message"], label
    assert not k8s.created


@pytest.mark.parametrize(("nodes", "gpus"), [(2, 8), (16, 1), (3, 0)])
def test_every_trainjob_we_build_is_valid_for_the_crd(nodes: int, gpus: int) -> None:
    schema = strict(crd_schema(TRAINJOB_CRD))
    body = build_trainjob(
        name=job_name(RUN_ID, "unfreeze_trainer"), image=IMAGE, nodes=nodes, gpus_per_node=gpus,
        command=trainer_command("unfreeze_trainer", run_id=RUN_ID, params=PipelineParams().training_values(),
                                uris={"dataset_uri": "d", "split_uri": "s", "out_uri": "r", "init_uri": "i"}),
        deadline_seconds=3600.5, env={"MAMMO_STORAGE_WORKERS": "8"}, labels={"app.kubernetes.io/part-of": "mammo-pipeline"},
    )
    assert validation_errors(body, schema) == []
    assert body["spec"]["activeDeadlineSeconds"] == 3601
    assert ("resourcesPerNode" in body["spec"]["trainer"]) == (gpus > 0)
    assert body["spec"]["trainer"]["numProcPerNode"] == max(gpus, 1)


def test_job_names_are_deterministic_dns_labels() -> None:
    assert job_name(RUN_ID, "baseline_trainer") == f"mammo-baseline-{RUN_ID}" == job_name(RUN_ID, "baseline_trainer")
    assert job_name(RUN_ID, "unfreeze_trainer") != job_name(RUN_ID, "baseline_trainer")
    odd = job_name("Run_ID/with.odd-characters-and-far-too-long-for-a-name", "unfreeze_trainer")
    assert odd == job_name("Run_ID/with.odd-characters-and-far-too-long-for-a-name", "unfreeze_trainer")
    assert odd.startswith("mammo-unfreeze-") and len(odd) <= MAX_NAME
    assert launcher.NAME_PATTERN.fullmatch(odd)
    with pytest.raises(TrainJobError, match="DNS-1035"):
        build_trainjob(name="-bad", command=[], image=IMAGE, nodes=1, gpus_per_node=1)


def test_params_reach_the_component_with_their_types() -> None:
    """--param values are read back with YAML (mammo.config_files.parse_value): every default and the
    awkward cases arrive as they left."""
    values = {
        **PipelineParams().training_values(),
        "small": 1e-05, "numeric_text": "1.5", "bool_text": "true", "empty": "", "none": None,
        "sets": ["early_stopping.patience=3", "loss.name: focal", "x=[1, 2]"], "unicode": "Größe",
    }
    command = trainer_command("baseline_trainer", uris={"dataset_uri": "d", "split_uri": "s", "out_uri": "r"},
                              run_id=RUN_ID, params=values)
    parsed = {}
    for arg in command:
        if arg.startswith("--param="):
            key, _, raw = arg.removeprefix("--param=").partition("=")
            parsed[key] = parse_value(raw)
    assert parsed == values
    assert encode_value(1e-05) == "1.0e-05" and encode_value("resnet50") == "resnet50"


@pytest.mark.parametrize("component", ["baseline_trainer", "unfreeze_trainer"])
def test_the_command_is_the_components_own_command_line(component: str) -> None:
    """What the nodes run parses with ``mammo component <trainer>``'s parser (torchrun -m runs
    the package's __main__, which is that command) into the same URIs, run id and params."""
    from mammo_components.cli import build_parser, load_params

    uris = {"dataset_uri": "s3://b/d", "split_uri": "s3://b/s", "out_uri": "s3://b/r", "init_uri": "s3://b/i.pt"}
    params = {**PipelineParams().training_values(), **PARAMS}
    command = trainer_command(component, uris=uris, run_id=RUN_ID, params=params)
    assert command[:3] == ["torchrun", "-m", f"mammo_components.{component}"]
    args = build_parser().parse_args([component.replace("_", "-"), *command[3:]])
    expected = {k: v for k, v in uris.items() if component == "unfreeze_trainer" or k != "init_uri"}
    assert {k: getattr(args, k) for k in expected} == expected
    assert args.run_id == RUN_ID
    assert load_params(args.params_json, args.param_pairs) == params
    # torchrun's own parser must leave every one of them to the component (no flag of the
    # component may abbreviate one of torchrun's, e.g. --run for --run-path).
    from torch.distributed.run import get_args_parser

    launched = get_args_parser().parse_args(command[1:])
    assert launched.module and launched.training_script == f"mammo_components.{component}"
    assert launched.training_script_args == command[3:]
