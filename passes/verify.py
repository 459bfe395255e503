"""Optimized vs original model: onnx.checker, then both on ORT, seeded inputs, per-dtype tolerance.

`Reference.prepare(original)` runs the original once on onnxruntime's CPU provider with
ORT's own graph optimizations off (so that ORT's rewrites cannot hide or cause a
difference), and `Reference.check(candidate)` says why a candidate differs, or None.
`optimize(..., verify=True)` uses it to find and drop a pass that breaks a model.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper

from lepton_compile.passes import ort_session
from lepton_compile.passes.errors import one_line
from lepton_compile.passes.model_size import model_source
from lepton_compile.passes.testing import graph_inputs
from lepton_compile.passes.walk import model_nodes, proto_graphs

logger = logging.getLogger(__name__)


# Domains ORT's CPU provider implements; a node in any other domain needs a model-local
# function (the lepton target's ai.lepton ops carry one) for ORT to run it.
_ORT_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "com.microsoft"})

# Ops whose outputs differ from run to run unless seeded.
_RANDOM_OPS = frozenset(
    {
        "RandomNormal",
        "RandomUniform",
        "RandomNormalLike",
        "RandomUniformLike",
        "Multinomial",
        "Bernoulli",
    }
)


def _is_random(node: onnx.NodeProto) -> bool:
    if node.op_type in _RANDOM_OPS:
        return True
    # Dropout draws only in training mode, which needs its third input.
    return node.op_type == "Dropout" and len(node.input) >= 3 and bool(node.input[2])


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """|actual - expected| <= atol * max(scale, min_scale) + rtol * |expected|.

    `scale` is the largest finite |value| of that output on the original model, so that
    `atol` is relative to the output's magnitude (logits of 30 and probabilities of 1e-3
    get the same relative slack). Integer, bool and string outputs are compared exactly.
    """

    rtol: float
    atol: float
    min_scale: float

    def to_dict(self) -> dict[str, object]:
        return {
            "rtol": self.rtol,
            "atol": self.atol,
            "atol_times": f"max(max|expected|, {self.min_scale:g})",
        }


# Reordered or folded floating-point arithmetic (BatchNorm into Conv weights, Add into
# Gemm) differs from the original by a few ulps per term; these leave room for that and
# catch a wrong transform (a swapped activation, a wrong epsilon or axis).
DEFAULT_TOLERANCES: Mapping[str, Tolerance] = {
    "float64": Tolerance(rtol=1e-6, atol=1e-7, min_scale=1e-3),
    "float32": Tolerance(rtol=1e-3, atol=1e-4, min_scale=1e-3),
    "float16": Tolerance(rtol=1e-2, atol=1e-3, min_scale=1e-2),
    "bfloat16": Tolerance(rtol=5e-2, atol=1e-2, min_scale=1e-2),
}
_FALLBACK_FLOAT = DEFAULT_TOLERANCES["float32"]


@dataclasses.dataclass(frozen=True)
class DroppedPass:
    """A pass that verification removed from the pipeline, and why."""

    name: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"pass": self.name, "reason": self.reason}


class UnverifiableError(ValueError):
    """Outputs cannot be compared, and verification was required to compare them."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclasses.dataclass
class VerificationReport:
    """What verification of one `optimize` run found.

    status: "passed" (outputs compared and equal within tolerance), "skipped" (the
    original cannot run on ORT, or the result holds ops ORT cannot run: only
    onnx.checker applied; `reason` says why), or "failed" (even the unchanged model
    differs; the original was returned unchanged).

    `unchanged` says why the original was handed back without any pass applied although
    its outputs hold: an extra check (the driver's speed check) failed on the model even
    before any pass ran, so no pass can be blamed for it.
    """

    status: str
    reason: str | None = None
    dropped: list[DroppedPass] = dataclasses.field(default_factory=list)
    unchanged: str | None = None
    seed: int = 0
    input_shapes: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    tolerances: Mapping[str, Tolerance] = dataclasses.field(
        default_factory=lambda: dict(DEFAULT_TOLERANCES)
    )
    checker: bool = True
    notes: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    @property
    def passed(self) -> bool | None:
        """True/False when outputs were compared, None when that was skipped."""
        return {"passed": True, "failed": False}.get(self.status)

    def summary(self) -> str:
        if self.status == "passed":
            text = "verified"
        elif self.status == "skipped":
            text = f"skipped: {self.reason}"
        else:
            text = f"failed: {self.reason}"
        if self.dropped:
            text += "; dropped " + ", ".join(d.name for d in self.dropped)
        if self.unchanged:
            text += f"; returned unchanged: {self.unchanged}"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "passed": self.passed,
            "reason": self.reason,
            "summary": self.summary(),
            "dropped": [d.to_dict() for d in self.dropped],
            "unchanged": self.unchanged,
            "inputs": {"seed": self.seed, "shapes": self.input_shapes},
            "tolerances": {k: v.to_dict() for k, v in self.tolerances.items()},
            "checker": self.checker,
            "notes": list(self.notes),
            "seconds": round(self.seconds, 4),
        }


def _session(source: bytes | str) -> Any:
    # Failures come back as exceptions; onnxruntime's own error log would only repeat them.
    return ort_session.session(source, log_level=ort_session.FATAL_ONLY)


def check_model(model: onnx.ModelProto) -> None:
    """onnx.checker, from a temporary file with external data past the protobuf limit."""
    with model_source(model, prefix="lepton-verify-") as data:
        onnx.checker.check_model(data)


def foreign_ops(model: onnx.ModelProto) -> list[str]:
    """`domain::op` of nodes ORT cannot run: outside its domains and with no local function."""
    local = {(f.domain, f.name) for f in model.functions}
    found = {
        f"{n.domain}::{n.op_type}"
        for n in model_nodes(model)
        if n.domain not in _ORT_DOMAINS and (n.domain, n.op_type) not in local
    }
    return sorted(found)


def duplicate_outputs(model: onnx.ModelProto) -> list[str]:
    """Names a graph or subgraph lists twice among its outputs.

    onnx.checker lets this through, and ORT then runs the graph with one of the two
    outputs never written: the values are whatever the memory held, so a comparison
    may pass or fail by luck. Checked on its own so that the verdict is deterministic.
    """
    found = []
    for graph in proto_graphs(model.graph):
        names = [o.name for o in graph.output]
        found += sorted({f"{graph.name or 'graph'}/{n}" for n in names if names.count(n) > 1})
    return found


def _gather_bounds(model: onnx.ModelProto) -> dict[str, int]:
    """Graph input name -> size of the table it indexes, for inputs used as Gather indices."""
    sizes: dict[str, tuple[int, ...]] = {i.name: tuple(i.dims) for i in model.graph.initializer}
    for vi in [*model.graph.input, *model.graph.value_info]:
        dims = vi.type.tensor_type.shape.dim
        if vi.type.HasField("tensor_type") and all(d.HasField("dim_value") for d in dims):
            sizes.setdefault(vi.name, tuple(d.dim_value for d in dims))
    for node in model.graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            for attr in node.attribute:
                if attr.name == "value":
                    sizes[node.output[0]] = tuple(attr.t.dims)
    bounds: dict[str, int] = {}
    for graph in proto_graphs(model.graph):
        for node in graph.node:
            if node.op_type != "Gather" or node.domain not in ("", "ai.onnx"):
                continue
            if len(node.input) < 2:
                continue
            dims = sizes.get(node.input[0])
            if not dims:
                continue
            axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
            if -len(dims) <= axis < len(dims) and dims[axis] > 0:
                size = int(dims[axis])
                bounds[node.input[1]] = min(size, bounds.get(node.input[1], size))
    return bounds


def input_shapes(
    model: onnx.ModelProto,
    shapes: Mapping[str, Sequence[int]] | None = None,
    default_dim: int = 1,
) -> dict[str, list[int]]:
    """A concrete shape for every fed input: declared dims, `shapes` where given, and
    `default_dim` for symbolic or unknown dims (one size per symbol across inputs).

    Raises ValueError when an input is not a tensor or has no shape at all.
    """
    shapes = dict(shapes or {})
    feeds = graph_inputs(model)
    names = {vi.name for vi in feeds}
    for name in shapes:
        if name not in names:
            raise ValueError(f"verification shape given for {name!r}, which is not a fed input")
    symbols: dict[str, int] = {}
    for vi in feeds:
        if vi.name in shapes and vi.type.HasField("tensor_type"):
            dims = vi.type.tensor_type.shape.dim
            for d, size in zip(dims, shapes[vi.name], strict=False):
                if d.HasField("dim_param") and d.dim_param:
                    symbols.setdefault(d.dim_param, int(size))
    out: dict[str, list[int]] = {}
    for vi in feeds:
        if not vi.type.HasField("tensor_type"):
            raise ValueError(f"input {vi.name!r} is not a tensor")
        if vi.name in shapes:
            out[vi.name] = [int(d) for d in shapes[vi.name]]
            continue
        tensor_type = vi.type.tensor_type
        if not tensor_type.HasField("shape"):
            raise ValueError(f"input {vi.name!r} has no shape (unknown rank)")
        dims = []
        for d in tensor_type.shape.dim:
            if d.HasField("dim_value") and d.dim_value >= 0:  # some exporters write -1
                dims.append(int(d.dim_value))
            elif d.HasField("dim_param") and d.dim_param:
                dims.append(symbols.setdefault(d.dim_param, default_dim))
            else:
                dims.append(default_dim)
        out[vi.name] = dims
    return out


def _check_input_size(model: onnx.ModelProto, shapes: Mapping[str, Sequence[int]]) -> None:
    total = 0
    for vi in graph_inputs(model):
        try:
            itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type))
        except Exception:
            continue  # left to make_inputs' own error
        count = 1
        for d in shapes.get(vi.name, []):
            count *= max(int(d), 0)
        total += count * itemsize.itemsize
    try:
        limit = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    except (ValueError, OSError, AttributeError):
        limit = 2**32
    if total > limit:
        sizes = ", ".join(f"{k}={'x'.join(map(str, v))}" for k, v in shapes.items())
        raise ValueError(
            f"inputs of {total / 2**30:.3g} GiB ({sizes}) would take more than a quarter of "
            "this machine's memory"
        )


def make_inputs(
    model: onnx.ModelProto,
    seed: int = 0,
    shapes: Mapping[str, Sequence[int]] | None = None,
) -> dict[str, np.ndarray]:
    """Seeded feeds for the inputs without an initializer.

    Floats uniform in [-1, 1); integers small and non-negative (below the table size for
    Gather indices, ones for masks, so that `(1 - mask) * -10000` stays in range); bools
    random. Raises ValueError for an input it cannot make (strings, sequences, no shape), or
    when together they would take more than a quarter of the machine's memory.
    """
    rng = np.random.default_rng(seed)
    bounds = _gather_bounds(model)
    concrete = input_shapes(model, shapes)
    _check_input_size(model, concrete)
    feeds: dict[str, np.ndarray] = {}
    for vi in graph_inputs(model):
        shape = concrete[vi.name]
        elem_type = vi.type.tensor_type.elem_type
        try:
            dtype = np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))
        except Exception:
            raise ValueError(f"input {vi.name!r}: unsupported element type {elem_type}") from None
        if dtype.kind == "f":
            feeds[vi.name] = (rng.random(shape) * 2 - 1).astype(dtype)
        elif dtype.kind == "c":
            feeds[vi.name] = (rng.random(shape) + 1j * rng.random(shape)).astype(dtype)
        elif dtype == np.bool_:
            feeds[vi.name] = rng.random(shape) < 0.5
        elif dtype.kind in "iu":
            if "mask" in vi.name.lower():
                feeds[vi.name] = np.ones(shape, dtype=dtype)
            else:
                high = bounds.get(vi.name, 4)
                feeds[vi.name] = rng.integers(0, high, shape).astype(dtype)
        else:
            raise ValueError(f"input {vi.name!r}: cannot generate {dtype} values")
    return feeds


def _scale(array: np.ndarray) -> float:
    finite = np.abs(array[np.isfinite(array)]) if array.size else array
    return float(finite.max()) if finite.size else 0.0


def compare(
    expected: Any,
    actual: Any,
    tolerances: Mapping[str, Tolerance] = DEFAULT_TOLERANCES,
    where: str = "output",
) -> str | None:
    """None if `actual` matches `expected` (arrays, sequences, maps, None), else why not."""
    if isinstance(expected, (list, tuple)) or isinstance(actual, (list, tuple)):
        if not isinstance(actual, (list, tuple)) or not isinstance(expected, (list, tuple)):
            return f"{where}: a sequence on one side only"
        if len(expected) != len(actual):
            return f"{where}: sequence of {len(actual)} items, expected {len(expected)}"
        for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
            problem = compare(e, a, tolerances, f"{where}[{i}]")
            if problem:
                return problem
        return None
    if isinstance(expected, dict) or isinstance(actual, dict):
        if not isinstance(actual, dict) or not isinstance(expected, dict):
            return f"{where}: a map on one side only"
        if set(expected) != set(actual):
            return f"{where}: map keys differ"
        for key in expected:
            problem = compare(expected[key], actual[key], tolerances, f"{where}[{key!r}]")
            if problem:
                return problem
        return None
    if expected is None or actual is None:
        return None if expected is None and actual is None else f"{where}: optional is empty"
    e, a = np.asarray(expected), np.asarray(actual)
    if e.dtype != a.dtype:
        return f"{where}: dtype {a.dtype}, expected {e.dtype}"
    if e.shape != a.shape:
        return f"{where}: shape {list(a.shape)}, expected {list(e.shape)}"
    if e.dtype.kind in "fc":
        tol = tolerances.get(e.dtype.name, _FALLBACK_FLOAT)
        atol = tol.atol * max(_scale(e), tol.min_scale)
        if np.allclose(a, e, rtol=tol.rtol, atol=atol, equal_nan=True):
            return None
        with np.errstate(invalid="ignore", over="ignore"):
            diff = np.abs(a.astype(np.complex128 if e.dtype.kind == "c" else np.float64) - e)
        diff = np.where(np.isnan(diff), np.inf, diff)
        worst = float(np.max(diff)) if diff.size else 0.0
        bad = int(np.sum(~np.isclose(a, e, rtol=tol.rtol, atol=atol, equal_nan=True)))
        return (
            f"{where}: {bad} of {e.size} values differ, max |diff| {worst:.3g} "
            f"(rtol {tol.rtol:g}, atol {atol:.3g})"
        )
    if not np.array_equal(a, e):
        bad = int(np.sum(a != e)) if a.shape == e.shape else e.size
        return f"{where}: {bad} of {e.size} {e.dtype} values differ (exact compare)"
    return None


@dataclasses.dataclass
class Reference:
    """The original model's run on seeded inputs, against which candidates are checked.

    Build it with `Reference.prepare`. `skipped` says why outputs cannot be compared (then
    `check` only runs onnx.checker); `checker` is False when the original itself fails
    onnx.checker (then a candidate is not held to it either).
    """

    model: onnx.ModelProto
    seed: int
    tolerances: Mapping[str, Tolerance]
    checker: bool
    duplicates_ok: bool = False
    feeds: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    outputs: list[Any] = dataclasses.field(default_factory=list)
    output_names: list[str] = dataclasses.field(default_factory=list)
    shapes: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    random_outputs: set[int] = dataclasses.field(default_factory=set)
    skipped: str | None = None
    notes: list[str] = dataclasses.field(default_factory=list)

    @classmethod
    def prepare(
        cls,
        model: onnx.ModelProto,
        *,
        seed: int = 0,
        shapes: Mapping[str, Sequence[int]] | None = None,
        tolerances: Mapping[str, Tolerance] | None = None,
        checker: bool = True,
        feeds: Mapping[str, Any] | None = None,
    ) -> Reference:
        """Check and run the original on generated inputs (or on `feeds`, given by name).

        Never raises for a model it cannot run: sets `skipped` to the reason instead.
        Raises ValueError when `shapes` names an input the model is not fed.
        """
        fed = {vi.name for vi in graph_inputs(model)}
        unknown = sorted(set(shapes or {}) - fed)
        if unknown:
            raise ValueError(
                f"verification shape given for {', '.join(map(repr, unknown))}, which is not "
                f"a fed input (inputs: {', '.join(sorted(fed)) or 'none'})"
            )
        ref = cls(
            model=model,
            seed=seed,
            tolerances={**DEFAULT_TOLERANCES, **(tolerances or {})},
            checker=checker,
            output_names=[o.name for o in model.graph.output],
            duplicates_ok=bool(duplicate_outputs(model)),
        )
        # Serialized once for the checker and for ORT: it is the cost on large models.
        with model_source(model, prefix="lepton-verify-") as data:
            ref._prepare(data, checker, feeds, shapes, seed)
        return ref

    def _prepare(
        self,
        data: bytes | str,
        checker: bool,
        feeds: Mapping[str, Any] | None,
        shapes: Mapping[str, Sequence[int]] | None,
        seed: int,
    ) -> None:
        model = self.model
        if checker:
            try:
                onnx.checker.check_model(data)
            except Exception as e:
                self.checker = False
                self.notes.append(f"the original fails onnx.checker ({one_line(e)}): not applied")
        foreign = foreign_ops(model)
        if foreign:
            self.skipped = f"onnxruntime cannot run the original ({', '.join(foreign[:5])})"
            return
        if feeds is not None:
            self.feeds = dict(feeds)
            self.shapes = {
                k: list(v.shape) for k, v in self.feeds.items() if isinstance(v, np.ndarray)
            }
            where = "given"
        else:
            where = "generated"
            try:
                self.shapes = input_shapes(model, shapes)
                self.feeds = make_inputs(model, seed, self.shapes)
            except ValueError as e:
                self.skipped = f"no inputs can be generated: {e}"
                return
        try:
            session = _session(data)
        except Exception as e:
            self.skipped = f"onnxruntime cannot load the original: {one_line(e)}"
            return
        try:
            self.outputs = session.run(None, self.feeds)
        except Exception as e:
            self.skipped = f"the original fails on {where} inputs: {one_line(e)}"
            return
        if any(_is_random(n) for n in model_nodes(model)):
            # Seeded random ops repeat in a fresh session, unseeded ones do not: only the
            # outputs that moved are left to a shape and dtype check.
            try:
                again = _session(data).run(None, self.feeds)
            except Exception:  # ran once, so this should not happen; play safe
                again = [None] * len(self.outputs)
            for i, (first, second) in enumerate(zip(self.outputs, again, strict=True)):
                exact = {k: Tolerance(0.0, 0.0, 0.0) for k in DEFAULT_TOLERANCES}
                if compare(first, second, exact) is not None:
                    self.random_outputs.add(i)
            if self.random_outputs:
                names = ", ".join(self.output_names[i] for i in sorted(self.random_outputs))
                self.notes.append(f"random outputs compared by dtype and shape only: {names}")

    def check(self, candidate: onnx.ModelProto, outputs: bool = True) -> str | None:
        """None if the candidate passes onnx.checker and matches the original's outputs
        (the latter unless `outputs` is False or the original could not be run)."""
        with model_source(candidate, prefix="lepton-verify-") as data:
            return self._check(candidate, data, outputs)

    def _check(self, candidate: onnx.ModelProto, data: bytes | str, outputs: bool) -> str | None:
        if self.checker:
            try:
                onnx.checker.check_model(data)
            except Exception as e:
                return f"onnx.checker: {one_line(e)}"
        if not self.duplicates_ok:
            duplicates = duplicate_outputs(candidate)
            if duplicates:
                return f"a graph lists an output twice: {', '.join(duplicates[:3])}"
        if self.skipped is not None or not outputs:
            return None
        names = [o.name for o in candidate.graph.output]
        if names != self.output_names:
            return f"graph outputs changed: {names} instead of {self.output_names}"
        wanted = {vi.name for vi in graph_inputs(candidate)}
        missing = sorted(wanted - self.feeds.keys())
        if missing:
            return f"the result wants new inputs: {', '.join(missing)}"
        feeds = {k: v for k, v in self.feeds.items() if k in wanted}
        try:
            session = _session(data)
        except Exception as e:
            return f"onnxruntime cannot load the result: {one_line(e)}"
        try:
            results = session.run(None, feeds)
        except Exception as e:
            return f"onnxruntime fails on the result: {one_line(e)}"
        for i, (name, want, got) in enumerate(zip(names, self.outputs, results, strict=True)):
            if i in self.random_outputs:
                w, g = np.asarray(want), np.asarray(got)
                if w.dtype != g.dtype or w.shape != g.shape:
                    return f"output {name!r}: {g.dtype}{list(g.shape)}, expected " + (
                        f"{w.dtype}{list(w.shape)}"
                    )
                continue
            problem = compare(want, got, self.tolerances, f"output {name!r}")
            if problem:
                return problem
        return None

    def unrunnable(self, candidate: onnx.ModelProto) -> str | None:
        """Why ORT cannot run the candidate by design (custom ops, no local function)."""
        foreign = foreign_ops(candidate)
        if foreign:
            return (
                f"the result uses ops onnxruntime cannot run ({', '.join(foreign[:5])}) and "
                "no model-local function defines them: outputs not compared"
            )
        return None


def verify_model(
    original: onnx.ModelProto,
    candidate: onnx.ModelProto,
    *,
    seed: int = 0,
    shapes: Mapping[str, Sequence[int]] | None = None,
    tolerances: Mapping[str, Tolerance] | None = None,
) -> str | None:
    """One-off check: None if `candidate` computes what `original` does, else why not.

    Raises ValueError when the original cannot be run (the reason is in the message).
    """
    ref = Reference.prepare(original, seed=seed, shapes=shapes, tolerances=tolerances)
    if ref.skipped:
        raise ValueError(f"cannot verify: {ref.skipped}")
    return ref.check(candidate)
