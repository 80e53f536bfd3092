"""Operating thresholds a screening programme sets (threshold_metric: pf1, f1, specificity:S,
sensitivity:S, recall_rate:R), chosen on val and applied to test; no threshold means n/a, not 0.5;
split and train warnings without cancer; subgroup order; unfreeze's input size; the help texts."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mammo.cli import main
from mammo.config import EvalConfig, PipelineParams, UnfreezeConfig, parse_threshold_metric
from mammo.config_files import load_config
from mammo.errors import ConfigError
from mammo.evaluate import fixed_on_val, run_evaluation, threshold_choice
from mammo.jsonio import to_jsonable
from mammo.metrics import aggregate_breasts, binary_metrics, target_threshold
from mammo.split import Split, build_split, read_split, run_split, write_split
from mammo.stats import BootstrapSettings, subgroups
from mammo.summaries import split_table

# Ten val breasts, scores descending; 3 cancers (P), 7 non-cancers (N).
PROBS = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05]
LABELS = [1, 0, 1, 0, 0, 0, 1, 0, 0, 0]


@pytest.mark.parametrize(
    ("kind", "target", "expected"),
    [
        # specificity: the lowest score t with N - FP(t) >= S * N. FP(0.9)=0, FP(0.8)=FP(0.7)=1, FP(0.6)=2.
        ("specificity", 0.85, 0.7),  # FP <= 1.05 -> FP 1 -> lowest such t is 0.7
        ("specificity", 6 / 7, 0.7),  # exactly 6 of 7: reached, whatever the rounding of 6/7
        ("specificity", 0.9, 0.9),  # FP <= 0.7 -> only t = 0.9
        ("specificity", 0.5, 0.5),  # FP <= 3.5 -> FP(0.5) = 3, FP(0.4) = 4
        # sensitivity: the highest score t with TP(t) >= S * P. TP(0.9)=1, TP(0.7)=2, TP(0.3)=3.
        ("sensitivity", 0.6, 0.7),  # TP >= 1.8
        ("sensitivity", 2 / 3, 0.7),  # exactly 2 of 3
        ("sensitivity", 0.9, 0.3),  # TP >= 2.7
        ("sensitivity", 0.1, 0.9),
        # recall_rate: the lowest score t with at most R * n breasts flagged (prob >= t).
        ("recall_rate", 0.25, 0.8),  # <= 2.5 flagged: 2 at t = 0.8
        ("recall_rate", 0.3, 0.7),  # exactly 3 of 10
        ("recall_rate", 0.99, 0.1),  # <= 9.9 flagged: 9 at t = 0.1
    ],
)
def test_target_threshold_by_hand(kind: str, target: float, expected: float) -> None:
    threshold, reason = target_threshold(LABELS, PROBS, kind, target)
    assert (threshold, reason) == (expected, None)
    # and the figure it promises holds on these breasts
    m = binary_metrics(LABELS, PROBS, threshold)
    if kind == "specificity":
        assert m["specificity"] >= target - 1e-12
    elif kind == "sensitivity":
        assert m["sensitivity"] >= target - 1e-12
    else:
        assert m["recall_rate"] <= target + 1e-12


def test_target_threshold_ties_and_impossible_targets() -> None:
    # tied top score: three breasts share 0.5, so at most 1 of 4 flagged cannot be had
    threshold, reason = target_threshold([1, 0, 0, 0], [0.5, 0.5, 0.5, 0.1], "recall_rate", 0.25)
    assert threshold is None and "shared" in reason
    assert target_threshold([1, 0, 0, 0], [0.5, 0.5, 0.5, 0.1], "recall_rate", 0.75) == (0.5, None)
    # the top score is a non-cancer's: specificity 0.9 of 2 non-cancers needs flagging nothing
    threshold, reason = target_threshold([0, 1, 0], [0.9, 0.5, 0.1], "specificity", 0.9)
    assert threshold is None and "non-cancer" in reason
    # no cancer: sensitivity cannot be fixed; a recall rate can
    threshold, reason = target_threshold([0, 0, 0, 0], [0.4, 0.3, 0.2, 0.1], "sensitivity", 0.8)
    assert threshold is None and "no cancer" in reason
    assert target_threshold([0, 0, 0, 0], [0.4, 0.3, 0.2, 0.1], "recall_rate", 0.5) == (0.3, None)
    assert target_threshold([1, 1], [0.4, 0.3], "specificity", 0.9)[0] is None


def test_twenty_non_cancers_at_95_specificity_allow_exactly_one_false_positive() -> None:
    probs = [i / 100 for i in range(1, 21)] + [0.195]
    labels = [0] * 20 + [1]
    # FP(0.20) = 1, FP(0.195) = 1 (and the cancer flagged), FP(0.19) = 2: (1 - 0.95) * 20 is one false positive
    assert target_threshold(labels, probs, "specificity", 0.95) == (0.195, None)
    assert target_threshold(labels, probs, "specificity", 0.951)[0] is None  # FP <= 0.98: only flagging nothing


def breasts_of(labels: list[int], probs: list[float]) -> pd.DataFrame:
    return pd.DataFrame({"patient_id": [str(i) for i in range(len(labels))], "laterality": "L",
                         "label": labels, "prob": probs})


def test_threshold_choice_says_how_and_why_not() -> None:
    choice = threshold_choice(breasts_of(LABELS, PROBS), "specificity:0.85")
    assert choice["threshold"] == 0.7 and choice["reason"] is None and choice["rule"] == "specificity:0.85"
    assert "lowest val breast score at which val specificity is >= 0.85" in choice["how"]
    assert threshold_choice(breasts_of(LABELS, PROBS), "f1")["threshold"] == 0.7  # F1 2*2/(3+3) at 0.7 beats 2/4 at 0.9
    none = threshold_choice(breasts_of([0, 0, 0], [0.3, 0.2, 0.1]), "pf1")
    assert none["threshold"] is None and none["reason"] == "val has no cancer breast"


def test_no_threshold_means_thresholded_figures_undefined_not_half() -> None:
    m = to_jsonable(binary_metrics([1, 0, 0], [0.9, 0.6, 0.1], None))
    assert m["threshold"] is None and m["tp"] is None and m["fn"] is None
    for key in ("sensitivity", "specificity", "precision", "recall_rate", "recall"):
        assert m[key] is None
    assert m["auc"] == 1.0  # the ranking figures stay
    assert binary_metrics([1, 0, 0], [0.9, 0.6, 0.1], 0.5)["fp"] == 1


def test_fixed_on_val_applies_the_val_threshold_to_test() -> None:
    val = breasts_of(LABELS, PROBS)
    # test: 2 cancers, 4 non-cancers; at the val threshold 0.7, 1 cancer and 1 non-cancer flagged
    test = breasts_of([1, 1, 0, 0, 0, 0], [0.95, 0.5, 0.75, 0.6, 0.2, 0.1])
    rows = fixed_on_val(val, test, [0.85], [0.9], BootstrapSettings(resamples=0))
    spec, sens = rows
    assert spec["name"] == "specificity:0.85" and spec["threshold"] == 0.7
    assert spec["sensitivity"]["value"] == 0.5 and spec["specificity"]["value"] == 0.75
    assert spec["recall_rate"]["value"] == 2 / 6
    assert spec["sensitivity"]["low"] is not None and spec["sensitivity"]["low"] < 0.5 < spec["sensitivity"]["high"]
    assert sens["name"] == "sensitivity:0.9" and sens["threshold"] == 0.3  # val: TP >= 2.7 at 0.3
    assert sens["sensitivity"]["value"] == 1.0 and sens["specificity"]["value"] == 0.5
    no_cancer = fixed_on_val(breasts_of([0, 0], [0.2, 0.1]), test, [], [0.9], BootstrapSettings(resamples=0))
    assert no_cancer[0]["threshold"] is None and no_cancer[0]["sensitivity"]["value"] is None
    assert "no cancer" in no_cancer[0]["sensitivity"]["reason"]


# --- configuration ----------------------------------------------------------------------------


def test_threshold_metric_values_and_one_line_errors() -> None:
    assert parse_threshold_metric(" specificity:0.950 ") == "specificity:0.95"
    assert load_config(EvalConfig, overrides={"threshold_metric": "recall_rate:0.05"}).threshold_metric == "recall_rate:0.05"
    assert PipelineParams(threshold_metric="sensitivity:0.85").threshold_metric == "sensitivity:0.85"
    assert PipelineParams.model_fields["threshold_metric"].annotation is str  # a str pipeline parameter
    for bad in ("specificity:1.5", "foo", "sensitivity:", "recall_rate:0", "specificity:nan", "auc:0.5"):
        with pytest.raises(ConfigError) as info:
            load_config(EvalConfig, overrides={"threshold_metric": bad})
        message = str(info.value)
        assert "\n" not in message and "threshold_metric" in message and repr(bad) in message
    with pytest.raises(ConfigError, match="threshold_metric"):
        load_config(PipelineParams, overrides={"threshold_metric": "specificity:1.5"})


def test_cli_refuses_a_bad_threshold_metric_in_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code = main(["evaluate", "--data", str(tmp_path), "--split", str(tmp_path), "--out", str(tmp_path / "o"),
                 "--checkpoint", str(tmp_path / "c.pt"), "--threshold-metric", "specificity:1.5"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "threshold_metric" in err and "specificity:1.5" in err


def test_help_texts_say_what_the_commands_do(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "Input size in pixels, S or HxW (default: each checkpoint's own" in text
    assert "specificity:S" in text and "recall_rate:R" in text and "(default: pf1)" in text
    with pytest.raises(SystemExit):
        main(["unfreeze", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: the size the --init checkpoint was trained at" in text


# --- splits without cancer ----------------------------------------------------------------------


def no_cancer_table() -> pd.DataFrame:
    """20 patients, one with cancer: val and test get none."""
    rows = []
    for p in range(20):
        for lat in ("L", "R"):
            rows.append({"patient_id": str(100 + p), "image_id": f"{100 + p}{lat}", "laterality": lat,
                         "cancer": int(p == 0 and lat == "L")})
    return pd.DataFrame(rows)


def test_split_warns_when_val_or_test_has_no_cancer(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    split = build_split(no_cancer_table(), val_frac=0.2, test_frac=0.2, seed=0)
    counts = split.summary["splits"]
    assert counts["train"]["cancer_patients"] == 1 and counts["val"]["cancer_patients"] == counts["test"]["cancer_patients"] == 0
    warnings = split.summary["warnings"]
    assert [w.split(" ")[1] for w in warnings] == ["val", "test"]
    assert "no operating threshold can be chosen" in warnings[0] and "nothing can be promoted" in warnings[1]
    assert all(w in caplog.text for w in warnings)
    table = split_table(split.summary, str(tmp_path))
    assert f"warning: {warnings[0]}" in table and f"warning: {warnings[1]}" in table
    healthy = build_split(no_cancer_table().assign(cancer=1), val_frac=0.2, test_frac=0.2, seed=0)
    assert healthy.summary["warnings"] == []


# --- subgroups ------------------------------------------------------------------------------------


def test_subgroups_sort_numbers_by_value_and_age_bands_in_order() -> None:
    rng = np.random.default_rng(0)
    n = 40
    frame = pd.DataFrame({
        "patient_id": [str(i) for i in range(n)], "label": [i % 4 == 0 for i in range(n)],
        "prob": rng.random(n),
        "machine_id": ([197, 21, 3, 48] * 10)[:n],
        "age": ([72, 45, 55, 65] * 10)[:n],
    })
    frame.loc[0, "age"] = np.nan
    rows = subgroups(frame.assign(label=frame["label"].astype(int)), 0.5, BootstrapSettings(resamples=0), level="breast")
    by_column: dict[str, list[str]] = {}
    for row in rows:
        by_column.setdefault(row["column"], []).append(row["value"])
    assert by_column["machine_id"] == ["3", "21", "48", "197"]
    assert by_column["age_band"] == ["<50", "50-59", "60-69", "70+", "missing"]


# --- evaluation end to end ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from model_support import fake_checkpoint

    return fake_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt", image_size=32)


EVAL = {"data.batch_size": 32, "data.workers": 0, "device": "cpu", "stats.resamples": 50, "stats.subgroup_resamples": 0}


def test_evaluation_at_a_specificity_fixed_on_val(tiny_dataset: Path, checkpoint: Path, tmp_path: Path) -> None:
    run_split(data=str(tiny_dataset), out=str(tmp_path / "split"), val_frac=0.3, test_frac=0.3, seed=1)
    config = load_config(EvalConfig, overrides={
        **EVAL, "data.root": str(tiny_dataset), "split": str(tmp_path / "split"), "out": str(tmp_path / "eval"),
        "checkpoints": [str(checkpoint)], "threshold_metric": "specificity:0.8",
    })
    evaluation = run_evaluation(config)
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    val = evaluation.best_breasts("val")
    expected, _ = target_threshold(val["label"], val["prob"], "specificity", 0.8)
    assert expected is not None and metrics["threshold"] == pytest.approx(expected)
    assert metrics["threshold_metric"] == "specificity:0.8"
    assert metrics["threshold_choice"]["rule"] == "specificity:0.8" and "specificity is >= 0.8" in metrics["threshold_choice"]["how"]
    assert metrics["val"]["breast"]["specificity"] >= 0.8 - 1e-12
    test = metrics["test"]["breast"]
    assert test["threshold"] == pytest.approx(expected)
    assert test["ci"]["sensitivity"]["method"] == "proportion" and "low" in test["ci"]["specificity"]
    fixed = {row["name"]: row for row in test["fixed_on_val"]}
    assert set(fixed) == {"specificity:0.9", "specificity:0.95", "sensitivity:0.8", "sensitivity:0.9"}
    for row in fixed.values():
        t, _ = target_threshold(val["label"], val["prob"], row["fixed"], row["at"])
        assert row["threshold"] == (None if t is None else pytest.approx(t))
    assert all(p["threshold_from"] == "test's own curve" for p in test["operating_points"])
    html = (tmp_path / "eval" / "report.html").read_text()
    assert "Operating points fixed on validation (test)" in html and "<code>specificity:0.8</code>" in html
    assert "optimistic on test" in html


def test_evaluation_without_val_cancer_reports_no_threshold(
    tiny_dataset: Path, checkpoint: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run_split(data=str(tiny_dataset), out=str(tmp_path / "built"), val_frac=0.3, test_frac=0.3, seed=1)
    frame, summary = read_split(tmp_path / "built")
    sick = frame.groupby("patient_id")["cancer"].transform("max").astype(bool)
    frame.loc[sick & (frame["split"] == "val"), "split"] = "train"  # val keeps only cancer-free patients
    split = Split(assignments=frame, summary=summary)
    write_split(split, tmp_path / "split")
    config = load_config(EvalConfig, overrides={
        **EVAL, "data.root": str(tiny_dataset), "split": str(tmp_path / "split"), "out": str(tmp_path / "eval"),
        "checkpoints": [str(checkpoint)],
    })
    metrics = run_evaluation(config).metrics
    assert metrics["threshold"] is None and metrics["threshold_choice"]["reason"] == "val has no cancer breast"
    test = metrics["test"]["breast"]
    assert test["n_pos"] > 0 and test["auc"] is not None
    for key in ("sensitivity", "specificity", "precision", "recall_rate", "tp", "fp"):
        assert test[key] is None
    assert any(w.startswith("no operating threshold (pf1): val has no cancer breast") for w in metrics["warnings"])
    html = (tmp_path / "eval" / "report.html").read_text()
    assert "<b>n/a</b> (<code>pf1</code>: val has no cancer breast)" in html
    from mammo.engine.unfreeze import train_unfreeze

    train_unfreeze(unfreeze_config(tiny_dataset, tmp_path / "split", checkpoint, tmp_path / "unfreeze"))
    assert "unfreeze: the val split has no cancer: validation AUC, PR-AUC and pF1 are undefined" in caplog.text


# --- unfreeze: the init checkpoint's input size ------------------------------------------------------


def unfreeze_config(tiny_dataset: Path, split: Path, init: Path, out: Path, **extra: object) -> UnfreezeConfig:
    return load_config(UnfreezeConfig, overrides={
        "data.batch_size": 16, "data.workers": 0, "device": "cpu", "model.backbone": "tinynet",
        "data.root": str(tiny_dataset), "split": str(split), "out": str(out), "init": str(init), "epochs": 1, **extra,
    })


def test_unfreeze_takes_the_init_size_and_refuses_another(tiny_dataset: Path, tmp_path: Path) -> None:
    from model_support import fake_checkpoint

    from mammo.engine.checkpoint import load_checkpoint
    from mammo.engine.unfreeze import train_unfreeze

    init = fake_checkpoint(tmp_path / "init.pt", image_size=24)
    run_split(data=str(tiny_dataset), out=str(tmp_path / "split"), val_frac=0.3, test_frac=0.3, seed=1)
    with pytest.raises(ConfigError) as info:
        train_unfreeze(unfreeze_config(tiny_dataset, tmp_path / "split", init, tmp_path / "refused", **{"data.image_size": 32}))
    assert str(info.value).count("\n") == 0 and "trained at 24 px, not the 32 px asked" in str(info.value)
    config = unfreeze_config(tiny_dataset, tmp_path / "split", init, tmp_path / "run")
    assert config.data.image_size == 512  # the config's default, not given
    train_unfreeze(config)
    assert load_checkpoint(tmp_path / "run" / "last.pt")["image_size"] == 24
    assert "image_size: 24" in (tmp_path / "run" / "config.yaml").read_text()
    same = unfreeze_config(tiny_dataset, tmp_path / "split", init, tmp_path / "same", **{"data.image_size": 24})
    train_unfreeze(same)  # given and equal: fine
    assert math.isfinite(load_checkpoint(tmp_path / "same" / "last.pt")["epoch"])
