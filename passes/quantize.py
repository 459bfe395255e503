"""Integer precision passes: static INT8 QDQ, dynamic INT8, INT4 weight-only.

The float formats (FP16, BF16, FP8) live in ``quantize_float`` and are re-exported here.
The passes wrap onnxruntime's own tools (``quantize_static``, ``quantize_dynamic``,
``MatMulNBitsQuantizer``) rather than re-implement them; the wrappers add what the tools leave
to the caller: deterministic node names (the tools select nodes by name), opset upgrades,
calibration from in-memory feeds with input checks, node selection that ``candidates()`` can
report before the pass runs, and a temporary directory so nothing half-written is left behind.

Every pass takes ``nodes_to_exclude`` (node names kept in FP32) and has
``candidates(model)``: the names of the nodes it would quantize, in graph order, after its own
exclusions. Both refer to the names ``ensure_node_names`` gives.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import onnx_ir.passes.common
from onnx import helper, numpy_helper, version_converter

from lepton_compile.errors import InputError
from lepton_compile.passes.model_size import over_limit

log = logging.getLogger(__name__)

# Per-channel QuantizeLinear/DequantizeLinear (the `axis` attribute) arrived in opset 13.
QDQ_MIN_OPSET = 13
# int4 tensors and blocked DequantizeLinear (`block_size`) arrived in opset 21 (IR 10).
INT4_QDQ_OPSET = 21
INT4_IR_VERSION = 10
# Fewer calibration samples give ranges that say more about the one sample than the data.
MIN_CALIBRATION_SAMPLES = 2
CALIBRATE_METHODS = ("minmax", "entropy", "percentile")

_ONNX_DOMAINS = ("", "ai.onnx")


# -- shared helpers -------------------------------------------------------------------------


def ensure_node_names(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` whose every node (subgraphs included) has a unique name.

    Unnamed and repeated names become ``f"{op_type}_{index}"`` (index: position in a
    depth-first walk of the graphs), with a suffix where that is taken. onnxruntime's tools
    select nodes by name, so the passes and their ``candidates()`` both call this first.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes = list(_walk_nodes(out.graph))
    taken: set[str] = set()
    rename: list[int] = []
    for i, node in enumerate(nodes):
        if node.name and node.name not in taken:
            taken.add(node.name)
        else:
            rename.append(i)
    for i in rename:
        node = nodes[i]
        base = f"{node.op_type}_{i}"
        name, k = base, 1
        while name in taken:
            name, k = f"{base}_{k}", k + 1
        node.name = name
        taken.add(name)
    return out


def _walk_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _walk_nodes(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _walk_nodes(g)


def _to_proto(model: ir.Model | onnx.ModelProto) -> onnx.ModelProto:
    """The model as a ModelProto; never the caller's object when given one (callers mutate)."""
    if isinstance(model, onnx.ModelProto):
        out = onnx.ModelProto()
        out.CopyFrom(model)
        return out
    return ir.serde.serialize_model(model)


def _default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in _ONNX_DOMAINS), 0)


def _upgrade_opset(model: onnx.ModelProto, version: int) -> onnx.ModelProto:
    """`model` at default-domain opset >= `version` (onnx's version converter), names kept."""
    if _default_opset(model) >= version:
        return model
    converted = version_converter.convert_version(model, version)
    return ensure_node_names(converted)


def _prepare(model: ir.Model | onnx.ModelProto, min_opset: int = 0) -> onnx.ModelProto:
    """The proto a pass works on: a named copy, upgraded to `min_opset` where lower."""
    proto = ensure_node_names(_to_proto(model))
    if min_opset:
        proto = _upgrade_opset(proto, min_opset)
    return proto


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every main-graph tensor that onnx type inference can tell."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # inference is a hint here; the passes fall back to declared types
        inferred = model
    g = inferred.graph
    types: dict[str, int] = {}
    for vi in (*g.input, *g.output, *g.value_info):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            types[vi.name] = vi.type.tensor_type.elem_type
    for init in g.initializer:
        types[init.name] = init.data_type
    return types


def _initializers(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    """Initializers that are constants (not also graph inputs a user may override)."""
    inputs = {i.name for i in graph.input}
    return {t.name: t for t in graph.initializer if t.name not in inputs}


def _unchanged(model: ir.Model | onnx.ModelProto) -> ir.passes.PassResult:
    """modified=False, with a model object that is not the caller's (a functional pass)."""
    return ir.passes.PassResult(ir.serde.deserialize_model(_to_proto(model)), modified=False)


def _save(model: onnx.ModelProto, path: Path) -> bool:
    """Write `model`; a model past protobuf's limit goes with external data. True if so."""
    external = over_limit(model)
    onnx.save(model, str(path), save_as_external_data=external, location=path.name + ".data")
    return external


def _finish(model: onnx.ModelProto) -> ir.passes.PassResult:
    out = ir.serde.deserialize_model(model)
    ir.passes.common.TopologicalSortPass()(out)
    return ir.passes.PassResult(out, modified=True)


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """Keep onnxruntime's quantization chatter off the console.

    The tools log advice through the root logger, print calibration progress to stdout, and
    ``matmul_nbits_quantizer`` calls ``logging.basicConfig(level=INFO)`` when imported; the
    root logger's handlers and levels are restored on the way out.
    """
    root = logging.getLogger()
    ort_logger = logging.getLogger("onnxruntime")
    handlers, root_level, ort_level = list(root.handlers), root.level, ort_logger.level
    root.setLevel(max(root_level, logging.ERROR))
    ort_logger.setLevel(max(ort_level, logging.ERROR))
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(root_level)
        ort_logger.setLevel(ort_level)


class _FeedReader:
    """onnxruntime's CalibrationDataReader protocol over a list of feeds."""

    def __init__(self, feeds: Sequence[Mapping[str, np.ndarray]]):
        self._feeds = list(feeds)
        self._it: Iterator[Mapping[str, np.ndarray]] = iter(self._feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        nxt = next(self._it, None)
        return dict(nxt) if nxt is not None else None

    def rewind(self) -> None:
        self._it = iter(self._feeds)

    def __len__(self) -> int:
        return len(self._feeds)


def _count_calibration(calibration: Sequence[Mapping[str, np.ndarray]] | None, what: str) -> list:
    feeds = list(calibration or ())
    if len(feeds) < MIN_CALIBRATION_SAMPLES:
        raise InputError(
            f"{what} needs at least {MIN_CALIBRATION_SAMPLES} calibration samples, got {len(feeds)}"
        )
    return feeds


def _dims_text(dims: Sequence[int | None]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


def check_calibration(
    calibration: Sequence[Mapping[str, np.ndarray]],
    model: onnx.ModelProto,
    what: str = "calibration",
) -> list[dict[str, np.ndarray]]:
    """The feeds as dicts of arrays; InputError (one line) unless they fit the model's inputs.

    Every feed must name exactly the model's inputs, with their element type, their rank and
    their fixed dimensions, and hold finite values; there must be MIN_CALIBRATION_SAMPLES.
    """
    feeds = _count_calibration(calibration, what)
    consts = {t.name for t in model.graph.initializer}
    specs = [i for i in model.graph.input if i.name not in consts]
    expected = [i.name for i in specs]
    out: list[dict[str, np.ndarray]] = []
    for k, feed in enumerate(feeds):
        where = f"{what} sample {k}"
        if not isinstance(feed, Mapping):
            raise InputError(f"{where} is a {type(feed).__name__}, not a mapping of input names")
        missing = [n for n in expected if n not in feed]
        unknown = [str(n) for n in feed if n not in expected]
        if missing or unknown:
            parts = []
            if missing:
                parts.append(f"lacks input(s) {', '.join(missing)}")
            if unknown:
                parts.append(f"has unknown input(s) {', '.join(unknown)}")
            raise InputError(f"{where} {' and '.join(parts)} (model inputs: {', '.join(expected)})")
        arrays: dict[str, np.ndarray] = {}
        for spec in specs:
            arr = np.asarray(feed[spec.name])
            tt = spec.type.tensor_type
            if tt.elem_type:
                want = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type))
                if arr.dtype != want:
                    raise InputError(
                        f"{where}: input {spec.name!r} is {arr.dtype}, the model expects {want}"
                    )
            if tt.HasField("shape"):
                dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
                fits = len(dims) == arr.ndim and all(
                    d is None or d == s for d, s in zip(dims, arr.shape, strict=True)
                )
                if not fits:
                    raise InputError(
                        f"{where}: input {spec.name!r} has shape {list(arr.shape)}, "
                        f"the model expects {_dims_text(dims)}"
                    )
            if arr.dtype.kind == "f" and not np.isfinite(arr).all():
                raise InputError(f"{where}: input {spec.name!r} holds NaN or Inf")
            arrays[spec.name] = arr
        out.append(arrays)
    return out


def _check_exclusions(nodes_to_exclude: Sequence[str] | str) -> tuple[str, ...]:
    if isinstance(nodes_to_exclude, str):
        raise TypeError("nodes_to_exclude takes a sequence of node names, not one string")
    return tuple(nodes_to_exclude)


def _float_nodes(
    model: onnx.ModelProto, op_types: Iterable[str], types: Mapping[str, int]
) -> list[onnx.NodeProto]:
    """Main-graph nodes of `op_types` (default domain) that read a float tensor."""
    wanted = set(op_types)
    return [
        n
        for n in model.graph.node
        if n.op_type in wanted
        and n.domain in _ONNX_DOMAINS
        and any(types.get(i) == onnx.TensorProto.FLOAT for i in n.input if i)
    ]


def _drop_unused_initializers(graph: onnx.GraphProto, names: Iterable[str]) -> None:
    used = {i for n in _walk_nodes(graph) for i in n.input}
    used.update(o.name for o in graph.output)
    for name in set(names) - used:
        for k, t in enumerate(graph.initializer):
            if t.name == name:
                del graph.initializer[k]
                break


# -- static INT8 ----------------------------------------------------------------------------


# Share of physical memory the histogram calibrators may fill: onnxruntime's entropy and
# percentile calibration keep every intermediate tensor of every sample until the end.
HISTOGRAM_MEMORY_SHARE = 0.25


def _activation_bytes(model: onnx.ModelProto) -> int:
    """Bytes of all float intermediate tensors of one inference (from inferred shapes)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:
        return 0
    total = 0
    for vi in inferred.graph.value_info:
        t = vi.type.tensor_type
        if t.elem_type != onnx.TensorProto.FLOAT or not t.HasField("shape"):
            continue
        n = 1
        for d in t.shape.dim:
            n *= d.dim_value if d.HasField("dim_value") else 1
        total += 4 * n
    return total


def histogram_sample_cap(model: onnx.ModelProto) -> int | None:
    """How many calibration samples the histogram calibrators can hold in memory (None: any)."""
    per_sample = _activation_bytes(model)
    if not per_sample:
        return None
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None
    return max(MIN_CALIBRATION_SAMPLES, int(mem * HISTOGRAM_MEMORY_SHARE // per_sample))


def _static_op_types() -> list[str]:
    """The op types onnxruntime's quantize_static quantizes by default (QDQ and QLinear)."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return sorted(set(QDQRegistry) | set(QLinearOpsRegistry))


class QuantizeStaticInt8Pass(ir.passes.FunctionalPass):
    """Static INT8 QDQ: symmetric (per-channel) weights, activations calibrated on given feeds.

    ``activation_symmetric=True`` is the GPU/TensorRT setting (zero points at zero).
    ``op_types`` limits the op types (default: all onnxruntime quantizes).
    ``calibration_cache_dir``: where activation ranges are kept, keyed by the model, the
    samples and the calibration settings, so that passes with the same calibration (say,
    asymmetric and symmetric activations from one MinMax run) calibrate once.
    """

    def __init__(
        self,
        calibration: Sequence[Mapping[str, np.ndarray]],
        per_channel: bool = True,
        calibrate_method: str = "minmax",
        percentile: float = 99.999,
        activation_symmetric: bool = False,
        activation_type: str = "int8",
        op_types: Sequence[str] | None = None,
        nodes_to_exclude: Sequence[str] = (),
        calibration_cache_dir: str | None = None,
    ):
        super().__init__()
        if calibrate_method not in CALIBRATE_METHODS:
            raise ValueError(
                f"calibrate_method must be one of {', '.join(CALIBRATE_METHODS)}, "
                f"got {calibrate_method!r}"
            )
        if activation_type not in ("int8", "uint8"):
            raise ValueError(f"activation_type must be int8 or uint8, got {activation_type!r}")
        if not 0.0 < percentile <= 100.0:
            raise ValueError(f"percentile must be in (0, 100], got {percentile}")
        self.calibration = _count_calibration(calibration, "static INT8 quantization")
        self.per_channel = per_channel
        self.calibrate_method = calibrate_method
        self.percentile = percentile
        self.activation_symmetric = activation_symmetric
        self.activation_type = activation_type
        self.op_types = tuple(op_types) if op_types is not None else None
        self.nodes_to_exclude = _check_exclusions(nodes_to_exclude)
        self.calibration_cache_dir = calibration_cache_dir

    def _calibration_cache(
        self, proto: onnx.ModelProto, feeds: Sequence[Mapping[str, np.ndarray]], op_types: list
    ) -> Path | None:
        """The ranges file for this model, these samples and these calibration settings."""
        import hashlib
        import inspect

        from onnxruntime.quantization import quantize_static

        if not self.calibration_cache_dir:
            return None
        if "calibration_cache_path" not in inspect.signature(quantize_static).parameters:
            return None  # an onnxruntime without the ranges cache: calibrate every time
        h = hashlib.sha256()
        try:
            h.update(proto.SerializeToString())
        except Exception:  # past protobuf's limit: too large to key cheaply, calibrate anew
            return None
        for f in feeds:
            for k in sorted(f):
                a = np.ascontiguousarray(f[k])
                h.update(f"{k}|{a.dtype}|{a.shape}|".encode())
                h.update(a.tobytes())
        settings: list[Any] = [self.calibrate_method, sorted(op_types), self.activation_type]
        if self.calibrate_method == "percentile":
            settings.append(self.percentile)
        h.update(repr(settings).encode())
        return Path(self.calibration_cache_dir) / f"ranges-{h.hexdigest()[:32]}.json"

    def _candidates(self, proto: onnx.ModelProto) -> list[str]:
        op_types = self.op_types if self.op_types is not None else _static_op_types()
        excluded = set(self.nodes_to_exclude)
        nodes = _float_nodes(proto, op_types, _elem_types(proto))
        return [n.name for n in nodes if n.name not in excluded]

    def candidates(self, model: ir.Model | onnx.ModelProto) -> list[str]:
        """Nodes of the quantized op types that read a float tensor, less the exclusions."""
        return self._candidates(_prepare(model, QDQ_MIN_OPSET))

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        from onnxruntime.quantization import (
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )

        proto = _prepare(model, QDQ_MIN_OPSET)
        feeds = check_calibration(self.calibration, proto, "static INT8 quantization")
        names = self._candidates(proto)
        if not names:
            return _unchanged(model)
        methods = {
            "minmax": CalibrationMethod.MinMax,
            "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile,
        }
        op_types = self.op_types if self.op_types is not None else _static_op_types()
        if self.calibrate_method in ("entropy", "percentile"):
            cap = histogram_sample_cap(proto)
            if cap is not None and len(feeds) > cap:
                log.info("histogram calibration on %d of %d samples (memory)", cap, len(feeds))
                feeds = feeds[:cap]
        self.samples_used = len(feeds)
        ranges = self._calibration_cache(proto, feeds, list(op_types))
        with tempfile.TemporaryDirectory(prefix="lepton-q-") as tmp, _quiet_root_logger():
            src = Path(tmp) / "in.onnx"
            dst = Path(tmp) / "out.onnx"
            external = _save(proto, src)
            # onnxruntime reads the ranges from the file when it exists, else calibrates and
            # writes it: here a private copy, renamed into place, so no reader sees half.
            fresh = ranges is not None and not ranges.is_file()
            self.ranges_reused = ranges is not None and not fresh
            cache_path = ranges
            if fresh and ranges is not None:
                ranges.parent.mkdir(parents=True, exist_ok=True)
                cache_path = ranges.with_name(f".{ranges.name}.{os.getpid()}.tmp")
            cache_arg = {} if cache_path is None else {"calibration_cache_path": str(cache_path)}
            quantize_static(
                str(src),
                str(dst),
                _FeedReader(feeds),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(op_types),
                per_channel=self.per_channel,
                activation_type=QuantType.QUInt8
                if self.activation_type == "uint8"
                else QuantType.QInt8,
                weight_type=QuantType.QInt8,
                nodes_to_quantize=names,
                nodes_to_exclude=list(self.nodes_to_exclude),
                calibrate_method=methods[self.calibrate_method],
                use_external_data_format=external,
                extra_options={
                    "ActivationSymmetric": self.activation_symmetric,
                    "WeightSymmetric": True,
                    "CalibPercentile": self.percentile,
                },
                **cache_arg,
            )
            if fresh and ranges is not None and cache_path is not None and cache_path.is_file():
                os.replace(cache_path, ranges)
            out = onnx.load(str(dst))
        return _finish(out)


# -- dynamic INT8 ---------------------------------------------------------------------------


def _attr(node: onnx.NodeProto, name: str, default: Any) -> Any:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


class QuantizeDynamicInt8Pass(ir.passes.FunctionalPass):
    """Dynamic INT8 (MatMulInteger, activations quantized at run time) for constant weights.

    Meant for transformer MatMuls. ``op_types`` may add "Gemm": onnxruntime's dynamic
    quantizer has no Gemm (its IntegerOps registry lacks one), so a Gemm candidate is first
    rewritten here as MatMul (keeping the Gemm's name) + Add, with alpha folded into the weight.
    """

    def __init__(
        self,
        op_types: Sequence[str] = ("MatMul",),
        per_channel: bool = False,
        nodes_to_exclude: Sequence[str] = (),
    ):
        super().__init__()
        unknown = sorted(set(op_types) - {"MatMul", "Gemm"})
        if unknown:
            raise ValueError(f"dynamic INT8 quantizes MatMul and Gemm, not {', '.join(unknown)}")
        self.op_types = tuple(op_types)
        self.per_channel = per_channel
        self.nodes_to_exclude = _check_exclusions(nodes_to_exclude)

    def _candidate_nodes(self, proto: onnx.ModelProto) -> list[onnx.NodeProto]:
        consts = _initializers(proto.graph)
        excluded = set(self.nodes_to_exclude)
        out = []
        for node in _float_nodes(proto, self.op_types, _elem_types(proto)):
            if node.name in excluded or len(node.input) < 2:
                continue
            w = consts.get(node.input[1])
            if w is None or w.data_type != onnx.TensorProto.FLOAT or len(w.dims) != 2:
                continue
            if node.op_type == "Gemm":
                if _attr(node, "transA", 0):
                    continue
                c = node.input[2] if len(node.input) > 2 else ""
                if c and c not in consts and _attr(node, "beta", 1.0) != 1.0:
                    continue
            out.append(node)
        return out

    def candidates(self, model: ir.Model | onnx.ModelProto) -> list[str]:
        """MatMul (and Gemm, if asked) nodes with a 2-D float initializer weight."""
        return [n.name for n in self._candidate_nodes(_prepare(model, QDQ_MIN_OPSET))]

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        proto = _prepare(model, QDQ_MIN_OPSET)
        nodes = self._candidate_nodes(proto)
        if not nodes:
            return _unchanged(model)
        names = [n.name for n in nodes]
        for node in nodes:
            if node.op_type == "Gemm":
                _gemm_to_matmul(proto.graph, node)
        with tempfile.TemporaryDirectory(prefix="lepton-q-") as tmp, _quiet_root_logger():
            src = Path(tmp) / "in.onnx"
            dst = Path(tmp) / "out.onnx"
            external = _save(proto, src)
            quantize_dynamic(
                str(src),
                str(dst),
                op_types_to_quantize=["MatMul"],
                per_channel=self.per_channel,
                weight_type=QuantType.QInt8,
                nodes_to_quantize=names,
                nodes_to_exclude=list(self.nodes_to_exclude),
                use_external_data_format=external,
                extra_options={"MatMulConstBOnly": True},
            )
            out = onnx.load(str(dst))
        return _finish(out)


def _fresh(graph: onnx.GraphProto, base: str) -> str:
    taken = {t.name for t in graph.initializer} | {i.name for i in graph.input}
    taken.update(o for n in graph.node for o in n.output)
    name, k = base, 1
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    return name


def _gemm_to_matmul(graph: onnx.GraphProto, gemm: onnx.NodeProto) -> None:
    """Rewrite a Gemm with a constant B (transA=0) in place as MatMul (same name) + Add."""
    consts = _initializers(graph)
    alpha = float(_attr(gemm, "alpha", 1.0))
    beta = float(_attr(gemm, "beta", 1.0))
    b = numpy_helper.to_array(consts[gemm.input[1]])
    w = (b.T if _attr(gemm, "transB", 0) else b) * np.float32(alpha)
    w_name = _fresh(graph, f"{gemm.input[1]}_matmul")
    graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w, np.float32), w_name))
    c = gemm.input[2] if len(gemm.input) > 2 else ""
    out = gemm.output[0]
    new: list[onnx.NodeProto] = []
    if c:
        if beta != 1.0:
            c_arr = numpy_helper.to_array(consts[c]) * np.float32(beta)
            c = _fresh(graph, f"{c}_beta")
            graph.initializer.append(numpy_helper.from_array(c_arr.astype(np.float32), c))
        mm_out = _fresh(graph, f"{out}_matmul")
        new.append(helper.make_node("MatMul", [gemm.input[0], w_name], [mm_out], name=gemm.name))
        new.append(helper.make_node("Add", [mm_out, c], [out], name=f"{gemm.name}_bias"))
    else:
        new.append(helper.make_node("MatMul", [gemm.input[0], w_name], [out], name=gemm.name))
    old_inputs = list(gemm.input[1:])
    idx = list(graph.node).index(gemm)
    del graph.node[idx]
    for k, n in enumerate(new):
        graph.node.insert(idx + k, n)
    _drop_unused_initializers(graph, old_inputs)


# -- INT4 weight-only -----------------------------------------------------------------------


def _import_nbits() -> Any:
    """onnxruntime's MatMulNBitsQuantizer, imported without its ``logging.basicConfig``."""
    with _quiet_root_logger():
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    return MatMulNBitsQuantizer


class QuantizeInt4WeightOnlyPass(ir.passes.FunctionalPass):
    """INT4 weight-only, block-wise along K, for MatMuls with a constant 2-D float weight.

    ``quant_format="qoperator"``: com.microsoft MatMulNBits (onnxruntime CPU/CUDA);
    ``"qdq"``: int4 weight + blocked DequantizeLinear (opset 21) + MatMul. A K that is not a
    multiple of ``block_size`` (or is smaller) is handled, not skipped: MatMulNBits pads the
    last block, blocked DequantizeLinear has a shorter last block.
    """

    def __init__(
        self,
        block_size: int = 32,
        symmetric: bool = True,
        quant_format: str = "qoperator",
        nodes_to_exclude: Sequence[str] = (),
    ):
        super().__init__()
        if block_size < 16 or block_size & (block_size - 1):
            raise ValueError(f"block_size must be a power of 2 >= 16, got {block_size}")
        if quant_format not in ("qoperator", "qdq"):
            raise ValueError(f"quant_format must be qoperator or qdq, got {quant_format!r}")
        self.block_size = block_size
        self.symmetric = symmetric
        self.quant_format = quant_format
        self.nodes_to_exclude = _check_exclusions(nodes_to_exclude)

    def _prepare(self, model: ir.Model | onnx.ModelProto) -> onnx.ModelProto:
        return _prepare(model, INT4_QDQ_OPSET if self.quant_format == "qdq" else 0)

    def _candidates(self, proto: onnx.ModelProto) -> list[str]:
        consts = _initializers(proto.graph)
        excluded = set(self.nodes_to_exclude)
        out = []
        for node in _float_nodes(proto, ("MatMul",), _elem_types(proto)):
            w = consts.get(node.input[1])
            if node.name in excluded or w is None:
                continue
            if w.data_type == onnx.TensorProto.FLOAT and len(w.dims) == 2:
                out.append(node.name)
        return out

    def candidates(self, model: ir.Model | onnx.ModelProto) -> list[str]:
        """MatMul nodes whose weight (input B) is a 2-D float initializer, any K."""
        return self._candidates(self._prepare(model))

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        from onnxruntime.quantization import QuantFormat

        proto = self._prepare(model)
        names = set(self._candidates(proto))
        if not names:
            return _unchanged(model)
        # The quantizer takes every MatMul not excluded: exclude all that are no candidates.
        skip = [n.name for n in _walk_nodes(proto.graph) if n.name not in names]
        quantizer_cls = _import_nbits()
        with _quiet_root_logger():
            quantizer = quantizer_cls(
                proto,
                bits=4,
                block_size=self.block_size,
                is_symmetric=self.symmetric,
                nodes_to_exclude=skip,
                quant_format=QuantFormat.QDQ
                if self.quant_format == "qdq"
                else QuantFormat.QOperator,
                op_types_to_quantize=("MatMul",),
            )
            quantizer.process()
        out = quantizer.model.model
        if self.quant_format == "qdq":
            out.ir_version = max(out.ir_version, INT4_IR_VERSION)
        _dedupe(out.graph)
        return _finish(out)


def _dedupe(graph: onnx.GraphProto) -> None:
    """Drop repeats that the nbits quantizer writes for a weight shared by several MatMuls.

    It quantizes the weight once per MatMul under the same names: the later copies (identical
    initializers, identical DequantizeLinear nodes) would break single assignment.
    """
    seen_init: set[str] = set()
    keep_init = []
    for t in graph.initializer:
        if t.name not in seen_init:
            seen_init.add(t.name)
            keep_init.append(t)
    if len(keep_init) != len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(keep_init)
    produced: dict[str, onnx.NodeProto] = {}
    keep = []
    for node in graph.node:
        first = next((produced[o] for o in node.output if o in produced), None)
        if first is not None:
            same = (
                first.op_type == node.op_type
                and first.domain == node.domain
                and list(first.input) == list(node.input)
                and list(first.attribute) == list(node.attribute)
            )
            if not same:
                raise ValueError(f"two different nodes write {node.output[0]!r}")
            continue
        produced.update((o, node) for o in node.output if o)
        keep.append(node)
    if len(keep) != len(graph.node):
        del graph.node[:]
        graph.node.extend(keep)


# -- re-exports -----------------------------------------------------------------------------

_FLOAT_NAMES = (
    "BF16_BLOCK_LIST",
    "FP16_BLOCK_LIST",
    "FP8_E4M3_MAX",
    "BFloat16Pass",
    "Float16Pass",
    "QuantizeFP8Pass",
)


def __getattr__(name: str) -> Any:
    # The float-format passes live in quantize_float, which imports this module's helpers.
    if name in _FLOAT_NAMES:
        from lepton_compile.passes import quantize_float

        return getattr(quantize_float, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CALIBRATE_METHODS",
    "INT4_QDQ_OPSET",
    "MIN_CALIBRATION_SAMPLES",
    "QDQ_MIN_OPSET",
    "QuantizeDynamicInt8Pass",
    "QuantizeInt4WeightOnlyPass",
    "QuantizeStaticInt8Pass",
    "check_calibration",
    "ensure_node_names",
    *_FLOAT_NAMES,
]
