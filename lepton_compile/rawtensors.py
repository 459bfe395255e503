"""Named tensors in one file of raw bytes: what `lepton-run` reads and writes (native/).

The native runner must read a model's inputs without a zip or .npy parser, so the format is
the simplest that carries names, element types and shapes. All integers little-endian:

    magic    8 bytes   b"LEPTONT1"
    count    u32       number of tensors
    then per tensor:
      name_len u32, name (UTF-8, name_len bytes)
      dtype    u8      code in DTYPE_CODES (float32=1, float16=2, bfloat16=3, float64=4,
                       int8=5, uint8=6, int16=7, int32=8, int64=9, bool=10)
      ndim     u8, dims  i64 x ndim
      nbytes   u64, data (nbytes bytes, C order, little-endian elements)

`lepton-compile export` writes a model's held-out inputs as `inputs/NNNN.lt` beside the
package; `lepton-run --save-outputs` writes the outputs the same way, so both sides of a
parity check read one format. bfloat16 travels as its raw 16-bit pattern (numpy has no
bfloat16; ml_dtypes arrays are accepted and returned where installed).
"""

from __future__ import annotations

import os
import struct
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

MAGIC = b"LEPTONT1"
DTYPE_CODES = {
    "float32": 1,
    "float16": 2,
    "bfloat16": 3,
    "float64": 4,
    "int8": 5,
    "uint8": 6,
    "int16": 7,
    "int32": 8,
    "int64": 9,
    "bool": 10,
}
_NAMES = {code: name for name, code in DTYPE_CODES.items()}
SUFFIX = ".lt"


class FormatError(ValueError):
    """A file that is not a well-formed tensor file (names the file and what is wrong)."""


def _numpy_dtype(name: str) -> np.dtype:
    if name == "bfloat16":
        try:
            import ml_dtypes

            return np.dtype(ml_dtypes.bfloat16)
        except ImportError:  # raw 16-bit patterns, as the file holds them
            return np.dtype(np.uint16)
    return np.dtype(name)


def encode(tensors: Mapping[str, np.ndarray]) -> bytes:
    """The file's bytes for `tensors` (in the mapping's order)."""
    parts = [MAGIC, struct.pack("<I", len(tensors))]
    for name, value in tensors.items():
        a = np.require(value, requirements="C")  # (ascontiguousarray makes 0-d 1-d)
        dtype = a.dtype.name
        if dtype not in DTYPE_CODES:
            raise ValueError(f"tensor {name!r}: element type {dtype} has no code in the format")
        if a.dtype.byteorder == ">":
            a = a.astype(a.dtype.newbyteorder("<"))
        raw = name.encode("utf-8")
        parts.append(struct.pack("<I", len(raw)) + raw)
        parts.append(struct.pack("<BB", DTYPE_CODES[dtype], a.ndim))
        parts.append(struct.pack(f"<{a.ndim}q", *a.shape))
        data = a.tobytes()
        parts.append(struct.pack("<Q", len(data)) + data)
    return b"".join(parts)


def decode(data: bytes, where: str = "tensor file") -> dict[str, np.ndarray]:
    """The tensors in a file's bytes; FormatError naming `where` if they are malformed."""
    view = memoryview(data)
    pos = 0

    def take(n: int) -> memoryview:
        nonlocal pos
        if pos + n > len(view):
            raise FormatError(f"{where}: truncated at byte {pos} (needs {n} more)")
        chunk = view[pos : pos + n]
        pos += n
        return chunk

    if bytes(take(len(MAGIC))) != MAGIC:
        raise FormatError(f"{where}: not a tensor file (no {MAGIC.decode()} header)")
    (count,) = struct.unpack("<I", take(4))
    out: dict[str, np.ndarray] = {}
    for _ in range(count):
        (name_len,) = struct.unpack("<I", take(4))
        name = bytes(take(name_len)).decode("utf-8")
        code, ndim = struct.unpack("<BB", take(2))
        if code not in _NAMES:
            raise FormatError(f"{where}: tensor {name!r} has unknown dtype code {code}")
        shape = struct.unpack(f"<{ndim}q", take(8 * ndim))
        (nbytes,) = struct.unpack("<Q", take(8))
        dtype = _numpy_dtype(_NAMES[code])
        if nbytes != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
            raise FormatError(f"{where}: tensor {name!r}: {nbytes} bytes do not fit {shape}")
        out[name] = np.frombuffer(bytes(take(nbytes)), dtype=dtype.newbyteorder("<")).reshape(shape)
    return out


def write(path: str | Path, tensors: Mapping[str, np.ndarray]) -> Path:
    """Write `tensors` to `path` through a temporary file and a rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(encode(tensors))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 is for the temporary file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read(path: str | Path) -> dict[str, np.ndarray]:
    """The tensors in the file at `path`."""
    return decode(Path(path).read_bytes(), str(path))
