"""Compile profiles: which images the steps run in and what they ask of the cluster.

``gpu`` is a real cluster with NVIDIA GPUs (CUDA training image, one GPU per trainer, production
sizes); ``kind`` is the laptop cluster of ``make kind-up`` (CPU images loaded into the node, small
requests, no GPU). Both read the image names from ``images.env`` at the repository root (or the
file named by ``MAMMO_IMAGES_ENV``); every setting can be overridden on the command line.
"""

from __future__ import annotations

import dataclasses
import re
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from mammo.errors import ConfigError

ProfileName = Literal["gpu", "kind"]
PROFILES: tuple[ProfileName, ...] = ("gpu", "kind")

#: The names docs/kubernetes.md and k8s/base/kubeflow give the pipeline's runtime objects.
SECRET_NAME = "mammo-minio"
SECRET_KEYS = ("MINIO_ACCESS_KEY", "MINIO_SECRET_KEY")
CONFIG_MAP_NAME = "mammo-runtime"
CONFIG_MAP_KEYS = ("MINIO_ENDPOINT", "MINIO_SECURE", "MINIO_REGION", "MAMMO_PUSHGATEWAY_URL")
POD_LABEL = ("app.kubernetes.io/part-of", "mammo-pipeline")
IMAGES_ENV = "images.env"


@dataclass(frozen=True)
class Resources:
    """Kubernetes requests and limits of one step (CPU in cores or millicores, memory in bytes
    notation such as ``4Gi``)."""

    cpu_request: str
    cpu_limit: str
    memory_request: str
    memory_limit: str


@dataclass(frozen=True)
class Toleration:
    key: str
    operator: Literal["Equal", "Exists"] = "Exists"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = "NoSchedule"


@dataclass(frozen=True)
class Retry:
    """Retries of a failed trainer pod: cheap, because a restarted trainer resumes from the
    last checkpoint in object storage."""

    attempts: int = 3
    backoff: str = "60s"
    factor: float = 2.0
    max_backoff: str = "3600s"


@dataclass(frozen=True)
class Profile:
    name: ProfileName
    train_image: str
    eval_image: str
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"]
    gpu_type: str | None
    #: GPUs of the evaluator; 0 runs it on CPU in the eval image, more runs it in the train image.
    evaluator_gpus: int
    light: Resources
    trainer: Resources
    evaluator: Resources
    shm_size: str
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: tuple[Toleration, ...] = ()
    retry: Retry = Retry()
    secret_name: str = SECRET_NAME
    config_map_name: str = CONFIG_MAP_NAME
    #: Default of the ``dataset_uri`` pipeline parameter.
    dataset_uri: str = "s3://mammo/datasets/rsna"

    @property
    def has_gpus(self) -> bool:
        return self.gpu_type is not None

    @property
    def evaluator_image(self) -> str:
        return self.train_image if self.evaluator_gpus else self.eval_image


def find_images_env(start: Path | None = None) -> Path | None:
    """``$MAMMO_IMAGES_ENV``, else ``images.env`` in the working directory or above it, else
    next to this package's checkout (editable installs)."""
    explicit = os.environ.get("MAMMO_IMAGES_ENV")
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"MAMMO_IMAGES_ENV: {path} does not exist")
        return path
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents, Path(__file__).resolve().parent.parent):
        candidate = folder / IMAGES_ENV
        if candidate.is_file():
            return candidate
    return None


def read_images_env(path: Path) -> dict[str, str]:
    """Plain ``KEY=VALUE`` lines, split at the first ``=`` (the format images.env promises)."""
    values = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        key, sep, value = text.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{path}:{number}: expected KEY=VALUE, got {text!r}")
        values[key.strip()] = value.strip()
    return values


def _images(name: ProfileName, train_image: str | None, eval_image: str | None) -> tuple[str, str]:
    train_key = "TRAIN_IMAGE" if name == "gpu" else "TRAIN_IMAGE_CPU"
    if train_image and eval_image:
        return train_image, eval_image
    path = find_images_env()
    if path is None:
        raise ConfigError(
            f"no {IMAGES_ENV} found (working directory and above): set MAMMO_IMAGES_ENV to it, "
            "or pass --train-image and --eval-image"
        )
    values = read_images_env(path)
    for key in (train_key, "EVAL_IMAGE"):
        if not values.get(key):
            raise ConfigError(f"{path}: {key} is missing")
    return train_image or values[train_key], eval_image or values["EVAL_IMAGE"]


def _base(name: ProfileName, train_image: str, eval_image: str) -> Profile:
    if name == "gpu":
        return Profile(
            name="gpu",
            train_image=train_image,
            eval_image=eval_image,
            # Tags can be pushed again; pulling every time keeps all steps on the same code.
            image_pull_policy="Always",
            gpu_type="nvidia.com/gpu",
            evaluator_gpus=0,
            light=Resources("500m", "2", "2Gi", "4Gi"),
            trainer=Resources("8", "16", "32Gi", "64Gi"),
            evaluator=Resources("4", "8", "16Gi", "32Gi"),
            shm_size="16Gi",
            # GPU nodes are commonly tainted nvidia.com/gpu:NoSchedule (GPU Operator, GKE, EKS).
            tolerations=(Toleration("nvidia.com/gpu"),),
        )
    return Profile(
        name="kind",
        train_image=train_image,
        eval_image=eval_image,
        # `make kind-load` puts the images into the node; there is nothing to pull from.
        image_pull_policy="IfNotPresent",
        gpu_type=None,
        evaluator_gpus=0,
        light=Resources("100m", "1", "512Mi", "2Gi"),
        trainer=Resources("500m", "2", "1Gi", "4Gi"),
        evaluator=Resources("250m", "2", "1Gi", "3Gi"),
        shm_size="1Gi",
        dataset_uri="s3://mammo/datasets/demo",
    )


def get_profile(
    name: str,
    *,
    train_image: str | None = None,
    eval_image: str | None = None,
    image_pull_policy: str | None = None,
    gpu_type: str | None = None,
    evaluator_gpus: int | None = None,
    node_selector: dict[str, str] | None = None,
    tolerations: list[Toleration] | None = None,
    secret_name: str | None = None,
    config_map_name: str | None = None,
    shm_size: str | None = None,
) -> Profile:
    """The named profile with the given settings replaced (``None`` keeps the default)."""
    if name not in PROFILES:
        raise ConfigError(f"profile {name!r}: choose one of {', '.join(PROFILES)}")
    profile = _base(name, *_images(name, train_image, eval_image))  # type: ignore[arg-type]
    if image_pull_policy is not None and image_pull_policy not in ("Always", "IfNotPresent", "Never"):
        raise ConfigError(f"image pull policy {image_pull_policy!r}: use Always, IfNotPresent or Never")
    if gpu_type is not None and not profile.has_gpus:
        raise ConfigError(f"profile {name!r} has no GPUs: --gpu-type needs the gpu profile")
    if evaluator_gpus is not None and evaluator_gpus > 0 and not profile.has_gpus:
        raise ConfigError(f"profile {name!r} has no GPUs: --evaluator-gpus needs the gpu profile")
    if evaluator_gpus is not None and evaluator_gpus < 0:
        raise ConfigError("--evaluator-gpus must be 0 or more")
    if shm_size is not None and not re.fullmatch(r"[1-9][0-9]*(Mi|Gi)", shm_size):
        raise ConfigError(f"--shm-size {shm_size!r}: a Kubernetes quantity in Mi or Gi, e.g. 32Gi")
    changes = {
        "image_pull_policy": image_pull_policy,
        "gpu_type": gpu_type,
        "evaluator_gpus": evaluator_gpus,
        "node_selector": node_selector,
        "tolerations": tuple(tolerations) if tolerations is not None else None,
        "secret_name": secret_name,
        "config_map_name": config_map_name,
        "shm_size": shm_size,
    }
    return dataclasses.replace(profile, **{k: v for k, v in changes.items() if v is not None})
