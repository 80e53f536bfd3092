"""k-fold training (issue 24): the patient-level folds of the training split (``mammo.folds``),
the pipeline's fan-out over them, and the evaluation of the fold models and their ensemble."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mammo.errors import ConfigError
from mammo.folds import assign_folds, fold_assignments, fold_summary, held_out_patients
from mammo.split import build_split


def _table(patients: int, *, start: int = 0, seed: int = 0) -> pd.DataFrame:
    """Two images per breast, both breasts; one patient in eight has a cancer in the left breast."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(start, start + patients):
        cancer = int(rng.random() < 0.125)
        for side in ("L", "R"):
            for view in range(2):
                rows.append({"patient_id": f"p{p:04d}", "image_id": f"{p:04d}{side}{view}", "laterality": side,
                             "cancer": cancer if side == "L" else 0})
    return pd.DataFrame(rows)


def _split(table: pd.DataFrame, previous: pd.DataFrame | None = None) -> pd.DataFrame:
    return build_split(table, val_frac=0.15, test_frac=0.15, seed=7, previous=previous).assignments


def test_folds_hold_training_patients_only_and_each_patient_in_exactly_one() -> None:
    assignments = _split(_table(400))
    of = assign_folds(assignments, folds=4, seed=7)
    train_patients = set(assignments.loc[assignments["split"] == "train", "patient_id"])
    assert set(of.index) == train_patients
    assert set(of.unique()) == {0, 1, 2, 3}
    held = [set(held_out_patients(assignments, fold=f, folds=4, seed=7)) for f in range(4)]
    assert set().union(*held) == train_patients and sum(map(len, held)) == len(train_patients)
    # Both strata reach every fold (about 35 cancer patients in 280 training patients).
    summary = fold_summary(assignments, folds=4, seed=7)
    assert all(c["cancer_patients"] > 0 and c["patients"] > 0 for c in summary["counts"])
    assert sum(c["patients"] for c in summary["counts"]) == len(train_patients)


def test_a_fold_trains_on_the_other_folds_and_keeps_val_and_test_whole() -> None:
    assignments = _split(_table(200))
    for fold in range(3):
        held = set(held_out_patients(assignments, fold=fold, folds=3, seed=7))
        trained = fold_assignments(assignments, fold=fold, folds=3, seed=7)
        assert not held & set(trained["patient_id"])
        for name in ("val", "test"):
            pd.testing.assert_frame_equal(
                trained[trained["split"] == name].reset_index(drop=True),
                assignments[assignments["split"] == name].reset_index(drop=True),
            )
        kept_train = set(trained.loc[trained["split"] == "train", "patient_id"])
        assert kept_train | held == set(assignments.loc[assignments["split"] == "train", "patient_id"])


def test_growing_data_never_moves_a_patient_to_another_fold() -> None:
    first = _split(_table(150))
    grown = _split(pd.concat([_table(150), _table(120, start=150, seed=1)], ignore_index=True), previous=first)
    before, after = assign_folds(first, folds=5, seed=7), assign_folds(grown, folds=5, seed=7)
    assert len(after) > len(before)
    pd.testing.assert_series_equal(after.loc[before.index], before)
    # Another seed draws other folds.
    assert not assign_folds(first, folds=5, seed=8).equals(before)


def test_fold_bounds_are_one_line_errors() -> None:
    assignments = _split(_table(40))
    with pytest.raises(ConfigError, match="folds must be between 1 and 10, got 11"):
        assign_folds(assignments, folds=11, seed=7)
    with pytest.raises(ConfigError, match="fold must be between 0 and 2 for folds=3, got 3"):
        fold_assignments(assignments, fold=3, folds=3, seed=7)
    from mammo.config import PipelineParams

    assert PipelineParams().folds == 1
    with pytest.raises(ValueError, match="folds"):
        PipelineParams(folds=0)
    with pytest.raises(ValueError, match="threshold_source: oof needs folds of 2 or more"):
        PipelineParams(threshold_source="oof")
    assert PipelineParams(threshold_source="oof", folds=2).threshold_source == "oof"
    from mammo_components.folds.step import run_plan_step

    with pytest.raises(ConfigError, match="the fold plan runs with folds of 2 or more"):
        run_plan_step(split_uri="unused", store_uri="unused", run_id="r", params={"folds": 1})


def test_a_fold_without_cancer_is_warned_about() -> None:
    table = _table(30)
    table["cancer"] = 0
    table.loc[table["patient_id"] == "p0000", "cancer"] = 1
    summary = fold_summary(_split(table), folds=3, seed=7)
    assert len(summary["warnings"]) >= 2 and "no cancer patient" in summary["warnings"][0]


# --- the compiled pipeline -----------------------------------------------------------------


def _compiled(tmp_path, profile: str) -> dict:
    import yaml

    from mammo_pipelines.cli import main

    out = tmp_path / f"{profile}.yaml"
    assert main(["compile", "--profile", profile, "--out", str(out)]) == 0
    return next(yaml.safe_load_all(out.read_text()))


def _dag_holding(spec: dict, task: str) -> tuple[str, dict]:
    dags = {"root": spec["root"]["dag"], **{n: c["dag"] for n, c in spec["components"].items() if "dag" in c}}
    [(name, dag)] = [(n, d) for n, d in dags.items() if task in d["tasks"]]
    return name, dag


def _task_running(spec: dict, component: str) -> dict:
    dags = [spec["root"]["dag"], *(c["dag"] for c in spec["components"].values() if "dag" in c)]
    [task] = [t for d in dags for t in d["tasks"].values() if t["componentRef"]["name"] == component]
    return task


@pytest.mark.parametrize("profile", ["gpu", "kind"])
def test_the_fold_trainers_fan_out_in_a_parallel_for_inside_the_folds_choice(profile: str, tmp_path) -> None:
    spec = _compiled(tmp_path, profile)
    loop_name, loop = _dag_holding(spec, "fold-baseline-trainer")
    assert set(loop["tasks"]) == {"fold-baseline-trainer", "fold-unfreeze-trainer"}
    loop_task = _task_running(spec, loop_name)
    assert loop_task["taskInfo"]["name"] == "fold-training"
    # Over the fold plan's list of fold indices, every fold at once on the cluster.
    assert loop_task["parameterIterator"]["items"]["inputParameter"].endswith("fold-plan-Output")
    assert "iteratorPolicy" not in loop_task
    trainer = loop["tasks"]["fold-baseline-trainer"]
    assert "loop-item" in str(trainer["inputs"]["parameters"]["fold"])
    assert loop["tasks"]["fold-unfreeze-trainer"]["inputs"]["artifacts"]["init"]["taskOutputArtifact"] == {
        "outputArtifactKey": "model", "producerTask": "fold-baseline-trainer"}
    assert trainer["cachingOptions"]["enableCache"] and trainer["retryPolicy"]["maxRetryCount"] == 3
    # The fold plan, the loop and the collecting step sit in the branch taken when folds > 1.
    branch_name, branch = _dag_holding(spec, "fold-plan")
    assert set(branch["tasks"]) == {"fold-plan", _dag_key(branch, loop_name), "fold-models"}
    condition = _task_running(spec, branch_name)["triggerPolicy"]["condition"]
    assert "pipelinechannel--folds" in condition and "> 1" in condition
    collected = branch["tasks"]["fold-models"]["inputs"]["artifacts"]["fold_baselines"]
    assert "fold-baseline-trainer" in str(collected)
    # The evaluator gets the fold models from either branch (dsl.OneOf).
    evaluator = spec["root"]["dag"]["tasks"]["evaluator"]["inputs"]["parameters"]["fold_models"]
    choice = evaluator["taskOutputParameter"]["producerTask"]
    selectors = spec["components"][spec["root"]["dag"]["tasks"][choice]["componentRef"]["name"]]["dag"]["outputs"]
    [(key, output)] = selectors["parameters"].items()
    branches = [s["producerSubtask"] for s in output["valueFromOneof"]["parameterSelectors"]]
    chosen = branches and [set(spec["components"][_task_running_named(spec, b)]["dag"]["tasks"]) for b in branches]
    assert chosen == [{"fold-plan", _dag_key(branch, loop_name), "fold-models"}, {"no-fold-models"}]
    executor = spec["deploymentSpec"]["executors"]["exec-fold-baseline-trainer"]["container"]
    assert ("accelerator" in executor.get("resources", {})) == (profile == "gpu")


def _task_running_named(spec: dict, task: str) -> str:
    """The component a task of that name runs (task names are unique in a pipeline)."""
    dags = [spec["root"]["dag"], *(c["dag"] for c in spec["components"].values() if "dag" in c)]
    [component] = [d["tasks"][task]["componentRef"]["name"] for d in dags if task in d["tasks"]]
    return component


def _dag_key(dag: dict, component: str) -> str:
    [name] = [n for n, t in dag["tasks"].items() if t["componentRef"]["name"] == component]
    return name


def test_mammo_run_trains_the_folds_one_after_another(tmp_path) -> None:
    """kfp.local runs the same pipeline; ``mammo run``'s profile runs one fold at a time."""
    import yaml
    from kfp import compiler

    from mammo_pipelines.local import local_profile
    from mammo_pipelines.pipeline import build_pipeline

    out = tmp_path / "local.yaml"
    compiler.Compiler().compile(build_pipeline(local_profile()), package_path=str(out))
    spec = next(yaml.safe_load_all(out.read_text()))
    loop = _task_running(spec, _dag_holding(spec, "fold-baseline-trainer")[0])
    assert loop["iteratorPolicy"] == {"parallelismLimit": 1}


# --- one tiny k-fold run through kfp.local (mammo run), shared by the assertions below -------

#: As the pipeline tests' TINY: one epoch per trainer at 32 px, few resamples; two folds.
TINY_FOLDS = {
    "image_size": 32, "backbone": "tinynet", "batch_size": 16, "workers": 0, "device": "cpu",
    "baseline_epochs": 1, "warmup_epochs": 0, "unfreeze_epochs": 1, "unfreeze_set": ["unfreeze.start_epoch=1"],
    "promotion_min": -1.0, "promotion_min_cancers": 0,
    "evaluate_set": ["stats.resamples=100", "stats.subgroup_resamples=0"], "folds": 2, "threshold_source": "oof",
}


@pytest.fixture(scope="module")
def fold_run(tiny_dataset, tmp_path_factory):
    """``mammo run --set folds=2`` on the tiny data: its summary, printed output and store."""
    import contextlib
    import io

    import yaml

    from mammo_pipelines.local_run import run_local

    root = tmp_path_factory.mktemp("folds")
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY_FOLDS))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MAMMO_CACHE_DIR", str(root / "cache"))
        for name in ("MAMMO_STORE_URI", "MAMMO_PUSHGATEWAY_URL", "MINIO_ENDPOINT"):
            mp.delenv(name, raising=False)
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            summary = run_local(str(root / "work"), str(tiny_dataset), "demo", str(config), [])
    return summary, printed.getvalue(), root / "work"


@pytest.mark.slow
def test_mammo_run_trains_each_fold_without_its_patients_and_evaluates_the_ensemble(fold_run) -> None:
    import hashlib
    import json

    from mammo.engine.checkpoint import load_checkpoint
    from mammo.split import read_split

    summary, printed, work = fold_run
    run = work / "runs" / summary["run_id"]
    main_split, _ = read_split(next((work / "splits").iterdir()))
    assert printed.count("[folds] fold baseline trainer ...") == 2 and printed.count("[folds] fold unfreeze trainer ...") == 2
    for fold in range(2):
        rows, record = read_split(run / "folds-2" / f"fold-{fold}-split")
        held = set(held_out_patients(main_split, fold=fold, folds=2, seed=42))
        assert held and not held & set(rows["patient_id"]) and record["fold"]["fold"] == fold
        for name in ("val", "test"):
            assert set(rows.loc[rows["split"] == name, "image_id"]) == set(main_split.loc[main_split["split"] == name, "image_id"])
        fingerprint = hashlib.sha256((run / "folds-2" / f"fold-{fold}-split" / "split.csv").read_bytes()).hexdigest()
        for stage in ("baseline_trainer", "unfreeze_trainer"):
            checkpoint = next((run / "folds-2" / f"fold-{fold}-{stage}").glob("*.pt"))
            assert load_checkpoint(checkpoint)["split_fingerprint"] == fingerprint

    metrics = json.loads((run / "evaluator" / "metrics.json").read_text())
    names = {c["name"] for c in metrics["candidates"]}
    assert "ensemble" in names and len(names) == 2 + 2 * 2 + 1
    ensemble_file = json.loads((run / "evaluator" / "ensemble.json").read_text())
    members = ensemble_file["members"]
    assert [m["name"] for m in members] == metrics["ensemble"]["members"] and len(members) == 2
    for fold, member in enumerate(members):
        assert member["name"].startswith(f"fold-{fold}-") and member["checkpoint"].startswith(str(run / "folds-2"))
        assert member["sha256"] == hashlib.sha256(Path(member["checkpoint"]).read_bytes()).hexdigest()
    # The ensemble's image probability is its members' mean, the breast rule then the evaluation's own.
    images = pd.read_csv(run / "evaluator" / "predictions_image.csv")
    test = images[images["split"] == "test"].pivot_table(index="image_id", columns="checkpoint", values="prob")
    assert np.allclose(test["ensemble"], test[[m["name"] for m in members]].mean(axis=1), atol=2e-6)
    # Figures with intervals for each fold model and the ensemble, and the paired comparison.
    ensemble = summary["ensemble"]
    assert len(ensemble["full_data"]) == 2 and not set(ensemble["full_data"]) & set(ensemble["members"])
    assert all(not name.startswith("fold-") for name in ensemble["full_data"])
    assert set(ensemble["figures"]) == {*ensemble["full_data"], *ensemble["members"], "ensemble"}
    for figures in ensemble["figures"].values():
        assert {"value", "low", "high"} <= set(figures["auc"])
    paired = ensemble["ensemble_vs_best_single"]
    assert ensemble["best_single"] in ensemble["members"] and paired["metric"] == "auc"
    assert {"value", "low", "high"} <= set(paired["difference"]) and paired["resamples"] == 100
    assert "ensemble - best single fold (" in printed and "k-fold, test breast level" in printed
    # Out-of-fold predictions: every training patient once, by the member of the fold holding it out;
    # the ensemble's threshold is chosen on them (threshold_source: oof), the other candidates' on val.
    from mammo.evaluate import choose_threshold
    from mammo.metrics import aggregate_breasts

    oof = pd.read_csv(run / "evaluator" / "predictions_oof.csv", dtype={"patient_id": str})
    train = main_split[main_split["split"] == "train"]
    assert sorted(oof["image_id"].astype(str)) == sorted(train["image_id"].astype(str))
    for fold, member in enumerate(members):
        part = oof[oof["fold"] == fold]
        assert set(part["patient_id"]) == set(held_out_patients(main_split, fold=fold, folds=2, seed=42))
        assert set(part["checkpoint"]) == {member["name"]}
    [record] = [c for c in metrics["candidates"] if c["name"] == "ensemble"]
    assert record["threshold_choice"]["source"] == "oof"
    assert record["threshold"] == pytest.approx(choose_threshold(aggregate_breasts(oof, "mean"), "pf1"), abs=2e-6)
    assert ensemble_file["threshold"] == record["threshold"]
    assert all("source" not in c["threshold_choice"] for c in metrics["candidates"] if c["name"] != "ensemble")
    # Each fold model was checked against the test patients through its own fold split: clean,
    # so a line in the log and no warning.
    log_text = Path(summary["log"]).read_text()
    assert "cannot be checked" not in log_text and log_text.count("(a fold model of this split)") == 4
    assert not [w for w in metrics["warnings"] if "trained on another split" in w] and "trained on another split" not in printed
    for name in [*ensemble["full_data"], *ensemble["members"]]:
        assert name in printed


@pytest.mark.slow
def test_predict_serves_the_ensemble_and_verifies_each_member_first(fold_run, tiny_dataset, tmp_path) -> None:
    import json

    from mammo.errors import IntegrityError
    from mammo.predict import images_path, run_predict

    summary, _, work = fold_run
    ensemble_json = work / "runs" / summary["run_id"] / "evaluator" / "ensemble.json"
    members = json.loads(ensemble_json.read_text())["members"]

    def image_scores(model: str, name: str) -> pd.Series:
        out = tmp_path / f"{name}.csv"
        result = run_predict(model=model, data=str(tiny_dataset), out=str(out), device="cpu", workers=0,
                             workdir=tmp_path / "predict")
        frame = pd.read_csv(images_path(str(out)), dtype={"image_id": str})
        return result, frame.set_index("image_id")["prob"].sort_index()

    result, ensemble = image_scores(str(ensemble_json), "ensemble")
    assert result["model"]["kind"] == "ensemble"
    assert result["model"]["threshold"] == pytest.approx(json.loads(ensemble_json.read_text())["threshold"])
    singles = [image_scores(m["checkpoint"], f"member-{i}")[1] for i, m in enumerate(members)]
    assert np.allclose(ensemble.to_numpy(), np.mean([s.to_numpy() for s in singles], axis=0), atol=2e-6)
    # A member whose bytes are not the ones the file lists is refused before it is loaded.
    tampered = json.loads(ensemble_json.read_text())
    tampered["members"][1]["sha256"] = "0" * 64
    (tmp_path / "copy").mkdir()
    (tmp_path / "copy" / "ensemble.json").write_text(json.dumps(tampered))
    with pytest.raises(IntegrityError):
        image_scores(str(tmp_path / "copy" / "ensemble.json"), "tampered")


@pytest.mark.slow
def test_the_ensemble_is_promoted_as_one_verified_file_served_and_re_evaluated(fold_run, tiny_dataset, tmp_path) -> None:
    """The ensemble's one file (ensemble.pt: its members' weights) is the candidate the promoter
    copies to production, verified like a checkpoint; predict serves production as the ensemble;
    the next evaluation re-evaluates the production ensemble on its splits, members and mean."""
    import json

    from mammo import storage
    from mammo.predict import images_path, resolve_model, run_predict
    from mammo_components.evaluator.entrypoint import run as evaluate
    from mammo_components.promoter.entrypoint import run as promote

    summary, _, work = fold_run
    evaluation = work / "runs" / summary["run_id"] / "evaluator"
    metrics = json.loads((evaluation / "metrics.json").read_text())
    [record] = [c for c in metrics["candidates"] if c["name"] == "ensemble"]
    weights = evaluation / "ensemble.pt"
    assert Path(record["path"]).name == "ensemble.pt"
    listed = storage.read_manifest(str(evaluation)).objects["ensemble.pt"]

    store = tmp_path / "store"
    result = promote(candidate_uri=str(weights), candidate_sha256=listed.sha256, candidate_metrics={"test": record["test"]},
                     store_uri=str(store), model_name="folds", metric="test.breast.auc", margin=0.0,
                     provenance={"evaluation_uri": str(evaluation), "threshold": record["threshold"]})
    assert result["promoted"] and result["sha256"] == listed.sha256
    production = storage.production_model_uri(str(store), "folds")
    manifest = storage.read_manifest(production)
    assert set(manifest.objects) >= {f"model-{listed.sha256[:12]}.pt"} and "export" not in manifest.metadata
    assert (store / "models" / "folds" / "production" / f"model-{listed.sha256[:12]}.pt").read_bytes() == weights.read_bytes()

    model = resolve_model(production, tmp_path / "resolve")
    assert model.kind == "production" and len(model.members) == 2  # type: ignore[attr-defined]
    assert model.threshold == pytest.approx(record["threshold"])

    def image_scores(ref: str, name: str) -> pd.Series:
        out = tmp_path / f"{name}.csv"
        run_predict(model=ref, data=str(tiny_dataset), out=str(out), device="cpu", workers=0, workdir=tmp_path / "predict")
        return pd.read_csv(images_path(str(out)), dtype={"image_id": str}).set_index("image_id")["prob"].sort_index()

    served = image_scores(production, "production")
    assert np.allclose(served.to_numpy(), image_scores(str(evaluation / "ensemble.json"), "json").to_numpy(), atol=1e-6)

    # The next evaluation scores the production ensemble beside a candidate, on the same patients.
    [split] = [path for path in (work / "splits").iterdir() if (path / "split.csv").is_file()]
    params = {k: v for k, v in TINY_FOLDS.items() if k not in ("folds", "threshold_source")}
    candidate = next(c["path"] for c in metrics["candidates"] if c["name"].startswith("unfreeze_trainer/"))
    again = evaluate(dataset_uri=str(tiny_dataset), split_uri=str(split), checkpoint_uris=[candidate],
                     out_uri=str(tmp_path / "evaluation"), params=params, production_uri=production,
                     workdir=str(tmp_path / "work"))
    assert (again["production"] or {}).get("error") is None
    rescored = json.loads((tmp_path / "evaluation" / "metrics.json").read_text())["production"]
    assert rescored["stage"] == "ensemble"
    assert rescored["test"]["breast"]["auc"] == pytest.approx(record["test"]["breast"]["auc"], abs=1e-6)
    images = pd.read_csv(tmp_path / "evaluation" / "predictions_image.csv", dtype={"image_id": str})
    before = pd.read_csv(evaluation / "predictions_image.csv", dtype={"image_id": str})
    mine = images[images["checkpoint"] == "production"].set_index(["split", "image_id"])["prob"].sort_index()
    theirs = before[before["checkpoint"] == "ensemble"].set_index(["split", "image_id"])["prob"].sort_index()
    assert np.allclose(mine.to_numpy(), theirs.reindex(mine.index).to_numpy(), atol=1e-6)


@pytest.mark.slow
def test_mammo_export_writes_an_ensemble_as_one_file_of_its_members(fold_run, tiny_dataset, tmp_path, capsys) -> None:
    """``mammo export`` of an ensemble writes every member (not the first one alone) with the
    ensemble's threshold; that file scores as the ensemble; --program is refused in one line."""
    import json

    from mammo.cli import main
    from mammo.predict import images_path, resolve_model, run_predict

    summary, _, work = fold_run
    ensemble_json = work / "runs" / summary["run_id"] / "evaluator" / "ensemble.json"
    out = tmp_path / "ensemble-export.pt"
    assert main(["export", "--model", str(ensemble_json), "--out", str(out), "--workdir", str(tmp_path / "w")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["members"] == 2
    exported = resolve_model(str(out), tmp_path / "w")
    assert len(exported.members) == 2  # type: ignore[attr-defined]
    assert exported.threshold == pytest.approx(json.loads(ensemble_json.read_text())["threshold"])

    def image_scores(ref: str, name: str) -> np.ndarray:
        csv = tmp_path / f"{name}.csv"
        run_predict(model=ref, data=str(tiny_dataset), out=str(csv), device="cpu", workers=0, workdir=tmp_path / "w")
        return pd.read_csv(images_path(str(csv)), dtype={"image_id": str}).set_index("image_id")["prob"].sort_index().to_numpy()

    assert np.allclose(image_scores(str(out), "exported"), image_scores(str(ensemble_json), "json"), atol=1e-6)
    assert main(["export", "--model", str(ensemble_json), "--out", str(tmp_path / "again.pt"),
                 "--program", str(tmp_path / "p.pt2"), "--workdir", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert "ensemble of 2 networks" in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "again.pt").exists()
