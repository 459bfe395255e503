"""Build `lepton-run` (native/, CMakeLists.txt) with CMake: what `export --build-runner` runs.

The build is the README's manual one (`cmake -S . -B build && cmake --build build`), with the
current Python named so that CMake finds libtorch in this environment's torch wheel. A
build tree is kept per (native sources, torch version, Python) under
``~/.cache/lepton-compile/native/`` (``$LEPTON_NATIVE_BUILD`` moves it), so a second export
relinks nothing; a failed build raises one line that names the log holding the details.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from lepton_compile.errors import LeptonError

log = logging.getLogger(__name__)

ENV_BUILD_DIR = "LEPTON_NATIVE_BUILD"
RUNNER_NAME = "lepton-run"


class NativeBuildError(LeptonError):
    """The runner cannot be built here (no CMake, no compiler, no libtorch): exit code 2."""

    exit_code = 2


@dataclass
class RunnerBuild:
    """A built runner: where it is, how long the build took, whether it was already built."""

    path: Path
    build_dir: Path
    seconds: float
    reused: bool

    def to_dict(self) -> dict[str, object]:
        return {
            "path": str(self.path),
            "build_dir": str(self.build_dir),
            "build_s": round(self.seconds, 2),
            "reused": self.reused,
        }


def source_root() -> Path:
    """The checkout holding CMakeLists.txt and native/ (NativeBuildError if not there)."""
    root = Path(__file__).resolve().parent.parent
    if not (root / "CMakeLists.txt").is_file() or not (root / "native").is_dir():
        raise NativeBuildError(
            "the native sources (CMakeLists.txt, native/) are not installed with this copy of "
            "lepton-compile: build lepton-run from a checkout of the repository"
        )
    return root


def _sources_key(root: Path, python: str) -> str:
    """What a build tree is good for: these sources, this torch, this Python."""
    import torch

    h = hashlib.sha256()
    for path in [root / "CMakeLists.txt", *sorted((root / "native").iterdir())]:
        if path.is_file():
            h.update(path.name.encode())
            h.update(path.read_bytes())
    h.update(torch.__version__.encode())
    h.update(os.path.realpath(python).encode())
    return h.hexdigest()[:16]


def default_build_dir(python: str = sys.executable) -> Path:
    """The build tree for the current sources, torch and Python."""
    base = os.environ.get(ENV_BUILD_DIR)
    parent = Path(base) if base else Path.home() / ".cache" / "lepton-compile" / "native"
    return parent / _sources_key(source_root(), python)


def _cmake() -> str:
    cmake = shutil.which("cmake")
    if cmake is None:
        raise NativeBuildError(
            "cmake not found on PATH: install CMake 3.18 or newer (the system package, or "
            "pip install cmake) to build lepton-run"
        )
    return cmake


def _run_step(cmd: list[str], logfile: Path, what: str) -> None:
    with open(logfile, "a", encoding="utf-8") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, check=False).returncode
    if rc != 0:
        text = logfile.read_text(encoding="utf-8", errors="replace").splitlines()
        hint = next(
            (ln.strip() for ln in reversed(text) if "error" in ln.lower() and ln.strip()),
            text[-1].strip() if text else "",
        )
        raise NativeBuildError(f"lepton-run: {what} failed ({hint[:200]}); see {logfile}")


def build_runner(build_dir: str | Path | None = None, python: str = sys.executable) -> RunnerBuild:
    """Configure and build lepton-run in `build_dir` (default: `default_build_dir()`).

    An up-to-date build tree is reused as CMake reuses it: `cmake --build` relinks nothing.
    """
    root = source_root()
    cmake = _cmake()
    build = Path(build_dir) if build_dir is not None else default_build_dir(python)
    build.mkdir(parents=True, exist_ok=True)
    runner = build / RUNNER_NAME
    reused = runner.is_file()  # cmake --build then only checks that it is up to date
    logfile = build / "lepton-build.log"
    logfile.write_text("", encoding="utf-8")
    start = time.perf_counter()
    if not (build / "CMakeCache.txt").is_file():
        _run_step(
            [
                cmake,
                "-S",
                str(root),
                "-B",
                str(build),
                f"-DPython_EXECUTABLE={python}",
                "-DCMAKE_BUILD_TYPE=Release",
            ],
            logfile,
            "CMake configure",
        )
    jobs = str(max(1, os.cpu_count() or 1))
    _run_step([cmake, "--build", str(build), "-j", jobs], logfile, "build")
    seconds = time.perf_counter() - start
    if not runner.is_file():
        raise NativeBuildError(f"lepton-run: the build made no {runner}; see {logfile}")
    log.info("lepton-run built in %.1f s: %s", seconds, runner)
    return RunnerBuild(runner, build, seconds, reused)
