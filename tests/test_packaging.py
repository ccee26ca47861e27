"""The built wheel holds every package and the shipped configs under their ``tmem_agents`` names."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = [
    "tmem_agents",
    "tmem_agents/memory",
    "tmem_agents/ops",
    "tmem_agents/algos",
    "tmem_agents/envs",
    "tmem_agents/policies",
    "tmem_agents/configs",
    "tmem_agents/configs/env",
    "tmem_agents/configs/model",
    "tmem_agents/configs/algo",
    "tmem_agents/configs/hydra",
    "tmem_agents/configs/hydra/launcher",
]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        check=True,
    )
    return zipfile.ZipFile(next(out.glob("tmem_agents-*.whl")))


def test_wheel_holds_every_package(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    for package in PACKAGES:
        assert f"{package}/__init__.py" in names, f"{package} is missing from the wheel"
    for folder in ("envs", "policies", "configs"):
        sources = {p.relative_to(ROOT / folder) for p in (ROOT / folder).rglob("*") if p.suffix in (".py", ".yaml")}
        shipped = {
            Path(n).relative_to(f"tmem_agents/{folder}") for n in names if n.startswith(f"tmem_agents/{folder}/")
        }
        assert sources <= shipped, f"not shipped from {folder}/: {sorted(map(str, sources - shipped))}"
    assert not any(n.split("/")[0] in ("envs", "policies", "configs", "tests", "scripts") for n in names)
    assert "tmem_agents/ops/recurrence.c" in names, "the C kernel's source must ship with the package"


def test_console_scripts_are_declared(wheel: zipfile.ZipFile) -> None:
    entry_points = next(n for n in wheel.namelist() if n.endswith("entry_points.txt"))
    text = wheel.read(entry_points).decode()
    assert "tmem-train = tmem_agents.train:main" in text and "tmem-eval = tmem_agents.evaluate:main" in text
