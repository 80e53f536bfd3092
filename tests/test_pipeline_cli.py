"""`mammo pipeline submit / schedule / schedules / unschedule` against a fake KFP API server
(tests/fake_kfp.py: real HTTP on 127.0.0.1, recording every request)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fake_kfp import FakeKfp
from mammo_pipelines.cli import main


@pytest.fixture
def kfp_server(monkeypatch: pytest.MonkeyPatch, tmp_path) -> Iterator[FakeKfp]:
    for name in ("KF_PIPELINES_ENDPOINT", "KF_PIPELINES_TOKEN", "KF_PIPELINES_SA_TOKEN_PATH", "KF_PIPELINES_UI_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # kfp.Client reads ~/.config/kfp/context.json
    server = FakeKfp()
    yield server
    server.close()


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
    # The spec with its kfp-kubernetes platform settings (secrets by reference, pod label).
    spec, platform = run["pipeline_spec"]["pipeline_spec"], run["pipeline_spec"]["platform_spec"]
    assert spec["pipelineInfo"]["name"] == "mammo-training"
    assert set(spec["root"]["dag"]["tasks"]) >= {"split-builder", "evaluator"}
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert all(e["secretAsEnv"][0]["secretName"] == "mammo-minio" for e in executors.values())
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
    assert first["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"] == "mammo-training"
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
    ],
)
def test_bad_input_fails_before_anything_is_sent(
    kfp_server: FakeKfp, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert main([*args, "--host", kfp_server.url, "--profile", "kind"]) == 2
    assert message in capsys.readouterr().err
    assert kfp_server.requests == []


def test_unreachable_host_is_one_line(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    server = FakeKfp()
    url = server.url
    server.close()  # nothing listens there any more
    assert main(["schedules", "--host", url]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mammo: error: KFP API at {url} unreachable") and err.count("\n") == 1
