"""DESIGN.md's import rules, as import-linter contracts (pyproject.toml), hold.

The contracts are checked on the package as it installs (passes/, kernels/ and bench/ mapped
into lepton_compile/), since import-linter walks one directory tree per package.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from 3.11")

ROOT = Path(__file__).resolve().parents[1]
CONFIG = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
# Parts that are not the driver: each has its own contract; the op contract is everyone's.
NOT_DRIVER = {"passes", "kernels", "bench", "contract", "__init__", "__main__"}


def _installed_layout(dest: Path) -> Path:
    """The package tree as setuptools installs it, from pyproject's package-dir mapping."""
    mapping = CONFIG["tool"]["setuptools"]["package-dir"]
    root = dest / "lepton_compile"
    shutil.copytree(ROOT / mapping["lepton_compile"], root)
    for package, folder in mapping.items():
        if package != "lepton_compile":
            shutil.copytree(ROOT / folder, dest / package.replace(".", "/"))
    return dest


def test_import_contracts_hold(tmp_path: Path):
    pytest.importorskip("importlinter", reason="import-linter is in the test extra")
    site = _installed_layout(tmp_path / "site")
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or "lint-imports"
    env = dict(os.environ, PYTHONPATH=str(site))
    done = subprocess.run(
        [lint, str(ROOT / "pyproject.toml")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def test_the_contracts_name_every_driver_module():
    """A new driver module must be forbidden to passes, kernels and bench too."""
    found = {
        p.stem if p.is_file() else p.name
        for p in (ROOT / "lepton_compile").iterdir()
        if (p.suffix == ".py" or (p / "__init__.py").is_file()) and p.name != "__pycache__"
    }
    driver = {f"lepton_compile.{m}" for m in found - NOT_DRIVER}
    for contract in CONFIG["tool"]["importlinter"]["contracts"]:
        missing = driver - set(contract["forbidden_modules"])
        assert not missing, f"{contract['name']}: add {sorted(missing)}"
