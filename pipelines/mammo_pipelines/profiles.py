"""Compile profiles: which images the steps run in and what they ask of the cluster.

``gpu`` is a real cluster with NVIDIA GPUs (CUDA training image, one GPU per trainer, production
sizes); ``kind`` is the laptop cluster of ``make kind-up`` (CPU images loaded into the node, small
requests, no GPU). Both read the image names from ``images.env`` at the repository root (or the
file named by ``MAMMO_IMAGES_ENV``); every setting can be overridden on the command line.

Images may be pinned by digest (``name@sha256:...`` or ``name:tag@sha256:...``): directly, or
through the ``*_DIGEST`` keys of images.env that ``make images-push`` writes. A pinned image is
exactly one build, so it is not pulled again (``IfNotPresent``) and the run id, which includes
both image references, changes whenever either image does. Every step is bounded
(``activeDeadlineSeconds``: ``trainer_timeout`` for the trainers, ``step_timeout`` for the
others) and the run's pods are deleted ``ttl_seconds`` after it finished; private registries
take ``image_pull_secrets``.
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
#: The promoter's storage keys: the only ones that may write under models/ (minio-setup.sh).
PROMOTER_SECRET_NAME = "mammo-minio-promoter"
SECRET_KEYS = ("MINIO_ACCESS_KEY", "MINIO_SECRET_KEY")
#: The Secret (key MAMMO_PSEUDONYM_KEY) the DICOM preprocessor's steps read the site's
#: pseudonymisation key from (docs/kubernetes.md, DICOM identifiers).
PSEUDONYM_SECRET_NAME = "mammo-pseudonym-key"
PSEUDONYM_KEY = "MAMMO_PSEUDONYM_KEY"
CONFIG_MAP_NAME = "mammo-runtime"
CONFIG_MAP_KEYS = ("MINIO_ENDPOINT", "MINIO_SECURE", "MINIO_REGION", "MAMMO_PUSHGATEWAY_URL")
POD_LABEL = ("app.kubernetes.io/part-of", "mammo-pipeline")
#: Kueue's workload labels (docs/kubernetes.md, Queueing).
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
PRIORITY_LABEL = "kueue.x-k8s.io/priority-class"
IMAGES_ENV = "images.env"
#: images.env keys of the profiles' images, and the keys ``make images-push`` writes their
#: pushed digests to (empty: not pinned).
DIGEST_KEYS = {"TRAIN_IMAGE": "TRAIN_IMAGE_DIGEST", "TRAIN_IMAGE_CPU": "TRAIN_IMAGE_CPU_DIGEST", "EVAL_IMAGE": "EVAL_IMAGE_DIGEST"}
#: An image reference: [registry/]repository[:tag][@sha256:<64 hex>] (Docker's grammar, loosely).
IMAGE_REFERENCE = re.compile(
    r"(?P<name>[a-z0-9]+(?:[._-]+[a-z0-9]+)*(?::[0-9]+)?(?:/[a-z0-9]+(?:[._-]+[a-z0-9]+)*)*)"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?(?:@(?P<digest>sha256:[0-9a-f]{64}))?"
)
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
#: Kubernetes object names (pull secrets).
DNS_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
#: A label or annotation key: [DNS-subdomain prefix/]name of at most 63 characters.
LABEL_KEY = re.compile(r"(?:[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
#: A label value: empty or at most 63 characters of [-A-Za-z0-9_.], alphanumeric at both ends.
LABEL_VALUE = re.compile(r"(?:[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?")


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
    #: Where the storage Secret is mounted as files (``MINIO_ACCESS_KEY_FILE`` etc. point
    #: there), so the keys are in no process's environment. ``None``: as environment variables
    #: from the Secret instead (``mammo run``: kfp.local applies neither, the keys come from
    #: the caller's environment).
    key_files: str | None = "/var/run/secrets/mammo-storage"
    #: The Secret the promoter step takes its keys from instead of ``secret_name``.
    promoter_secret: str = PROMOTER_SECRET_NAME
    pseudonym_secret: str = PSEUDONYM_SECRET_NAME
    config_map_name: str = CONFIG_MAP_NAME
    #: Default of the ``dataset_uri`` pipeline parameter.
    dataset_uri: str = "s3://mammo/datasets/rsna"
    #: Secrets (type kubernetes.io/dockerconfigjson) every step's pod pulls its image with.
    image_pull_secrets: tuple[str, ...] = ()
    #: activeDeadlineSeconds of each trainer pod (and TrainJob launcher): a hung trainer gives
    #: its GPUs back. Each retry is a new pod with the same bound.
    trainer_timeout: int = 48 * 3600
    #: activeDeadlineSeconds of every other step.
    step_timeout: int = 6 * 3600
    #: Seconds after the run finished before its workflow and pods are deleted (Argo's
    #: ttlStrategy); logs stay in KFP's artifact store.
    ttl_seconds: int = 7 * 24 * 3600
    #: The volume that trainers and the evaluator keep the dataset copy and its decoded cache
    #: on (``$MAMMO_CACHE_DIR``): ``data_pvc`` names a PersistentVolumeClaim (kept between
    #: steps, retries and runs, so a retry reuses what is there); else with
    #: ``data_storage_class`` a generic ephemeral volume of ``data_volume_size``; else an
    #: emptyDir on the node's disk capped at ``data_volume_size`` (pipeline.py: why).
    data_volume_size: str = "200Gi"
    data_pvc: str | None = None
    data_storage_class: str | None = None
    #: Where that volume is mounted (and ``MAMMO_CACHE_DIR`` points) in the pods. ``None``: no
    #: volume and no ``MAMMO_CACHE_DIR`` for the steps, as for ``mammo run``, where kfp.local
    #: ignores volumes (but would apply the variable) and the steps keep their caches in the
    #: run's own work directory.
    data_mount: str | None = "/var/cache/mammo"
    #: How many folds train at once (``folds`` > 1, the fold ParallelFor's parallelism); 0: all
    #: of them, each in its own pods. ``mammo run`` trains them one after another (1).
    fold_parallelism: int = 0
    #: The preset (``presets/<name>.yaml``) whose ``params`` are the compiled pipeline's
    #: parameter defaults: ``full``, the research defaults, for GPU clusters; ``kind``, sized
    #: for the kind profile's pods (docs/kubernetes.md, kind).
    preset: str = "full"
    #: Kueue LocalQueue of the GPU steps (label ``kueue.x-k8s.io/queue-name``) and their
    #: WorkloadPriorityClass (``kueue.x-k8s.io/priority-class``); on pods and TrainJobs.
    queue: str | None = None
    priority_class: str | None = None
    #: Extra labels and annotations of every step's pod (and of TrainJobs), e.g. cost centres.
    pod_labels: dict[str, str] = field(default_factory=dict)
    pod_annotations: dict[str, str] = field(default_factory=dict)

    @property
    def has_gpus(self) -> bool:
        return self.gpu_type is not None

    @property
    def workload_labels(self) -> dict[str, str]:
        """Kueue's labels for the GPU steps: queue and priority, as set."""
        labels = {QUEUE_LABEL: self.queue, PRIORITY_LABEL: self.priority_class}
        return {key: value for key, value in labels.items() if value}

    @property
    def evaluator_image(self) -> str:
        return self.train_image if self.evaluator_gpus else self.eval_image

    @property
    def pinned(self) -> bool:
        """Both images pinned by digest."""
        return all(image_digest(image) for image in (self.train_image, self.eval_image))


def image_digest(image: str) -> str | None:
    """The ``sha256:...`` of a pinned image reference, None for a tag."""
    match = IMAGE_REFERENCE.fullmatch(image)
    return None if match is None else match.group("digest")


def check_image(image: str, what: str) -> str:
    """``image`` if it is a valid reference; a ``ConfigError`` naming ``what`` otherwise."""
    if image != "-" and IMAGE_REFERENCE.fullmatch(image) is None:
        raise ConfigError(
            f"{what} {image!r}: not an image reference; expected NAME[:TAG] or NAME[:TAG]@sha256:<64 hex digits>"
        )
    return image


def check_metadata(key: str, value: str, flag: str, *, value_pattern: re.Pattern[str] | None) -> None:
    """A pod label or annotation as Kubernetes accepts it; the project's own keys are refused."""
    if LABEL_KEY.fullmatch(key) is None:
        raise ConfigError(f"{flag} {key}={value}: {key!r} is not a Kubernetes label key ([prefix/]name, name at most 63 characters)")
    if key in (POD_LABEL[0], QUEUE_LABEL, PRIORITY_LABEL):
        raise ConfigError(f"{flag} {key}={value}: the pipeline sets {key} itself (--queue/--priority-class for Kueue's)")
    if value_pattern is not None and value_pattern.fullmatch(value) is None:
        raise ConfigError(f"{flag} {key}={value}: {value!r} is not a label value (at most 63 of A-Z a-z 0-9 - _ .)")


def parse_duration(text: str, what: str) -> int:
    """Seconds from ``90s``, ``45m``, ``48h``, ``7d`` or a plain number of seconds (> 0)."""
    match = re.fullmatch(r"([0-9]+)([smhd]?)", text.strip())
    seconds = 0 if match is None else int(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
    if seconds <= 0:
        raise ConfigError(f"{what} {text!r}: a duration above 0 such as 3600s, 90m, 48h or 7d")
    return seconds


def find_images_env(start: Path | None = None) -> Path | None:
    """``$MAMMO_IMAGES_ENV``, else ``images.env`` in the working directory or above it, else
    at the root of this package's checkout (editable installs: pipelines/mammo_pipelines/ is two
    folders below it)."""
    explicit = os.environ.get("MAMMO_IMAGES_ENV")
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"MAMMO_IMAGES_ENV: {path} does not exist")
        return path
    here = (start or Path.cwd()).resolve()
    checkout = Path(__file__).resolve().parents[2]
    for folder in (here, *here.parents, checkout):
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


def pinned_image(values: dict[str, str], key: str, path: Path) -> str:
    """images.env's ``key``, with ``@<digest>`` appended when its ``*_DIGEST`` key is set."""
    image = values.get(key)
    if not image:
        raise ConfigError(f"{path}: {key} is missing")
    digest = values.get(DIGEST_KEYS[key], "")
    if not digest:
        return image
    if DIGEST.fullmatch(digest) is None:
        raise ConfigError(f"{path}: {DIGEST_KEYS[key]}={digest!r} is not sha256:<64 hex digits>")
    if image_digest(image):
        raise ConfigError(f"{path}: {key} is pinned already; leave {DIGEST_KEYS[key]} empty")
    return f"{image}@{digest}"


def _images(name: ProfileName, train_image: str | None, eval_image: str | None) -> tuple[str, str]:
    train_key = "TRAIN_IMAGE" if name == "gpu" else "TRAIN_IMAGE_CPU"
    if not (train_image and eval_image):
        path = find_images_env()
        if path is None:
            raise ConfigError(
                f"no {IMAGES_ENV} found (working directory and above): set MAMMO_IMAGES_ENV to it, "
                "or pass --train-image and --eval-image"
            )
        values = read_images_env(path)
        train_image = train_image or pinned_image(values, train_key, path)
        eval_image = eval_image or pinned_image(values, "EVAL_IMAGE", path)
    return check_image(train_image, "--train-image"), check_image(eval_image, "--eval-image")


def _base(name: ProfileName, train_image: str, eval_image: str) -> Profile:
    if name == "gpu":
        return Profile(
            name="gpu",
            train_image=train_image,
            eval_image=eval_image,
            # Tags can be pushed again; pulling every time keeps all steps on the same code.
            image_pull_policy="Always",
            gpu_type="nvidia.com/gpu",
            # An RSNA-size test split is 1-2.5 h of CPU inference (0.7 CPU-s per image) and
            # minutes on one GPU.
            evaluator_gpus=1,
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
        data_volume_size="5Gi",
        dataset_uri="s3://mammo/datasets/demo",
        preset="kind",
        # The demo trains in minutes: anything near these bounds is stuck.
        trainer_timeout=4 * 3600,
        step_timeout=3600,
        ttl_seconds=24 * 3600,
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
    promoter_secret: str | None = None,
    pseudonym_secret: str | None = None,
    config_map_name: str | None = None,
    shm_size: str | None = None,
    image_pull_secrets: list[str] | None = None,
    trainer_timeout: int | None = None,
    step_timeout: int | None = None,
    ttl_seconds: int | None = None,
    data_volume_size: str | None = None,
    data_pvc: str | None = None,
    data_storage_class: str | None = None,
    queue: str | None = None,
    priority_class: str | None = None,
    pod_labels: dict[str, str] | None = None,
    pod_annotations: dict[str, str] | None = None,
    preset: str | None = None,
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
    for flag, quantity in (("--shm-size", shm_size), ("--data-volume-size", data_volume_size)):
        if quantity is not None and not re.fullmatch(r"[1-9][0-9]*(Mi|Gi|Ti)", quantity):
            raise ConfigError(f"{flag} {quantity!r}: a Kubernetes quantity in Mi, Gi or Ti, e.g. 32Gi")
    for flag, object_name in (("--data-pvc", data_pvc), ("--data-storage-class", data_storage_class),
                              ("--pseudonym-secret", pseudonym_secret), ("--promoter-secret", promoter_secret)):
        if object_name is not None and DNS_NAME.fullmatch(object_name) is None:
            raise ConfigError(f"{flag} {object_name!r}: not a Kubernetes object name")
    for secret in image_pull_secrets or ():
        if DNS_NAME.fullmatch(secret) is None:
            raise ConfigError(f"--image-pull-secret {secret!r}: not a Kubernetes Secret name")
    for flag, value in (("--trainer-timeout", trainer_timeout), ("--step-timeout", step_timeout), ("--ttl", ttl_seconds)):
        if value is not None and value <= 0:
            raise ConfigError(f"{flag} must be above 0 seconds")
    for flag, kueue_name in (("--queue", queue), ("--priority-class", priority_class)):
        if kueue_name is not None and (DNS_NAME.fullmatch(kueue_name) is None or len(kueue_name) > 63):
            raise ConfigError(f"{flag} {kueue_name!r}: not a Kueue object name (lower-case letters, digits, '-', '.'; at most 63)")
    if (queue or priority_class) and not profile.has_gpus:
        raise ConfigError(f"profile {profile.name!r} has no GPU steps to queue: --queue and --priority-class need the gpu profile")
    for key, value in (pod_labels or {}).items():
        check_metadata(key, value, "--pod-label", value_pattern=LABEL_VALUE)
    for key, value in (pod_annotations or {}).items():
        check_metadata(key, value, "--pod-annotation", value_pattern=None)
    if image_pull_policy is None and profile.pinned:
        image_pull_policy = "IfNotPresent"  # a digest names one build: nothing newer to pull
    changes = {
        "image_pull_policy": image_pull_policy,
        "gpu_type": gpu_type,
        "evaluator_gpus": evaluator_gpus,
        "node_selector": node_selector,
        "tolerations": tuple(tolerations) if tolerations is not None else None,
        "secret_name": secret_name,
        "promoter_secret": promoter_secret,
        "pseudonym_secret": pseudonym_secret,
        "config_map_name": config_map_name,
        "shm_size": shm_size,
        "image_pull_secrets": tuple(dict.fromkeys(image_pull_secrets)) if image_pull_secrets is not None else None,
        "trainer_timeout": trainer_timeout,
        "step_timeout": step_timeout,
        "ttl_seconds": ttl_seconds,
        "data_volume_size": data_volume_size,
        "data_pvc": data_pvc,
        "data_storage_class": data_storage_class,
        "queue": queue,
        "priority_class": priority_class,
        "pod_labels": pod_labels,
        "pod_annotations": pod_annotations,
        "preset": preset,
    }
    return dataclasses.replace(profile, **{k: v for k, v in changes.items() if v is not None})
