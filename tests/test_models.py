"""Model construction, weight loading from files the tests write, grayscale conv1, blocks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision.models import get_model

from mammo.config import ModelConfig
from mammo.errors import CheckpointError, ConfigError
from mammo.models import BACKBONES, BLOCK_NAMES, block_modules, build_model, head_parameters

FC_WIDTH = {
    "resnet18": 512,
    "resnet34": 512,
    "resnet50": 2048,
    "resnet101": 2048,
    "resnet152": 2048,
}


@pytest.fixture(scope="module")
def imagenet_like(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A resnet18 state_dict with a 1000-class head, as a torchvision download would give."""
    torch.manual_seed(0)
    state = get_model("resnet18", weights=None).state_dict()
    path = tmp_path_factory.mktemp("weights") / "resnet18-imagenet.pth"
    torch.save(state, path)
    return path, state


@pytest.mark.parametrize("backbone", BACKBONES)
def test_every_backbone_builds_with_a_single_logit_head(backbone: str) -> None:
    with torch.device("meta"):
        model = build_model(ModelConfig(backbone=backbone, in_channels=3))
    assert (model.fc.in_features, model.fc.out_features) == (FC_WIDTH[backbone], 1)
    assert model.conv1.in_channels == 3


@pytest.mark.parametrize(("backbone", "channels"), [("resnet18", 1), ("resnet34", 3)])
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
    assert BLOCK_NAMES == ("layer4", "layer3", "layer2", "layer1", "conv1")
    assert block_modules(model, "conv1") == [model.conv1, model.bn1]
    assert block_modules(model, "layer2") == [model.layer2]
    covered = {id(p) for p in head_parameters(model)}
    for name in BLOCK_NAMES:
        for module in block_modules(model, name):
            covered |= {id(p) for p in module.parameters()}
    assert covered == {id(p) for p in model.parameters()}
    assert [p.shape for p in head_parameters(model)] == [(1, 512), (1,)]
    with pytest.raises(ConfigError, match="unknown block 'layer5'"):
        block_modules(model, "layer5")
