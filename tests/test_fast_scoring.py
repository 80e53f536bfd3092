"""Fast scoring on CPU nodes (``mammo.runtimes``): the ONNX file the promoter's export writes
gives the eager network's probabilities to ``ONNX_TOLERANCE`` on any batch size; ``mammo
predict --runtime onnx`` and the scorer use the production manifest's file (or export one for
a checkpoint) and agree with eager; a corrupt or foreign ONNX file is refused in one line before
ONNX Runtime reads it; ``mammo bench predict`` runs its mechanics at tiny scale (speed is not
asserted: it depends on the machine)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from mammo import storage
from mammo.cli import main
from mammo.errors import CheckpointError, ConfigError
from mammo.export import (
    ONNX_TOLERANCE,
    example_images,
    export_name,
    load_model_file,
    model_from_export,
    onnx_name,
    probabilities,
    publish_export,
)
from mammo.runtimes import check_runtime, onnx_probabilities, open_session
from mammo.storage.integrity import sha256_file
from mammo_components.scorer import entrypoint as scorer
from model_support import fake_checkpoint, unlabelled

THRESHOLD = 0.5



@pytest.fixture(scope="module")
def production(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, str, Path]:
    """(production pointer, checkpoint, its sha256, unlabelled studies): the pointer as the
    promoter leaves it, its weights export and ONNX file written by ``publish_export``."""
    root = tmp_path_factory.mktemp("fast")
    checkpoint = fake_checkpoint(root / "c.pt", seed=3)
    digest = sha256_file(checkpoint)
    published, onnx_error = publish_export(str(checkpoint), digest, str(root / "staged"), threshold=THRESHOLD)
    assert onnx_error is None and [key for key, _, _ in published] == [export_name(digest), onnx_name(digest)]
    for key, size, sha in published:  # what the promoter records is what was written
        assert sha256_file(root / "staged" / key) == sha and (root / "staged" / key).stat().st_size == size
    pointer = storage.production_model_uri(str(root / "store"), "m")
    storage.publish(
        {f"model-{digest[:12]}.pt": checkpoint, **{key: root / "staged" / key for key, _, _ in published}}, pointer,
        metadata={"checkpoint": f"model-{digest[:12]}.pt", "sha256": digest, "export": export_name(digest),
                  "threshold": THRESHOLD},
    )
    return pointer, checkpoint, digest, unlabelled(tiny_dataset, root / "incoming")


def test_the_onnx_file_gives_eager_probabilities_at_any_batch_size(production):
    pointer, checkpoint, digest, _ = production
    path = Path(pointer) / onnx_name(digest)
    export, _ = load_model_file(checkpoint)
    model = model_from_export(export)
    session = open_session(path, sha256_file(path), threads=1)
    for batch, seed in ((1, 5), (7, 6)):
        images = example_images(export, batch=batch, seed=seed)
        got = onnx_probabilities(session, images.numpy())
        want = probabilities(model, export, images).numpy()
        assert got.shape == (batch,)
        assert abs(got - want).max() <= ONNX_TOLERANCE  # another engine's float kernels: not bitwise


def _scores(out: Path) -> pd.DataFrame:
    from mammo.predict import images_path

    return pd.read_csv(images_path(str(out)), dtype={"image_id": str, "patient_id": str}).set_index("image_id")


def test_predict_runtime_onnx_uses_the_production_file_and_agrees_with_eager(production, tmp_path, capsys):
    pointer, _, digest, studies = production
    common = ["predict", "--model", pointer, "--data", str(studies), "--device", "cpu", "--workers", "0",
              "--workdir", str(tmp_path / "work"), "--json"]
    assert main([*common, "--out", str(tmp_path / "eager.csv")]) == 0
    eager = json.loads(capsys.readouterr().out)
    assert main([*common, "--out", str(tmp_path / "onnx.csv"), "--runtime", "onnx"]) == 0
    onnx = json.loads(capsys.readouterr().out)
    assert eager["runtime"] == "eager" and onnx["runtime"] == "onnx"
    assert onnx["model"]["onnx"] == storage.join(pointer, onnx_name(digest))
    a, b = _scores(tmp_path / "eager.csv"), _scores(tmp_path / "onnx.csv")
    assert len(a) == len(b) == onnx["scored_images"] == onnx["images"]
    # The CSVs keep 6 decimals: the tolerance plus that rounding.
    assert (a["prob"] - b.loc[a.index, "prob"]).abs().max() <= ONNX_TOLERANCE + 1e-6


def test_predict_runtime_onnx_exports_a_checkpoint_for_the_run_and_removes_it(production, tmp_path, capsys):
    _, checkpoint, _, studies = production
    work = tmp_path / "work"
    code = main(["predict", "--model", str(checkpoint), "--data", str(studies), "--device", "cpu", "--workers", "0",
                 "--threshold", "0.5", "--out", str(tmp_path / "o.csv"), "--runtime", "onnx",
                 "--workdir", str(work), "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["runtime"] == "onnx" and summary["model"]["onnx"] is None
    assert summary["scored_images"] == summary["images"] > 0
    assert not list((work / "onnx").glob("*.onnx"))  # exported for this run only


def test_a_corrupt_onnx_file_is_refused_in_one_line_before_it_is_loaded(production, tmp_path, capsys):
    pointer, _, digest, studies = production
    copy = tmp_path / "production"
    shutil.copytree(pointer, copy)
    target = copy / onnx_name(digest)
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    code = main(["predict", "--model", str(copy), "--data", str(studies), "--device", "cpu", "--workers", "0",
                 "--out", str(tmp_path / "o.csv"), "--runtime", "onnx", "--workdir", str(tmp_path / "w")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and onnx_name(digest) in err[0] and "sha256" in err[0]
    assert not (tmp_path / "o.csv").exists()


def test_open_session_refuses_an_unrecorded_hash_and_a_file_that_is_not_onnx(tmp_path):
    garbage = tmp_path / "model.onnx"
    garbage.write_bytes(b"not an onnx model\n" * 10)
    with pytest.raises(CheckpointError, match="refusing to load"):
        open_session(garbage, None)
    with pytest.raises(CheckpointError) as err:
        open_session(garbage, sha256_file(garbage))
    assert "not a loadable ONNX model" in str(err.value) and "\n" not in str(err.value)


def test_runtime_onnx_on_an_accelerator_or_an_unknown_runtime_is_refused():
    with pytest.raises(ConfigError, match="--device cuda needs --runtime eager"):
        check_runtime("onnx", "cuda")
    with pytest.raises(ConfigError, match="expected one of eager, onnx"):
        check_runtime("tensorrt", "cpu")
    assert check_runtime("onnx", "auto") == "onnx" and check_runtime("eager", "cuda") == "eager"


def test_the_scorer_runs_the_production_onnx_file(production, tmp_path):
    pointer, _, _, studies = production
    params = {"device": "cpu", "workers": 0, "batch_size": 16}
    out = str(tmp_path / "scores")
    result = scorer.run(dataset_uri=str(studies), model_uri=pointer, out_uri=out, params=params,
                        workdir=str(tmp_path / "pod"), runtime="onnx")
    assert result["runtime"] == "onnx" and result["scored_images"] == result["images"] > 0
    breasts = pd.read_csv(Path(out) / "breasts.csv")
    assert (breasts["flag"] == (breasts["prob"] >= THRESHOLD).astype(int)).all()


def test_bench_predict_mechanics_at_tiny_scale(capsys):
    from mammo.bench import native_bf16

    torch_threads = torch.get_num_threads()
    assert main(["bench", "predict", "--scale", "tiny", "--threads", "1", "2", "--batches", "1"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert torch.get_num_threads() == torch_threads  # restored
    model = result["models"]["tinynet"]
    paths = {"eager", "channels_last", "onnx"} | ({"bf16_autocast"} if native_bf16() else set())
    assert set(model["threads"]) == {"1", "2"}
    for figures in model["threads"].values():
        assert set(figures) == paths and all(f["images_per_second"] > 0 for f in figures.values())
        assert figures["eager"]["speedup"] == 1.0
    assert set(model["agreement"]) == paths - {"eager"}
    onnx = model["agreement"]["onnx"]
    assert onnx["max_abs_diff"] <= ONNX_TOLERANCE and abs(onnx["auc"] - onnx["eager_auc"]) <= 1e-3 and onnx["equal"]
    assert model["fastest_equal_path"] in paths
    assert ("bf16_autocast" in result["skipped"]) == (native_bf16() is None)
