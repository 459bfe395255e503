"""Model intake: load an ONNX file, check it, fix dynamic input dimensions, infer shapes."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message
from onnx import helper, numpy_helper, shape_inference

from lepton_compile import modelio
from lepton_compile.errors import InputError
from lepton_compile.passes.errors import one_line

log = logging.getLogger(__name__)

_FLOAT_TYPES = {
    onnx.TensorProto.FLOAT,
    onnx.TensorProto.FLOAT16,
    onnx.TensorProto.DOUBLE,
    onnx.TensorProto.BFLOAT16,
}
_HEAD_OPS = {"Gemm", "MatMul", "Add", "Flatten", "Reshape", "Squeeze", "Sigmoid"}
# The symbol a kept batch dimension gets when the model's batch inputs do not share a name.
BATCH_SYMBOL = "batch"


@dataclass(frozen=True)
class TensorSpec:
    """A graph input or output as the tool sees it: name, numpy dtype, shape."""

    name: str
    elem_type: int
    shape: tuple[int | str | None, ...] | None

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(helper.tensor_dtype_to_np_dtype(self.elem_type))

    @property
    def is_static(self) -> bool:
        return self.shape is not None and all(isinstance(d, int) for d in self.shape)

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": str(self.dtype), "shape": list(self.shape or [])}


@dataclass
class LoadedModel:
    """A checked model with every user-visible input made static."""

    path: Path
    sha256: str
    size_bytes: int
    model: onnx.ModelProto
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    opset: int
    score_outputs: set[str] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)
    fixed_dims: dict[str, list[int]] = field(default_factory=dict)
    # With keep_batch: the inputs whose dim 0 stays symbolic (the only symbol left).
    batch_inputs: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "path": str(self.path),
            "sha256": self.sha256,
            "size_bytes": self.size_bytes,
            "opset": self.opset,
            "inputs": [s.to_dict() for s in self.inputs],
            "outputs": [s.to_dict() for s in self.outputs],
            "notes": list(self.notes),
        }


def parse_shape_arg(text: str) -> tuple[str, list[int]]:
    """Parse ``NAME=1x3x224x224`` (``,`` also separates dims) into a name and dims."""
    name, sep, dims = text.rpartition("=")
    if not sep or not name or not dims:
        raise InputError(f"--input-shape {text!r}: expected NAME=DIMS, e.g. images=1x3x224x224")
    try:
        shape = [int(d) for d in dims.replace(",", "x").split("x")]
    except ValueError:
        raise InputError(
            f"--input-shape {text!r}: dimensions must be integers separated by 'x'"
        ) from None
    if any(d <= 0 for d in shape):
        raise InputError(f"--input-shape {text!r}: dimensions must be positive")
    return name, shape


def declared_dims(vi: onnx.ValueInfoProto) -> tuple[int | str | None, ...] | None:
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return None
    out: list[int | str | None] = []
    for d in t.shape.dim:
        # Some exporters (Paddle) write dim_value -1 for a dynamic dimension.
        if d.HasField("dim_value") and d.dim_value > 0:
            out.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            out.append(d.dim_param)
        else:
            out.append(None)
    return tuple(out)


def _read_model(path: Path) -> onnx.ModelProto:
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected an .onnx file")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: empty file, not an ONNX model")
    try:
        model = onnx.load(str(path), load_external_data=True)
    except DecodeError as e:
        raise InputError(f"{path}: not a valid ONNX file (truncated or not ONNX: {e})") from None
    except FileNotFoundError as e:
        raise InputError(f"{path}: external data file missing: {e.filename or e}") from None
    except Exception as e:  # protobuf raises several types on garbage input
        raise InputError(f"{path}: could not be read as ONNX: {one_line(e)}") from None
    # Protobuf parses many non-ONNX byte strings without complaint; a model needs a graph.
    if model.ir_version <= 0 or not model.HasField("graph") or not model.graph.output:
        raise InputError(f"{path}: not an ONNX model (no ir_version or no graph outputs)")
    bad = _non_utf8_field(model)
    if bad is not None:
        raise InputError(
            f"{path}: not a valid ONNX file ({bad} is not UTF-8 text; the file is corrupt)"
        )
    return model


def _non_utf8_field(root: Message) -> str | None:
    """Where a string field holds bytes that are not UTF-8, or None.

    ONNX strings are UTF-8, but protobuf's proto2 parser accepts any bytes in them and hands
    such a field back as ``bytes``: a few flipped bytes in a file then surface later, far from
    the file, as a UnicodeDecodeError inside onnx.checker or a TypeError in a pass.
    """
    stack: list[tuple[str, Message]] = [("model", root)]
    while stack:
        where, msg = stack.pop()
        # Field by field rather than ListFields(), which would copy every tensor's raw_data.
        for fd in msg.DESCRIPTOR.fields:
            if fd.type not in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_MESSAGE):
                continue
            if _is_repeated(fd):
                items = list(enumerate(getattr(msg, fd.name)))
            elif fd.type == FieldDescriptor.TYPE_STRING or msg.HasField(fd.name):
                items = [(None, getattr(msg, fd.name))]
            else:
                continue
            for i, item in items:
                at = f"{where}.{fd.name}" + (f"[{i}]" if i is not None else "")
                if fd.type == FieldDescriptor.TYPE_STRING:
                    if isinstance(item, bytes):
                        return at
                else:
                    stack.append((at, item))
    return None


def _is_repeated(fd: FieldDescriptor) -> bool:
    # protobuf 7 dropped FieldDescriptor.label; versions before 5 lack is_repeated.
    flag = getattr(fd, "is_repeated", None)
    if flag is not None:
        return bool(flag)
    return fd.label == FieldDescriptor.LABEL_REPEATED


def check(model: onnx.ModelProto, path: Path) -> None:
    """Run onnx.checker; large models are checked from the file (protobuf's 2 GB limit).

    Whatever the checker raises is about the file, so every failure is bad input: besides
    ValidationError it raises e.g. UnicodeDecodeError when its message quotes corrupt bytes.
    """
    try:
        if model.ByteSize() > 2_000_000_000:
            onnx.checker.check_model(str(path))
        else:
            onnx.checker.check_model(model)
    except Exception as e:
        raise InputError(f"{path}: invalid ONNX graph: {one_line(e)}") from None
    _check_types(model.graph, path)


# Every data type this onnx knows; the checker lets any number through on graph inputs,
# outputs and initializers, and the driver reads those types.
_KNOWN_TYPES = frozenset(onnx.TensorProto.DataType.values())


def _check_types(graph: onnx.GraphProto, path: Path) -> None:
    typed = [("input", vi) for vi in graph.input] + [("output", vi) for vi in graph.output]
    for kind, vi in typed:
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type not in _KNOWN_TYPES:
            raise InputError(
                f"{path}: invalid ONNX graph: {kind} {vi.name!r} has unknown data type "
                f"{vi.type.tensor_type.elem_type}"
            )
    for init in graph.initializer:
        if init.data_type not in _KNOWN_TYPES or init.data_type == onnx.TensorProto.UNDEFINED:
            raise InputError(
                f"{path}: invalid ONNX graph: initializer {init.name!r} has unknown data type "
                f"{init.data_type}"
            )
    _check_tensor_data(graph, path)


# Sub-byte types are packed: bits per element of the raw data.
_PACKED_BITS = {
    getattr(onnx.TensorProto, name): bits
    for name, bits in (("INT4", 4), ("UINT4", 4), ("FLOAT4E2M1", 4), ("INT2", 2), ("UINT2", 2))
    if hasattr(onnx.TensorProto, name)
}
_UNSIZED = {
    onnx.TensorProto.STRING,
    *(
        getattr(onnx.TensorProto, name)
        for name in ("FLOAT6E2M3", "FLOAT6E3M2")
        if hasattr(onnx.TensorProto, name)
    ),
}


def _raw_bytes(data_type: int, count: int) -> int | None:
    """Bytes of ``count`` elements in raw_data, or None where no fixed size applies."""
    if data_type in _UNSIZED:
        return None
    bits = _PACKED_BITS.get(data_type)
    if bits is not None:
        return (count * bits + 7) // 8
    return count * np.dtype(helper.tensor_dtype_to_np_dtype(data_type)).itemsize


def _graph_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Initializers and Constant values of ``graph`` and of the graphs inside its nodes."""
    yield from graph.initializer
    for node in graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.TENSOR:
                yield a.t
            elif a.type == onnx.AttributeProto.TENSORS:
                yield from a.tensors
            elif a.type == onnx.AttributeProto.GRAPH:
                yield from _graph_tensors(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for g in a.graphs:
                    yield from _graph_tensors(g)


def _check_tensor_data(graph: onnx.GraphProto, path: Path) -> None:
    """Each stored tensor holds as much data as its shape and type say.

    onnx.checker does not look: a weight whose data does not fit its shape loads, then
    breaks whatever reads it (constant folding, the runtime) far from the cause.
    """
    for t in _graph_tensors(graph):
        if t.data_location == onnx.TensorProto.EXTERNAL or t.data_type not in _KNOWN_TYPES:
            continue  # external data was loaded into raw_data; unknown types are named above
        what = f"{path}: invalid ONNX graph: tensor {t.name!r}"
        if any(d < 0 for d in t.dims):
            raise InputError(f"{what} has a negative dimension {list(t.dims)}")
        count = math.prod(t.dims)
        dtype = onnx.TensorProto.DataType.Name(t.data_type)
        if t.HasField("raw_data"):
            want = _raw_bytes(t.data_type, count)
            if want is not None and len(t.raw_data) != want:
                raise InputError(
                    f"{what} has {len(t.raw_data)} bytes of data; shape {list(t.dims)} of "
                    f"{dtype} needs {want}"
                )
            continue
        try:
            numpy_helper.to_array(t)  # typed fields: rare, and small where they are used
        except Exception as e:
            raise InputError(
                f"{what}: its values do not fit shape {list(t.dims)} of {dtype}: {one_line(e)}"
            ) from None


def default_opset(model: onnx.ModelProto) -> int:
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            return int(o.version)
    return 0


def user_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Graph inputs without an initializer: old models list every weight as an input too."""
    inits = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def fix_input_shapes(
    model: onnx.ModelProto,
    shapes: Mapping[str, Sequence[int]],
    path: Path,
    default_batch: int = 1,
    static: bool = True,
    keep_batch: Sequence[str] = (),
) -> tuple[list[str], dict[str, list[int | str]]]:
    """Set the input shapes the user gave, in place. Returns notes and the dims that changed.

    ``static`` (the main job, which measures at one shape): every other dimension becomes
    static too: a symbol pinned through one input (``batch``) takes the same size everywhere,
    a dynamic batch becomes ``default_batch``, and any other dynamic dimension is an error
    that names the flag. Otherwise (``optimize``) dimensions nobody fixed stay symbolic, and
    pinned symbols are pinned in the outputs as well, since ONNX gives one symbol one size.
    ``keep_batch`` (with ``static``): these inputs keep dim 0 symbolic, named as in the model
    when they share one name, else ``BATCH_SYMBOL`` (outputs that shared it follow);
    everything else static.
    """
    inputs = user_inputs(model)
    symbols = _given_symbols(inputs, shapes, path, strict=static)
    # A kept batch keeps the model's own name for it (one name for all: one size per call).
    originals = {d for vi in inputs if vi.name in keep_batch for d in (declared_dims(vi) or ())[:1]}
    named = sorted(d for d in originals if isinstance(d, str) and d)
    batch_name = named[0] if len(named) == 1 else BATCH_SYMBOL
    notes: list[str] = []
    fixed: dict[str, list[int | str]] = {}
    for vi in inputs:
        dims = declared_dims(vi)
        if vi.name in shapes:
            new: list[int | str | None] = [int(d) for d in shapes[vi.name]]
        elif dims is None:
            if not static:
                continue
            raise InputError(
                f"{path.name}: input {vi.name!r} has no shape; give one with "
                f"--input-shape {vi.name}=DIMS"
            )
        elif static:
            new = list(_static_dims(vi.name, dims, symbols, default_batch, notes, path))
        else:
            new = [symbols.get(d, d) if isinstance(d, str) else d for d in dims]
        if vi.name in keep_batch and new:
            new[0] = batch_name
        if set_dims(vi, dims, new):
            fixed[vi.name] = [d if isinstance(d, int) else (d or "?") for d in new]
    if keep_batch:
        notes[:] = [n for n in notes if "dynamic batch dimension" not in n]
        for vo in model.graph.output:
            dims = declared_dims(vo)
            if dims and isinstance(dims[0], str) and dims[0] in originals:
                set_dims(vo, dims, [batch_name, *dims[1:]])
    if not static:
        for vo in model.graph.output:
            dims = declared_dims(vo)
            if dims is not None:
                set_dims(vo, dims, [symbols.get(d, d) if isinstance(d, str) else d for d in dims])
        for vi in inputs:
            dims = declared_dims(vi)
            if dims is None or not all(isinstance(d, int) and d >= 0 for d in dims):
                notes.append(
                    f"input {vi.name!r} stays dynamic ({_fmt_dims(dims or ())}): only what is "
                    "static is folded"
                )
    return notes, fixed


def _given_symbols(
    inputs: Sequence[onnx.ValueInfoProto],
    shapes: Mapping[str, Sequence[int]],
    path: Path,
    strict: bool,
) -> dict[str, int]:
    """Check the user's shapes against the inputs; the sizes they give to symbolic dims.

    A symbol such as 'batch' or 'sequence' usually means the same size in every input. Some
    exporters name every unknown dim "?": given two sizes, such a symbol is left out (when
    not ``strict``; strict keeps the first).
    """
    names = [vi.name for vi in inputs]
    for name in shapes:
        if name not in names:
            raise InputError(
                f"--input-shape names {name!r}, which is not an input of {path.name} "
                f"(inputs: {', '.join(names) or 'none'})"
            )
    symbols: dict[str, int] = {}
    conflicting: set[str] = set()
    for vi in inputs:
        if vi.name not in shapes:
            continue
        dims = declared_dims(vi)
        want = [int(d) for d in shapes[vi.name]]
        if dims is not None and len(dims) != len(want):
            raise InputError(
                f"--input-shape {vi.name}: rank {len(want)} given, the model's input has "
                f"rank {len(dims)} ({_fmt_dims(dims)})"
            )
        for i, (d, w) in enumerate(zip(dims or [None] * len(want), want, strict=True)):
            if isinstance(d, int) and d > 0 and d != w:
                raise InputError(
                    f"--input-shape {vi.name}: dimension {i} is fixed to {d} in the model, "
                    f"{w} given"
                )
            if isinstance(d, str) and d and symbols.setdefault(d, w) != w:
                conflicting.add(d)
    if not strict:
        for d in conflicting:
            del symbols[d]
    return symbols


def _static_dims(
    name: str,
    dims: Sequence[int | str | None],
    symbols: dict[str, int],
    default_batch: int,
    notes: list[str],
    path: Path,
) -> list[int]:
    new: list[int] = []
    for i, d in enumerate(dims):
        if isinstance(d, int) and d > 0:
            new.append(d)
        elif isinstance(d, str) and d in symbols:
            new.append(symbols[d])
        elif i == 0 and len(dims) > 1:
            new.append(default_batch)
            notes.append(
                f"input {name!r}: dynamic batch dimension {d or '?'!s} set to {default_batch}"
            )
            if isinstance(d, str) and d:
                symbols[d] = default_batch
        else:
            example = "x".join(
                str(x) if isinstance(x, int) and x > 0 else (str(new[j]) if j < len(new) else "N")
                for j, x in enumerate(dims)
            )
            raise InputError(
                f"{path.name}: input {name!r} has dynamic dimension {i} ({d or '?'!s}) in shape "
                f"[{_fmt_dims(dims)}]; fix it with --input-shape {name}={example}"
            )
    return new


def set_dims(
    vi: onnx.ValueInfoProto,
    old: Sequence[int | str | None] | None,
    new: Sequence[int | str | None],
) -> bool:
    """Give ``vi`` the dims ``new`` (ints static, strings symbolic); False if unchanged."""
    if old is not None and list(old) == list(new):
        return False
    tensor_type = vi.type.tensor_type
    tensor_type.shape.SetInParent()  # a scalar keeps an (empty) shape instead of losing it
    del tensor_type.shape.dim[:]
    for d in new:
        dim = tensor_type.shape.dim.add()
        if isinstance(d, int):
            dim.dim_value = d
        elif d:
            dim.dim_param = d
    return True


def batch_inputs(model: onnx.ModelProto) -> list[str]:
    """Inputs whose dim 0 is a batch the caller may choose: dynamic in the file (a symbol, or
    unknown) on an input of rank 2 or more. None of them: the model pins its batch."""
    found = []
    for vi in user_inputs(model):
        dims = declared_dims(vi)
        if dims is not None and len(dims) > 1 and not (isinstance(dims[0], int) and dims[0] > 0):
            found.append(vi.name)
    return found


def pinned_batch(model: onnx.ModelProto) -> int | None:
    """The batch a model fixes in its file: dim 0 of its first input of rank 2 or more."""
    for vi in user_inputs(model):
        dims = declared_dims(vi)
        if dims is not None and len(dims) > 1 and isinstance(dims[0], int) and dims[0] > 0:
            return dims[0]
    return None


def read_checked(path: Path) -> onnx.ModelProto:
    """Read a model file and check it: the one intake of the main job and of ``optimize``.

    Raises InputError with a one-line message on anything wrong with the file.
    """
    model = _read_model(path)
    check(model, path)
    if default_opset(model) == 0:
        raise InputError(f"{path}: the model imports no default-domain opset")
    return model


def _fmt_dims(dims: Sequence[int | str | None]) -> str:
    return ", ".join("?" if d is None or d == "" else str(d) for d in dims)


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Shape inference with data propagation; stale intermediate shapes are dropped first."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    del m.graph.value_info[:]
    try:
        return shape_inference.infer_shapes(m, strict_mode=False, data_prop=True)
    except Exception as e:  # inference is a help, not a requirement
        log.warning("shape inference failed: %s", one_line(e))
        return model


def find_score_outputs(model: onnx.ModelProto) -> set[str]:
    """Outputs that hold class scores on their last axis (for top-1 agreement)."""
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    found = set()
    for out in model.graph.output:
        dims = declared_dims(out)
        op = producers.get(out.name)
        if dims is None or len(dims) < 2 or out.type.tensor_type.elem_type not in _FLOAT_TYPES:
            continue
        last = dims[-1]
        if isinstance(last, int) and last < 2:
            continue
        # A rank-2 [batch, classes] head usually ends in one of these; any-rank softmax
        # (e.g. a per-timestep OCR distribution) is a score vector by construction.
        if op in ("Softmax", "LogSoftmax") or (len(dims) == 2 and op in _HEAD_OPS):
            found.add(out.name)
    return found


def _spec(vi: onnx.ValueInfoProto) -> TensorSpec:
    return TensorSpec(vi.name, vi.type.tensor_type.elem_type, declared_dims(vi))


def load_model(
    path: str | Path,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    default_batch: int = 1,
    keep_batch: bool = False,
) -> LoadedModel:
    """Load, check and make static. Raises InputError with a one-line message on bad input.

    ``keep_batch`` (the serving profile): a dynamic batch dimension stays symbolic
    (``BATCH_SYMBOL``), so that the model and every variant built from it run at any batch;
    the feeds are made at batch ``default_batch``.
    """
    path = Path(path)
    model = read_checked(path)
    opset = default_opset(model)
    kept = batch_inputs(model) if keep_batch else []
    notes, fixed = fix_input_shapes(model, input_shapes or {}, path, default_batch, keep_batch=kept)
    model = infer_shapes(model)
    inputs = [_spec(i) for i in user_inputs(model)]
    for s in inputs:
        if s.elem_type == 0:
            raise InputError(f"{path.name}: input {s.name!r} is not a tensor with a known dtype")
    outputs = [_spec(o) for o in model.graph.output]
    return LoadedModel(
        path=path,
        # External data counts: the same graph with other weights is another model.
        sha256=modelio.model_sha256(path),
        size_bytes=modelio.size_bytes(path),
        model=model,
        inputs=inputs,
        outputs=outputs,
        opset=opset,
        score_outputs=find_score_outputs(model),
        notes=notes,
        fixed_dims=fixed,
        batch_inputs=kept,
    )
