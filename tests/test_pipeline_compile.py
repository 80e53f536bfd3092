"""The compiled mammo-training pipeline (both profiles): its steps and their order, cluster
settings, credentials only by reference, caching, the promotion gate, parameter defaults, the
gpu profile's run-time choice between trainers in their own pods and TrainJob launchers
(``trainer_nodes``), and that compiling needs no torch."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from mammo.config import PipelineParams
from mammo_pipelines.cli import main
from test_containers import read_images_env

TRAINERS = ("baseline-trainer", "unfreeze-trainer")
#: The k-fold trainers (folds > 1, in a ParallelFor; tests/test_folds.py), trained like the trainers.
FOLD_TRAINERS = ("fold-baseline-trainer", "fold-unfreeze-trainer")
GPU_TRAINERS = (*TRAINERS, *FOLD_TRAINERS)
#: The folds choice's other steps (eval image, light).
FOLD_STEPS = ("fold-plan", "fold-models", "no-fold-models")
#: The gpu profile's TrainJob launchers (trainer_nodes > 1), in a dsl.If beside the trainers.
LAUNCHERS = ("baseline-trainjob", "unfreeze-trainjob")
#: Values that must never appear in a compiled pipeline, set in the environment while compiling.
SENTINELS = {"MINIO_ACCESS_KEY": "sentinel-access-4711", "MINIO_SECRET_KEY": "sentinel-secret-4711"}


def _compile(tmp_path: Path, profile: str, *extra: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    out = tmp_path / f"{profile}.yaml"
    assert main(["compile", "--profile", profile, "--out", str(out), *extra]) == 0
    text = out.read_text()
    spec, platform = yaml.safe_load_all(text)
    return spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"], text


@pytest.fixture(scope="module", params=["gpu", "kind"])
def compiled(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    with pytest.MonkeyPatch.context() as mp:
        for key, value in SENTINELS.items():
            mp.setenv(key, value)
        spec, executors, text = _compile(tmp_path_factory.mktemp(request.param), request.param)
    return request.param, spec, executors, text


def _dags(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The root DAG and those of the dsl.If/Else groups, by component name ("root")."""
    return {"root": spec["root"]["dag"], **{n: c["dag"] for n, c in spec["components"].items() if "dag" in c}}


def _owners(spec: dict[str, Any]) -> dict[str, str]:
    """Task name -> the DAG that holds it (task names are unique in a pipeline)."""
    return {task: dag for dag, body in _dags(spec).items() for task in body["tasks"]}


def _all_tasks(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every task, wherever it sits (root or inside a condition group)."""
    return {task: _dags(spec)[dag]["tasks"][task] for task, dag in _owners(spec).items()}


def _group_task(spec: dict[str, Any], dag: str) -> str:
    """The task that runs the group component ``dag``."""
    [task] = [name for name, t in _all_tasks(spec).items() if t["componentRef"]["name"] == dag]
    return task


def _root_task(spec: dict[str, Any], task: str) -> str:
    """The root DAG's task that holds ``task``, through nested groups (dsl.If, ParallelFor)."""
    owners = _owners(spec)
    while owners[task] != "root":
        task = _group_task(spec, owners[task])
    return task


def _parameter_source(spec: dict[str, Any], task: str, parameter: str) -> tuple[str, ...]:
    """Where a task's input parameter comes from, followed out of condition groups:
    ("task", producer, key), ("pipeline", name) or ("constant", value)."""
    owners = _owners(spec)
    source = _all_tasks(spec)[task]["inputs"]["parameters"][parameter]
    while "componentInputParameter" in source:
        if owners[task] == "root":
            return ("pipeline", source["componentInputParameter"])
        name = source["componentInputParameter"]
        task = _group_task(spec, owners[task])
        source = _all_tasks(spec)[task]["inputs"]["parameters"][name]
    if "taskOutputParameter" in source:
        return ("task", source["taskOutputParameter"]["producerTask"], source["taskOutputParameter"]["outputParameterKey"])
    return ("constant", source["runtimeValue"]["constant"])


def _artifact_producers(spec: dict[str, Any], task: str, artifact: str) -> set[tuple[str, str]]:
    """The (step, output) pairs a task's input artifact can come from, through condition
    groups and dsl.OneOf."""
    owners = _owners(spec)
    source = _all_tasks(spec)[task]["inputs"]["artifacts"][artifact]
    if "componentInputArtifact" in source:
        return _artifact_producers(spec, _group_task(spec, owners[task]), source["componentInputArtifact"])
    producer, key = source["taskOutputArtifact"]["producerTask"], source["taskOutputArtifact"]["outputArtifactKey"]

    def outputs(task: str, key: str) -> set[tuple[str, str]]:
        component = spec["components"][_all_tasks(spec)[task]["componentRef"]["name"]]
        if "dag" not in component:
            return {(task, key)}
        selectors = component["dag"]["outputs"]["artifacts"][key]["artifactSelectors"]
        return set().union(*(outputs(s["producerSubtask"], s["outputArtifactKey"]) for s in selectors))

    return outputs(producer, key)


def _executor(spec: dict[str, Any], task: str) -> dict[str, Any]:
    component = _all_tasks(spec)[task]["componentRef"]["name"]
    return spec["deploymentSpec"]["executors"][spec["components"][component]["executorLabel"]]["container"]


#: The dataset_format choice (dsl.If/Else) and the dataset URI it hands on (dsl.OneOf of the
#: preprocess merge's output and the PNG dataset step's).
DATASET_CHOICE = "condition-branches-1"
DATASET_SOURCE = ("task", DATASET_CHOICE, "pipelinechannel--condition-branches-1-oneof-1")
PREPROCESS_STEPS = ("preprocess-plan", "preprocessor", "preprocess-merge", "png-dataset")


def test_dicom_input_runs_the_preprocessor_first_and_hands_its_dataset_on(compiled) -> None:
    profile, spec, executors, _ = compiled
    tasks = _all_tasks(spec)
    owners = _owners(spec)
    choice = spec["components"][spec["root"]["dag"]["tasks"][DATASET_CHOICE]["componentRef"]["name"]]["dag"]
    dicom, png = (tasks[name] for name in choice["tasks"])
    assert dicom["triggerPolicy"]["condition"] == "inputs.parameter_values['pipelinechannel--dataset_format'] == 'dicom'"
    assert {dicom["taskInfo"]["name"], png["taskInfo"]["name"]} == {"dicom-input", "png-input"}
    assert set(spec["components"][dicom["componentRef"]["name"]]["dag"]["tasks"]) == {
        "preprocess-plan", "preprocess-merge", _group_task(spec, owners["preprocessor"])}
    # One preprocessor pod per shard index the plan returns; the merge collects them all.
    loop = tasks[_group_task(spec, owners["preprocessor"])]
    assert loop["parameterIterator"]["items"]["inputParameter"] == "pipelinechannel--preprocess-plan-Output"
    assert _parameter_source(spec, "preprocessor", "shards") == ("pipeline", "preprocess_shards")
    assert _parameter_source(spec, "preprocess-plan", "preprocess_shards") == ("pipeline", "preprocess_shards")
    assert "preprocessor" in str(tasks["preprocess-merge"]["inputs"]["parameters"]["parts"])
    for task in PREPROCESS_STEPS:
        assert not tasks[task].get("cachingOptions", {}).get("enableCache"), task
        assert _parameter_source(spec, task, "dataset_uri") == ("pipeline", "dataset_uri")
        container = _executor(spec, task)
        assert container["image"] == read_images_env()["EVAL_IMAGE"] and "accelerator" not in container["resources"]
        assert f"mammo_components.preprocessor.step import run_" in container["command"][-1]
    assert tasks["preprocessor"]["retryPolicy"]["maxRetryCount"] >= 1  # a retried shard resumes from its journal
    # Everything downstream reads the dataset the choice hands on.
    for task in ("split-builder", *TRAINERS, "evaluator"):
        assert _parameter_source(spec, task, "dataset_uri") == DATASET_SOURCE
    selectors = spec["components"][spec["root"]["dag"]["tasks"][DATASET_CHOICE]["componentRef"]["name"]]["dag"]["outputs"]
    picked = selectors["parameters"]["pipelinechannel--condition-branches-1-oneof-1"]["valueFromOneof"]["parameterSelectors"]
    assert [p["outputParameterKey"] for p in picked] == ["pipelinechannel--preprocess-merge-Output", "pipelinechannel--png-dataset-Output"]


def _in_train_image(profile: str) -> tuple[str, ...]:
    """The tasks that run the training image: the trainers, and in the gpu profile the
    evaluator (with its GPU)."""
    return (*GPU_TRAINERS, "evaluator") if profile == "gpu" else GPU_TRAINERS


def _steps(profile: str) -> tuple[str, ...]:
    """The tasks that run a container in ``profile``."""
    return (*PREPROCESS_STEPS, "split-builder", *GPU_TRAINERS, *FOLD_STEPS, *(LAUNCHERS if profile == "gpu" else ()), "evaluator", "promoter")


def test_five_steps_in_order_and_the_promoter_after_every_evaluation(compiled) -> None:
    profile, spec, _, _ = compiled
    tasks = spec["root"]["dag"]["tasks"]
    # gpu: the trainers sit in the trainer_nodes choice (test_trainer_nodes_... below); the
    # dataset_format choice (DATASET_CHOICE, test_dicom_input_... below) comes first.
    training = {"condition-branches-5"} if profile == "gpu" else set(TRAINERS)
    # The folds choice (k-fold training, tests/test_folds.py) comes after the trainers.
    folds = {_root_task(spec, "fold-plan")}
    assert set(tasks) == {DATASET_CHOICE, "split-builder", *training, *folds, "evaluator", "promoter"}
    depends = {name: set(task.get("dependentTasks", [])) for name, task in _all_tasks(spec).items()}
    assert depends["split-builder"] == {DATASET_CHOICE}
    assert _parameter_source(spec, "baseline-trainer", "split_uri") == ("task", "split-builder", "split_uri")
    assert depends["unfreeze-trainer"] >= {"baseline-trainer"}
    assert training <= depends["evaluator"]
    # Both trainers' best checkpoints are the evaluator's candidates.
    assert _artifact_producers(spec, "evaluator", "baseline") >= {("baseline-trainer", "model")}
    assert _artifact_producers(spec, "evaluator", "unfreeze") >= {("unfreeze-trainer", "model")}
    assert _artifact_producers(spec, "unfreeze-trainer", "init") == {("baseline-trainer", "model")}
    # No gate: the promoter runs after every evaluation (it records every decision, and acts on
    # the evaluator's verdict carried by the candidate's metadata).
    promoter = tasks["promoter"]
    assert "evaluator" in depends["promoter"] and "triggerPolicy" not in promoter
    assert promoter["inputs"]["artifacts"]["candidate"]["taskOutputArtifact"] == {"outputArtifactKey": "best", "producerTask": "evaluator"}


def test_the_kfp_run_id_reaches_the_uncached_steps_only(compiled) -> None:
    """KFP's run id goes to the split builder (recorded in the run folder) and the evaluator
    (its metadata); the cached trainers never see it, or no rerun would hit their cache."""
    profile, spec, _, _ = compiled
    for task in ("split-builder", "evaluator"):
        assert _parameter_source(spec, task, "kfp_run_id") == ("constant", "{{$.pipeline_job_uuid}}")
    for task in (*GPU_TRAINERS, *(LAUNCHERS if profile == "gpu" else ())):
        assert "kfp_run_id" not in _all_tasks(spec)[task]["inputs"]["parameters"]


@pytest.mark.parametrize("pipeline", ["training", "scoring"])
def test_every_step_input_and_output_is_described(pipeline: str, tmp_path: Path) -> None:
    """The KFP UI shows each component input's and output's description: none is missing."""
    out = tmp_path / "p.yaml"
    assert main(["compile", "--profile", "gpu", "--pipeline", pipeline, "--out", str(out)]) == 0
    spec = next(yaml.safe_load_all(out.read_text()))
    for name, component in spec["components"].items():
        if "executorLabel" not in component:
            continue  # a condition or loop group, not a step
        for side in ("inputDefinitions", "outputDefinitions"):
            for kind in ("parameters", "artifacts"):
                for key, definition in component.get(side, {}).get(kind, {}).items():
                    if key == "Output":
                        continue  # a step's return value
                    assert definition.get("description"), f"{name} {side} {key}"


def test_gpu_requests_only_in_the_gpu_profile(compiled) -> None:
    profile, spec, executors, _ = compiled
    for task in _steps(profile):
        accelerator = _executor(spec, task).get("resources", {}).get("accelerator")
        if profile == "gpu" and task in GPU_TRAINERS:
            assert accelerator["resourceType"] == "nvidia.com/gpu"
            assert "trainer_gpus" in accelerator["resourceCount"]
            assert executors[f"exec-{task}"]["tolerations"] == [
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
            ]
        elif profile == "gpu" and task == "evaluator":
            # One GPU by default: an RSNA-size test split is hours of CPU inference.
            assert accelerator["resourceType"] == "nvidia.com/gpu" and accelerator["resourceCount"] == "1"
            assert _executor(spec, task)["image"] == _executor(spec, "baseline-trainer")["image"]
        else:
            assert accelerator is None, task
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert ("trainer_gpus" in params) == (profile == "gpu")
    assert ("trainer_nodes" in params) == (profile == "gpu")


def test_trainer_nodes_chooses_trainjob_launchers_at_run_time(compiled) -> None:
    """gpu: ``trainer_nodes`` > 1 runs the trainers as TrainJobs, launched by steps whose pods
    request no GPU; otherwise (default 1) the trainers run in their own GPU pods. The evaluator
    takes whichever ran (dsl.OneOf)."""
    profile, spec, executors, _ = compiled
    tasks = _all_tasks(spec)
    if profile == "kind":
        assert not set(LAUNCHERS) & set(tasks)
        return
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["trainer_nodes"]["parameterType"] == "NUMBER_INTEGER" and params["trainer_nodes"]["defaultValue"] == 1
    owners = _owners(spec)
    branches = {tasks[_group_task(spec, owners[t])]["taskInfo"]["name"]: _group_task(spec, owners[t])
                for t in (*LAUNCHERS, *TRAINERS)}
    assert set(branches) == {"several-nodes", "one-node"}
    assert {owners[t] for t in LAUNCHERS} == {tasks[branches["several-nodes"]]["componentRef"]["name"]}
    assert {owners[t] for t in TRAINERS} == {tasks[branches["one-node"]]["componentRef"]["name"]}
    several = tasks[branches["several-nodes"]]["triggerPolicy"]["condition"].replace("\n", " ")
    one = tasks[branches["one-node"]]["triggerPolicy"]["condition"].replace("\n", " ")
    nodes = "int(inputs.parameter_values['pipelinechannel--trainer_nodes'])"
    assert several.split() == [nodes, ">", "1"]
    assert one.replace(" ", "") == f"!({nodes}>1)".replace(" ", "")
    images = read_images_env()
    for launcher, trainer in zip(LAUNCHERS, TRAINERS):
        container = _executor(spec, launcher)
        assert "accelerator" not in container["resources"]  # the launcher pod: no GPU
        assert "mammo_components.trainjob.step import run_step" in container["command"][-1]
        assert f'component="{trainer.replace("-", "_")}"' in container["command"][-1]
        assert "tolerations" not in executors[f"exec-{launcher}"]
        assert _parameter_source(spec, launcher, "nodes") == ("pipeline", "trainer_nodes")
        assert _parameter_source(spec, launcher, "gpus_per_node") == ("pipeline", "trainer_gpus")
        assert _parameter_source(spec, launcher, "image") == ("constant", images["TRAIN_IMAGE"])
        assert _parameter_source(spec, launcher, "store_uri") == ("pipeline", "store_uri")
        assert _parameter_source(spec, launcher, "dataset_uri") == DATASET_SOURCE
        assert _parameter_source(spec, launcher, "params") == ("task", "split-builder", "params")
    assert _artifact_producers(spec, "unfreeze-trainjob", "init") == {("baseline-trainjob", "model")}
    assert _artifact_producers(spec, "evaluator", "baseline") == {("baseline-trainjob", "model"), ("baseline-trainer", "model")}
    assert _artifact_producers(spec, "evaluator", "unfreeze") == {("unfreeze-trainjob", "model"), ("unfreeze-trainer", "model")}


def test_images_pull_policy_and_resources_follow_the_profile(compiled) -> None:
    profile, spec, executors, _ = compiled
    images = read_images_env()
    train = images["TRAIN_IMAGE" if profile == "gpu" else "TRAIN_IMAGE_CPU"]
    for task in _steps(profile):
        container = _executor(spec, task)
        assert container["image"] == (train if task in _in_train_image(profile) else images["EVAL_IMAGE"])
        assert container["resources"]["resourceMemoryLimit"] and container["resources"]["resourceCpuRequest"]
        assert "kfp.dsl.executor_main" in " ".join(container["command"])  # lightweight component
    policy = "Always" if profile == "gpu" else "IfNotPresent"
    assert {e["imagePullPolicy"] for e in executors.values()} == {policy}


def test_credentials_only_by_reference(compiled) -> None:
    profile, spec, executors, text = compiled
    assert len(executors) == len(_steps(profile))
    dicom_steps = {f"exec-{task}" for task in ("preprocess-plan", "preprocessor", "preprocess-merge")}
    for name, executor in executors.items():
        # The storage keys as files of the mounted Secret, named by MINIO_*_KEY_FILE: in no
        # process's environment.
        # The promoter alone gets the keys that may write models/ (the production model).
        secret = "mammo-minio-promoter" if name == "exec-promoter" else "mammo-minio"
        assert executor["secretAsVolume"] == [{
            "secretName": secret, "secretNameParameter": {"runtimeValue": {"constant": secret}},
            "mountPath": "/var/run/secrets/mammo-storage", "optional": False,
        }], name
        # The DICOM steps read the site's pseudonymisation key from its own (optional) Secret.
        if name in dicom_steps:
            [key] = executor["secretAsEnv"]
            assert key["secretName"] == "mammo-pseudonym-key" and key.get("optional") is True, name
            assert [k["envVar"] for k in key["keyToEnv"]] == ["MAMMO_PSEUDONYM_KEY"]
        else:
            assert "secretAsEnv" not in executor, name
        [config] = executor["configMapAsEnv"]
        assert config["configMapName"] == "mammo-runtime"
        assert {k["envVar"] for k in config["keyToEnv"]} >= {"MINIO_ENDPOINT", "MINIO_SECURE"}
        assert executor["podMetadata"]["labels"] == {"app.kubernetes.io/part-of": "mammo-pipeline"}
    for task in _steps(profile):
        env = {e["name"]: e["value"] for e in _executor(spec, task).get("env", [])}
        assert env["MINIO_ACCESS_KEY_FILE"] == "/var/run/secrets/mammo-storage/MINIO_ACCESS_KEY", task
        assert env["MINIO_SECRET_KEY_FILE"] == "/var/run/secrets/mammo-storage/MINIO_SECRET_KEY", task
    for value in SENTINELS.values():
        assert value not in text
    for executor in spec["deploymentSpec"]["executors"].values():  # only where the keys are, no key itself
        names = {env["name"] for env in executor["container"].get("env", []) if env["name"].startswith("MINIO_")}
        assert names == {"MINIO_ACCESS_KEY_FILE", "MINIO_SECRET_KEY_FILE"}


def test_trainers_and_the_evaluator_retry_and_get_a_memory_backed_shm(compiled) -> None:
    profile, spec, executors, _ = compiled
    tasks = _all_tasks(spec)
    launchers = LAUNCHERS if profile == "gpu" else ()
    # A retried launcher adopts its running TrainJob; a retried evaluator starts again from
    # the published trainer results (it publishes its own folder only when complete).
    for task in (*GPU_TRAINERS, *launchers, "evaluator"):
        retry = tasks[task]["retryPolicy"]
        assert retry["maxRetryCount"] == 3 and retry["backoffDuration"] == "60s" and retry["backoffFactor"] == 2.0
    for task in _in_train_image(profile):
        [shm] = [m for m in executors[f"exec-{task}"]["emptyDirMounts"] if m["mountPath"] == "/dev/shm"]
        assert shm["medium"] == "Memory" and shm["sizeLimit"]
    for task in launchers:  # the TrainJob's nodes get /dev/shm from the TrainingRuntime
        assert "emptyDirMounts" not in executors[f"exec-{task}"]
    assert "retryPolicy" not in tasks["split-builder"]
    for task in {"split-builder", "evaluator"} - set(_in_train_image(profile)):
        assert all(m["mountPath"] != "/dev/shm" for m in executors[f"exec-{task}"].get("emptyDirMounts", []))


def test_only_the_trainers_cache(compiled) -> None:
    profile, spec, _, _ = compiled
    tasks = {name: task for name, task in _all_tasks(spec).items() if name in _steps(profile)}
    cached = {name for name, task in tasks.items() if task.get("cachingOptions", {}).get("enableCache")}
    launchers = set(LAUNCHERS) if profile == "gpu" else set()
    assert cached == set(GPU_TRAINERS) | launchers
    assert not tasks["promoter"].get("cachingOptions", {}).get("enableCache")
    # The trainers' cache key holds the run id, which the (never cached) split builder derives
    # from the dataset's objects, the split, the parameters and the code.
    for task in cached:
        assert _parameter_source(spec, task, "run_id") == ("task", "split-builder", "run_id")


def test_parameter_defaults_are_the_packages_under_the_profiles_preset(compiled) -> None:
    """gpu: PipelineParams' defaults (the research settings, preset full); kind: those with the
    kind preset's values over them."""
    profile, spec, _, _ = compiled
    params = spec["root"]["inputDefinitions"]["parameters"]
    defaults = {name: p.get("defaultValue") for name, p in params.items()}
    preset = {} if profile == "gpu" else yaml.safe_load(
        (Path(__file__).resolve().parents[1] / "pipelines/mammo_pipelines/presets/kind.yaml").read_text())["params"]
    assert preset or profile == "gpu"
    for name, field in PipelineParams.model_fields.items():
        if name == "data":
            continue
        expected = preset.get(name, field.get_default(call_default_factory=True))
        expected = str(expected) if name == "image_size" else expected
        assert defaults[name] == ("" if expected is None else expected), name
    assert params["baseline_epochs"]["parameterType"] == "NUMBER_INTEGER"
    assert params["baseline_lr"]["parameterType"] == "NUMBER_DOUBLE"
    assert params["augment"]["parameterType"] == "BOOLEAN"
    assert params["unfreeze_set"]["parameterType"] == "LIST"
    assert defaults["dataset_uri"] == ("s3://mammo/datasets/rsna" if profile == "gpu" else "s3://mammo/datasets/demo")
    assert defaults["store_uri"] == "s3://mammo"
    assert defaults["promotion_metric"] == "test.breast.auc" and defaults["promotion_margin"] == 0.005


def test_overrides_reach_the_gpu_steps(tmp_path: Path) -> None:
    spec, executors, _ = _compile(
        tmp_path, "gpu", "--node-selector", "nvidia.com/gpu.product=NVIDIA-A100-SXM4-80GB",
        "--toleration", "dedicated=gpu:NoSchedule", "--evaluator-gpus", "1",
        "--train-image", "registry.example/train:1", "--secret", "other-keys",
    )
    for task in (*GPU_TRAINERS, "evaluator"):
        executor = executors[f"exec-{task}"]
        assert executor["nodeSelector"]["labels"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
        assert executor["tolerations"] == [{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]
        assert _executor(spec, task)["image"] == "registry.example/train:1"
    assert _executor(spec, "evaluator")["resources"]["accelerator"]["resourceCount"] == "1"
    for task in ("split-builder", *LAUNCHERS):
        assert "nodeSelector" not in executors[f"exec-{task}"] and "tolerations" not in executors[f"exec-{task}"]
    # The TrainJobs run the given training image.
    for task in LAUNCHERS:
        assert _parameter_source(spec, task, "image") == ("constant", "registry.example/train:1")
    assert {e["secretAsVolume"][0]["secretName"] for n, e in executors.items() if n != "exec-promoter"} == {"other-keys"}
    assert executors["exec-promoter"]["secretAsVolume"][0]["secretName"] == "mammo-minio-promoter"
    spec, executors, _ = _compile(tmp_path, "gpu", "--pseudonym-secret", "site-key")
    assert executors["exec-preprocessor"]["secretAsEnv"][0]["secretName"] == "site-key"


def test_kueue_queue_and_priority_label_the_gpu_steps_and_the_trainjobs(tmp_path: Path) -> None:
    """--queue/--priority-class become Kueue's labels on every step that requests GPUs and on
    the TrainJobs the launchers create; --pod-label/--pod-annotation reach every step's pod."""
    spec, executors, _ = _compile(
        tmp_path, "gpu", "--queue", "radiology-gpus", "--priority-class", "research-low",
        "--pod-label", "cost-centre=radiology", "--pod-annotation", "example.org/owner=ml team",
    )
    kueue = {"kueue.x-k8s.io/queue-name": "radiology-gpus", "kueue.x-k8s.io/priority-class": "research-low"}
    for task in _steps("gpu"):
        metadata = executors[f"exec-{task}"]["podMetadata"]
        gpus = _executor(spec, task).get("resources", {}).get("accelerator") is not None
        assert gpus == (task in (*GPU_TRAINERS, "evaluator")), task
        wanted = {"app.kubernetes.io/part-of": "mammo-pipeline", "cost-centre": "radiology", **(kueue if gpus else {})}
        assert metadata["labels"] == wanted, task
        assert metadata["annotations"] == {"example.org/owner": "ml team"}, task
    for task in LAUNCHERS:
        assert _parameter_source(spec, task, "labels") == ("constant", {"cost-centre": "radiology", **kueue})


@pytest.mark.parametrize(("args", "message"), [
    (["--queue", "Bad_Queue"], "--queue 'Bad_Queue': not a Kueue object name"),
    (["--pod-label", "cost centre=x"], "is not a Kubernetes label key"),
    (["--pod-label", "team=ml team"], "is not a label value"),
    (["--pod-label", "kueue.x-k8s.io/queue-name=q"], "the pipeline sets kueue.x-k8s.io/queue-name itself"),
    (["--pod-annotation", "novalue"], "expected KEY=VALUE"),
])
def test_bad_queue_labels_and_annotations_are_one_line(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["compile", "--profile", "gpu", "--out", str(tmp_path / "x.yaml"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "x.yaml").exists()


def test_compile_refuses_gpu_settings_in_the_kind_profile(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compile", "--profile", "kind", "--out", str(tmp_path / "x.yaml"), "--evaluator-gpus", "1"]) == 2
    assert "has no GPUs" in capsys.readouterr().err
    assert main(["compile", "--profile", "kind", "--out", str(tmp_path / "x.yaml"), "--queue", "q"]) == 2
    assert "has no GPU steps to queue" in capsys.readouterr().err
    assert not (tmp_path / "x.yaml").exists()


def test_compiles_without_torch(tmp_path: Path) -> None:
    """In a fresh interpreter where importing torch fails, both profiles still compile."""
    blocker = tmp_path / "site"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(textwrap.dedent("""
        import sys

        class _NoTorch:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "torchvision"):
                    raise ImportError(f"{name} is blocked: compiling must not need it")
                return None

        sys.meta_path.insert(0, _NoTorch())
    """))
    script = textwrap.dedent(f"""
        import sys
        from mammo_pipelines.cli import main
        for profile in ("gpu", "kind"):
            assert main(["compile", "--profile", profile, "--out", r"{tmp_path}/" + profile + ".yaml"]) == 0
        try:
            import torch
        except ImportError:
            pass
        else:
            sys.exit("torch was importable: the blocker did not work")
        assert not any(m.split(".")[0] == "torch" for m in sys.modules)
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path.parent, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "gpu.yaml").stat().st_size > 0 and (tmp_path / "kind.yaml").stat().st_size > 0


def test_every_parameter_is_in_the_readme_reference() -> None:
    from mammo_pipelines.pipeline import parameters_for
    from mammo_pipelines.profiles import get_profile

    readme = (Path(__file__).resolve().parents[1] / "pipelines" / "README.md").read_text()
    reference = readme.split("## Parameters", 1)[1].split("\n## ", 1)[0]
    for parameter in parameters_for(get_profile("gpu", train_image="t", eval_image="e")):
        assert f"`{parameter.name}`" in reference, parameter.name


@pytest.mark.parametrize("profile", ["gpu", "kind"])
def test_every_pipeline_parameter_carries_its_description(profile: str, tmp_path: Path) -> None:
    """The KFP UI's run form shows these; they come from PipelineParams' field descriptions."""
    from mammo_pipelines.pipeline import compile_pipeline
    from mammo_pipelines.profiles import get_profile

    path = compile_pipeline(get_profile(profile), tmp_path / "p.yaml")
    spec = next(yaml.safe_load_all(path.read_text()))
    params = spec["root"]["inputDefinitions"]["parameters"]
    missing = [name for name, value in params.items() if not value.get("description")]
    assert not missing, missing
    assert params["promotion_margin"]["description"] == PipelineParams.model_fields["promotion_margin"].description


def test_shm_size_override_reaches_the_trainer_pods_and_bad_sizes_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "p.yaml"
    assert main(["compile", "--profile", "gpu", "--shm-size", "64Gi", "--out", str(out)]) == 0
    platform = list(yaml.safe_load_all(out.read_text()))[1]
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"].values()
    sizes = [mount["sizeLimit"] for executor in executors for mount in executor.get("emptyDirMounts", [])
             if mount["mountPath"] == "/dev/shm"]
    assert sizes and set(sizes) == {"64Gi"}
    assert main(["compile", "--profile", "gpu", "--shm-size", "lots", "--out", str(out)]) == 2
    assert "--shm-size 'lots'" in capsys.readouterr().err


def test_every_step_is_bounded_and_the_run_expires(compiled) -> None:
    """A hung step gives its node (and GPUs) back: every step has a deadline, the trainers and
    their launchers a long one; Argo deletes the run's pods some time after it finished."""
    profile, spec, executors, text = compiled
    long, short, ttl = (48 * 3600, 6 * 3600, 7 * 86400) if profile == "gpu" else (4 * 3600, 3600, 86400)
    launchers = LAUNCHERS if profile == "gpu" else ()
    for task in _steps(profile):
        expected = long if task in (*GPU_TRAINERS, *launchers) else short
        assert int(executors[f"exec-{task}"]["activeDeadlineSeconds"]) == expected, task
        # The images' user, stated: restricted Pod Security admits the containers.
        assert executors[f"exec-{task}"]["securityContext"] == {"runAsUser": "10001", "runAsGroup": "10001", "runAsNonRoot": True}
        assert "imagePullSecret" not in executors[f"exec-{task}"]
    platform = list(yaml.safe_load_all(text))[1]["platforms"]["kubernetes"]
    assert platform["pipelineConfig"] == {"resourceTtlOnCompletion": ttl}


def test_pull_secrets_deadlines_and_ttl_follow_the_overrides(tmp_path: Path) -> None:
    _, executors, text = _compile(
        tmp_path, "gpu", "--image-pull-secret", "regcred", "--image-pull-secret", "mirror-creds",
        "--image-pull-secret", "regcred", "--trainer-timeout", "12h", "--step-timeout", "90m", "--ttl", "2d",
    )
    for name, executor in executors.items():
        assert [s["secretName"] for s in executor["imagePullSecret"]] == ["regcred", "mirror-creds"], name
        expected = 12 * 3600 if name.removeprefix("exec-") in (*GPU_TRAINERS, *LAUNCHERS) else 90 * 60
        assert int(executor["activeDeadlineSeconds"]) == expected, name
    assert list(yaml.safe_load_all(text))[1]["platforms"]["kubernetes"]["pipelineConfig"] == {"resourceTtlOnCompletion": 2 * 86400}
    for secret in ("regcred",):  # a pull secret is referenced by name, never read
        assert text.count(f"secretName: {secret}") == len(executors)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--trainer-timeout", "0"], "--trainer-timeout '0': a duration above 0"),
        (["--step-timeout", "soon"], "--step-timeout 'soon': a duration above 0"),
        (["--ttl", "1w"], "--ttl '1w': a duration above 0"),
        (["--image-pull-secret", "Reg_Cred"], "--image-pull-secret 'Reg_Cred': not a Kubernetes Secret name"),
        (["--train-image", "registry.example/train@sha256:1234"], "--train-image 'registry.example/train@sha256:1234': not an image reference"),
        (["--eval-image", "Registry.Example/Eval:1"], "not an image reference"),
    ],
)
def test_bad_bounds_secrets_and_image_references_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert main(["compile", "--profile", "gpu", "--out", str(tmp_path / "x.yaml"), *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.yaml").exists()


@pytest.mark.slow
def test_images_pinned_by_digest_are_used_as_pinned_and_enter_the_run_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """images.env's *_DIGEST keys (written by `make images-push`) pin the gpu profile's images:
    the steps run exactly that build (no pull when present), and the run id's code version
    names both digests, so a train image pushed again changes the run id and KFP's cache key."""
    train_digest, eval_digest = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    text = (Path(__file__).resolve().parents[1] / "images.env").read_text()
    pinned = tmp_path / "images.env"
    pinned.write_text(
        text.replace("TRAIN_IMAGE_DIGEST=\n", f"TRAIN_IMAGE_DIGEST={train_digest}\n")
        .replace("EVAL_IMAGE_DIGEST=\n", f"EVAL_IMAGE_DIGEST={eval_digest}\n")
    )
    assert pinned.read_text() != text
    monkeypatch.setenv("MAMMO_IMAGES_ENV", str(pinned))
    images = read_images_env()
    spec, executors, _ = _compile(tmp_path, "gpu")
    assert "not pinned by digest" not in capsys.readouterr().err
    train, evaluate = f"{images['TRAIN_IMAGE']}@{train_digest}", f"{images['EVAL_IMAGE']}@{eval_digest}"
    for task in _steps("gpu"):
        assert _executor(spec, task)["image"] == (train if task in _in_train_image("gpu") else evaluate)
    assert {e["imagePullPolicy"] for e in executors.values()} == {"IfNotPresent"}
    code = _parameter_source(spec, "split-builder", "code_version")[1]
    assert train_digest in code and eval_digest in code
    for task in LAUNCHERS:
        assert _parameter_source(spec, task, "image") == ("constant", train)

    # Given directly, a digest reference is taken as it is; the kind profile (TRAIN_IMAGE_CPU,
    # loaded into kind, never pushed) is not pinned and keeps IfNotPresent.
    direct = f"registry.example/mammo-train:2@{train_digest}"
    spec, _, _ = _compile(tmp_path, "gpu", "--train-image", direct, "--image-pull-policy", "Always")
    assert _executor(spec, "baseline-trainer")["image"] == direct
    spec, executors, _ = _compile(tmp_path, "kind")
    assert _executor(spec, "baseline-trainer")["image"] == images["TRAIN_IMAGE_CPU"]

    pinned.write_text(pinned.read_text().replace(f"EVAL_IMAGE_DIGEST={eval_digest}", "EVAL_IMAGE_DIGEST=sha256:short"))
    assert main(["compile", "--profile", "gpu", "--out", str(tmp_path / "bad.yaml")]) == 2
    assert "EVAL_IMAGE_DIGEST='sha256:short' is not sha256:<64 hex digits>" in capsys.readouterr().err


def test_unpinned_gpu_images_are_named_in_a_note(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _compile(tmp_path, "gpu")
    assert "images are not pinned by digest" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "kind"),
    [([], "emptyDirMounts"), (["--data-storage-class", "fast-ssd"], "genericEphemeralVolume"), (["--data-pvc", "rsna-cache"], "pvcMount")],
)
def test_trainers_and_the_evaluator_keep_their_data_on_a_planned_volume(extra, kind, tmp_path: Path) -> None:
    out = tmp_path / "p.yaml"
    assert main(["compile", "--profile", "gpu", "--data-volume-size", "300Gi", *extra, "--out", str(out)]) == 0
    documents = list(yaml.safe_load_all(out.read_text()))
    executors = documents[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    containers = documents[0]["deploymentSpec"]["executors"]
    with_volume = set()
    for name, executor in executors.items():
        mounts = [m for m in executor.get(kind, []) if m.get("mountPath") == "/var/cache/mammo"]
        if mounts:
            with_volume.add(name)
            if kind != "pvcMount":
                assert mounts[0]["sizeLimit" if kind == "emptyDirMounts" else "size"] == "300Gi"
            if kind == "genericEphemeralVolume":
                assert mounts[0]["storageClassName"] == "fast-ssd"
            env = {e["name"]: e["value"] for e in containers[name]["container"].get("env", [])}
            assert env["MAMMO_CACHE_DIR"] == "/var/cache/mammo"
    assert {"exec-baseline-trainer", "exec-unfreeze-trainer", "exec-evaluator"} <= with_volume


def test_the_cheap_container_spec_check_is_installed_and_says_what_kfps_says() -> None:
    """mammo_pipelines.kfp_speed replaces kfp's stack-walking check with the same check."""
    from types import SimpleNamespace

    from kfp.dsl import PipelineTask

    from mammo_pipelines import kfp_speed

    assert PipelineTask._ensure_container_spec_exists is kfp_speed.ensure_container_spec_exists
    assert kfp_speed.ORIGINAL is not None and kfp_speed.ORIGINAL is not kfp_speed.ensure_container_spec_exists

    def set_cpu_limit(check, task) -> None:  # the name a kfp setter has
        check(task)

    said = []
    for check in (kfp_speed.ensure_container_spec_exists, kfp_speed.ORIGINAL):
        set_cpu_limit(check, SimpleNamespace(container_spec=object()))  # a single-step task passes
        with pytest.raises(ValueError) as refused:
            set_cpu_limit(check, SimpleNamespace(container_spec=None))
        said.append(str(refused.value))
    assert said[0] == said[1] and said[0].startswith("set_cpu_limit can only be used on single-step components")
