"""The wheel is complete: built from the working tree (no network), installed without ``-e`` into a
folder of its own, and run from outside the repository: the shipped constitution, prompts and
Kubernetes manifests come from the package (importlib.resources), not from a source checkout.

The heavy dependencies (torch, transformers, grpc, ...) are not reinstalled: the installed package
runs with ``python -S`` (no site-packages hooks, so the repository's editable install is not
seen) and PYTHONPATH = the wheel's folder, then this venv's site-packages.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    files = (
        subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True, capture_output=True
        )
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, files):
        path = REPO / name
        if not (path.exists() or path.is_symlink()):
            continue  # deleted in the working tree
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        if path.is_symlink():
            os.symlink(os.readlink(path), src / name)
        elif path.is_file():
            shutil.copy2(path, src / name)
    dist = root / "dist"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--quiet",
            "-w",
            str(dist),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (wheel,) = dist.glob("constitutional_ai-*.whl")
    target = root / "target"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-index",
            "--quiet",
            "--target",
            str(target),
            str(wheel),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    cwd = root / "elsewhere"
    cwd.mkdir()
    env = {
        **os.environ,
        "PYTHONPATH": f"{target}{os.pathsep}{sysconfig.get_paths()['purelib']}",
        "CAI_CACHE_DIR": str(root / "cache"),
    }
    return {"wheel": wheel, "target": target, "cwd": cwd, "env": env}


def _cai(installed, *args) -> subprocess.CompletedProcess:
    code = "import sys; from services.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-S", "-c", code, *args],
        cwd=installed["cwd"],
        env=installed["env"],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_wheel_holds_constitutions_prompts_and_manifests(installed):
    names = set(zipfile.ZipFile(installed["wheel"]).namelist())
    for wanted in (
        "services/_data/constitutions/default.yaml",
        "services/_data/prompts/red_team.jsonl",
        "services/_data/prompts/helpfulness_pairs.jsonl",
        "services/_data/k8s/base/kustomization.yaml",
        "services/_data/k8s/overlays/cpu-small/kustomization.yaml",
        "services/_data/k8s/monitoring/grafana-dashboard.json",
    ):
        assert wanted in names, wanted


def test_installed_package_reads_its_own_data(installed):
    done = subprocess.run(
        [
            sys.executable,
            "-S",
            "-c",
            "import services, services.prompts as p, services.constitution as c; "
            "print(services.__file__); print(p.RED_TEAM); print(c.DEFAULT_CONSTITUTION)",
        ],
        cwd=installed["cwd"],
        env=installed["env"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    for line in done.stdout.split():
        assert line.startswith(str(installed["target"])), line


def test_constitution_check_on_the_default_constitution(installed):
    done = _cai(installed, "constitution", "check")
    assert done.returncode == 0, done.stderr
    assert str(installed["target"]) in done.stdout and ": ok:" in done.stdout


def test_k8s_render(installed):
    done = _cai(installed, "k8s", "render", "--overlay", "cpu-small")
    assert done.returncode == 0, done.stderr
    assert (
        "kind: Deployment" in done.stdout and "name: generation" in done.stdout and "kind: StatefulSet" in done.stdout
    )
