"""The ``mammo-training`` pipeline: split builder -> baseline trainer -> unfreeze trainer ->
evaluator -> promoter (after every evaluation: it records the decision, and switches production
only when the best candidate beats it); with
``dataset_format: dicom`` the preprocessor converts the DICOMs first (``_dataset``).

``build_pipeline(profile)`` returns the pipeline for one compile profile: its typed parameters
come from ``parameters.pipeline_parameters`` (the fields of ``mammo.config.PipelineParams`` plus
the pipeline's own), its cluster settings from the profile (``profiles``) through
kfp-kubernetes. kfp.local ignores the cluster settings, so ``mammo run`` executes this same
definition on one machine.

Caching (KFP's cache key is the component, its image and its input values):

- split builder: off. It reads ``dataset_uri``, whose contents can change behind the same URI.
- baseline and unfreeze trainers (and their TrainJob launchers, ``trainer_nodes`` > 1): on.
  Their inputs include ``run_id``, a digest of every
  dataset object's name, size and ETag, of the split, of all parameters and of the code, so
  any change to the data, split, settings or images changes the key.
- evaluator: off. Its promotion verdict depends on the current production model, which other
  runs change.
- promoter: off. It changes the production model.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from kfp import compiler, dsl, kubernetes
from kfp.dsl import Model, PipelineTask

import mammo
from mammo.config import DATASET_FIELDS
from mammo_components.baseline_trainer.component import baseline_trainer
from mammo_components.evaluator.component import evaluator
from mammo_components.folds.component import (
    fold_baseline_trainer,
    fold_models,
    fold_plan,
    fold_unfreeze_trainer,
    no_fold_models,
)
from mammo_components.preprocessor.component import png_dataset, preprocess_merge, preprocess_plan, preprocessor
from mammo_components.promoter.component import promoter
from mammo_components.split_builder.component import split_builder
from mammo_components.trainjob.component import baseline_trainjob, unfreeze_trainjob
from mammo_components.unfreeze_trainer.component import unfreeze_trainer
from mammo_pipelines import kfp_speed  # noqa: F401 (installed on import)
from mammo_pipelines.parameters import PipelineParameter, pipeline_parameters, preset_parameters
from mammo_pipelines.profiles import CONFIG_MAP_KEYS, POD_LABEL, PSEUDONYM_KEY, SECRET_KEYS, Profile, Resources

PIPELINE_NAME = "mammo-training"
DESCRIPTION = (
    "Breast-cancer classifier on screening mammograms: patient-level split, baseline training "
    "with warm-up, gradual unfreezing, evaluation on val/test, promotion of the best model."
)
SHM_VOLUME = "dshm"
#: Where trainers and the evaluator keep the dataset copy and the decoded cache.
DATA_VOLUME = "mammo-data"
#: USER of both Dockerfiles.
IMAGE_UID = 10001


def _runtime(task: PipelineTask, profile: Profile, resources: Resources, secret: str | None = None) -> PipelineTask:
    """Settings every step shares: storage credentials by reference (the Secret mounted as
    files, ``MINIO_*_KEY_FILE`` naming them), endpoints from the
    ConfigMap, the pod label MinIO's NetworkPolicy admits, pull policy and secrets, resources
    and a deadline (``step_timeout``; the trainers' is set again by ``_bounded``)."""
    secret = secret or profile.secret_name
    if profile.key_files:
        kubernetes.use_secret_as_volume(task, secret_name=secret, mount_path=profile.key_files)
        for key in SECRET_KEYS:
            task.set_env_variable(f"{key}_FILE", f"{profile.key_files}/{key}")
    else:
        kubernetes.use_secret_as_env(task, secret_name=secret, secret_key_to_env={key: key for key in SECRET_KEYS})
    kubernetes.use_config_map_as_env(
        task,
        config_map_name=profile.config_map_name,
        config_map_key_to_env={key: key for key in CONFIG_MAP_KEYS},
    )
    kubernetes.add_pod_label(task, *POD_LABEL)
    for key, value in sorted(profile.pod_labels.items()):
        kubernetes.add_pod_label(task, key, value)
    for key, value in sorted(profile.pod_annotations.items()):
        kubernetes.add_pod_annotation(task, key, value)
    kubernetes.set_image_pull_policy(task, profile.image_pull_policy)
    if profile.image_pull_secrets:
        kubernetes.set_image_pull_secrets(task, list(profile.image_pull_secrets))
    kubernetes.set_timeout(task, profile.step_timeout)
    # The images' user, stated so that the step's container refuses to start as root. Restricted
    # Pod Security also wants allowPrivilegeEscalation: false, all capabilities dropped and seccomp
    # RuntimeDefault, which kfp-kubernetes cannot set per task (docs/kubernetes.md, Pod security).
    kubernetes.set_security_context(task, run_as_user=IMAGE_UID, run_as_group=IMAGE_UID, run_as_non_root=True)
    task.set_cpu_request(resources.cpu_request).set_cpu_limit(resources.cpu_limit)
    task.set_memory_request(resources.memory_request).set_memory_limit(resources.memory_limit)
    return task


def _data_volume(task: PipelineTask, profile: Profile) -> None:
    """The dataset copy and its decoded cache go to a volume of planned size, not the
    container's filesystem: the profile's PVC (kept across retries and runs); else, with a
    storage class, a generic ephemeral volume of ``data_volume_size``; else an emptyDir on the
    node's disk capped at ``data_volume_size``. (kfp-kubernetes cannot set a pod's fsGroup, and
    a freshly formatted volume's root is writable by root only, while the steps run as uid
    10001: the ephemeral volume needs a storage class that provisions writable volumes, the
    PVC a one-time chown; an emptyDir is always writable.) A profile without ``data_mount``
    (``mammo run``) has no volume and leaves ``MAMMO_CACHE_DIR`` to the environment."""
    mount = profile.data_mount
    if mount is None:
        return
    if profile.data_pvc:
        kubernetes.mount_pvc(task, pvc_name=profile.data_pvc, mount_path=mount)
    elif profile.data_storage_class:
        kubernetes.add_ephemeral_volume(
            task, volume_name=DATA_VOLUME, mount_path=mount, access_modes=["ReadWriteOnce"],
            size=profile.data_volume_size, storage_class_name=profile.data_storage_class,
        )
    else:
        kubernetes.empty_dir_mount(task, volume_name=DATA_VOLUME, mount_path=mount, size_limit=profile.data_volume_size)
    task.set_env_variable("MAMMO_CACHE_DIR", mount)


def gpu_step(task: PipelineTask, profile: Profile, gpus: Any) -> None:
    """What a step with GPUs adds: the GPU request, node selector and tolerations, Kueue's
    queue and priority labels, and a memory-backed /dev/shm for DataLoader workers (Docker's
    64 MB default is a "Bus error" in the first epoch)."""
    task.set_accelerator_type(profile.gpu_type).set_accelerator_limit(gpus)
    for key, value in sorted(profile.node_selector.items()):
        kubernetes.add_node_selector(task, key, value)
    for toleration in profile.tolerations:
        kubernetes.add_toleration(
            task, key=toleration.key, operator=toleration.operator,
            value=toleration.value, effect=toleration.effect,
        )
    for key, value in sorted(profile.workload_labels.items()):
        kubernetes.add_pod_label(task, key, value)
    shared_memory(task, profile)


def shared_memory(task: PipelineTask, profile: Profile) -> None:
    kubernetes.empty_dir_mount(
        task, volume_name=SHM_VOLUME, mount_path="/dev/shm", medium="Memory", size_limit=profile.shm_size
    )


def retried(task: PipelineTask, profile: Profile) -> PipelineTask:
    """The profile's retries: a new pod, maybe on another node; the step goes on from what it
    published (a trainer from its last checkpoint, a preprocessor shard from its journal, the
    evaluator from its staged folder)."""
    retry = profile.retry
    return task.set_retry(
        num_retries=retry.attempts, backoff_duration=retry.backoff,
        backoff_factor=retry.factor, backoff_max_duration=retry.max_backoff,
    )


def _trainer(task: PipelineTask, profile: Profile, gpus: Any, name: str) -> PipelineTask:
    """Training image, GPUs (or, without, a memory-backed /dev/shm all the same), retries."""
    task.set_display_name(name).set_container_image(profile.train_image)
    _runtime(task, profile, profile.trainer)
    _data_volume(task, profile)
    if profile.gpu_type is not None:
        gpu_step(task, profile, gpus)
    else:
        shared_memory(task, profile)
    _bounded(task, profile)
    return task


def _bounded(task: PipelineTask, profile: Profile) -> None:
    """A trainer's (or launcher's) deadline, retries and caching: each retry is a new pod
    with the same ``trainer_timeout``, so a hung trainer gives its GPUs back."""
    kubernetes.set_timeout(task, profile.trainer_timeout)
    retried(task, profile).set_caching_options(True)


def _pod_trainers(profile: Profile, shared: dict[str, Any], gpus: Any) -> tuple[Any, Any]:
    """The two trainers, each in its own pod; their Model outputs."""
    processes = gpus or 1  # one torchrun process per GPU of the pod
    baseline = _trainer(baseline_trainer(processes=processes, **shared), profile, gpus, "baseline trainer")
    unfreeze = _trainer(
        unfreeze_trainer(init=baseline.outputs["model"], processes=processes, **shared),
        profile, gpus, "unfreeze trainer",
    )
    return baseline.outputs["model"], unfreeze.outputs["model"]


def _launcher(task: PipelineTask, profile: Profile, name: str) -> PipelineTask:
    """A TrainJob launcher: eval image, light resources, no GPU (the job's nodes have them);
    retried like a trainer (a retry adopts the job still running) and cached like one."""
    task.set_display_name(name).set_container_image(profile.eval_image)
    _runtime(task, profile, profile.light)
    _bounded(task, profile)
    return task


def _trainers_on_nodes(profile: Profile, shared: dict[str, Any], gpus: Any, nodes: Any) -> tuple[Any, Any]:
    """``trainer_nodes`` chooses at run time: more than 1, the trainers run as Kubeflow Trainer
    TrainJobs of that many nodes x ``trainer_gpus`` GPUs, launched by steps that need no GPU;
    otherwise in their own pods. ``dsl.OneOf`` hands the evaluator the branch that ran."""
    launch = {
        "nodes": nodes, "gpus_per_node": gpus, "image": profile.train_image,
        "labels": {**profile.pod_labels, **profile.workload_labels},
    }
    with dsl.If(nodes > 1, name="several-nodes"):
        baseline_job = _launcher(
            baseline_trainjob(**shared, **launch), profile, "baseline trainer (TrainJob)"
        )
        unfreeze_job = _launcher(
            unfreeze_trainjob(init=baseline_job.outputs["model"], **shared, **launch),
            profile, "unfreeze trainer (TrainJob)",
        )
    with dsl.Else(name="one-node"):
        baseline_pod, unfreeze_pod = _pod_trainers(profile, shared, gpus)
    return (
        dsl.OneOf(baseline_job.outputs["model"], baseline_pod),
        dsl.OneOf(unfreeze_job.outputs["model"], unfreeze_pod),
    )


def _folds(profile: Profile, shared: dict[str, Any], gpus: Any, folds: Any) -> Any:
    """``folds`` chooses at run time: more than 1, the fold plan publishes each fold's split and
    a ``dsl.ParallelFor`` runs a baseline and an unfreeze trainer per fold, each in its own pods
    (``profile.fold_parallelism`` at once; 0: all), and their Models are collected for the
    evaluator; 1, no fold models. ``dsl.OneOf`` hands the evaluator either (a fan-in from inside
    a ``dsl.If`` can only leave it through a step inside it)."""
    with dsl.If(folds > 1, name="k-fold"):
        plan = fold_plan(
            split_uri=shared["split_uri"], store_uri=shared["store_uri"], run_id=shared["run_id"], params=shared["params"],
        )
        plan.set_display_name("fold plan").set_container_image(profile.eval_image)
        _runtime(plan, profile, profile.light).set_caching_options(False)
        trained = {name: shared[name] for name in ("dataset_uri", "store_uri", "run_id", "params")}
        processes = gpus or 1
        with dsl.ParallelFor(plan.output, parallelism=profile.fold_parallelism or None, name="fold-training") as fold:
            baseline = _trainer(
                fold_baseline_trainer(fold=fold, processes=processes, **trained), profile, gpus, "fold baseline trainer",
            )
            unfreeze = _trainer(
                fold_unfreeze_trainer(init=baseline.outputs["model"], fold=fold, processes=processes, **trained),
                profile, gpus, "fold unfreeze trainer",
            )
        members = fold_models(
            fold_baselines=dsl.Collected(baseline.outputs["model"]), fold_unfreezes=dsl.Collected(unfreeze.outputs["model"]),
        )
        members.set_display_name("fold models").set_container_image(profile.eval_image)
        _runtime(members, profile, profile.light).set_caching_options(False)
    with dsl.Else(name="one-split"):
        none = no_fold_models()
        none.set_display_name("no fold models").set_container_image(profile.eval_image)
        _runtime(none, profile, profile.light).set_caching_options(False)
    return dsl.OneOf(members.output, none.output)


def _pseudonym_key(task: PipelineTask, profile: Profile) -> PipelineTask:
    """The site's pseudonymisation key as ``MAMMO_PSEUDONYM_KEY``, from the profile's Secret
    (by reference, never a value in the compiled pipeline). Optional: without the Secret the
    plan step refuses in one line unless ``preprocess_set`` says ``keep_identifiers=true``
    (data already de-identified, such as RSNA)."""
    return kubernetes.use_secret_as_env(
        task, secret_name=profile.pseudonym_secret, secret_key_to_env={PSEUDONYM_KEY: PSEUDONYM_KEY}, optional=True,
    )


def _dataset(profile: Profile, args: dict[str, Any]) -> Any:
    """``dataset_format`` chooses at run time: ``dicom`` runs the preprocessor (a plan step, one
    pod per shard in a ``dsl.ParallelFor``, a merge step) and hands on the PNG dataset it wrote;
    ``png`` hands on ``dataset_uri`` once its table is found. ``dsl.OneOf`` joins the two: the
    split builder and the trainers read what it gives. None of these steps is cached (the files
    behind a URI can change; an unchanged rerun converts nothing)."""
    source = {
        "dataset_uri": args["dataset_uri"], "store_uri": args["store_uri"],
        "image_size": args["image_size"], "preprocess_set": args["preprocess_set"],
    }
    with dsl.If(args["dataset_format"] == "dicom", name="dicom-input"):
        plan = preprocess_plan(preprocess_shards=args["preprocess_shards"], **source)
        plan.set_display_name("preprocess plan").set_container_image(profile.eval_image)
        _pseudonym_key(_runtime(plan, profile, profile.light), profile).set_caching_options(False)
        with dsl.ParallelFor(plan.output, name="preprocess-shards") as shard:
            part = preprocessor(shard=shard, shards=args["preprocess_shards"], **source)
            part.set_display_name("preprocessor").set_container_image(profile.eval_image)
            retried(_pseudonym_key(_runtime(part, profile, profile.evaluator), profile), profile).set_caching_options(False)
        merged = preprocess_merge(parts=dsl.Collected(part.output), **source)
        merged.set_display_name("preprocess merge").set_container_image(profile.eval_image)
        _pseudonym_key(_runtime(merged, profile, profile.light), profile).set_caching_options(False)
    with dsl.Else(name="png-input"):
        png = png_dataset(dataset_uri=args["dataset_uri"])
        png.set_display_name("PNG dataset").set_container_image(profile.eval_image)
        _runtime(png, profile, profile.light).set_caching_options(False)
    return dsl.OneOf(merged.output, png.output)


def code_version(profile: Profile) -> str:
    """Part of every run id: results of other images or another mammo version are not reused.
    Both images are named (the split builder adds the code installed in the eval image, where
    it runs); pinned by digest, a rebuilt train image changes the run id even when the eval
    image did not change."""
    return (
        f"mammo {mammo.__version__}; train {profile.train_image}; eval {profile.eval_image}; "
        f"evaluator {profile.evaluator_image}"
    )


def _wire(profile: Profile, args: dict[str, Any]) -> Any:
    """The pipeline body: five steps, their data flow and their cluster settings. Returns the
    evaluator's best-candidate Model (the pipeline's output: metrics, report, verdict)."""
    dataset_uri = _dataset(profile, args)
    split_task = split_builder(
        code_version=code_version(profile),
        # KFP's id of this run, recorded in the run folder and the evaluation (lineage); it is
        # kept out of the trainers' inputs, which would otherwise never be served from cache.
        kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        dataset_uri=dataset_uri,
        **{name: value for name, value in args.items()
           if name not in ("dataset_uri", "trainer_gpus", "trainer_nodes", *DATASET_FIELDS)},
    )
    split_task.set_display_name("split builder").set_container_image(profile.eval_image)
    _runtime(split_task, profile, profile.light).set_caching_options(False)

    shared = {
        "dataset_uri": dataset_uri,
        "split_uri": split_task.outputs["split_uri"],
        "store_uri": args["store_uri"],
        "run_id": split_task.outputs["run_id"],
        "params": split_task.outputs["params"],
    }
    gpus = args.get("trainer_gpus", 0)
    if "trainer_nodes" in args:
        baseline_model, unfreeze_model = _trainers_on_nodes(profile, shared, gpus, args["trainer_nodes"])
    else:
        baseline_model, unfreeze_model = _pod_trainers(profile, shared, gpus)
    fold_members = _folds(profile, shared, gpus, args["folds"])

    evaluation = evaluator(
        baseline=baseline_model,
        unfreeze=unfreeze_model,
        fold_models=fold_members,
        model_name=args["model_name"],
        promotion_metric=args["promotion_metric"],
        promotion_margin=args["promotion_margin"],
        promotion_rule=args["promotion_rule"],
        promotion_min=args["promotion_min"],
        promotion_min_cancers=args["promotion_min_cancers"],
        kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        **shared,
    )
    evaluation.set_display_name("evaluator").set_container_image(profile.evaluator_image)
    retried(_runtime(evaluation, profile, profile.evaluator), profile).set_caching_options(False)
    _data_volume(evaluation, profile)
    if profile.evaluator_gpus and profile.gpu_type is not None:
        gpu_step(evaluation, profile, profile.evaluator_gpus)

    # No dsl.If: the promoter runs after every evaluation, so that every decision - also "not
    # promoted" - is recorded (models/<name>/promotions/); it takes the evaluator's verdict
    # from the candidate's metadata and switches production only when that verdict still
    # holds against production under the promotion lock.
    promotion = promoter(
        candidate=evaluation.outputs["best"],
        store_uri=args["store_uri"],
        model_name=args["model_name"],
        promotion_metric=args["promotion_metric"],
        promotion_margin=args["promotion_margin"],
        promotion_rule=args["promotion_rule"],
        promotion_min=args["promotion_min"],
        promotion_min_cancers=args["promotion_min_cancers"],
        dataset_fingerprint=split_task.outputs["dataset_fingerprint"],
    )
    promotion.set_display_name("promoter").set_container_image(profile.eval_image)
    # The promoter's own keys: no other step may write models/ (k8s/base/mammo/minio-setup.sh).
    _runtime(promotion, profile, profile.light, secret=profile.promoter_secret).set_caching_options(False)
    return evaluation.outputs["best"]


def parameters_for(profile: Profile) -> list[PipelineParameter]:
    """The pipeline's parameters, with the profile's preset as their defaults."""
    parameters = pipeline_parameters(dataset_uri=profile.dataset_uri, with_gpus=profile.has_gpus)
    return preset_parameters(parameters, profile.preset)


def build_pipeline(profile: Profile):  # -> kfp GraphComponent
    """The pipeline for ``profile``; its signature is the parameter table (typed, defaults)."""
    parameters = parameters_for(profile)
    names = [p.name for p in parameters]

    def mammo_training(*args: Any) -> Any:
        return _wire(profile, dict(zip(names, args, strict=True)))

    # KFP reads each parameter's description (shown in the UI's run form) from an Args section.
    mammo_training.__doc__ = DESCRIPTION + "\n\nArgs:\n" + "".join(
        f"    {p.name}: {' '.join(p.help.split())}\n" for p in parameters
    )

    mammo_training.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [
            inspect.Parameter(p.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=p.default, annotation=p.type)
            for p in parameters
        ],
        return_annotation=Model,
    )
    # Argo deletes the run's workflow and pods this long after it finished (logs stay in KFP).
    config = dsl.PipelineConfig(ttl_seconds_after_finished=profile.ttl_seconds)
    return dsl.pipeline(name=PIPELINE_NAME, description=DESCRIPTION, pipeline_config=config)(mammo_training)


def compile_pipeline(profile: Profile, out: str | Path) -> Path:
    """Write the pipeline spec (YAML) for ``profile`` to ``out``; returns the path."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(profile), package_path=str(path))
    return path
