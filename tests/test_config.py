"""Typed configuration: defaults, YAML, --set overrides and one-line errors naming the field."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mammo.config import (
    PipelineParams,
    TrainConfig,
    UnfreezeConfig,
    lookup_metric,
    metric_mode,
    stage_configs,
)
from mammo.config_files import dump_config, load_config
from mammo.errors import ConfigError


def test_defaults_are_the_research_defaults():
    train = TrainConfig()
    assert (train.optimizer.lr, train.optimizer.weight_decay) == (1e-3, 5e-4)
    assert (train.scheduler.factor, train.scheduler.patience, train.scheduler.cooldown) == (0.5, 3, 1)
    assert (train.early_stopping.patience, train.early_stopping.min_delta, train.early_stopping.start_epoch) == (5, 0.01, 5)
    assert train.epochs == 50 and train.model.backbone == "resnet50" and train.data.image_size == 512
    unfreeze = UnfreezeConfig()
    assert (unfreeze.optimizer.lr, unfreeze.optimizer.weight_decay, unfreeze.cosine_t_max) == (3e-4, 1e-4, 50)
    assert [s.block for s in unfreeze.unfreeze.steps] == ["layer4", "layer3", "layer2", "layer1", "conv1"]
    assert [(s.block_lr, s.head_lr) for s in unfreeze.unfreeze.steps][1] == (1e-5, 3e-5)
    assert (unfreeze.unfreeze.start_epoch, unfreeze.unfreeze.drop, unfreeze.unfreeze.cooldown) == (15, 0.0025, 12)
    assert (unfreeze.scheduler.factor, unfreeze.scheduler.patience) == (0.3, 6)
    assert (unfreeze.early_stopping.patience, unfreeze.early_stopping.min_delta, unfreeze.early_stopping.start_epoch) == (10, 0.002, 25)


def test_yaml_then_set_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"epochs": 7, "loss": {"name": "focal"}, "data": {"batch_size": 8}}))
    config = load_config(
        TrainConfig,
        path,
        sets=["loss.focal_gamma=3", "data.batch_size=16", "augment.enabled=false"],
        overrides={"data.batch_size": 64, "model.backbone": None},
    )
    assert config.epochs == 7
    assert config.loss.name == "focal" and config.loss.focal_gamma == 3.0
    assert config.data.batch_size == 64  # explicit flag beats --set beats YAML
    assert config.augment.enabled is False
    assert config.model.backbone == "resnet50"  # None means "flag not given"


def test_resolved_config_round_trips(tmp_path):
    config = load_config(TrainConfig, sets=["epochs=3", "model.backbone=resnet18"])
    path = tmp_path / "resolved.yaml"
    path.write_text(dump_config(config))
    assert load_config(TrainConfig, path) == config


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["data.image_size=0"], "data.image_size: image size 0: each side must be between 16 and 8192 pixels"),
        (["data.image_size=1024x"], "data.image_size: image size '1024x': expected S or HxW, e.g. 512 or 1024x512"),
        (["model.backbone=vgg16"], "model.backbone: Input should be 'resnet18'"),
        (["loss.nmae=focal"], "loss.nmae: Extra inputs are not permitted"),
        (["epochs"], "expected key=value"),
        (["epochs=5", "epochs.x=1"], "'epochs' is a value, not a section"),
    ],
)
def test_bad_values_give_one_line_naming_the_field(sets, message):
    with pytest.raises(ConfigError) as err:
        load_config(TrainConfig, sets=sets)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_bad_config_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(TrainConfig, tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(TrainConfig, bad)
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_config(TrainConfig, listing)
    typo = tmp_path / "typo.yaml"
    typo.write_text("optimiser:\n  lr: 0.1\n")
    with pytest.raises(ConfigError, match=rf"{typo.name}: optimiser: Extra inputs"):
        load_config(TrainConfig, typo)


def test_metric_helpers():
    metrics = {"image": {"auc": 0.8, "loss": 0.3, "pf1": float("nan")}, "breast": {"pf1": None}}
    assert lookup_metric(metrics, "image.auc") == 0.8
    assert lookup_metric(metrics, "image.pf1") is None
    assert lookup_metric(metrics, "breast.pf1") is None
    assert lookup_metric(metrics, "breast.auc") is None
    assert metric_mode("image.loss") == "min" and metric_mode("breast.auc") == "max"


def test_stage_configs_map_the_flat_pipeline_parameters():
    params = PipelineParams(
        data="/d", image_size=64, backbone="resnet18", baseline_epochs=4, warmup_epochs=1,
        unfreeze_epochs=3, loss="focal", baseline_set=["scheduler.patience=1"],
        unfreeze_set=["unfreeze.start_epoch=1"],
    )
    runs = {"baseline": "/r/b", "unfreeze": "/r/u", "evaluate": "/r/e"}
    baseline, unfreeze, evaluation = stage_configs(params, split="/s", runs=runs)
    assert (baseline.epochs, baseline.warmup_epochs, baseline.loss.name, baseline.scheduler.patience) == (4, 1, "focal", 1)
    assert (unfreeze.epochs, unfreeze.unfreeze.start_epoch, unfreeze.out) == (3, 1, "/r/u")
    for config in (baseline, unfreeze, evaluation):
        assert (config.data.root, config.split, config.data.image_size) == ("/d", "/s", 64)
    assert baseline.model.backbone == unfreeze.model.backbone == "resnet18"
    assert "model" not in evaluation.model_fields_set  # each checkpoint decides its model


def test_config_and_the_command_line_parser_import_no_heavy_library():
    """`mammo --help` and a config error answer at once: building every subcommand's parser
    loads neither torch nor scipy, pandas or scikit-learn (each costs seconds of imports)."""
    code = ("import sys, mammo.config, mammo.cli; mammo.cli.build_parser(); "
            "heavy = [m for m in ('torch', 'scipy', 'pandas', 'sklearn') if m in sys.modules]; "
            "assert not heavy, f'imported {heavy}'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_process_that_imports_mammo_freezes_its_heap_at_exit():
    """The exit handler runs after every handler registered later (those of the commands),
    and before the interpreter's last collection, which then has nothing to walk."""
    code = ("import atexit, gc; atexit.register(lambda: print('frozen', gc.get_freeze_count() > 0)); "
            "import mammo; print('running', gc.get_freeze_count())")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.split() == ["running", "0", "frozen", "True"]


@pytest.mark.parametrize(("epochs", "warmup", "expected"), [(1, 2, 0), (3, 3, 2), (5, 2, 2)])
def test_warmup_longer_than_the_run_is_cut_with_one_log_line(epochs, warmup, expected, caplog):
    config = load_config(TrainConfig, sets=[f"epochs={epochs}", f"warmup_epochs={warmup}"])
    assert config.warmup_epochs == expected
    cut = [r for r in caplog.records if "warmup_epochs" in r.getMessage()]
    assert len(cut) == (expected != warmup)


def test_pipeline_params_carry_the_promotion_rule_and_a_description_each():
    params = load_config(PipelineParams, sets=["promotion_margin=0.01", "model_name=m2"])
    assert (params.promotion_margin, params.model_name, params.promotion_metric) == (0.01, "m2", "test.breast.auc")
    assert "promotion_margin" not in params.training_values()
    assert "data" not in PipelineParams(data="s3://mammo/datasets/x").training_values()  # it is dataset_uri
    assert all(info.description for info in PipelineParams.model_fields.values())
    shown = dump_config(PipelineParams())
    for key in ("promotion_metric:", "promotion_margin:", "model_name:"):
        assert key in shown


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        # Non-finite numbers: a learning rate of inf used to train straight to NaN and exit 0.
        (["optimizer.lr=inf"], "optimizer.lr: Input should be a finite number"),
        (["optimizer.lr=.inf"], "optimizer.lr: Input should be a finite number"),
        (["optimizer.lr=1e400"], "optimizer.lr: Input should be a finite number"),
        (["loss.focal_gamma=.nan"], "loss.focal_gamma: Input should be a finite number"),
        (["augment.scale_max=-.inf"], "augment.scale_max: Input should be a finite number"),
        # Absurd sizes: one line, not a ValueError from torch or NumPy.
        (["data.batch_size=100000000000000000000"], "data.batch_size: Input should be less than or equal to 65536"),
        (["data.batch_size=1e20"], "data.batch_size: Input should be a valid integer"),
        (["data.workers=100000000"], "data.workers: Input should be less than or equal to 256"),
        (["seed=100000000000000000000000"], "seed: Input should be less than or equal to 4294967295"),
        (["seed=-1"], "seed: Input should be greater than or equal to 0"),
        (["epochs=1000000000000"], "epochs: Input should be less than or equal to 100000"),
        (["checkpoint.top_k=99999999"], "checkpoint.top_k: Input should be less than or equal to 1000"),
    ],
)
def test_non_finite_numbers_and_absurd_sizes_are_refused(sets, message):
    with pytest.raises(ConfigError) as err:
        load_config(TrainConfig, sets=sets)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_pipeline_params_are_bounded_too():
    for key, value in [("batch_size", 10**9), ("workers", 10**6), ("seed", 2**40), ("baseline_lr", float("inf"))]:
        with pytest.raises(ConfigError, match=key):
            load_config(PipelineParams, overrides={key: value})


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("optimizer:\n  lr: caf\xe9\n".encode("latin-1"), r"not UTF-8 text \(byte 0xe9 at offset 20\); save it as UTF-8"),
        ("epochs: 3\n".encode("utf-16"), r"not UTF-8 text \(byte 0xff at offset 0\)"),
        (b"[" * 5000, "nested too deeply to be a config file"),
        (b"a: [1, 2\n", r"not valid YAML at line 2, column 1 \(ParserError\)"),
        (b"epochs: 3\n" + b"#" * (1024 * 1024), "larger than 1024 KiB; not a config file"),
        (b"\xef\xbb\xbfepochs: 3\n", None),  # a UTF-8 BOM is fine
        (b"epochs: 3\noptimizer:\n  lr: 0.1\nepochs: 9\n", r"line 4: key 'epochs' appears twice"),
        (b"optimizer:\n  lr: 0.1\n  lr: 0.2\n", r"line 3: key 'lr' appears twice"),
    ],
)
def test_config_files_that_are_not_text_or_not_yaml(tmp_path, content, message):
    path = tmp_path / "c.yaml"
    path.write_bytes(content)
    if message is None:
        assert load_config(TrainConfig, path).epochs == 3
        return
    with pytest.raises(ConfigError, match=message):
        load_config(TrainConfig, path)
    with pytest.raises(ConfigError, match="cannot be read"):
        load_config(TrainConfig, tmp_path)  # a directory


def _config_mutations(rng, count):
    """Random bytes, truncations, other encodings, flipped and inserted bytes, deep nesting,
    self-referencing aliases, and odd values (inf, nan, huge numbers) in a valid config."""
    good = dump_config(TrainConfig()).encode()
    lines = good.decode().splitlines()
    values = [".inf", "-.inf", ".nan", "1e400", "1" * 30, "-1", "[1, 2]", "{a: 1}", "null", "''", "0x10", "*x", "!!binary AAAA"]
    cases = []
    for _ in range(count):
        kind = rng.randrange(8)
        data = bytearray(good)
        if kind == 0:
            data = bytearray(rng.randbytes(rng.randrange(1, 300)))
        elif kind == 1:
            data = data[: rng.randrange(len(data))]
        elif kind == 2:
            text = good.decode().replace("bce_pos", "bc\xe9")
            data = bytearray(text.encode(rng.choice(["utf-16", "utf-32", "latin-1", "cp1252"])))
        elif kind == 3:
            for _ in range(rng.randrange(1, 10)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        elif kind == 4:
            for _ in range(rng.randrange(1, 6)):
                data.insert(rng.randrange(len(data)), rng.choice(b"&*!%@`|>-[]{}:,\n\t\x00"))
        elif kind == 5:
            data = bytearray(rng.choice([b"[", b"{a: "]) * rng.randrange(50, 3000))
        elif kind == 6:
            mutated = list(lines)
            i = rng.randrange(len(mutated))
            mutated[i] = mutated[i].split(":")[0] + ": " + rng.choice(values)
            data = bytearray("\n".join(mutated).encode())
        else:
            data = bytearray(b"optimizer: &a {lr: 1, x: *a}\n" if rng.random() < 0.5 else b"a: &a [" + b"*a," * 40 + b"]\n")
        cases.append(bytes(data))
    return cases


def test_fuzzed_config_files_never_escape_as_tracebacks(tmp_path):
    """Whatever the bytes, loading a config file succeeds or raises ConfigError with one line."""
    import random

    path = tmp_path / "c.yaml"
    refused = 0
    for data in _config_mutations(random.Random(20261130), 300):
        path.write_bytes(data)
        for model in (TrainConfig, PipelineParams):
            try:
                load_config(model, path)
            except ConfigError as err:
                assert "\n" not in str(err)
                refused += 1
    assert refused > 400


@pytest.mark.slow
def test_fuzzed_config_files_through_commands_exit_2_with_one_line(tmp_path):
    """End to end, real processes: `mammo train --config` and `mammo run --config` on broken
    config files exit 2 with one line and write nothing (the in-process test above covers the
    random cases; each command here costs seconds of imports)."""
    cases = ["optimizer:\n  lr: caf\xe9\n".encode("latin-1"), b"optimizer:\n  lr: .inf\n", b"[" * 5000]
    mammo = str(Path(sys.executable).with_name("mammo"))
    for n, data in enumerate(cases):
        path = tmp_path / f"c{n}.yaml"
        path.write_bytes(data)
        commands = [["train", "--data", str(tmp_path / "nodata"), "--split", str(tmp_path), "--out", str(tmp_path / f"o{n}")]]
        if n < 2:
            commands.append(["run", "--workdir", str(tmp_path / f"w{n}")])
        for command in commands:
            proc = subprocess.run([mammo, *command, "--config", str(path)], capture_output=True, text=True, timeout=180)
            if proc.returncode == 0:
                continue  # pragma: no cover - a mutation that is a valid config
            assert proc.returncode == 2, proc.stderr[-2000:]
            assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("mammo: error: "), proc.stderr[-2000:]
            assert not (tmp_path / f"o{n}").exists() and not (tmp_path / f"w{n}").exists()
