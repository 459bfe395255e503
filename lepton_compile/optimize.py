"""``lepton-compile optimize``: ONNX file -> verified pass pipeline -> ONNX file, atomically.

The driver side of `passes.optimize`: reads and checks the file the way the main command
does (same one-line errors), fixes the input dimensions the user gave while leaving the
others dynamic, runs the pipeline with verification, and writes the result through a
temporary file and a rename, so that a failed run leaves no output behind.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import onnx

from lepton_compile.errors import InputError
from lepton_compile.intake import (
    _dims,
    _fmt_dims,
    _read_model,
    check,
    default_opset,
    file_sha256,
    infer_shapes,
    user_inputs,
)

log = logging.getLogger(__name__)

SCHEMA = "lepton-compile/optimize/v1"
_PROTO_LIMIT = 2**31 - 1


def fix_input_dims(
    model: onnx.ModelProto, shapes: Mapping[str, Sequence[int]], path: Path
) -> tuple[list[str], dict[str, list[int | str]]]:
    """Set the shapes the user gave, in place; every other dimension stays as it is.

    Unlike intake's `fix_input_shapes` (the main command needs static shapes), a dim that
    nobody fixed stays symbolic. A symbol the user pinned through one input (``batch``)
    is pinned wherever it appears among the inputs and outputs, since ONNX gives one
    symbol one size. Returns notes and the new shapes of the inputs that changed.
    """
    inputs = user_inputs(model)
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
        dims = _dims(vi)
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
            if isinstance(d, str) and d:
                if symbols.setdefault(d, w) != w:
                    # Some exporters name every unknown dim "?": not one size after all.
                    conflicting.add(d)
    for d in conflicting:
        del symbols[d]
    fixed: dict[str, list[int | str]] = {}
    for vi in inputs:
        dims = _dims(vi)
        if vi.name in shapes:
            new: list[int | str | None] = [int(d) for d in shapes[vi.name]]
        elif dims is not None:
            new = [symbols.get(d, d) if isinstance(d, str) else d for d in dims]
        else:
            continue
        if _set_dims(vi, dims, new):
            fixed[vi.name] = [d if isinstance(d, int) else (d or "?") for d in new]
    for vi in model.graph.output:
        dims = _dims(vi)
        if dims is not None:
            _set_dims(vi, dims, [symbols.get(d, d) if isinstance(d, str) else d for d in dims])
    notes: list[str] = []
    for vi in inputs:
        dims = _dims(vi)
        if dims is None or not all(isinstance(d, int) and d >= 0 for d in dims):
            notes.append(
                f"input {vi.name!r} stays dynamic ({_fmt_dims(dims or ())}): only what is "
                "static is folded"
            )
    return notes, fixed


def _set_dims(
    vi: onnx.ValueInfoProto,
    old: Sequence[int | str | None] | None,
    new: Sequence[int | str | None],
) -> bool:
    if old is not None and list(old) == list(new):
        return False
    tensor_type = vi.type.tensor_type
    tensor_type.shape.SetInParent()  # a scalar keeps an (empty) shape
    del tensor_type.shape.dim[:]
    for d in new:
        dim = tensor_type.shape.dim.add()
        if isinstance(d, int):
            dim.dim_value = d
        elif d:
            dim.dim_param = d
    return True


@dataclasses.dataclass
class Loaded:
    """A read and checked model with the user's dims fixed, and its inputs as declared."""

    model: onnx.ModelProto
    notes: list[str]
    fixed: dict[str, list[int | str]]
    declared_inputs: list[dict[str, Any]]


def load(path: str | Path, input_shapes: Mapping[str, Sequence[int]] | None = None) -> Loaded:
    """Read and check like the main command (InputError on bad input), fix the given dims."""
    path = Path(path)
    model = _read_model(path)
    check(model, path)
    if default_opset(model) == 0:
        raise InputError(f"{path}: the model imports no default-domain opset")
    declared = _io(model)
    notes, fixed = fix_input_dims(model, input_shapes or {}, path)
    if fixed:
        # Value infos recorded for the old dims would contradict the new ones.
        model = infer_shapes(model)
    return Loaded(model, notes, fixed, declared)


def op_counts(model: onnx.ModelProto) -> Counter[str]:
    """Nodes per op type in the graph and its subgraphs (as the pass records count them)."""
    from lepton_compile.passes.verify import proto_graphs

    counts: Counter[str] = Counter()
    for graph in proto_graphs(model.graph):
        for node in graph.node:
            default = node.domain in ("", "ai.onnx")
            counts[node.op_type if default else f"{node.domain}::{node.op_type}"] += 1
    return counts


def _io(model: onnx.ModelProto) -> list[dict[str, Any]]:
    out = []
    for vi in user_inputs(model):
        elem = vi.type.tensor_type.elem_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(elem).name if elem else "?"
        out.append({"name": vi.name, "dtype": dtype, "shape": list(_dims(vi) or [])})
    return out


def write_model(model: onnx.ModelProto, path: Path) -> None:
    """Write through a temporary file in the same directory and rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        if model.ByteSize() < _PROTO_LIMIT:
            onnx.save_model(model, tmp)
        else:
            # Past protobuf's limit the weights go to a side file (written in place, not
            # atomically; the .onnx that points to it is renamed last).
            onnx.save_model(model, tmp, save_as_external_data=True, location=f"{path.name}.data")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it 0600
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@dataclasses.dataclass
class OptimizeRun:
    """One `optimize_file` run: where from and to, and what the pipeline did."""

    source: Path
    output: Path | None
    target: str
    pipeline: str | None
    requested: list[str]
    result: Any  # passes.OptimizeResult
    ops_before: Counter[str]
    ops_after: Counter[str]
    input_shapes: dict[str, list[int | str]]
    notes: list[str]
    seconds: float
    source_sha256: str = ""
    source_inputs: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    @property
    def verification(self) -> Any:
        return self.result.verification

    def to_dict(self) -> dict[str, Any]:
        model = self.result.model
        output = None
        if self.output is not None:
            output = {
                "path": str(self.output),
                "sha256": file_sha256(self.output) if self.output.exists() else None,
                "size_bytes": self.output.stat().st_size if self.output.exists() else None,
                "inputs": _io(model),
            }
        verification = self.verification.to_dict() if self.verification else None
        return {
            "schema": SCHEMA,
            "model": {
                "path": str(self.source),
                "sha256": self.source_sha256,
                "size_bytes": self.source.stat().st_size,
                "inputs": self.source_inputs,
            },
            "output": output,
            "target": self.target,
            "pipeline": self.pipeline,
            "requested_passes": self.requested,
            "passes": list(self.result.passes),
            "input_shapes": self.input_shapes,
            "notes": self.notes,
            "nodes": {
                "before": sum(self.ops_before.values()),
                "after": sum(self.ops_after.values()),
            },
            "op_counts": {
                "before": dict(sorted(self.ops_before.items())),
                "after": dict(sorted(self.ops_after.items())),
            },
            "records": [r.to_dict() for r in self.result.records],
            "verification": verification,
            "seconds": round(self.seconds, 4),
        }


def optimize_file(
    model_path: str | Path,
    output: str | Path | None,
    *,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    target: str = "ort",
    pipeline: str | None = "fused",
    passes: Iterable[str] | None = None,
    skip: Iterable[str] = (),
    verify: bool = True,
    verify_shapes: Mapping[str, Sequence[int]] | None = None,
    seed: int = 0,
    instruments: Iterable[Any] = (),
) -> OptimizeRun:
    """Optimize the ONNX file at `model_path` and write it to `output` (None: do not write).

    Raises InputError (exit code 2) for a bad file, unknown pass/pipeline/target names,
    bad shapes or an output path equal to the input; the input file is never written.
    """
    from lepton_compile.passes import optimize, resolve_pipeline

    started = time.perf_counter()
    source = Path(model_path)
    out = Path(output) if output is not None else None
    passes = list(passes) if passes is not None else None
    skip = list(skip)
    try:
        requested = resolve_pipeline(pipeline, target, passes, skip)
    except ValueError as e:
        raise InputError(str(e)) from None
    if out is not None and out.exists() and source.exists() and out.samefile(source):
        raise InputError(f"{out}: is the input model; choose another output path")
    if out is not None and out.is_dir():
        raise InputError(f"{out}: is a directory, expected an .onnx file path")
    loaded = load(source, input_shapes)
    model = loaded.model
    sha = file_sha256(source)
    try:
        result = optimize(
            model,
            pipeline=pipeline,
            target=target,
            passes=passes,
            skip=skip,
            verify=verify,
            verify_seed=seed,
            verify_shapes=verify_shapes,
            instruments=instruments,
        )
    except ValueError as e:  # verification shapes naming unknown inputs, bad options
        raise InputError(str(e)) from None
    if out is not None and not (result.verification and result.verification.status == "failed"):
        try:
            write_model(result.model, out)
        except OSError as e:
            raise InputError(f"{out}: cannot write: {e.strerror or e}") from None
    return OptimizeRun(
        source=source,
        output=out,
        target=target,
        pipeline=None if passes is not None else pipeline,
        requested=requested,
        result=result,
        ops_before=op_counts(model),
        ops_after=op_counts(result.model),
        input_shapes=loaded.fixed,
        notes=loaded.notes,
        seconds=time.perf_counter() - started,
        source_sha256=sha,
        source_inputs=loaded.declared_inputs,
    )
