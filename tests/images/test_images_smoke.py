"""The images built by scripts/images-smoke.sh, checked and run as the pods run them.

Each command runs inside an image's root file system, mounted read-only (a private mount
namespace binds the container's root onto itself read-only, then ``chroot`` as uid 10001), with
only a fresh tmpfs at ``/tmp`` writable, as a pod with ``readOnlyRootFilesystem: true`` and an
``emptyDir`` at ``/tmp``. The network is the host's: the containers reach s3rver and the
Pushgateway on 127.0.0.1 as the pods reach MinIO and the Pushgateway services.

What this proves: the images build from this checkout, their dependencies are complete and
consistent (``pip check``), the entrypoints work, the five components run and chain through S3
alone with the root file system read-only, and the images carry no compiler, package cache or
path that uid 10001 could write outside its home and /tmp. What it cannot prove: GPUs (the CUDA
wheels run on the CPU here), the NVIDIA container runtime, pulls from a registry, Kubernetes
itself (security contexts, volumes, NetworkPolicies, KFP's launcher).
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mammo import storage
from mammo.storage import MANIFEST_NAME

from servers import Pushgateway, S3Env

ROOT = Path(__file__).resolve().parents[2]
STORE = Path(os.environ.get("MAMMO_SMOKE_STORE", "/nonexistent"))
IMAGES = {
    "train": os.environ.get("MAMMO_SMOKE_TRAIN_IMAGE", ""),
    "eval": os.environ.get("MAMMO_SMOKE_EVAL_IMAGE", ""),
}
VARIANT = os.environ.get("MAMMO_SMOKE_TORCH_VARIANT", "cuda")
UID = 10001
RUN_ID = "smoke-1"
#: The component tests' tiny settings (tests/components/component_support.py).
PARAMS: dict[str, Any] = {
    "backbone": "tinynet",
    "image_size": 32,
    "batch_size": 64,
    "workers": 0,
    "device": "cpu",
    "augment": False,
    "val_frac": 0.25,
    "test_frac": 0.25,
    "baseline_epochs": 1,
    "warmup_epochs": 0,
    "unfreeze_epochs": 1,
    "baseline_set": ["checkpoint.top_k=1", "checkpoint.primary=image.loss"],
    # The chain's mechanics, not the model: a one-epoch model on 10 test patients promotes
    # without the floor and the minimum of test cancers (the promoter below gets the same rule).
    "promotion_min": -1.0,
    "promotion_min_cancers": 0,
}
#: Where uid 10001 may write in an image: its home (and the cache below it) and /tmp.
WRITABLE = ("/home/mammo", "/tmp")
COMPILERS = {"gcc", "cc", "c++", "g++", "clang", "clang++", "make", "ld", "as", "cpp", "nvcc", "tcc"}

#: Runs ARGV inside ROOT: read-only root, fresh /proc, the host's /dev and /sys, tmpfs /tmp,
#: uid/gid 10001, only the environment given (env -i).
RUNNER = r"""
set -eu
root=$1
shift
mount --bind "$root" "$root"
mount -o remount,bind,ro "$root"
mount -t proc proc "$root/proc"
mount --rbind /dev "$root/dev"
mount --rbind /sys "$root/sys"
mount -t tmpfs -o mode=1777,size=4g tmpfs "$root/tmp"
exec chroot --userspec=10001:10001 "$root" /usr/bin/env -i "$@"
"""


def buildah(*args: str) -> str:
    """buildah on the smoke test's private storage; its stdout."""
    done = subprocess.run(
        ["buildah", "--root", str(STORE / "root"), "--runroot", str(STORE / "run"), "--storage-driver", "overlay", *args],
        capture_output=True, text=True, env={**os.environ, "TMPDIR": str(STORE / "tmp")},
    )
    assert done.returncode == 0, f"buildah {' '.join(args)}: {done.stderr}"
    return done.stdout


@dataclass(frozen=True)
class Rootfs:
    """An image's root file system, mounted (read-write underneath; the runner binds it
    read-only), and its configuration."""

    name: str
    image: str
    path: Path
    config: dict[str, Any]

    @property
    def env(self) -> dict[str, str]:
        return dict(item.split("=", 1) for item in self.config.get("Env") or [])

    def run(self, *argv: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        environment = {**self.env, "HOME": "/home/mammo", **(env or {})}
        return subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", RUNNER, "runner", str(self.path),
             *(f"{k}={v}" for k, v in environment.items()), *argv],
            capture_output=True, text=True, timeout=timeout,
        )


@pytest.fixture(scope="session")
def rootfs() -> Iterator[dict[str, Rootfs]]:
    found, containers = {}, []
    try:
        for name, image in IMAGES.items():
            container = buildah("from", "--pull=never", "--quiet", image).strip()
            containers.append(container)
            path = Path(buildah("mount", container).strip())
            config = json.loads(buildah("inspect", "--type", "image", image))["OCIv1"]["config"]
            found[name] = Rootfs(name, image, path, config)
        yield found
    finally:
        for container in containers:
            buildah("umount", container)
            buildah("rm", container)


@pytest.fixture(params=list(IMAGES))
def image(request: pytest.FixtureRequest, rootfs: dict[str, Rootfs]) -> Rootfs:
    return rootfs[request.param]


def _ok(done: subprocess.CompletedProcess[str], what: str) -> str:
    assert done.returncode == 0, f"{what}: exit {done.returncode}\nstdout: {done.stdout[-3000:]}\nstderr: {done.stderr[-3000:]}"
    return done.stdout


def _images_env() -> dict[str, str]:
    pairs = (line.split("=", 1) for line in (ROOT / "images.env").read_text().splitlines() if "=" in line and not line.startswith("#"))
    return {k.strip(): v.strip() for k, v in pairs}


# --- the images as they are --------------------------------------------------------------


def test_labels_user_and_entrypoint(image: Rootfs) -> None:
    config = image.config
    labels = config.get("Labels") or {}
    assert labels["org.opencontainers.image.title"] == f"mammo-{image.name}"
    assert labels["org.opencontainers.image.version"] == _images_env()["MAMMO_TAG"]
    assert re.fullmatch(r"[0-9a-f]{7,40}", labels["org.opencontainers.image.revision"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT.+", labels["org.opencontainers.image.created"])
    assert labels["io.mammo.torch-variant"] == VARIANT and f"PyTorch {VARIANT}" in labels["org.opencontainers.image.description"]
    assert config["User"] == f"{UID}:{UID}"
    assert config["Entrypoint"] == ["mammo"] and config["Cmd"] == ["--help"]
    assert config["WorkingDir"] == "/home/mammo"
    assert image.env["VIRTUAL_ENV"] == "/opt/venv" and image.env["PATH"].startswith("/opt/venv/bin:")


def test_root_is_read_only_and_the_user_is_10001(image: Rootfs) -> None:
    """The runner's proof: as uid 10001, /opt/venv, /etc and the home are read-only (EROFS,
    not merely a permission error), /tmp is writable."""
    probe = (
        "import errno, os\n"
        "for path in ('/opt/venv/probe', '/etc/probe', '/home/mammo/probe', '/probe'):\n"
        "    try:\n"
        "        open(path, 'w').close(); print(path, 'written')\n"
        "    except OSError as exc:\n"
        "        print(path, errno.errorcode[exc.errno])\n"
        "open('/tmp/probe', 'w').close(); print('/tmp/probe written')\n"
        "print('uid', os.getuid(), os.getgid())\n"
    )
    out = _ok(image.run("python", "-c", probe), "probe").splitlines()
    assert out == [
        "/opt/venv/probe EROFS", "/etc/probe EROFS", "/home/mammo/probe EROFS", "/probe EROFS",
        "/tmp/probe written", f"uid {UID} {UID}",
    ]


def test_entrypoints_and_help(image: Rootfs) -> None:
    assert "usage: mammo" in _ok(image.run("mammo", "--help"), "mammo --help")
    version = _ok(image.run("mammo", "--version"), "mammo --version")
    assert re.search(r"\d+\.\d+", version)
    components = _ok(image.run("mammo", "component", "--help"), "mammo component --help")
    for name in ("split-builder", "baseline-trainer", "unfreeze-trainer", "evaluator", "promoter"):
        assert name in components
    module = "mammo_components.baseline_trainer" if image.name == "train" else "mammo_components.evaluator"
    assert "--out URI" in _ok(image.run("python", "-m", module, "--help"), f"python -m {module} --help")
    # The KFP executor that runs the pipeline's lightweight components is in the image.
    _ok(image.run("python", "-c", "import kfp.dsl.executor_main, kfp.kubernetes, mammo_components, torch, torchvision.ops"),
        "imports")


def test_eval_image_compiles_the_pipeline_in_cluster(rootfs: dict[str, Rootfs]) -> None:
    """The retraining CronJob runs `mammo pipeline submit` from the eval image: it compiles
    with the images.env baked into the image."""
    image = rootfs["eval"]
    out = _ok(image.run("mammo", "pipeline", "compile", "--profile", "gpu", "--out", "/tmp/p.yaml"), "compile")
    assert _images_env()["TRAIN_IMAGE"] in out and _images_env()["EVAL_IMAGE"] in out


def test_pip_check(image: Rootfs) -> None:
    assert "No broken requirements found." in _ok(image.run("python", "-m", "pip", "check"), "pip check")


def test_no_compilers_no_caches_no_build_leftovers(image: Rootfs) -> None:
    root = image.path
    found = [
        f"{folder}/{name}" for folder in ("usr/bin", "usr/local/bin", "bin", "opt/venv/bin")
        for name in (os.listdir(root / folder) if (root / folder).is_dir() else [])
        if name in COMPILERS or re.fullmatch(r"(x86_64-linux-gnu-)?(gcc|g\+\+|cc)(-\d+)?", name)
    ]
    assert found == [], f"compilers in the image: {found}"
    leftovers = [
        p for p in ("root/.cache", "home/mammo/.cache", "tmp/requirements", "wheels", "src", "var/cache/apt/archives/partial")
        if (root / p).exists() and any((root / p).iterdir())
    ]
    assert leftovers == [], f"caches or build files left in the image: {leftovers}"
    assert not list((root / "var/cache/apt/archives").glob("*.deb"))
    lists = root / "var/lib/apt/lists"
    assert not [p for p in lists.glob("*") if p.name not in ("lock", "partial", "auxfiles")] if lists.exists() else True


def test_nothing_writable_outside_home_and_tmp(image: Rootfs) -> None:
    """Every path uid 10001 (group 10001) could write, by owner, group and mode, lies in its
    home or /tmp: the image cannot be changed by the user it runs as, even where the root
    file system is writable."""
    root = image.path
    writable = []
    for folder, dirs, files in os.walk(root):
        rel = "/" + os.path.relpath(folder, root) if folder != str(root) else "/"
        if rel in ("/proc", "/sys", "/dev") or rel.startswith(WRITABLE):
            dirs[:] = []
            continue
        for name in [*dirs, *files]:
            st = os.lstat(os.path.join(folder, name))
            if stat.S_ISLNK(st.st_mode):
                continue
            mode = st.st_mode
            if (st.st_uid == UID and mode & stat.S_IWUSR) or (st.st_gid == UID and mode & stat.S_IWGRP) or mode & stat.S_IWOTH:
                path = f"{rel.rstrip('/')}/{name}"
                if not path.startswith(WRITABLE):
                    writable.append(path)
    assert writable == [], f"writable by uid {UID} outside {WRITABLE}: {writable[:20]}"


# --- the component chain inside the images -----------------------------------------------


def _params() -> list[str]:
    from mammo_components.spec import encode_value

    return [f"--param={key}={encode_value(value)}" for key, value in sorted(PARAMS.items())]


def test_component_chain_in_the_images_with_a_read_only_root(
    rootfs: dict[str, Rootfs], s3_env: S3Env, pushgateway: Pushgateway, tmp_path: Path
) -> None:
    """Split builder (eval image) -> baseline and unfreeze trainers (train image) -> evaluator
    -> promoter (eval image), each a separate container sharing nothing but S3, as uid 10001
    with a read-only root, as the pipeline chains them."""
    from mammo.data.synth import write_synthetic_dataset

    data = tmp_path / "data"
    write_synthetic_dataset(data, patients=40, image_size=32, prevalence=0.3, seed=0)
    dataset_uri = f"{s3_env.uri}/datasets/synth"
    storage.publish(data, dataset_uri)
    server = s3_env.server
    env = {
        "MINIO_ENDPOINT": server.endpoint, "MINIO_ACCESS_KEY": server.access_key,
        "MINIO_SECRET_KEY": server.secret_key, "MINIO_SECURE": "false",
        "MAMMO_PUSHGATEWAY_URL": pushgateway.url, "MAMMO_CACHE_DIR": "/tmp/mammo-cache",
        "MAMMO_STORAGE_RETRY_SECONDS": "10",
    }
    run = f"{s3_env.uri}/runs/{RUN_ID}"

    def component(image: str, name: str, *args: str) -> dict[str, Any]:
        done = rootfs[image].run("mammo", "component", name, *args, env=env, timeout=900)
        return json.loads(_ok(done, f"{name} in the {image} image"))

    split = component("eval", "split-builder", f"--dataset={dataset_uri}", f"--store={s3_env.uri}", f"--run-id={RUN_ID}", *_params())
    assert split["split_uri"].startswith(f"{s3_env.uri}/splits/") and not split["reused"]
    baseline = component("train", "baseline-trainer", f"--dataset={dataset_uri}", f"--split={split['split_uri']}",
                         f"--out={run}/baseline_trainer", *_params())
    unfreeze = component("train", "unfreeze-trainer", f"--dataset={dataset_uri}", f"--split={split['split_uri']}",
                         f"--init={baseline['best_uri']}", f"--out={run}/unfreeze_trainer", *_params())
    evaluation = component("eval", "evaluator", f"--dataset={dataset_uri}", f"--split={split['split_uri']}",
                           f"--checkpoint={baseline['best_uri']}", f"--checkpoint={unfreeze['best_uri']}",
                           f"--out={run}/evaluator", *_params())
    promotion = component("eval", "promoter", "--evaluation", f"{run}/evaluator", "--store", s3_env.uri,
                          "--promotion-min", "-1", "--min-cancers", "0")

    # Every step published a complete folder (its manifest lists what is there).
    for prefix, expected in (
        (split["split_uri"], {"split.csv", "split.json"}),
        (f"{run}/baseline_trainer", {"best_auc.pt", "last.pt", "history.json", "result.json"}),
        (f"{run}/unfreeze_trainer", {"best_auc.pt", "last.pt", "history.json", "result.json"}),
        (f"{run}/evaluator", {"metrics.json", "report.html", "predictions_image.csv", "result.json"}),
    ):
        manifest = storage.read_manifest(prefix)
        assert expected <= set(manifest.objects), prefix
        stored = {uri[len(prefix) + 1 :] for uri in storage.list_objects(prefix)}
        assert stored == set(manifest.objects) | {MANIFEST_NAME}, prefix
    assert baseline["epochs_run"] == 1 and unfreeze["best_uri"].endswith("/best_auc.pt")
    assert evaluation["best_uri"] in (baseline["best_uri"], unfreeze["best_uri"])
    assert promotion["promoted"] is True
    production = storage.list_objects(f"{s3_env.uri}/models/mammo/production")
    assert any(uri.endswith(".pt") for uri in production), production

    # Each component pushed its telemetry under the run id, and succeeded.
    for name in ("split_builder", "baseline_trainer", "unfreeze_trainer", "evaluator"):
        values = {s.name: s.value for s in pushgateway.samples(job="mammo", component=name, run_id=RUN_ID)}
        assert values.get("mammo_step_success") == 1, (name, values)
    trained = {s.name: s.value for s in pushgateway.samples(job="mammo", component="baseline_trainer", run_id=RUN_ID)}
    assert trained["mammo_epoch"] == 1 and trained["mammo_images_per_second"] > 0
