"""The backbone table (torch-free), the unfreeze schedule it resolves, and EfficientNet/ConvNeXt
through `mammo train` -> `mammo unfreeze` -> `mammo evaluate` on tiny synthetic data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mammo.backbones import BACKBONES, FAMILIES, LADDER, default_schedule, family_of, ladder
from mammo.cli import main
from mammo.config import UnfreezeConfig, UnfreezeStep
from mammo.config_files import load_config
from mammo.errors import ConfigError


def test_the_table_and_the_config_import_no_torch() -> None:
    code = "import sys, mammo.backbones, mammo.config; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_every_family_names_distinct_backbones_and_blocks() -> None:
    assert len(BACKBONES) == len(set(BACKBONES))
    assert {"resnet50", "efficientnet_b0", "efficientnet_b4", "efficientnet_v2_s", "convnext_tiny", "convnext_small"} <= set(BACKBONES)
    for family in FAMILIES:
        assert len(family.block_names) == len(set(family.block_names)), family.name
        paths = [path for block in family.blocks for path in block.modules]
        assert len(paths) == len(set(paths)) and family.head not in paths, family.name
    assert family_of("convnext_small").norm == "layer" and family_of("efficientnet_b2").norm == "batch"
    with pytest.raises(ConfigError, match="unknown backbone 'vgg16'; expected one of resnet18"):
        family_of("vgg16")


def test_default_schedules_unfreeze_every_block_deepest_first_on_the_research_ladder() -> None:
    assert default_schedule("resnet50") == [
        ("layer4", 5e-5, 5e-5), ("layer3", 1e-5, 3e-5), ("layer2", 5e-6, 2e-5),
        ("layer1", 2e-7, 1e-5), ("conv1", 1e-7, 1e-5),
    ]
    for name in BACKBONES:
        steps = default_schedule(name)
        assert [block for block, _, _ in steps] == list(family_of(name).block_names)
    # Another block count keeps the ladder's ends and its order.
    for n in (1, 3, 7):
        rungs = ladder(n)
        assert len(rungs) == n and rungs[0] == LADDER[0]
        assert n == 1 or rungs[-1] == LADDER[-1]
        assert all(a[0] >= b[0] and a[1] >= b[1] for a, b in zip(rungs, rungs[1:]))


def test_unfreeze_steps_default_to_the_backbone_family() -> None:
    assert [s.block for s in UnfreezeConfig().unfreeze.steps] == ["layer4", "layer3", "layer2", "layer1", "conv1"]
    config = load_config(UnfreezeConfig, sets=["model.backbone=convnext_small"])
    assert [s.block for s in config.unfreeze.steps] == ["features.6-7", "features.4-5", "features.2-3", "features.1", "features.0"]
    assert config.unfreeze.steps[1] == UnfreezeStep(block="features.4-5", block_lr=1e-5, head_lr=3e-5)
    # Given steps are kept (any subset, any order of the family's blocks).
    custom = load_config(
        UnfreezeConfig,
        sets=["model.backbone=efficientnet_b0", "unfreeze.steps=[{block: features.6, block_lr: 1.0e-4, head_lr: 1.0e-4}]"],
    )
    assert [s.block for s in custom.unfreeze.steps] == ["features.6"]


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        (
            "[{block: layer4, block_lr: 1.0e-5, head_lr: 1.0e-5}]",
            "config: unfreeze: steps[0].block 'layer4' is not a block of efficientnet_b0; its blocks, deepest "
            "first: features.7-8, features.6, features.4-5, features.2-3, features.0-1 (leave unfreeze.steps "
            "out, or null, for the efficientnet default schedule)",
        ),
        (
            "[{block: features.6, block_lr: 1.0e-5, head_lr: 1.0e-5}, {block: features.6, block_lr: 1.0e-6, head_lr: 1.0e-5}]",
            "config: unfreeze: steps[1].block 'features.6' is listed twice",
        ),
    ],
)
def test_steps_that_do_not_fit_the_backbone_are_one_line_errors(steps: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(UnfreezeConfig, sets=["model.backbone=efficientnet_b0", f"unfreeze.steps={steps}"])
    assert str(info.value) == message


def test_the_starting_checkpoint_s_model_brings_its_family_s_default_steps() -> None:
    config = UnfreezeConfig()  # resnet50 and its default steps; the checkpoint holds a ConvNeXt
    config.use_model({"backbone": "convnext_tiny", "weights": None, "in_channels": 1}, source="init.pt")
    assert config.model.backbone == "convnext_tiny"
    assert [s.block for s in config.unfreeze.steps] == list(family_of("convnext_tiny").block_names)
    chosen = load_config(UnfreezeConfig, sets=["unfreeze.steps=[{block: layer3, block_lr: 1.0e-5, head_lr: 1.0e-5}]"])
    chosen.use_model({"backbone": "resnet18"}, source="init.pt")  # chosen steps that still fit are kept
    assert [s.block for s in chosen.unfreeze.steps] == ["layer3"]
    with pytest.raises(ConfigError, match=r"^init\.pt was trained with efficientnet_b0: unfreeze\.steps\[0\]\.block 'layer3' is not a block"):
        chosen.use_model({"backbone": "efficientnet_b0"}, source="init.pt")
    assert chosen.model.backbone == "resnet18"  # unchanged after the refusal


def test_help_and_config_show_come_from_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for name in BACKBONES:
        assert name in help_text
    assert main(["config", "show", "unfreeze", "--set", "model.backbone=efficientnet_v2_s"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert [s["block"] for s in shown["unfreeze"]["steps"]] == list(family_of("efficientnet_v2_s").block_names)


# --- the stage commands on EfficientNet and ConvNeXt ------------------------------------------


@pytest.fixture(scope="module")
def split(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("backbone-split") / "split"
    assert main(["split", "--data", str(tiny_dataset), "--out", str(out), "--seed", "1"]) == 0
    return out


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["efficientnet_b0", "convnext_tiny"])
def test_train_unfreeze_evaluate_on_another_family(
    backbone: str, tiny_dataset: Path, split: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    from mammo.engine.checkpoint import load_checkpoint

    family = family_of(backbone)
    common = ["--data", str(tiny_dataset), "--split", str(split), "--image-size", "32",
              "--batch-size", "32", "--workers", "0", "--device", "cpu"]
    base, unfrozen, evaluation = tmp_path / "baseline", tmp_path / "unfreeze", tmp_path / "eval"
    assert main(["train", *common, "--out", str(base), "--backbone", backbone, "--epochs", "1",
                 "--set", "warmup_epochs=0", "--set", "augment.enabled=false"]) == 0
    # No --backbone: the starting checkpoint decides, and its family's default schedule follows.
    assert main(["unfreeze", *common, "--out", str(unfrozen), "--init", str(base / "last.pt"), "--epochs", "2",
                 "--set", "unfreeze.start_epoch=1", "--set", "unfreeze.drop=0", "--set", "unfreeze.cooldown=0"]) == 0
    assert main(["evaluate", *common, "--out", str(evaluation),
                 "--checkpoint", str(base / "last.pt"), "--checkpoint", str(unfrozen / "last.pt")]) == 0
    capsys.readouterr()

    resolved = yaml.safe_load((unfrozen / "config.yaml").read_text())
    assert resolved["model"]["backbone"] == backbone
    assert [s["block"] for s in resolved["unfreeze"]["steps"]] == list(family.block_names)
    start, end = load_checkpoint(base / "last.pt"), load_checkpoint(unfrozen / "last.pt")
    assert end["model_config"]["backbone"] == backbone and end["schedule"]["unfrozen"] == 2
    changed = {k for k, v in end["model"].items() if not torch.equal(v, start["model"][k])}
    assert {f"{family.head}.weight", f"{family.head}.bias"} <= changed
    first, _, *never = family.blocks  # two blocks unfrozen; the rest, stem included, never trained
    assert any(k.startswith(first.modules) for k in changed)
    assert not any(k.startswith(tuple(p + "." for b in never for p in b.modules)) for k in changed)
    # BatchNorm running statistics never move during unfreezing (EfficientNet; ConvNeXt has none).
    stats = [k for k in end["model"] if k.endswith(("running_mean", "running_var"))]
    assert bool(stats) == (family.norm == "batch")
    assert not changed & set(stats)
    metrics = json.loads((evaluation / "metrics.json").read_text())
    assert metrics and (evaluation / "report.html").is_file()
