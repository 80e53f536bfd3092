"""Typed run configuration.

One pydantic model per concern; the defaults are the research code's (see the README's
configuration reference). A run is configured by, in increasing priority: these defaults, a YAML
file (``--config``), ``--set dotted.key=value`` overrides and the plain CLI flags. Every run
writes the resolved result next to its outputs (``config.yaml``).

This module must not import torch: the pipeline layer reads these defaults on machines that
only compile pipelines.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.functional_serializers import PlainSerializer

from mammo import defaults
from mammo.backbones import BACKBONES, DEFAULT_BACKBONE, default_schedule, family_of
from mammo.config_files import load_config
from mammo.errors import ConfigError
from mammo.imagesize import ImageSize, parse_image_size, size_text

log = logging.getLogger(__name__)

#: An input size: ``S`` (square) or ``HxW`` text, a [H, W] list or a number; stored as ``S`` or
#: ``(H, W)`` (``mammo.imagesize``).
InputSize = Annotated[
    ImageSize,
    BeforeValidator(parse_image_size),
    PlainSerializer(lambda size: size if isinstance(size, int) else size_text(size), when_used="json"),
]
#: The same as text (``"512"``, ``"1024x512"``): pipeline parameters have one type.
InputSizeText = Annotated[str, BeforeValidator(size_text)]
#: A name in the backbone table (``mammo.backbones``).
Backbone = Literal[BACKBONES]  # type: ignore[valid-type]
LossName = Literal["bce", "bce_pos", "focal", "focal_pos"]
#: Metric names as ``<level>.<metric>``, e.g. ``image.auc`` or ``breast.pf1``.
MetricKey = str

#: How the operating threshold is chosen on val (breast level): maximise ``pf1`` or ``f1``, or
#: reach a target a screening programme sets, ``specificity:S``, ``sensitivity:S`` or
#: ``recall_rate:R`` with the value strictly between 0 and 1 (``mammo.metrics.target_threshold``).
THRESHOLD_MAXIMISED = ("pf1", "f1")
THRESHOLD_TARGETS = ("specificity", "sensitivity", "recall_rate")


def parse_threshold_metric(value: Any) -> str:
    """``value`` as a threshold rule in canonical form (``"specificity:0.950"`` ->
    ``"specificity:0.95"``); ``ValueError`` naming the accepted forms otherwise."""
    text = value.strip() if isinstance(value, str) else None
    if text in THRESHOLD_MAXIMISED:
        return text
    kind, sep, raw = (text or "").partition(":")
    if sep and kind.strip() in THRESHOLD_TARGETS:
        try:
            target = float(raw)
        except ValueError:
            target = float("nan")
        if 0 < target < 1:
            return f"{kind.strip()}:{target!r}"
    raise ValueError(
        f"{value!r} is not a threshold rule: pf1, f1, specificity:S, sensitivity:S or recall_rate:R "
        "with S, R strictly between 0 and 1 (e.g. specificity:0.95)"
    )


def threshold_rule(text: str) -> tuple[str, float | None]:
    """``(kind, target)`` of a threshold rule: ``("pf1", None)``, ``("specificity", 0.95)``."""
    rule = parse_threshold_metric(text)
    kind, _, raw = rule.partition(":")
    return kind, float(raw) if raw else None


#: The one declaration of ``threshold_metric`` (EvalConfig and PipelineParams): text, validated
#: and normalised by ``parse_threshold_metric``, so a pipeline parameter of type str.
ThresholdMetric = Annotated[str, BeforeValidator(parse_threshold_metric)]
THRESHOLD_METRIC_HELP = (
    "How the operating threshold is chosen on val (breast level), then applied unchanged to test: pf1 or f1 "
    "(maximised), specificity:S (the lowest threshold with val specificity >= S), sensitivity:S (the highest "
    "with val sensitivity >= S) or recall_rate:R (the lowest with at most a share R of val breasts flagged); "
    "S, R strictly between 0 and 1."
)

#: The one declaration of ``threshold_source`` (EvalConfig and PipelineParams).
ThresholdSource = Literal["val", "oof"]
THRESHOLD_SOURCE_HELP = (
    "Where the fold models' ensemble (folds > 1) chooses its operating threshold by threshold_metric: val (as "
    "every candidate), or oof, the out-of-fold predictions on the training patients (each scored by the fold "
    "model that did not train on it), as the RSNA 2023 winners did. Other candidates always use val."
)


#: Bounds that keep a typo (``1e20``, an extra digit) from reaching torch as an absurd size:
#: DataLoader workers per process, epochs, and seeds (NumPy and torch take 32/64-bit seeds).
MAX_WORKERS = 256
MAX_EPOCHS = 100_000
MAX_SEED = 2**32 - 1
#: ``data.max_pixels``: four times the largest full-field mammogram (about 26 MP), a 200 MB
#: 16-bit image; a PNG claiming more is refused before it is decoded.
DEFAULT_MAX_PIXELS = 100_000_000


#: Settings a run's parameters (``PipelineParams``) and its stages' configs both carry, each
#: declared once: bounds, default and description.
BATCH_SIZE = Field(
    32, ge=1, le=65536,
    description="Images per training step: the global batch, split evenly across the processes of a distributed run.",
)
WORKERS = Field(4, ge=0, le=MAX_WORKERS, description="DataLoader worker processes per process (0 = main process).")
DEVICE = Field("auto", description="auto, cpu, cuda, cuda:N or mps.")
IMAGE_SIZE_HELP = "Input size in pixels: S (square) or HxW, height first (e.g. 1024x512)."


class _Strict(BaseModel):
    """Unknown keys are errors: a typo in a config file must not be silently ignored. Numbers
    must be finite: ``inf``/``nan`` (a learning rate of inf trains straight to NaN) are refused."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class DataConfig(_Strict):
    root: str | None = Field(None, description="Dataset directory (train.csv + PNGs) or URI.")
    images: str | None = Field(
        None, description="Image directory; default: detected under the dataset directory."
    )
    image_size: InputSize = Field(512, description=IMAGE_SIZE_HELP)
    batch_size: int = BATCH_SIZE
    workers: int = WORKERS
    # YAML 1.1 (configs, --set) reads a bare off as false: that is the documented "off".
    cache: Annotated[str, BeforeValidator(lambda v: "off" if v is False else v)] = Field(
        "auto",
        description="Decoded-image cache: auto ($MAMMO_CACHE_DIR/decoded, else ~/.cache/mammo/decoded), "
        "off, or a directory. Each image is decoded once, then read back ~100x faster.",
    )
    bad_images: Literal["fail", "skip"] = Field(
        "fail", description="Unreadable/corrupted PNGs: stop with an error, or skip and count."
    )
    max_pixels: int = Field(
        DEFAULT_MAX_PIXELS, ge=1, le=2**40,
        description="Largest image (width x height, from the PNG header) decoded; larger ones are "
        "unreadable (a decompression bomb: a 100 KB PNG can claim 30000x30000 pixels).",
    )
    balanced_sampler: bool = Field(False, description="Class-balanced sampling of training images.")
    breast_aggregation: Literal["mean", "max"] = Field(
        "mean", description="How image probabilities of one breast are combined."
    )


class AugmentConfig(_Strict):
    """Batch-level augmentation on the training device; never applied to evaluation."""

    enabled: bool = True
    hflip: float = Field(0.5, ge=0, le=1, description="Probability of a horizontal flip.")
    vflip: float = Field(0.0, ge=0, le=1, description="Probability of a vertical flip.")
    rotate_degrees: float = Field(10.0, ge=0, le=45)
    translate: float = Field(0.05, ge=0, le=0.5, description="Max shift as a fraction of size.")
    scale_min: float = Field(0.9, gt=0)
    scale_max: float = Field(1.1, gt=0)
    brightness: float = Field(0.1, ge=0, le=1)
    contrast: float = Field(0.1, ge=0, le=1)

    @model_validator(mode="after")
    def _scale_order(self) -> AugmentConfig:
        if self.scale_min > self.scale_max:
            raise ValueError("scale_min must not exceed scale_max")
        return self


class ModelConfig(_Strict):
    backbone: Backbone = Field(DEFAULT_BACKBONE, description="A torchvision network of the backbone table.")
    weights: str | None = Field(
        None,
        description="None, a torchvision weights name (e.g. IMAGENET1K_V2, DEFAULT) "
        "or a local path to a state_dict file.",
    )
    in_channels: Literal[1, 3] = Field(
        1, description="1 = grayscale input (stem conv weights summed), 3 = image repeated."
    )


class LossConfig(_Strict):
    name: LossName = "bce_pos"
    focal_alpha: float | None = Field(None, ge=0, le=1, description="Default: 1 - prevalence.")
    focal_gamma: float = Field(2.0, ge=0)
    # A healthy run's batch loss stays near or below its start (about 0.7 x the positive weight,
    # at most ~5 at RSNA's prevalence); a mean above 1000 means logits in the hundreds on wrongly
    # classified images: the weights have diverged even while every number is still finite.
    ceiling: float = Field(
        1000.0, gt=0,
        description="A training step whose mean loss is above this, or not finite, stops the run as diverged.",
    )


class OptimizerConfig(_Strict):
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(5e-4, ge=0)


class PlateauConfig(_Strict):
    """ReduceLROnPlateau on a validation metric (mode from the metric: max unless loss)."""

    metric: MetricKey = "image.auc"
    factor: float = Field(0.5, gt=0, lt=1)
    patience: int = Field(3, ge=0)
    threshold: float = Field(1e-4, ge=0)
    cooldown: int = Field(1, ge=0)
    min_lr: float = Field(1e-8, ge=0)


class EarlyStoppingConfig(_Strict):
    enabled: bool = True
    metric: MetricKey = "image.auc"
    patience: int = Field(5, ge=1)
    min_delta: float = Field(0.01, ge=0)
    start_epoch: int = Field(5, ge=1, description="Never stop before this epoch (1-based).")


class CheckpointConfig(_Strict):
    primary: MetricKey = Field("image.auc", description="Metric ranking the top-k checkpoints.")
    top_k: int = Field(3, ge=0, le=1000)


class DistributedConfig(_Strict):
    """Several processes (``torchrun``, ``--nproc-per-node``): see README, multi-GPU."""

    timeout_s: int = Field(
        900, ge=10, le=86400,
        description="Seconds a rank waits for the others before the job fails (process-group timeout).",
    )
    sync_batchnorm: bool = Field(
        False, description="Baseline on CUDA: synchronise BatchNorm statistics across processes."
    )


class RunConfig(_Strict):
    """Settings every training or evaluation command shares."""

    split: str | None = Field(None, description="Split directory written by `mammo split`.")
    out: str | None = Field(None, description="Output directory of this run.")
    device: str = DEVICE
    seed: int = Field(defaults.SEED, ge=0, le=MAX_SEED, description="Seed of sampling, augmentation and initialisation.")
    deterministic: bool = Field(False, description="Deterministic kernels (slower).")
    amp: bool = Field(True, description="Mixed precision on CUDA (ignored on CPU).")
    amp_dtype: Literal["bf16", "fp16"] = Field(
        "bf16", description="bf16 (Ampere and newer) or fp16 with loss scaling (e.g. T4, V100)."
    )
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)


class TrainConfig(RunConfig):
    """`mammo train`: baseline training with subset warm-up."""

    epochs: int = Field(50, ge=1, le=MAX_EPOCHS, description="Upper bound on epochs, warm-up included.")
    warmup_epochs: int = Field(
        2, ge=0, le=MAX_EPOCHS, description="Leading epochs on the warm-up subset (balanced), then full data."
    )
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    scheduler: PlateauConfig = Field(default_factory=PlateauConfig)
    early_stopping: EarlyStoppingConfig = Field(default_factory=EarlyStoppingConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)

    @model_validator(mode="after")
    def _warmup_fits(self) -> TrainConfig:
        """At least one epoch trains on the full data: a short smoke run (``--epochs 1``)
        shortens the warm-up instead of failing."""
        if self.warmup_epochs >= self.epochs:
            log.warning(
                "warmup_epochs %d cut to %d so that %d epoch(s) leave one for the full data",
                self.warmup_epochs, self.epochs - 1, self.epochs,
            )
            self.__dict__["warmup_epochs"] = self.epochs - 1  # not via setattr: no re-validation
        return self


class UnfreezeStep(_Strict):
    block: str = Field(description="A block of the backbone's family, e.g. layer4 (ResNet).")
    block_lr: float = Field(gt=0)
    head_lr: float = Field(gt=0)


def default_unfreeze_steps(backbone: str) -> list[UnfreezeStep]:
    """The family's default schedule: every block, deepest first, with the research ladder."""
    return [
        UnfreezeStep(block=block, block_lr=block_lr, head_lr=head_lr)
        for block, block_lr, head_lr in default_schedule(backbone)
    ]


def _steps_problem(steps: list[UnfreezeStep] | None, backbone: str) -> str | None:
    """Why ``steps`` do not fit ``backbone``'s blocks, or None when they do."""
    family = family_of(backbone)
    seen: set[str] = set()
    for i, step in enumerate(steps or []):
        if step.block not in family.block_names:
            return (
                f"steps[{i}].block {step.block!r} is not a block of {backbone}; its blocks, deepest "
                f"first: {', '.join(family.block_names)} (leave unfreeze.steps out, or null, for "
                f"the {family.name} default schedule)"
            )
        if step.block in seen:
            return f"steps[{i}].block {step.block!r} is listed twice"
        seen.add(step.block)
    return None


def _resolve_steps(schedule: UnfreezeScheduleConfig, backbone: str) -> None:
    """Fill in the family's default steps, or check the given ones (ValueError)."""
    if schedule.steps is None:
        schedule.steps = default_unfreeze_steps(backbone)
        return
    problem = _steps_problem(schedule.steps, backbone)
    if problem:
        raise ValueError(problem)


class UnfreezeScheduleConfig(_Strict):
    """When the next block is unfrozen: after `start_epoch`, once validation has fallen
    `drop` below its best, and `cooldown` epochs after the previous unfreeze. `steps` name
    blocks of the backbone's family; left out (null) they are its default schedule."""

    metric: MetricKey = "image.auc"
    start_epoch: int = Field(15, ge=1)
    drop: float = Field(0.0025, ge=0)
    cooldown: int = Field(12, ge=0)
    steps: list[UnfreezeStep] | None = Field(
        None, description="Blocks in unfreezing order with their rates; null: the family's default."
    )


class UnfreezeConfig(TrainConfig):
    """`mammo unfreeze`: gradual unfreezing from a trained checkpoint."""

    init: str | None = Field(None, description="Starting checkpoint (e.g. the baseline's best_auc.pt).")
    epochs: int = Field(100, ge=1, le=MAX_EPOCHS)
    warmup_epochs: int = 0
    optimizer: OptimizerConfig = Field(default_factory=lambda: OptimizerConfig(lr=3e-4, weight_decay=1e-4))
    cosine_t_max: int = Field(50, ge=1, le=MAX_EPOCHS, description="CosineAnnealingLR period while blocks unfreeze.")
    unfreeze: UnfreezeScheduleConfig = Field(default_factory=UnfreezeScheduleConfig, validate_default=True)
    scheduler: PlateauConfig = Field(
        default_factory=lambda: PlateauConfig(factor=0.3, patience=6),
        description="ReduceLROnPlateau used after the last block's cooldown.",
    )
    early_stopping: EarlyStoppingConfig = Field(
        default_factory=lambda: EarlyStoppingConfig(patience=10, min_delta=0.002, start_epoch=25)
    )

    @field_validator("unfreeze")
    @classmethod
    def _steps_fit_backbone(cls, value: UnfreezeScheduleConfig, info: ValidationInfo) -> UnfreezeScheduleConfig:
        model = info.data.get("model")
        if model is not None:  # else the model's own error is reported
            value = value.model_copy(deep=True)
            _resolve_steps(value, model.backbone)
        return value

    @model_validator(mode="after")
    def _steps_follow_model(self) -> UnfreezeConfig:
        # Runs again on assignment (``config.model = ...``); a no-op after construction.
        _resolve_steps(self.unfreeze, self.model.backbone)
        return self

    def use_model(self, model: dict[str, Any], source: str) -> None:
        """Switch to the model a starting checkpoint was trained with. Steps that were the old
        family's default become the new family's default; other steps must fit the new one."""
        new = ModelConfig.model_validate(model)
        steps = self.unfreeze.steps
        if steps == default_unfreeze_steps(self.model.backbone):
            steps = None
        problem = _steps_problem(steps, new.backbone)
        if problem:
            raise ConfigError(f"{source} was trained with {new.backbone}: unfreeze.{problem}")
        self.unfreeze.steps = steps
        self.model = new


class EvalConfig(RunConfig):
    """`mammo evaluate`: threshold chosen on val, applied unchanged to test."""

    checkpoints: list[str] = Field(default_factory=list)
    ensemble: list[list[str]] = Field(
        default_factory=list,
        description="Fold models: one group of checkpoints (of ``checkpoints``) per fold; each fold's best on val "
        "by rank_metric joins an ensemble (mean image probability), evaluated as one more candidate.",
    )
    #: Each checkpoint decides its own model (backbone, weights, channels): no model settings.
    model: ModelConfig = Field(default_factory=ModelConfig, exclude=True)
    threshold_metric: ThresholdMetric = Field("pf1", description=THRESHOLD_METRIC_HELP)
    threshold_source: ThresholdSource = Field("val", description=THRESHOLD_SOURCE_HELP)
    rank_metric: MetricKey = Field("breast.auc", description="Metric on val ranking checkpoints.")
    stats: StatsConfig = Field(default_factory=lambda: StatsConfig())

    @model_validator(mode="after")
    def _no_model_settings(self) -> EvalConfig:
        if "model" in self.model_fields_set:
            raise ValueError("model: evaluation takes backbone, weights and channels from each checkpoint; remove model.* settings")
        return self


class StatsConfig(_Strict):
    """Uncertainty and clinical figures of an evaluation (``mammo.stats``): patient-level
    bootstrap intervals (seeded by the run's ``seed``), operating points, calibration, subgroups."""

    resamples: int = Field(
        2000, ge=0, le=100000, description="Bootstrap resamples of patients per interval (0: no intervals)."
    )
    level: float = Field(0.95, gt=0.5, lt=1, description="Confidence level of the intervals.")
    specificities: list[float] = Field(
        default_factory=lambda: [0.90, 0.95], description="Report the sensitivity at each of these specificities."
    )
    sensitivities: list[float] = Field(
        default_factory=lambda: [0.80, 0.90], description="Report the specificity at each of these sensitivities."
    )
    calibration_bins: int = Field(10, ge=2, le=100, description="Bins of the reliability diagram and the ECE.")
    calibration_strategy: Literal["quantile", "uniform"] = Field(
        "quantile", description="quantile: bins of equal counts (readable at small n); uniform: equal widths."
    )
    subgroup_resamples: int = Field(
        1000, ge=0, le=100000,
        description="Resamples per subgroup interval (test split, every metadata column); 0: no subgroup table.",
    )

    @field_validator("specificities", "sensitivities")
    @classmethod
    def _fractions(cls, values: list[float]) -> list[float]:
        if any(not 0 < v < 1 for v in values):
            raise ValueError("operating points must lie strictly between 0 and 1")
        return sorted(set(values))


def lookup_metric(metrics: dict[str, Any], key: MetricKey) -> float | None:
    """Read ``image.auc``-style keys from nested metric dicts; None when absent or NaN."""
    node: Any = metrics
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    if node is None:
        return None
    value = float(node)
    return None if value != value else value


def metric_mode(key: MetricKey) -> Literal["min", "max"]:
    """Losses are minimised; a registered metric as its direction says; others maximised."""
    from mammo import metric_registry

    name = key.rsplit(".", 1)[-1]
    if name == "loss":
        return "min"
    registered = {m.name: m for m in metric_registry.metrics()}
    return "max" if name not in registered or registered[name].higher_is_better else "min"


#: Defaults of the promotion rule and the production model's name (pipeline, promoter, ``mammo run``).
DEFAULT_MODEL_NAME = "mammo"
DEFAULT_PROMOTION_METRIC = "test.breast.auc"
DEFAULT_PROMOTION_MARGIN = 0.005
#: How the candidate is compared with production (``mammo.promotion``).
PromotionRule = Literal["paired_bootstrap", "margin"]
PROMOTION_RULES: tuple[str, ...] = get_args(PromotionRule)
DEFAULT_PROMOTION_RULE = "paired_bootstrap"
DEFAULT_PROMOTION_MIN = 0.5
#: Nothing is promoted on a decision split with fewer cancer breasts than this.
DEFAULT_PROMOTION_MIN_CANCERS = 10
#: PipelineParams fields that steer promotion, not training: they never change a run's results.
PROMOTION_FIELDS = (
    "model_name", "promotion_metric", "promotion_margin", "promotion_rule", "promotion_min", "promotion_min_cancers",
)
#: PipelineParams fields that say how the dataset is made (DICOM preprocessing), not how a model
#: trains on it: the split builder and the trainers get the preprocessed dataset, and its objects'
#: ETags are part of the run id.
DATASET_FIELDS = ("dataset_format", "preprocess_shards", "preprocess_set")
#: PipelineParams fields that steer the split builder's ledger (``mammo.split_ledger``): the split
#: they lead to is part of the run id, they are not.
LEDGER_FIELDS = ("accept_fresh_split",)


class PipelineParams(_Strict):
    """The knobs of a whole run (split -> baseline -> unfreeze -> evaluate -> promote), flat so
    that they map one-to-one onto pipeline parameters: the pipeline's parameters, their types,
    defaults, bounds and descriptions all come from here. ``stage_configs`` turns them into each
    stage's config; ``*_set`` lists carry any further ``dotted.key=value`` overrides."""

    data: str | None = Field(None, description="Dataset directory or URI (train.csv + PNGs, or DICOMs: dataset_format).")
    dataset_format: Literal["png", "dicom"] = Field(
        "png",
        description="png: the dataset is train.csv + PNGs; dicom: DICOM files (RSNA layout or any folder), "
        "converted by the preprocessor first (README, Data).",
    )
    preprocess_shards: int = Field(
        1, ge=1, le=256, description="dicom only: preprocessor pods converting in parallel, each a share of the files."
    )
    preprocess_set: list[str] = Field(
        default_factory=list,
        description='dicom only: preprocessor settings as key=value strings, e.g. ["align=left", "bits=16"].',
    )
    image_size: InputSizeText = Field("512", description=IMAGE_SIZE_HELP)  # text: a pipeline parameter
    backbone: Backbone = Field("resnet50", description="Backbone network (see `mammo train --help`).")
    weights: str | None = Field(
        None,
        description="Initial weights: empty (none), a torchvision weights name (e.g. IMAGENET1K_V2) "
        "or a state_dict file path in the image.",
    )
    in_channels: Literal[1, 3] = Field(
        1, description="1 = grayscale input (stem weights summed), 3 = image repeated."
    )
    batch_size: int = BATCH_SIZE
    workers: int = WORKERS
    device: str = DEVICE
    seed: int = Field(defaults.SEED, ge=0, le=MAX_SEED, description="Seed of the split, the sampling and the initialisation.")
    val_frac: float = Field(
        defaults.VAL_FRAC, ge=0, lt=1,
        description="Fraction of patients in the validation split (new patients only; old ones keep theirs).",
    )
    test_frac: float = Field(
        defaults.TEST_FRAC, ge=0, lt=1,
        description="Fraction of patients in the test split (new patients only; old ones keep theirs).",
    )
    accept_fresh_split: bool = Field(
        False,
        description="Split a table whose patient ids mostly changed from the model name's split ledger afresh "
        "(refused otherwise: a fresh split puts patients the models trained on into test). Ignored when the ids "
        "did not mostly change.",
    )
    warmup_ratio: int = Field(
        defaults.WARMUP_RATIO, ge=0, le=1000,
        description="Warm-up subset: all positive training breasts plus this many times as many negatives.",
    )
    loss: LossName = Field(
        "bce_pos", description="bce, bce_pos (pos_weight from the training prevalence), focal or focal_pos."
    )
    augment: bool = Field(True, description="Batch-level augmentation of training images.")
    folds: int = Field(
        1, ge=1, le=defaults.MAX_FOLDS,
        description="1: one baseline and one unfreeze model on the whole training split. k > 1: also k fold "
        "models, each trained without one of k patient-level folds of the training patients (val and test "
        "untouched), and their ensemble (mean image probability), all evaluated beside the full-data models.",
    )
    baseline_epochs: int = Field(
        50, ge=1, le=MAX_EPOCHS,
        description="Upper bound on baseline epochs, warm-up included (early stopping may end sooner).",
    )
    warmup_epochs: int = Field(2, ge=0, le=MAX_EPOCHS, description="Leading baseline epochs on the balanced warm-up subset.")
    baseline_lr: float = Field(1e-3, gt=0, description="Adam learning rate of the baseline.")
    unfreeze_epochs: int = Field(100, ge=1, le=MAX_EPOCHS, description="Upper bound on gradual-unfreezing epochs.")
    unfreeze_lr: float = Field(3e-4, gt=0, description="Learning rate of the head while the backbone is frozen.")
    threshold_metric: ThresholdMetric = Field("pf1", description=THRESHOLD_METRIC_HELP)
    threshold_source: ThresholdSource = Field("val", description=THRESHOLD_SOURCE_HELP)
    rank_metric: MetricKey = Field(
        "breast.auc", description="Validation metric ranking the candidate checkpoints, e.g. breast.auc."
    )
    baseline_set: list[str] = Field(
        default_factory=list,
        description='Further baseline settings as dotted key=value strings, e.g. ["early_stopping.patience=3"].',
    )
    unfreeze_set: list[str] = Field(
        default_factory=list,
        description='Further unfreeze settings as dotted key=value strings, e.g. ["unfreeze.start_epoch=5"].',
    )
    evaluate_set: list[str] = Field(
        default_factory=list, description="Further evaluation settings as dotted key=value strings."
    )
    model_name: str = Field(
        DEFAULT_MODEL_NAME, min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="Name under models/<name>/production/ of the promoted model.",
    )
    promotion_metric: str = Field(
        DEFAULT_PROMOTION_METRIC, pattern=r"^(val|test)\.(image|breast)\.[a-z][a-z0-9_]*$",
        description="Metric deciding promotion, <split>.<level>.<metric>, e.g. test.breast.auc or val.image.pr_auc.",
    )
    promotion_margin: float = Field(
        DEFAULT_PROMOTION_MARGIN, ge=0,
        description="The best candidate replaces production only when it beats it by more than this (absolute).",
    )
    promotion_rule: PromotionRule = Field(
        DEFAULT_PROMOTION_RULE,
        description="paired_bootstrap: candidate and production are both scored on the current split and "
        "compared by a paired bootstrap over patients; promote when the lower bound of the difference "
        "exceeds promotion_margin. margin: promote when the point difference exceeds promotion_margin.",
    )
    promotion_min: float = Field(
        DEFAULT_PROMOTION_MIN,
        description="Absolute floor: never promote a candidate unless the one-sided 99.5% lower bound of its "
        "promotion metric is above this (either rule), e.g. AUC 0.5 = chance. For a metric where lower is "
        "better (a loss) it is mirrored: the upper bound must lie below it.",
    )
    promotion_min_cancers: int = Field(
        DEFAULT_PROMOTION_MIN_CANCERS, ge=0, le=10**9,
        description="Never promote when the promotion metric's split has fewer cancer breasts than this.",
    )

    @model_validator(mode="after")
    def _oof_needs_folds(self) -> PipelineParams:
        if self.threshold_source == "oof" and self.folds < 2:
            raise ValueError("threshold_source: oof needs folds of 2 or more (out-of-fold predictions come from the fold models)")
        return self

    def training_values(self) -> dict[str, Any]:
        """The values a run's results depend on, JSON-ready: neither the dataset (each step gets
        it as its ``dataset_uri``, and the run id names its objects) nor the promotion, dataset
        format or ledger settings. KFP struct parameters cannot hold null, so unset values are
        omitted."""
        left_out = {"data", *PROMOTION_FIELDS, *DATASET_FIELDS, *LEDGER_FIELDS}
        return self.model_dump(mode="json", exclude_none=True, exclude=left_out)


#: The stages of a run, in order, each with its config model.
STAGES = ("baseline", "unfreeze", "evaluate")


def stage_config(params: PipelineParams, stage: str, *, split: str, out: str) -> RunConfig:
    """The config of one stage of a run (``baseline``, ``unfreeze`` or ``evaluate``) writing to
    ``out``: the run's shared settings, then the stage's own, then its ``*_set`` overrides."""
    common = {
        "data.root": params.data,
        "data.image_size": params.image_size,
        "data.batch_size": params.batch_size,
        "data.workers": params.workers,
        "device": params.device,
        "seed": params.seed,
        "split": split,
        "out": out,
    }
    trained = {
        "loss.name": params.loss, "augment.enabled": params.augment, "model.backbone": params.backbone,
        "model.weights": params.weights, "model.in_channels": params.in_channels,
    }
    if stage == "baseline":
        return load_config(TrainConfig, sets=params.baseline_set, overrides={
            **common, **trained, "epochs": params.baseline_epochs, "warmup_epochs": params.warmup_epochs,
            "optimizer.lr": params.baseline_lr,
        })
    if stage == "unfreeze":
        return load_config(UnfreezeConfig, sets=params.unfreeze_set, overrides={
            **common, **trained, "epochs": params.unfreeze_epochs, "optimizer.lr": params.unfreeze_lr,
        })
    if stage == "evaluate":
        return load_config(EvalConfig, sets=params.evaluate_set, overrides={
            **common, "threshold_metric": params.threshold_metric, "threshold_source": params.threshold_source,
            "rank_metric": params.rank_metric,
        })
    raise ValueError(f"unknown stage {stage!r}; one of {', '.join(STAGES)}")


def stage_configs(params: PipelineParams, *, split: str, runs: dict[str, str]) -> tuple[TrainConfig, UnfreezeConfig, EvalConfig]:
    """Every stage's config for one run (what a submission checks up front); ``runs`` maps
    baseline/unfreeze/evaluate to output dirs."""
    baseline, unfreeze, evaluation = (stage_config(params, stage, split=split, out=runs[stage]) for stage in STAGES)
    return baseline, unfreeze, evaluation  # type: ignore[return-value]


def preprocess_config(params: PipelineParams) -> Any:
    """The preprocessor's settings for a run (``dataset_format: dicom``): the run's image size,
    then the ``preprocess_set`` overrides (``mammo.dicom.options.PreprocessConfig``)."""
    from mammo.dicom.options import PreprocessConfig

    try:
        return load_config(PreprocessConfig, sets=params.preprocess_set, base={"image_size": params.image_size})
    except ConfigError as err:
        raise ConfigError(str(err).replace("config: ", "preprocess_set: ", 1)) from None
