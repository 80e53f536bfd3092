"""The compiled mammo-training pipeline (both profiles): its steps and their order, cluster
settings, credentials only by reference, caching, the promotion gate, parameter defaults, and
that compiling needs no torch."""

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


def _executor(spec: dict[str, Any], task: str) -> dict[str, Any]:
    component = spec["root"]["dag"]["tasks"][task]["componentRef"]["name"]
    return spec["deploymentSpec"]["executors"][spec["components"][component]["executorLabel"]]["container"]


def test_five_steps_in_order_with_the_promoter_behind_the_gate(compiled) -> None:
    _, spec, _, _ = compiled
    tasks = spec["root"]["dag"]["tasks"]
    assert set(tasks) == {"split-builder", "baseline-trainer", "unfreeze-trainer", "evaluator", "condition-1"}
    depends = {name: set(task.get("dependentTasks", [])) for name, task in tasks.items()}
    assert depends["split-builder"] == set()
    assert depends["baseline-trainer"] == {"split-builder"}
    assert depends["unfreeze-trainer"] == {"baseline-trainer", "split-builder"}
    assert {"baseline-trainer", "unfreeze-trainer"} <= depends["evaluator"]
    assert "evaluator" in depends["condition-1"]
    # Both trainers' best checkpoints are the evaluator's candidates.
    candidates = tasks["evaluator"]["inputs"]["artifacts"]
    assert {a["taskOutputArtifact"]["producerTask"] for a in candidates.values()} == set(TRAINERS)
    # dsl.If: the promoter runs only when the evaluator's verdict is true.
    gate = tasks["condition-1"]
    assert gate["triggerPolicy"]["condition"].replace("\n", " ").split() == [
        "inputs.parameter_values['pipelinechannel--evaluator-Output']", "==", "true"
    ]
    inner = spec["components"][gate["componentRef"]["name"]]["dag"]["tasks"]
    assert list(inner) == ["promoter"]
    assert inner["promoter"]["inputs"]["artifacts"]["candidate"]["componentInputArtifact"] == "pipelinechannel--evaluator-best"


def test_gpu_requests_only_in_the_gpu_profile(compiled) -> None:
    profile, spec, executors, _ = compiled
    for task in spec["root"]["dag"]["tasks"]:
        if task == "condition-1":
            continue
        accelerator = _executor(spec, task).get("resources", {}).get("accelerator")
        if profile == "gpu" and task in TRAINERS:
            assert accelerator["resourceType"] == "nvidia.com/gpu"
            assert "trainer_gpus" in accelerator["resourceCount"]
            assert executors[f"exec-{task}"]["tolerations"] == [
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
            ]
        else:
            assert accelerator is None, task
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert ("trainer_gpus" in params) == (profile == "gpu")


def test_images_pull_policy_and_resources_follow_the_profile(compiled) -> None:
    profile, spec, executors, _ = compiled
    images = read_images_env()
    train = images["TRAIN_IMAGE" if profile == "gpu" else "TRAIN_IMAGE_CPU"]
    for task in ("split-builder", *TRAINERS, "evaluator"):
        container = _executor(spec, task)
        assert container["image"] == (train if task in TRAINERS else images["EVAL_IMAGE"])
        assert container["resources"]["resourceMemoryLimit"] and container["resources"]["resourceCpuRequest"]
        assert "kfp.dsl.executor_main" in " ".join(container["command"])  # lightweight component
    policy = "Always" if profile == "gpu" else "IfNotPresent"
    assert {e["imagePullPolicy"] for e in executors.values()} == {policy}


def test_credentials_only_by_reference(compiled) -> None:
    _, spec, executors, text = compiled
    assert len(executors) == 5
    for name, executor in executors.items():
        [secret] = executor["secretAsEnv"]
        assert secret["secretName"] == "mammo-minio", name
        assert {k["envVar"] for k in secret["keyToEnv"]} == {"MINIO_ACCESS_KEY", "MINIO_SECRET_KEY"}
        [config] = executor["configMapAsEnv"]
        assert config["configMapName"] == "mammo-runtime"
        assert {k["envVar"] for k in config["keyToEnv"]} >= {"MINIO_ENDPOINT", "MINIO_SECURE"}
        assert executor["podMetadata"]["labels"] == {"app.kubernetes.io/part-of": "mammo-pipeline"}
    for value in SENTINELS.values():
        assert value not in text
    for executor in spec["deploymentSpec"]["executors"].values():
        assert not any(env["name"].startswith("MINIO_") for env in executor["container"].get("env", []))


def test_trainers_retry_and_get_a_memory_backed_shm(compiled) -> None:
    _, spec, executors, _ = compiled
    tasks = spec["root"]["dag"]["tasks"]
    for task in TRAINERS:
        retry = tasks[task]["retryPolicy"]
        assert retry["maxRetryCount"] == 3 and retry["backoffDuration"] == "60s" and retry["backoffFactor"] == 2.0
        [shm] = executors[f"exec-{task}"]["emptyDirMounts"]
        assert shm["mountPath"] == "/dev/shm" and shm["medium"] == "Memory" and shm["sizeLimit"]
    for task in ("split-builder", "evaluator"):
        assert "retryPolicy" not in tasks[task]
        assert "emptyDirMounts" not in executors[f"exec-{task}"]


def test_only_the_trainers_cache(compiled) -> None:
    _, spec, _, _ = compiled
    tasks = spec["root"]["dag"]["tasks"]
    cached = {name for name, task in tasks.items() if task.get("cachingOptions", {}).get("enableCache")}
    assert cached == set(TRAINERS)
    gate = spec["components"][tasks["condition-1"]["componentRef"]["name"]]["dag"]["tasks"]
    assert not gate["promoter"].get("cachingOptions", {}).get("enableCache")
    # The trainers' cache key holds the run id, which the (never cached) split builder derives
    # from the dataset's objects, the split, the parameters and the code.
    for task in TRAINERS:
        run_id = tasks[task]["inputs"]["parameters"]["run_id"]["taskOutputParameter"]
        assert run_id == {"outputParameterKey": "run_id", "producerTask": "split-builder"}


def test_parameter_defaults_are_the_packages(compiled) -> None:
    profile, spec, _, _ = compiled
    params = spec["root"]["inputDefinitions"]["parameters"]
    defaults = {name: p.get("defaultValue") for name, p in params.items()}
    for name, field in PipelineParams.model_fields.items():
        if name == "data":
            continue
        expected = field.get_default(call_default_factory=True)
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
    for task in (*TRAINERS, "evaluator"):
        executor = executors[f"exec-{task}"]
        assert executor["nodeSelector"]["labels"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
        assert executor["tolerations"] == [{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]
        assert _executor(spec, task)["image"] == "registry.example/train:1"
    assert _executor(spec, "evaluator")["resources"]["accelerator"]["resourceCount"] == "1"
    assert "nodeSelector" not in executors["exec-split-builder"]
    assert {e["secretAsEnv"][0]["secretName"] for e in executors.values()} == {"other-keys"}


def test_compile_refuses_gpu_settings_in_the_kind_profile(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compile", "--profile", "kind", "--out", str(tmp_path / "x.yaml"), "--evaluator-gpus", "1"]) == 2
    assert "has no GPUs" in capsys.readouterr().err
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
