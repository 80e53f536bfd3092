"""Static checks of the images and the cluster scripts (no Docker or Kubernetes here).

hadolint on both Dockerfiles and shellcheck on every script, run as the real tools; the image
requirement pins against lock.txt; images.env read the same way by make, bash and Python; and
the scripts' behaviour where it needs no cluster: missing tools explained, credentials written
once and checked afterwards.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = ["Dockerfile.train", "Dockerfile.eval"]
SCRIPTS = sorted((ROOT / "scripts").glob("*.sh"))
IMAGE_KEYS = [
    "MAMMO_REGISTRY", "MAMMO_TAG", "TRAIN_IMAGE", "TRAIN_IMAGE_DIGEST", "TRAIN_IMAGE_CPU", "EVAL_IMAGE",
    "EVAL_IMAGE_DIGEST",
]


def _tool(name: str) -> str:
    """A test tool from the virtual env (pip-installed) or PATH; missing is a failure."""
    candidate = Path(sys.executable).parent / name
    found = str(candidate) if candidate.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found: run `make test-tools` / install requirements/test.txt")
    return found


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            name, version = line.split("==")
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


def read_images_env() -> dict[str, str]:
    values = {}
    for line in (ROOT / "images.env").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, value = line.split("=", 1)
            values[key.strip()] = value.strip()
    return values


def test_hadolint_passes_on_both_dockerfiles() -> None:
    result = subprocess.run(
        [_tool("hadolint"), *DOCKERFILES], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_dockerfile_runs_non_root_with_help_entrypoint_and_labels(dockerfile: str) -> None:
    text = (ROOT / dockerfile).read_text()
    final_stage = text.rsplit("\nFROM ", 1)[1]
    assert re.search(r"^USER 10001:10001$", final_stage, re.M), "final stage must run as uid 10001"
    assert 'ENTRYPOINT ["mammo"]' in final_stage and 'CMD ["--help"]' in final_stage
    assert "PYTHONUNBUFFERED=1" in text
    assert 'org.opencontainers.image.version="${VERSION}"' in final_stage
    # No credentials baked in: no ENV/ARG that looks like one.
    assert not re.search(r"^(ENV|ARG)\s+\S*(PASSWORD|SECRET|TOKEN|ACCESS_KEY)", text, re.M | re.I)
    # Cache-friendly: the code is copied only into the wheels stage, and the final stage installs
    # the dependencies (their own layer, installed there, not copied from another stage) before
    # the project's wheels.
    assert "COPY shared " not in final_stage and "COPY --from=deps" not in text
    assert final_stage.index("COPY requirements/image-runtime.txt") < final_stage.index("from=wheels")
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.M)
    assert base and re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", base.group(1))


def test_image_requirements_are_the_lock_pins() -> None:
    lock = _pins(ROOT / "requirements/lock.txt")
    for name in ["image-runtime.txt", "image-torch-cuda.txt", "image-torch-cpu.txt"]:
        for package, version in _pins(ROOT / "requirements" / name).items():
            if package == "setuptools":  # required by torch, left out of lock.txt by pip freeze
                continue
            assert package in lock, f"{name}: {package} is not in lock.txt"
            assert version.split("+")[0] == lock[package], f"{name}: {package}=={version}"
    cpu = _pins(ROOT / "requirements/image-torch-cpu.txt")
    assert cpu["torch"].endswith("+cpu") and cpu["torchvision"].endswith("+cpu")
    runtime = _pins(ROOT / "requirements/image-runtime.txt")
    # The KFP executor runs inside the images (install_kfp_package=False).
    assert {"kfp", "kfp-kubernetes", "minio", "prometheus-client", "matplotlib"} <= set(runtime)


def test_images_env_reads_the_same_in_make_bash_and_python(tmp_path: Path) -> None:
    values = read_images_env()
    assert list(values) == IMAGE_KEYS
    registry, tag = values["MAMMO_REGISTRY"], values["MAMMO_TAG"]
    assert values["TRAIN_IMAGE"] == f"{registry}/mammo-train:{tag}"
    assert values["TRAIN_IMAGE_CPU"] == f"{registry}/mammo-train:{tag}-cpu"
    assert values["EVAL_IMAGE"] == f"{registry}/mammo-eval:{tag}"

    echo = "|".join(f"${{{key}}}" for key in IMAGE_KEYS)
    bash = subprocess.run(
        ["bash", "-c", f'set -euo pipefail; source images.env; echo "{echo}"'],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )
    makefile = tmp_path / "Makefile"
    makefile.write_text(
        f"include {ROOT / 'images.env'}\nprint:\n\t@echo '"
        + "|".join(f"$({key})" for key in IMAGE_KEYS) + "'\n"
    )
    make = subprocess.run(
        ["make", "--no-print-directory", "-f", str(makefile), "print"],
        capture_output=True, text=True, check=True,
    )
    expected = "|".join(values[key] for key in IMAGE_KEYS)
    assert bash.stdout.strip() == expected
    assert make.stdout.strip() == expected


def test_both_dockerfiles_share_the_dependency_layer() -> None:
    """Built with the same TORCH_VARIANT, the two images share the venv layer: the final
    stages are the same instructions up to and including the dependency install."""
    heads = []
    for dockerfile in DOCKERFILES:
        final_stage = (ROOT / dockerfile).read_text().rsplit("\nFROM ", 1)[1]
        lines = [line for line in final_stage.splitlines() if not line.startswith("#")]
        head = lines[: next(i for i, line in enumerate(lines) if "rm -rf /tmp/requirements" in line) + 1]
        heads.append([line for line in head if not line.startswith("ARG TORCH_VARIANT=")])
    assert heads[0] == heads[1] and any("pip install --no-deps -r /tmp/requirements/image-torch-" in line for line in heads[0])
    bases = [
        [line for line in (ROOT / d).read_text().split("\nFROM base AS wheels", 1)[0].split("\nFROM ", 1)[1].splitlines()
         if not line.startswith("#")]
        for d in DOCKERFILES
    ]
    assert bases[0] == bases[1]


def test_images_push_writes_the_pushed_digests_to_images_env(tmp_path: Path) -> None:
    """`make images-push` with a stand-in docker: both images pushed, their RepoDigests
    written to the *_DIGEST keys of images.env, nothing else changed."""
    copy = tmp_path / "repo"
    (copy / "scripts").mkdir(parents=True)
    for script in ("images.sh", "lib.sh"):
        shutil.copy(ROOT / "scripts" / script, copy / "scripts" / script)
    shutil.copy(ROOT / "images.env", copy / "images.env")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "docker.log"
    docker = bin_dir / "docker"
    docker.write_text(
        "#!/usr/bin/env bash\n"
        f"echo \"$*\" >>{log}\n"
        'case "$1 $2" in\n'
        '  "image inspect")\n'
        '    image="${!#}"; repo="${image%:*}"\n'
        '    case "$repo" in *train*) d=a;; *) d=b;; esac\n'
        '    if [[ "$*" == *RepoDigests* ]]; then printf \'other/repo@sha256:%064d\\n%s@sha256:%s\\n\' 0 "$repo" "$(printf "$d%.0s" {1..64})"; fi ;;\n'
        "esac\n"
    )
    docker.chmod(0o755)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "HOME": str(tmp_path)}
    before = read_images_env()
    done = subprocess.run([str(copy / "scripts/images.sh"), "push"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    pushed = [line for line in log.read_text().splitlines() if line.startswith("push ")]
    assert pushed == [f"push {before['TRAIN_IMAGE']}", f"push {before['EVAL_IMAGE']}"]
    after = dict(line.split("=", 1) for line in (copy / "images.env").read_text().splitlines() if "=" in line and not line.startswith("#"))
    assert after["TRAIN_IMAGE_DIGEST"] == "sha256:" + "a" * 64 and after["EVAL_IMAGE_DIGEST"] == "sha256:" + "b" * 64
    assert {k: v for k, v in after.items() if not k.endswith("_DIGEST")} == {k: v for k, v in before.items() if not k.endswith("_DIGEST")}
    assert list(after) == IMAGE_KEYS
    # The compile profiles read the written digests (tests/test_pipeline_compile.py checks the rest).
    from mammo_pipelines.profiles import pinned_image

    assert pinned_image(after, "TRAIN_IMAGE", copy / "images.env") == f"{before['TRAIN_IMAGE']}@sha256:{'a' * 64}"


def test_images_smoke_script_needs_its_tools_and_knows_its_modes(tmp_path: Path) -> None:
    script = str(ROOT / "scripts/images-smoke.sh")
    wrong = subprocess.run([script, "deploy"], capture_output=True, text=True)
    assert wrong.returncode == 1 and "usage: scripts/images-smoke.sh [all|build|check|clean]" in wrong.stderr
    if os.geteuid() == 0:  # CI: root, so the next missing thing is buildah
        missing = subprocess.run(
            [script, "build"], env={"PATH": _sandbox_path(tmp_path), "HOME": str(tmp_path),
                                    "MAMMO_SMOKE_DIR": str(tmp_path / "smoke")},
            capture_output=True, text=True,
        )
        assert missing.returncode == 1
        assert "'buildah' is not installed" in missing.stderr and "apt-get install buildah" in missing.stderr
    nothing = subprocess.run([script, "clean"], env={**os.environ, "MAMMO_SMOKE_DIR": str(tmp_path / "none")},
                             capture_output=True, text=True)
    assert nothing.returncode == 0


def test_dockerignore_keeps_credentials_and_local_state_out() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    assert lines[lines.index("*") + 1 :].count("!shared/") == 1
    for allowed in ["!shared/", "!components/", "!pipelines/", "!requirements/image-*.txt"]:
        assert allowed in lines
    assert not any(line.startswith("!") and ("k8s" in line or ".venv" in line) for line in lines)
    assert "**/*.env" in lines


def test_shellcheck_passes_on_every_script() -> None:
    shell_scripts = [*SCRIPTS, *sorted((ROOT / "k8s").rglob("*.sh"))]
    assert len(SCRIPTS) >= 8
    result = subprocess.run(
        [_tool("shellcheck"), "-x", *map(str, shell_scripts)],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("script", [s for s in SCRIPTS if s.name != "lib.sh"], ids=lambda s: s.name)
def test_scripts_are_strict_and_executable(script: Path) -> None:
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "\nset -euo pipefail\n" in text
    assert script.stat().st_mode & stat.S_IXUSR


def _sandbox_path(tmp_path: Path) -> str:
    """A PATH holding only basic tools: docker, kind and kubectl are absent on purpose."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ["bash", "dirname", "cat", "grep", "sed", "tr", "od", "tail", "mktemp", "rm", "ls"]:
        (bin_dir / tool).symlink_to(shutil.which(tool))
    return str(bin_dir)


@pytest.mark.parametrize(
    ("script", "args", "missing"),
    [
        ("kind-up.sh", [], "'docker' is not installed"),
        ("images.sh", ["cpu"], "'docker' is not installed"),
        ("kind-load.sh", [], "'docker' is not installed"),
        ("kind-down.sh", [], "'kind' is not installed"),
        ("kfp-install.sh", [], "'kubectl' is not installed"),
    ],
)
def test_scripts_explain_a_missing_tool(
    tmp_path: Path, script: str, args: list[str], missing: str
) -> None:
    result = subprocess.run(
        [str(ROOT / "scripts" / script), *args],
        env={"PATH": _sandbox_path(tmp_path), "HOME": str(tmp_path)},
        capture_output=True, text=True,
    )
    assert result.returncode == 1
    assert missing in result.stderr and "Install" in result.stderr


def test_images_script_rejects_an_unknown_mode() -> None:
    result = subprocess.run(
        [str(ROOT / "scripts/images.sh"), "arm"], capture_output=True, text=True
    )
    assert result.returncode == 1
    assert "usage: scripts/images.sh cpu|gpu|push" in result.stderr


def test_cluster_secrets_written_once_then_checked(tmp_path: Path) -> None:
    # A copy of the tree, so the script writes next to copies of the examples, not into k8s/.
    shutil.copytree(ROOT / "scripts", tmp_path / "scripts")
    shutil.copytree(ROOT / "k8s", tmp_path / "k8s", ignore=shutil.ignore_patterns("minio.env", "minio-promoter.env"))
    script = tmp_path / "scripts/cluster-secrets.sh"
    stack_env = tmp_path / "k8s/base/mammo/minio.env"
    pipeline_env = tmp_path / "k8s/base/kubeflow/minio.env"

    first = subprocess.run([str(script)], capture_output=True, text=True, check=True)
    assert "wrote random credentials" in first.stderr
    stack = dict(line.split("=", 1) for line in stack_env.read_text().splitlines() if "=" in line)
    pipeline = dict(
        line.split("=", 1) for line in pipeline_env.read_text().splitlines() if "=" in line
    )
    assert set(stack) == {"MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD", "MINIO_ACCESS_KEY", "MINIO_SECRET_KEY"}
    assert pipeline == {k: stack[k] for k in ["MINIO_ACCESS_KEY", "MINIO_SECRET_KEY"]}
    assert stack["MINIO_ACCESS_KEY"] != stack["MINIO_ROOT_USER"]
    assert len(stack["MINIO_ROOT_PASSWORD"]) >= 32 and len(stack["MINIO_SECRET_KEY"]) >= 32
    assert stat.S_IMODE(os.stat(stack_env).st_mode) == 0o600

    # The Secret generators take the written files as they are.
    render = subprocess.run(
        ["kubectl", "kustomize", str(tmp_path / "k8s/overlays/kind")],
        capture_output=True, text=True, check=True,
    )
    assert stack["MINIO_SECRET_KEY"] not in render.stdout  # base64-encoded, as Secret data is
    assert base64.b64encode(stack["MINIO_SECRET_KEY"].encode()).decode() in render.stdout

    # The promoter's user: its own pair, in its own files, under the names every step reads.
    stack_promoter = dict(line.split("=", 1) for line in (tmp_path / "k8s/base/mammo/minio-promoter.env").read_text().splitlines() if "=" in line)
    promoter = dict(line.split("=", 1) for line in (tmp_path / "k8s/base/kubeflow/minio-promoter.env").read_text().splitlines() if "=" in line)
    assert promoter == {"MINIO_ACCESS_KEY": stack_promoter["MINIO_PROMOTER_ACCESS_KEY"],
                        "MINIO_SECRET_KEY": stack_promoter["MINIO_PROMOTER_SECRET_KEY"]}
    assert promoter["MINIO_ACCESS_KEY"] != stack["MINIO_ACCESS_KEY"] and len(promoter["MINIO_SECRET_KEY"]) >= 32
    assert base64.b64encode(promoter["MINIO_SECRET_KEY"].encode()).decode() in render.stdout

    before = stack_env.read_text()
    second = subprocess.run([str(script)], capture_output=True, text=True, check=True)
    assert "nothing to do" in second.stderr and stack_env.read_text() == before

    # A checkout from before the promoter's user: its pair is added, nothing else changes.
    for name in ("mammo", "kubeflow"):
        (tmp_path / f"k8s/base/{name}/minio-promoter.env").unlink()
    upgraded = subprocess.run([str(script)], capture_output=True, text=True, check=True)
    assert "wrote random promoter credentials" in upgraded.stderr and stack_env.read_text() == before

    pipeline_env.write_text("MINIO_ACCESS_KEY=someone-else\nMINIO_SECRET_KEY=x\n")
    third = subprocess.run([str(script)], capture_output=True, text=True)
    assert third.returncode == 1 and "disagree" in third.stderr
