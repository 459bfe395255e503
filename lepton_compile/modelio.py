"""Model files: write atomically, copy, hash and check ONNX models, external data included.

One home for what every stage does with model files. Models over the protobuf limit
(``passes.model_size``) keep their weights in a side file ``<name>.data``: they are written
with it, copied with it, hashed with it, and checked by onnx.checker from their path, since
they cannot be serialized in memory.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import onnx

from lepton_compile.passes.model_size import over_limit


def data_name(path: Path) -> str:
    """File name of the external data written beside ``path``."""
    return f"{path.name}.data"


def save_model(model: onnx.ModelProto, path: str | os.PathLike[str]) -> Path:
    """Write ``model`` to ``path`` through temporary files and renames.

    A model over the protobuf limit goes to ``path`` plus ``<name>.data`` beside it: the data
    file is renamed into place first and the .onnx that points to it last, so a reader never
    sees an .onnx without its data. The caller's ``model`` is not changed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        tmp = stage / path.name
        if over_limit(model):
            # onnx moves the weights out of the proto it is given: hand it a copy.
            copy = onnx.ModelProto()
            copy.CopyFrom(model)
            onnx.save_model(copy, str(tmp), save_as_external_data=True, location=data_name(path))
            data = stage / data_name(path)
            if data.exists():
                _publish(data, path.with_name(data_name(path)))
        else:
            onnx.save_model(model, str(tmp))
        _publish(tmp, path)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return path


def _publish(tmp: Path, dst: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkdtemp's files would otherwise keep private modes
    os.replace(tmp, dst)


def external_data_files(path: str | os.PathLike[str]) -> list[Path]:
    """The external data files a model file refers to (existing or not), in a stable order."""
    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)
    names: set[str] = set()
    for tensor in _tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            for entry in tensor.external_data:
                if entry.key == "location":
                    names.add(entry.value)
    return [path.parent / n for n in sorted(names)]


def _tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    from onnx.external_data_helper import _get_all_tensors

    yield from _get_all_tensors(model)


def uses_external_data(path: str | os.PathLike[str]) -> bool:
    return bool(external_data_files(path))


def copy_model(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> Path:
    """Copy a model file to ``dst``; one with external data is re-saved with its own data
    file named after ``dst`` (a copied .onnx would otherwise point at the source's data)."""
    src, dst = Path(src), Path(dst)
    if uses_external_data(src):
        return save_model(onnx.load(str(src), load_external_data=True), dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", dir=dst.parent)
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        _publish(Path(tmp), dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dst


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of one file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def model_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a model: of its file alone when it has no external data (what `sha256sum`
    says), else of the file and, in order, every external data file it refers to, so that two
    models with the same graph and different weights in their side files differ."""
    path = Path(path)
    own = file_sha256(path)
    try:
        extra = external_data_files(path)
    except Exception:  # unreadable as ONNX: the bytes are all there is to hash
        extra = []
    if not extra:
        return own
    h = hashlib.sha256(bytes.fromhex(own))
    for data in extra:
        h.update(data.name.encode())
        h.update(bytes.fromhex(file_sha256(data)) if data.is_file() else b"missing")
    return h.hexdigest()


def size_bytes(path: str | os.PathLike[str]) -> int:
    """Bytes of a model file plus its external data."""
    path = Path(path)
    total = path.stat().st_size
    try:
        extra = external_data_files(path)
    except Exception:
        extra = []
    return total + sum(d.stat().st_size for d in extra if d.is_file())


def check_model(model: onnx.ModelProto, path: str | os.PathLike[str] | None = None) -> None:
    """onnx.checker on ``model``; one over the protobuf limit is checked from ``path``, the
    file it was saved to (it cannot be serialized in memory). Raises what the checker raises,
    or ValueError when a large model has no file to be checked from."""
    if not over_limit(model):
        onnx.checker.check_model(model)
        return
    if path is None or not Path(path).is_file():
        raise ValueError("a model over the protobuf limit is checked from its file; none given")
    onnx.checker.check_model(str(path))
