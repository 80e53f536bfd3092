"""`mammo pipeline upload / submit / schedule / schedules / unschedule` against a fake KFP API
server (tests/fake_kfp.py: real HTTP on 127.0.0.1, recording every request): pipelines uploaded
as named versions that runs reference, namespaces (multi-user Kubeflow), bearer tokens and
Dex/OIDC session cookies."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from fake_kfp import FakeKfp
from mammo_pipelines.cli import main

AUTH_VARIABLES = (
    "KF_PIPELINES_ENDPOINT", "KF_PIPELINES_TOKEN", "KF_PIPELINES_SA_TOKEN_PATH", "KF_PIPELINES_UI_ENDPOINT",
    "KF_PIPELINES_COOKIE", "KF_PIPELINES_NAMESPACE",
)


@pytest.fixture
def kfp_env(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    for name in AUTH_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # kfp.Client reads ~/.config/kfp/context.json


@pytest.fixture
def kfp_server(kfp_env: None) -> Iterator[FakeKfp]:
    server = FakeKfp()
    yield server
    server.close()


def _package(server: FakeKfp, version_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The uploaded pipeline spec and platform spec of a version."""
    spec, platform = yaml.safe_load_all(server.state.versions[version_id]["package"])
    return spec, platform


def test_submit_sends_the_compiled_pipeline_with_typed_parameters(
    kfp_server: FakeKfp, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main([
        "submit", "--host", kfp_server.url, "--profile", "kind", "--experiment", "nightly",
        "--param", "dataset_uri=s3://mammo/datasets/demo", "--param", "baseline_epochs=3",
        "--param", "augment=false", "--param", "baseline_lr=0.01",
        "--param", "baseline_set=[early_stopping.patience=2]",
    ])
    out = capsys.readouterr().out
    assert code == 0
    [created] = kfp_server.sent("POST", "/runs")
    run = created.body
    run_id = next(iter(kfp_server.state.runs))
    assert f"run id: {run_id}" in out and f"{kfp_server.url}/#/runs/details/{run_id}" in out
    # The run references the uploaded version of the named pipeline, not a package of its own.
    [pipeline] = kfp_server.state.pipelines.values()
    [version] = kfp_server.state.versions.values()
    assert pipeline["display_name"] == "mammo-training" and "pipeline_spec" not in run
    assert run["pipeline_version_reference"] == {
        "pipeline_id": pipeline["pipeline_id"], "pipeline_version_id": version["pipeline_version_id"],
    }
    assert version["display_name"].startswith("kind-") and f"version {version['display_name']!r} (uploaded)" in out
    # The spec with its kfp-kubernetes platform settings (secrets by reference, pod label).
    spec, platform = _package(kfp_server, version["pipeline_version_id"])
    assert spec["pipelineInfo"]["name"] == "mammo-training"
    assert set(spec["root"]["dag"]["tasks"]) >= {"split-builder", "evaluator"}
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert all(e["secretAsVolume"][0]["secretName"] in ("mammo-minio", "mammo-minio-promoter") for e in executors.values())
    assert run["runtime_config"]["parameters"] == {
        "dataset_uri": "s3://mammo/datasets/demo",
        "baseline_epochs": 3,
        "augment": False,
        "baseline_lr": 0.01,
        "baseline_set": ["early_stopping.patience=2"],
    }
    assert run["service_account"] == "mammo-pipeline"
    [experiment] = kfp_server.state.experiments.values()
    assert experiment["display_name"] == "nightly" and run["experiment_id"] == experiment["experiment_id"]


def test_submit_wait_follows_the_run_and_fails_with_it(
    kfp_server: FakeKfp, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KF_PIPELINES_ENDPOINT", kfp_server.url)
    monkeypatch.setenv("KF_PIPELINES_TOKEN", "t0ken")
    kfp_server.state.run_states = ["RUNNING", "RUNNING", "SUCCEEDED"]
    assert main(["submit", "--profile", "kind", "--wait", "--poll-interval", "0.01"]) == 0
    assert "SUCCEEDED" in capsys.readouterr().out
    assert all(r.headers.get("authorization") == "Bearer t0ken" for r in kfp_server.requests[1:])

    kfp_server.state.run_states = ["RUNNING", "FAILED"]
    assert main(["submit", "--profile", "kind", "--wait", "--poll-interval", "0.01"]) == 1
    captured = capsys.readouterr()
    assert "FAILED" in captured.out
    assert "ended FAILED: step baseline-trainer failed" in captured.err
    # The same experiment is reused, not created twice.
    assert len(kfp_server.sent("POST", "/experiments")) == 1


def test_schedule_creates_or_replaces_by_name(kfp_server: FakeKfp, capsys: pytest.CaptureFixture[str]) -> None:
    common = ["--host", kfp_server.url, "--profile", "kind", "--name", "weekly"]
    assert main(["schedule", *common, "--cron", "0 0 3 * * 0", "--param", "dataset_uri=s3://mammo/datasets/rsna"]) == 0
    assert main(["schedule", *common, "--cron", "0 30 4 * * 1", "--param", "seed=7"]) == 0
    assert "replaced 1 earlier schedule" in capsys.readouterr().out

    first, second = (r.body for r in kfp_server.sent("POST", "/recurringruns"))
    assert first["trigger"]["cron_schedule"]["cron"] == "0 0 3 * * 0"
    assert int(first["max_concurrency"]) == 1 and first["no_catchup"] is True and first["mode"] == "ENABLE"
    assert first["runtime_config"]["parameters"] == {"dataset_uri": "s3://mammo/datasets/rsna"}
    # Both schedules run the one uploaded version (parameters are not part of the package).
    [version] = kfp_server.state.versions.values()
    assert first["pipeline_version_reference"]["pipeline_version_id"] == version["pipeline_version_id"]
    assert second["pipeline_version_reference"] == first["pipeline_version_reference"]
    assert _package(kfp_server, version["pipeline_version_id"])[0]["pipelineInfo"]["name"] == "mammo-training"
    assert second["runtime_config"]["parameters"] == {"seed": 7}
    [remaining] = kfp_server.state.recurring.values()
    assert remaining["display_name"] == "weekly"
    assert remaining["trigger"]["cron_schedule"]["cron"] == "0 30 4 * * 1"

    assert main(["schedules", "--host", kfp_server.url]) == 0
    listing = capsys.readouterr().out
    assert "weekly" in listing and "0 30 4 * * 1" in listing and remaining["recurring_run_id"] in listing

    assert main(["unschedule", "--host", kfp_server.url, "--name", "weekly"]) == 0
    assert kfp_server.state.recurring == {}
    assert main(["unschedule", "--host", kfp_server.url, "--name", "weekly"]) == 2
    assert "no schedule named 'weekly'" in capsys.readouterr().err


def test_config_file_and_params_become_the_run_arguments_over_the_presets_defaults(
    kfp_server: FakeKfp, tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The kind profile compiles the kind preset's values as the parameter defaults; a
    --config file (the keys of `mammo run --config`, ``data`` included) and --param (last)
    are the run's arguments; the same for a schedule."""
    config = tmp_path / "run.yaml"
    config.write_text("data: s3://mammo/datasets/other\nbaseline_epochs: 2\nimage_size: 128\n")
    common = ["--host", kfp_server.url, "--profile", "kind", "--config", str(config), "--param", "baseline_epochs=4"]
    assert main(["submit", *common]) == 0
    assert main(["schedule", *common, "--name", "nightly", "--cron", "0 0 2 * * *"]) == 0
    wanted = {"dataset_uri": "s3://mammo/datasets/other", "baseline_epochs": 4, "image_size": "128"}
    assert kfp_server.sent("POST", "/runs")[0].body["runtime_config"]["parameters"] == wanted
    assert kfp_server.sent("POST", "/recurringruns")[0].body["runtime_config"]["parameters"] == wanted
    [version] = kfp_server.state.versions.values()
    spec, _ = _package(kfp_server, version["pipeline_version_id"])
    defaults = {name: p.get("defaultValue") for name, p in spec["root"]["inputDefinitions"]["parameters"].items()}
    kind = yaml.safe_load((Path(__file__).resolve().parents[1] / "pipelines/mammo_pipelines/presets/kind.yaml").read_text())["params"]
    assert defaults["backbone"] == kind["backbone"] and defaults["batch_size"] == kind["batch_size"]
    assert defaults["image_size"] == str(kind["image_size"]) and defaults["unfreeze_set"] == kind["unfreeze_set"]

    # --preset full: the research defaults in the package instead.
    assert main(["compile", "--profile", "kind", "--preset", "full", "--out", str(tmp_path / "full.yaml")]) == 0
    full = yaml.safe_load_all((tmp_path / "full.yaml").read_text()).__next__()["root"]["inputDefinitions"]["parameters"]
    assert full["backbone"]["defaultValue"] == "resnet50" and full["image_size"]["defaultValue"] == "512"
    capsys.readouterr()
    # `params` shows the values a run would get.
    assert main(["params", "--profile", "kind", "--config", str(config)]) == 0
    table = {line.split()[0]: line.split()[2] for line in capsys.readouterr().out.splitlines()}
    assert table["baseline_epochs"] == "2" and table["dataset_uri"] == "'s3://mammo/datasets/other'"
    assert table["backbone"] == f"'{kind['backbone']}'"


@pytest.mark.parametrize(("text", "message"), [
    ("no_such: 1\n", "no_such: unknown parameter"),
    ("baseline_epochs: many\n", "baseline_epochs: expected int"),
    ("data: a\ndataset_uri: b\n", "dataset_uri: sets dataset_uri a second time"),
    ("- a\n", "expected a mapping at the top level"),
])
def test_a_bad_config_file_is_one_line_before_anything_is_sent(
    kfp_server: FakeKfp, tmp_path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(text)
    assert main(["submit", "--host", kfp_server.url, "--profile", "kind", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert message in err and str(config) in err and len(err.strip().splitlines()) == 1
    assert kfp_server.requests == []


def test_every_preset_is_a_valid_set_of_pipeline_arguments() -> None:
    from mammo_pipelines.parameters import check_arguments, preset_names
    from mammo_pipelines.pipeline import parameters_for
    from mammo_pipelines.profiles import get_profile

    assert {"demo", "full", "kind"} <= set(preset_names())
    for name in preset_names():
        for profile in ("gpu", "kind"):
            parameters = parameters_for(get_profile(profile, train_image="t", eval_image="e", preset=name))
            check_arguments({}, parameters)


def test_schedule_lists_every_page_to_find_duplicates(kfp_server: FakeKfp) -> None:
    for i in range(12):  # the fake lists at most 5 per page: the duplicate is on page 3
        kfp_server.state.recurring[f"other-{i}"] = {"recurring_run_id": f"other-{i}", "display_name": f"other-{i}", "mode": "ENABLE"}
    kfp_server.state.recurring["stale"] = {"recurring_run_id": "stale", "display_name": "weekly", "mode": "ENABLE"}
    assert main(["schedule", "--host", kfp_server.url, "--profile", "kind", "--name", "weekly", "--cron", "0 0 3 * * 0"]) == 0
    names = [job["display_name"] for job in kfp_server.state.recurring.values()]
    assert names.count("weekly") == 1 and "stale" not in kfp_server.state.recurring


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["schedule", "--name", "w", "--cron", "0 3 * * 0"], "six fields, seconds first"),
        (["submit", "--param", "no_such=1"], "--param no_such: unknown parameter"),
        (["submit", "--param", "baseline_epochs=many"], "expected int"),
        (["submit", "--param", "promotion_metric=breast.auc"], "promotion_metric: String should match pattern"),
        (["submit", "--param", "promotion_margin=-1"], "promotion_margin: Input should be greater than or equal to 0"),
        (["submit", "--param", "backbone=vgg16"], "backbone"),
        (["submit", "--param", "threshold_metric=specificity:1.5"], "threshold_metric: 'specificity:1.5' is not a threshold rule"),
        (["submit", "--param", "threshold_metric=foo"], "threshold_metric: 'foo' is not a threshold rule"),
    ],
)
def test_bad_input_fails_before_anything_is_sent(
    kfp_server: FakeKfp, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert main([*args, "--host", kfp_server.url, "--profile", "kind"]) == 2
    assert message in capsys.readouterr().err
    assert kfp_server.requests == []


def test_unreachable_host_is_one_line(capsys: pytest.CaptureFixture[str], kfp_env: None) -> None:
    server = FakeKfp()
    url = server.url
    server.close()  # nothing listens there any more
    assert main(["schedules", "--host", url]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mammo: error: KFP API at {url} unreachable") and err.count("\n") == 1


@pytest.mark.slow
def test_upload_is_idempotent_and_a_new_package_is_a_new_version(
    kfp_server: FakeKfp, capsys: pytest.CaptureFixture[str]
) -> None:
    upload = ["upload", "--host", kfp_server.url, "--profile", "kind"]
    assert main(upload) == 0
    first = capsys.readouterr().out
    assert main(upload) == 0
    second = capsys.readouterr().out
    [pipeline] = kfp_server.state.pipelines.values()
    [version] = kfp_server.state.versions.values()
    assert "(uploaded)" in first and "(already there)" in second
    assert f"version id: {version['pipeline_version_id']}" in first and f"version id: {version['pipeline_version_id']}" in second
    assert f"{kfp_server.url}/#/pipelines/details/{pipeline['pipeline_id']}/version/{version['pipeline_version_id']}" in first
    assert len(kfp_server.sent("POST", "/pipelines/upload_version")) == 1

    # Another compiled pipeline (other images, another profile): a second version of the same pipeline.
    assert main([*upload, "--train-image", "registry.example/mammo-train:2", "--eval-image", "registry.example/mammo-eval:2"]) == 0
    assert main(["upload", "--host", kfp_server.url, "--profile", "gpu", "--version", "release-1"]) == 0
    names = sorted(v["display_name"] for v in kfp_server.state.versions.values())
    assert len(kfp_server.state.pipelines) == 1 and len(names) == 3 and names[2] == "release-1"
    assert all(name.startswith("kind-") for name in names[:2])
    # --no-cache runs a version of its own whose tasks all have caching off.
    assert main(["submit", "--host", kfp_server.url, "--profile", "kind", "--no-cache"]) == 0
    [nocache] = [v for v in kfp_server.state.versions.values() if v["display_name"].startswith("kind-nocache-")]
    spec, _ = _package(kfp_server, nocache["pipeline_version_id"])
    tasks = [t for c in [spec["root"], *spec["components"].values()] for t in c.get("dag", {}).get("tasks", {}).values()]
    assert tasks and all(t["cachingOptions"] == {"enableCache": False} for t in tasks)


def test_namespace_scopes_experiments_pipelines_and_schedules(
    kfp_server: FakeKfp, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    common = ["--host", kfp_server.url, "--profile", "kind"]
    assert main(["schedule", *common, "--namespace", "team-a", "--name", "weekly", "--cron", "0 0 3 * * 0"]) == 0
    monkeypatch.setenv("KF_PIPELINES_NAMESPACE", "team-b")  # the variable stands for --namespace
    assert main(["schedule", *common, "--name", "weekly", "--cron", "0 0 4 * * 0"]) == 0
    assert main(["submit", *common]) == 0
    capsys.readouterr()

    experiments = sorted((e["display_name"], e["namespace"]) for e in kfp_server.state.experiments.values())
    assert experiments == [("mammo", "team-a"), ("mammo", "team-b")]
    assert sorted(p["namespace"] for p in kfp_server.state.pipelines.values()) == ["team-a", "team-b"]
    assert all(r.query.get("namespace") == "team-a" for r in kfp_server.sent("GET", "/recurringruns")[:1])
    # Each namespace sees, replaces and removes only its own schedule of that name.
    assert len(kfp_server.state.recurring) == 2
    [run] = kfp_server.state.runs.values()
    assert kfp_server.namespace_of(run) == "team-b"

    assert main(["schedules", "--host", kfp_server.url]) == 0
    listing = capsys.readouterr().out
    assert "0 0 4 * * 0" in listing and "0 0 3 * * 0" not in listing
    assert main(["unschedule", "--host", kfp_server.url, "--name", "weekly"]) == 0
    assert main(["unschedule", "--host", kfp_server.url, "--name", "weekly"]) == 2
    err = capsys.readouterr().err
    assert "no schedule named 'weekly'" in err and "in namespace team-b" in err
    [left] = kfp_server.state.recurring.values()
    assert kfp_server.namespace_of(left) == "team-a"

    assert main(["schedules", "--host", kfp_server.url, "--namespace", "Team_A"]) == 2
    assert "--namespace 'Team_A': not a Kubernetes namespace name" in capsys.readouterr().err


@pytest.mark.parametrize("credential", ["cookie", "token"])
def test_auth_behind_dex_is_sent_and_never_printed(
    kfp_env: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], credential: str
) -> None:
    secret = "s3cr3t-4711"
    required = f"authservice_session={secret}" if credential == "cookie" else f"Bearer {secret}"
    server = FakeKfp(require_auth=required)
    try:
        # Without credentials: one line that says what to set, at once (no retries).
        assert main(["schedules", "--host", server.url]) == 2
        err = capsys.readouterr().err
        reason = "redirected to a login page (/dex/auth)" if credential == "cookie" else "refused the credentials (HTTP 401)"
        assert err.count("\n") == 1 and reason in err and "KF_PIPELINES_COOKIE" in err
        # Wrong credentials: the same, and the wrong value is not echoed either.
        variable = "KF_PIPELINES_COOKIE" if credential == "cookie" else "KF_PIPELINES_TOKEN"
        wrong = "authservice_session=wrong-4711" if credential == "cookie" else "wrong-4711"
        monkeypatch.setenv(variable, wrong)
        assert main(["schedules", "--host", server.url]) == 2
        captured = capsys.readouterr()
        assert "wrong-4711" not in captured.out + captured.err and captured.err.count("\n") == 1

        monkeypatch.setenv(variable, required if credential == "cookie" else secret)
        assert main(["submit", "--host", server.url, "--profile", "kind", "--namespace", "team-a", "--wait",
                     "--poll-interval", "0.01"]) == 0
        captured = capsys.readouterr()
        assert secret not in captured.out + captured.err
        authorized = [r for r in server.requests if not r.path.startswith("/dex/")][-3:]
        header = "cookie" if credential == "cookie" else "authorization"
        assert all(required in r.headers.get(header, "") for r in authorized)
    finally:
        server.close()
