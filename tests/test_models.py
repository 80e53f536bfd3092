"""Model construction for every backbone of the table, weight loading from files the tests
write, the grayscale stem, unfreezing blocks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision.models import get_model

from mammo.backbones import family_of
from mammo.config import ModelConfig
from mammo.engine.unfreeze import UnfreezeTrainer
from mammo.errors import CheckpointError, ConfigError
from mammo.models import BACKBONES, block_modules, build_model, head_parameters

HEAD_WIDTH = {
    "resnet18": 512,
    "resnet34": 512,
    "resnet50": 2048,
    "resnet101": 2048,
    "resnet152": 2048,
    "efficientnet_b0": 1280,
    "efficientnet_b1": 1280,
    "efficientnet_b2": 1408,
    "efficientnet_b3": 1536,
    "efficientnet_b4": 1792,
    "efficientnet_v2_s": 1280,
    "convnext_tiny": 768,
    "convnext_small": 768,
    "tinynet": 16,
}
#: Built for real (weights, forward on CPU); the others are checked on the meta device.
SMALL = ("resnet18", "efficientnet_b0", "convnext_tiny")


@pytest.fixture(scope="module")
def imagenet_like(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A resnet18 state_dict with a 1000-class head, as a torchvision download would give."""
    torch.manual_seed(0)
    state = get_model("resnet18", weights=None).state_dict()
    path = tmp_path_factory.mktemp("weights") / "resnet18-imagenet.pth"
    torch.save(state, path)
    return path, state


def test_the_table_names_every_backbone_once() -> None:
    assert sorted(BACKBONES) == sorted(HEAD_WIDTH)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("backbone", BACKBONES)
def test_every_backbone_builds_with_a_single_logit_head(backbone: str, channels: int) -> None:
    family = family_of(backbone)
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        model = build_model(ModelConfig(backbone=backbone, in_channels=channels)).eval()
        out = model(torch.empty(2, channels, 64, 64))
    head = model.get_submodule(family.head)
    assert isinstance(head, torch.nn.Linear)
    assert (head.in_features, head.out_features) == (HEAD_WIDTH[backbone], 1)
    assert model.get_submodule(family.stem).in_channels == channels
    assert out.shape == (2, 1)


@pytest.mark.parametrize(
    ("backbone", "channels"),
    [("resnet18", 1), ("resnet34", 3), ("efficientnet_b0", 1), ("convnext_tiny", 3)],
)
def test_forward_gives_one_logit_per_image(backbone: str, channels: int) -> None:
    model = build_model(ModelConfig(backbone=backbone, in_channels=channels)).eval()
    with torch.no_grad():
        out = model(torch.randn(2, channels, 32, 32))
    assert out.shape == (2, 1)


def test_local_imagenet_weights_load_and_grayscale_conv1_sums_them(imagenet_like) -> None:
    path, state = imagenet_like
    rgb = build_model(ModelConfig(backbone="resnet18", weights=str(path), in_channels=3))
    gray = build_model(ModelConfig(backbone="resnet18", weights=str(path), in_channels=1))
    assert torch.equal(rgb.conv1.weight, state["conv1.weight"])
    assert torch.equal(rgb.layer3[1].conv2.weight, state["layer3.1.conv2.weight"])
    assert torch.equal(gray.bn1.running_var, state["bn1.running_var"])
    assert gray.conv1.weight.shape == (64, 1, 7, 7)
    assert torch.allclose(gray.conv1.weight, state["conv1.weight"].sum(dim=1, keepdim=True))
    assert rgb.fc.weight.shape == (1, 512)
    # A grayscale image through the 1-channel model equals it repeated through the RGB model.
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        gray.fc.load_state_dict(rgb.fc.state_dict())
        assert torch.allclose(gray.eval()(x), rgb.eval()(x.repeat(1, 3, 1, 1)), atol=1e-5)


@pytest.mark.parametrize("backbone", ["efficientnet_b0", "convnext_tiny"])
def test_other_families_load_rgb_weights_into_a_summed_grayscale_stem(backbone: str, tmp_path: Path) -> None:
    """As the ResNet test above: a 1000-class state_dict (ConvNeXt's stem conv has a bias)."""
    torch.manual_seed(0)
    state = get_model(backbone, weights=None).state_dict()
    path = tmp_path / f"{backbone}-imagenet.pth"
    torch.save(state, path)
    family = family_of(backbone)
    stem, head = family.stem, family.head
    rgb = build_model(ModelConfig(backbone=backbone, weights=str(path), in_channels=3)).eval()
    gray = build_model(ModelConfig(backbone=backbone, weights=str(path), in_channels=1)).eval()
    assert torch.equal(rgb.get_submodule(stem).weight, state[f"{stem}.weight"])
    summed = state[f"{stem}.weight"].sum(dim=1, keepdim=True)
    assert torch.allclose(gray.get_submodule(stem).weight, summed)
    if f"{stem}.bias" in state:
        assert torch.equal(gray.get_submodule(stem).bias, state[f"{stem}.bias"])
    for key, value in state.items():  # everything but the stem and the 1000-class head is loaded
        if not key.startswith((f"{stem}.", f"{head}.")):
            assert torch.equal(gray.state_dict()[key], value), key
    assert rgb.get_submodule(head).weight.shape == (1, HEAD_WIDTH[backbone])
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        gray.get_submodule(head).load_state_dict(rgb.get_submodule(head).state_dict())
        assert torch.allclose(gray(x), rgb(x.repeat(1, 3, 1, 1)), atol=1e-4)
    # A grayscale model's own state_dict builds it again (the 1-channel stem is recognised).
    torch.save(gray.state_dict(), path)
    again = build_model(ModelConfig(backbone=backbone, weights=str(path), in_channels=1))
    assert torch.equal(again.get_submodule(stem).weight, gray.get_submodule(stem).weight)


def test_training_checkpoint_under_model_key_round_trips(tmp_path: Path) -> None:
    trained = build_model(ModelConfig(backbone="resnet18", in_channels=1))
    path = tmp_path / "best_auc.pt"
    torch.save({"model": trained.state_dict(), "epoch": 3}, path)
    loaded = build_model(ModelConfig(backbone="resnet18", weights=str(path), in_channels=1))
    for key, value in trained.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    torch.save({"state_dict": {f"module.{k}": v for k, v in trained.state_dict().items()}}, path)
    again = build_model(ModelConfig(backbone="resnet18", weights=str(path), in_channels=1))
    assert torch.equal(again.fc.weight, trained.fc.weight)
    with pytest.raises(
        CheckpointError, match="weights are for 1-channel input; set model.in_channels to 1"
    ):
        build_model(ModelConfig(backbone="resnet18", weights=str(path), in_channels=3))


def test_missing_unreadable_or_mismatched_weight_files_are_checkpoint_errors(
    tmp_path: Path, imagenet_like
) -> None:
    missing = tmp_path / "nowhere.pth"
    with pytest.raises(CheckpointError, match=r"nowhere\.pth: weights file not found"):
        build_model(ModelConfig(backbone="resnet18", weights=str(missing)))
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match=r"garbage\.pt: not a loadable state_dict file"):
        build_model(ModelConfig(backbone="resnet18", weights=str(garbage)))
    not_tensors = tmp_path / "config.pt"
    torch.save({"epoch": 1}, not_tensors)
    with pytest.raises(CheckpointError, match="does not hold a state_dict"):
        build_model(ModelConfig(backbone="resnet18", weights=str(not_tensors)))
    path, _ = imagenet_like
    with pytest.raises(
        CheckpointError,
        match=r"does not match resnet34: 80 missing key\(s\) \(e\.g\. layer1\.2\.conv1\.weight\), 0 unexpected",
    ):
        build_model(ModelConfig(backbone="resnet34", weights=str(path)))
    with pytest.raises(
        CheckpointError, match=r"wrong shape for resnet50, e\.g\. layer1\.0\.conv1\.weight"
    ):
        build_model(ModelConfig(backbone="resnet50", weights=str(path)))


def test_unknown_weights_name_lists_the_valid_ones() -> None:
    with pytest.raises(
        ConfigError,
        match="unknown torchvision weights 'IMAGENET22K'.*IMAGENET1K_V1, IMAGENET1K_V2, DEFAULT",
    ):
        build_model(ModelConfig(backbone="resnet50", weights="IMAGENET22K"))


def test_failed_download_suggests_a_local_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An empty hub cache and a proxy that refuses connections: the real download code fails fast.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(
        CheckpointError,
        match=r"could not download torchvision weights ResNet18_Weights\.IMAGENET1K_V1.*pass that file as model\.weights",
    ):
        build_model(ModelConfig(backbone="resnet18", weights="imagenet1k_v1"))


def test_blocks_and_head_cover_the_network_in_unfreezing_order() -> None:
    model = build_model(ModelConfig(backbone="resnet18", in_channels=1))
    assert family_of("resnet18").block_names == ("layer4", "layer3", "layer2", "layer1", "conv1")
    assert block_modules(model, "resnet18", "conv1") == [model.conv1, model.bn1]
    assert block_modules(model, "resnet18", "layer2") == [model.layer2]
    assert [p.shape for p in head_parameters(model, "resnet18")] == [(1, 512), (1,)]
    with pytest.raises(ConfigError, match="unknown block 'layer5'.*expected one of layer4, layer3"):
        block_modules(model, "resnet18", "layer5")


@pytest.mark.parametrize("backbone", BACKBONES)
def test_every_family_s_blocks_and_head_cover_each_parameter_once(backbone: str) -> None:
    family = family_of(backbone)
    with torch.device("meta"):
        model = build_model(ModelConfig(backbone=backbone, in_channels=1))
    seen = [id(p) for p in head_parameters(model, backbone)]
    assert [p.shape for p in head_parameters(model, backbone)] == [(1, HEAD_WIDTH[backbone]), (1,)]
    for name in family.block_names:
        params = [id(p) for m in block_modules(model, backbone, name) for p in m.parameters()]
        assert params, name
        seen += params
    assert len(seen) == len(set(seen)), "a parameter belongs to two blocks"
    assert set(seen) == {id(p) for p in model.parameters()}
    # The stem conv is in the last block to unfreeze.
    stem = model.get_submodule(family.stem)
    assert any(stem is m or any(stem is s for s in m.modules()) for m in block_modules(model, backbone, family.block_names[-1]))


@pytest.mark.parametrize("backbone", ["efficientnet_b0", "convnext_tiny", "tinynet"])
def test_unfreeze_trains_the_head_only_and_keeps_batchnorm_in_eval_mode(backbone: str, tmp_path: Path) -> None:
    """Frozen blocks have requires_grad=False; every BatchNorm stays in eval mode (EfficientNet);
    ConvNeXt has none, and its frozen LayerNorms only stop training."""
    from mammo.config import UnfreezeConfig
    from mammo.engine.checkpoint import FORMAT

    model = build_model(ModelConfig(backbone=backbone, in_channels=1))
    init = tmp_path / "init.pt"
    torch.save({"format": FORMAT, "model": model.state_dict(), "model_config": ModelConfig(backbone=backbone).model_dump(mode="json")}, init)
    config = UnfreezeConfig(init=str(init), out=str(tmp_path / "u"))  # resnet50 steps: the checkpoint decides
    trainer = UnfreezeTrainer(config)
    trainer.model = trainer.build_model()
    assert config.model.backbone == backbone
    assert [s.block for s in config.unfreeze.steps] == list(family_of(backbone).block_names)
    trainer.build_optimizer(trainer.model)
    trainable = {id(p) for p in trainer.model.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in head_parameters(trainer.model, backbone)}
    trainer.model.train()
    trainer.after_train_mode(trainer.model)
    norms = [m for m in trainer.model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert all(not m.training for m in norms)
    assert bool(norms) == (family_of(backbone).norm == "batch")
    assert trainer._unfreeze_next() == family_of(backbone).block_names[0]
    assert [g["name"] for g in trainer.optimizer.param_groups] == ["head", family_of(backbone).block_names[0]]
    deepest = {id(p) for m in block_modules(trainer.model, backbone, family_of(backbone).block_names[0]) for p in m.parameters()}
    assert {id(p) for p in trainer.model.parameters() if p.requires_grad} == trainable | deepest
