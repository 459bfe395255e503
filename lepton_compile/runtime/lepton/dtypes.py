"""ONNX element types <-> torch dtypes <-> numpy arrays (bfloat16 and float8 via ml_dtypes)."""

from __future__ import annotations

import numpy as np
import onnx
import torch

from lepton_compile.errors import NotSupported

TP = onnx.TensorProto

# Element types with a torch dtype that has arithmetic on CPU and CUDA.
TORCH_DTYPES: dict[int, torch.dtype] = {
    TP.FLOAT: torch.float32,
    TP.UINT8: torch.uint8,
    TP.INT8: torch.int8,
    TP.INT16: torch.int16,
    TP.INT32: torch.int32,
    TP.INT64: torch.int64,
    TP.BOOL: torch.bool,
    TP.FLOAT16: torch.float16,
    TP.DOUBLE: torch.float64,
    TP.BFLOAT16: torch.bfloat16,
    TP.FLOAT8E4M3FN: torch.float8_e4m3fn,
    TP.FLOAT8E4M3FNUZ: torch.float8_e4m3fnuz,
    TP.FLOAT8E5M2: torch.float8_e5m2,
    TP.FLOAT8E5M2FNUZ: torch.float8_e5m2fnuz,
}
ONNX_TYPES: dict[torch.dtype, int] = {v: k for k, v in TORCH_DTYPES.items()}

FLOAT8 = frozenset(
    {torch.float8_e4m3fn, torch.float8_e4m3fnuz, torch.float8_e5m2, torch.float8_e5m2fnuz}
)
# The float types a compute-dtype policy (fp32/fp16/bf16 mode) rewrites; double stays double.
POLICY_FLOATS = frozenset({torch.float32, torch.float16, torch.bfloat16})


def type_name(elem_type: int) -> str:
    try:
        return TP.DataType.Name(elem_type).lower()
    except ValueError:
        return f"element type {elem_type}"


def torch_dtype(elem_type: int, what: str = "") -> torch.dtype:
    """The torch dtype of an ONNX element type; NotSupported for those torch cannot compute in."""
    dtype = TORCH_DTYPES.get(elem_type)
    if dtype is None:
        prefix = f"{what}: " if what else ""
        raise NotSupported(f"{prefix}element type {type_name(elem_type)} is not supported")
    return dtype


def _ml_dtype(dtype: torch.dtype) -> np.dtype | None:
    import ml_dtypes

    return {
        torch.bfloat16: np.dtype(ml_dtypes.bfloat16),
        torch.float8_e4m3fn: np.dtype(ml_dtypes.float8_e4m3fn),
        torch.float8_e4m3fnuz: np.dtype(ml_dtypes.float8_e4m3fnuz),
        torch.float8_e5m2: np.dtype(ml_dtypes.float8_e5m2),
        torch.float8_e5m2fnuz: np.dtype(ml_dtypes.float8_e5m2fnuz),
    }.get(dtype)


_VIEW = {1: torch.uint8, 2: torch.int16}
_NP_VIEW = {1: np.uint8, 2: np.int16}


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """A CPU copy of `t` as numpy (bfloat16 and float8 as ml_dtypes arrays)."""
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    ml = _ml_dtype(t.dtype)
    if ml is not None:
        return t.contiguous().view(_VIEW[t.element_size()]).numpy().view(ml)
    return t.numpy()


def from_numpy(a: np.ndarray, what: str = "") -> torch.Tensor:
    """A torch tensor sharing (where possible) the memory of `a`."""
    a = np.asarray(a)
    name = a.dtype.name
    for dtype in (torch.bfloat16, *FLOAT8):
        ml = _ml_dtype(dtype)
        if ml is not None and a.dtype == ml:
            raw = np.ascontiguousarray(a).view(_NP_VIEW[a.dtype.itemsize])
            return torch.from_numpy(raw).view(dtype)
    if a.dtype == object or a.dtype.kind in ("U", "S"):
        raise NotSupported(f"{what + ': ' if what else ''}string tensors are not supported")
    if name in ("uint16", "uint32", "uint64"):
        raise NotSupported(f"{what + ': ' if what else ''}element type {name} is not supported")
    if not a.flags.writeable:
        a = a.copy()
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("="))
    return torch.from_numpy(a)


def tensor_from_proto(proto: onnx.TensorProto, base_dir: str | None = None) -> torch.Tensor:
    """A CPU tensor from a TensorProto (external data read from `base_dir`)."""
    from onnx import numpy_helper

    torch_dtype(proto.data_type, f"tensor {proto.name!r}" if proto.name else "tensor")
    if proto.data_location == TP.EXTERNAL and base_dir is not None:
        from onnx.external_data_helper import load_external_data_for_tensor

        proto = TP.FromString(proto.SerializeToString())
        load_external_data_for_tensor(proto, base_dir)
    array = numpy_helper.to_array(proto)
    return from_numpy(np.array(array, copy=True))
