"""ONNX graph (static shapes) -> torch.fx GraphModule of ATen ops, shapes folded to constants.

How: an interpreter walks the graph in order and calls one converter per node (registry.py);
`make_fx` records what the converters do into a GraphModule. It traces with fake tensors:
shapes and dtypes are concrete while converting, but nothing is computed, so no dummy input
can divide by zero or index out of range, and tracing a large model costs no compute.

Every value is either a `Const` (known at lowering time: initializers, Constant, and
everything computed only from them, e.g. the Shape/Gather/Concat arithmetic of a reshape
target, evaluated eagerly on the CPU and never traced) or a `Dyn` (a traced tensor that
depends on a graph input). Shape-only ops (Shape, Size, EyeLike, ConstantOfShape...) give
Consts even for traced inputs, so the recorded program has no shape logic at all: it is the
straight-line sequence of tensor ops for one set of input shapes, which is what CUDA graph
capture and Inductor want. A Const that a traced op uses becomes a buffer of the module
(cast to the compute dtype, on the device); an FX pass then folds ops whose inputs are all
buffers (weight transposes, reshaped biases). One peephole happens while converting: a
BatchNormalization that is the only consumer of a Conv with constant weights is folded
into that Conv's weights (in float64, so a running variance beyond float16's range never
becomes a float16 weight).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections import ChainMap
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from typing import Any

import numpy as np
import onnx
import torch
from onnx import helper

from lepton_compile.errors import NotSupported
from lepton_compile.passes.walk import proto_nodes
from lepton_compile.runtime.lepton import dtypes
from lepton_compile.runtime.lepton.registry import load_converters, normalize_domain

log = logging.getLogger(__name__)

# Ops whose results must not be folded or cached (they draw random numbers).
RANDOM_OPS = frozenset(
    {
        "RandomNormal",
        "RandomNormalLike",
        "RandomUniform",
        "RandomUniformLike",
        "Bernoulli",
        "Multinomial",
    }
)
# Control flow and sequence ops: lowered by the interpreter itself or not at all.
SUBGRAPH_OPS = frozenset({"If", "Loop", "Scan"})
# Largest graph input (elements) the session may specialize on by value (shape-like inputs).
PIN_LIMIT = 4096


class NeedValues(Exception):
    """Lowering needs the values (not just the shapes) of these graph inputs."""

    def __init__(self, names: frozenset[str], what: str):
        super().__init__(f"{what} depends on the values of input(s) {', '.join(sorted(names))}")
        self.names = names
        self.what = what


@dataclasses.dataclass(eq=False)
class Const:
    """A value known at lowering time: a CPU tensor in the element type the model declares."""

    t: torch.Tensor
    # The value's quantized form when a DequantizeLinear made it (ops_quant.Quantized):
    # consumers that compute in integers or FP8 read that instead of the float value.
    quant: Any = None


@dataclasses.dataclass(eq=False)
class Dyn:
    """A traced tensor and the graph inputs it depends on."""

    t: torch.Tensor
    deps: frozenset[str]
    # How the producer could compute it differently (e.g. a Conv that a following
    # BatchNormalization folds into); set only when this node is the value's one consumer.
    origin: Any = None
    quant: Any = None  # as Const.quant; kept whatever the number of consumers


Value = Const | Dyn


@dataclasses.dataclass
class Options:
    """What the recorded program computes in and where."""

    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype | None = None  # compute dtype for float tensors; None: as declared
    channels_last: bool = False
    # Picks our kernel or torch's route per layer (routing.KernelRouter); None: torch's.
    router: Any = None


@contextlib.contextmanager
def no_tracing() -> Iterator[None]:
    """Run torch ops eagerly, unrecorded, inside a make_fx trace (constant folding)."""
    from torch._subclasses.fake_tensor import unset_fake_temporarily
    from torch.fx.experimental.proxy_tensor import disable_proxy_modes_tracing

    with disable_proxy_modes_tracing(), unset_fake_temporarily():
        yield


@dataclasses.dataclass
class Scope:
    """Where a node lives: the opsets and local functions it sees, attribute bindings."""

    opsets: Mapping[str, int]
    functions: Mapping[tuple[str, str, str], onnx.FunctionProto]
    attrs: Mapping[str, onnx.AttributeProto] | None = None  # caller's, inside a function body
    defaults: Mapping[str, onnx.AttributeProto] | None = None  # function's defaults


def attribute_value(attr: onnx.AttributeProto) -> Any:
    value = helper.get_attribute_value(attr)
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, list) and value and isinstance(value[0], bytes):
        return [v.decode("utf-8") for v in value]
    if attr.type == onnx.AttributeProto.TENSOR:
        return dtypes.tensor_from_proto(value)
    return value


class NodeCtx:
    """What a converter sees of one node: attributes, inputs, opset, and lowering services."""

    def __init__(
        self,
        lowering: Lowering,
        node: onnx.NodeProto,
        inputs: Sequence[Value | None],
        attrs: Mapping[str, onnx.AttributeProto],
        opset: int,
        folding: bool,
    ):
        self.lowering = lowering
        self.node = node
        self.op_type = node.op_type
        self.domain = normalize_domain(node.domain)
        self.opset = opset
        self.folding = folding
        self._inputs = list(inputs)
        self._attrs = attrs
        self._attr_cache: dict[str, Any] = {}
        self.origin_out: Any = None  # see Dyn.origin
        self.quant_out: Any = None  # see Const.quant: output 0's quantized form

    # -- attributes ------------------------------------------------------------------
    def attr(self, name: str, default: Any = None) -> Any:
        if name not in self._attrs:
            return default
        if name not in self._attr_cache:
            self._attr_cache[name] = attribute_value(self._attrs[name])
        return self._attr_cache[name]

    def has_attr(self, name: str) -> bool:
        return name in self._attrs

    def attr_values(self) -> dict[str, Any]:
        """Every attribute as plain data (ints, floats, strings and lists of them)."""
        out: dict[str, Any] = {}
        for name in self._attrs:
            value = self.attr(name)
            if isinstance(value, (int, float, str)) or (
                isinstance(value, list) and all(isinstance(v, (int, float, str)) for v in value)
            ):
                out[name] = value
        return out

    # -- inputs ------------------------------------------------------------------------
    @property
    def ninputs(self) -> int:
        return len(self._inputs)

    def has(self, i: int) -> bool:
        return i < len(self._inputs) and self._inputs[i] is not None

    def is_const(self, i: int) -> bool:
        return self.has(i) and isinstance(self._inputs[i], Const)

    def quant(self, i: int) -> Any:
        """Input i's quantized form (ops_quant.Quantized) when a DequantizeLinear made it."""
        v = self._inputs[i] if i < len(self._inputs) else None
        return None if v is None else v.quant

    @property
    def router(self) -> Any:
        """The session's per-layer kernel router (None: torch's route everywhere)."""
        return None if self.folding else self.lowering.options.router

    def origin(self, i: int) -> Any:
        """How input i's producer made it, if this node is its only consumer (else None)."""
        v = self._inputs[i] if i < len(self._inputs) else None
        return v.origin if isinstance(v, Dyn) else None

    def const_tensor(self, i: int) -> torch.Tensor:
        """Input i as the CPU tensor of the Const (declared type); it must be a Const."""
        v = self._inputs[i]
        if not isinstance(v, Const):
            raise self.unsupported(f"input {i} must be known at lowering time")
        return v.t

    @property
    def device(self) -> torch.device:
        return torch.device("cpu") if self.folding else self.lowering.options.device

    @property
    def channels_last(self) -> bool:
        return self.lowering.options.channels_last and not self.folding

    def input(
        self, i: int, memory_format: torch.memory_format | None = None, exact: bool = False
    ) -> Any:
        """Input i as a tensor (None if absent): traced, or a constant on the device.

        `exact`: a constant keeps its declared float type (no compute-dtype policy).
        """
        if not self.has(i):
            return None
        v = self._inputs[i]
        if isinstance(v, Dyn):
            return v.t
        if self.folding:
            return v.t
        return self.lowering.lift(v, memory_format, exact)

    def inputs(self) -> list[Any]:
        return [self.input(i) for i in range(self.ninputs)]

    def const(self, i: int, what: str = "") -> np.ndarray:
        """Input i as a numpy array; it must be known at lowering time."""
        v = self._inputs[i] if i < len(self._inputs) else None
        if v is None:
            raise self.unsupported(f"input {i} is missing")
        if isinstance(v, Const):
            return const_numpy(v.t)
        what = f"{self.op_type} input {i} ({what or self.node.input[i]})"
        if v.deps:
            raise NeedValues(v.deps, what)
        raise self.unsupported(f"{what} must be known at lowering time")

    def ints(self, i: int, what: str = "") -> list[int]:
        return [int(x) for x in self.const(i, what).reshape(-1)]

    def floats(self, i: int, what: str = "") -> list[float]:
        return [float(x) for x in self.const(i, what).astype(np.float64).reshape(-1)]

    def shape(self, i: int) -> tuple[int, ...]:
        v = self._inputs[i]
        assert v is not None
        return tuple(v.t.shape)

    def in_dtype(self, i: int) -> torch.dtype:
        v = self._inputs[i]
        assert v is not None
        if isinstance(v, Const) and not self.folding:
            return self.lowering.policy(v.t.dtype)
        return v.t.dtype

    # -- outputs and types -----------------------------------------------------------
    @property
    def noutputs(self) -> int:
        return len(self.node.output)

    def output_used(self, i: int) -> bool:
        return i < len(self.node.output) and bool(self.node.output[i])

    def dtype(self, elem_type: int) -> torch.dtype:
        """The torch dtype a tensor of ONNX type `elem_type` has in this program."""
        dt = dtypes.torch_dtype(elem_type, self.op_type)
        return dt if self.folding else self.lowering.policy(dt)

    def constant(self, value: Any, dtype: torch.dtype | None = None) -> torch.Tensor:
        """A tensor computed at lowering time (numpy or torch), as a tensor of the program."""
        with no_tracing():
            t = value if isinstance(value, torch.Tensor) else torch.from_numpy(np.asarray(value))
            if dtype is not None and t.dtype != dtype:
                t = t.to(dtype)
        if self.folding:
            return t
        return self.lowering.lift(Const(t), exact=True)

    def const_out(self, value: Any, dtype: torch.dtype = torch.int64) -> Const:
        """A result known at lowering time whatever the inputs (Shape, Size, ...)."""
        with no_tracing():
            if isinstance(value, torch.Tensor):
                return Const(value.detach().to("cpu"))
            if isinstance(value, np.ndarray):
                return Const(torch.from_numpy(value.copy()).to(dtype))
            return Const(torch.tensor(value, dtype=dtype))

    def unsupported(self, what: str) -> NotSupported:
        return NotSupported(f"{self.op_type}: {what}")


def const_numpy(t: torch.Tensor) -> np.ndarray:
    with no_tracing():
        if t.dtype in dtypes.FLOAT8 or t.dtype == torch.bfloat16:
            return t.float().numpy()
        return t.numpy()


@dataclasses.dataclass
class IOSpec:
    name: str
    elem_type: int
    dtype: torch.dtype
    shape: tuple[int | None, ...] | None  # None: rank unknown; None dims: dynamic


@dataclasses.dataclass
class Program:
    """A lowered model for one set of input shapes (and values of pinned inputs)."""

    module: torch.fx.GraphModule
    inputs: list[IOSpec]  # what `module` takes, in order (pinned inputs left out)
    outputs: list[IOSpec]
    shapes: dict[str, tuple[int, ...]]
    pinned: dict[str, np.ndarray]
    device: torch.device

    def __call__(self, *args: torch.Tensor) -> list[torch.Tensor]:
        return list(self.module(*args))


def _io_spec(vi: onnx.ValueInfoProto) -> IOSpec:
    if not vi.type.HasField("tensor_type"):
        kind = vi.type.WhichOneof("value")
        raise NotSupported(f"graph input/output {vi.name!r} is a {kind}, not a tensor")
    tt = vi.type.tensor_type
    shape: tuple[int | None, ...] | None = None
    if tt.HasField("shape"):
        shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim)
    elem = tt.elem_type
    dtype = dtypes.torch_dtype(elem, f"graph input/output {vi.name!r}") if elem else torch.float32
    return IOSpec(vi.name, elem, dtype, shape)


def schema_defaults(node: onnx.NodeProto, opset: int) -> dict[str, onnx.AttributeProto]:
    """Default attribute values the ONNX schema of `node`'s op declares."""
    try:
        schema = onnx.defs.get_schema(node.op_type, opset, normalize_domain(node.domain))
    except onnx.defs.SchemaError:
        return {}
    defaults = {}
    for name, attr in schema.attributes.items():
        value = attr.default_value
        if value is not None and value.type != onnx.AttributeProto.UNDEFINED:
            copy = onnx.AttributeProto()
            copy.CopyFrom(value)
            copy.name = name
            defaults[name] = copy
    return defaults


def schema_function(
    node: onnx.NodeProto, opset: int, input_types: Sequence[onnx.TypeProto] | None = None
) -> onnx.FunctionProto | None:
    """The function body the ONNX schema gives `node`'s op at `opset`, if any."""
    domain = normalize_domain(node.domain)
    try:
        schema = onnx.defs.get_schema(node.op_type, opset, domain)
    except onnx.defs.SchemaError:
        return None
    data = b""
    versions = [v for v in schema.function_opset_versions if v <= opset]
    if versions:
        data = schema.get_function_with_opset_version(max(versions))
    if not data and input_types is not None:
        versions = [v for v in schema.context_dependent_function_opset_versions if v <= opset]
        if versions:
            try:
                data = schema.get_context_dependent_function_with_opset_version(
                    max(versions),
                    node.SerializeToString(),
                    [t.SerializeToString() for t in input_types],
                )
            except Exception:  # the schema's builder rejects the node: no body
                data = b""
    if not data:
        return None
    return onnx.FunctionProto.FromString(data)


def unsupported_ops(model: onnx.ModelProto) -> list[str]:
    """Ops of `model` with neither a converter nor a function body (a quick static check)."""
    table = load_converters()
    opsets = {normalize_domain(o.domain): o.version for o in model.opset_import}
    local = {(f.domain, f.name) for f in model.functions}
    missing: set[str] = set()
    for node in proto_nodes(model.graph):
        domain = normalize_domain(node.domain)
        if (domain, node.op_type) in table or node.op_type in SUBGRAPH_OPS and domain == "":
            continue
        if (node.domain, node.op_type) in local:
            continue
        opset = opsets.get(domain, 1)
        try:
            schema = onnx.defs.get_schema(node.op_type, opset, domain)
            if schema.function_opset_versions or schema.context_dependent_function_opset_versions:
                continue
        except onnx.defs.SchemaError:
            pass
        missing.add(f"{domain + '.' if domain else ''}{node.op_type}")
    return sorted(missing)


class Lowering:
    """One ONNX model, lowered on demand for given input shapes (and pinned input values)."""

    def __init__(self, model: onnx.ModelProto, options: Options, base_dir: str | None = None):
        self.converters = load_converters()
        self.model = model
        self.options = options
        self.base_dir = base_dir
        graph = model.graph
        if graph.sparse_initializer:
            raise NotSupported("sparse initializers are not supported")
        self.opsets = {normalize_domain(o.domain): o.version for o in model.opset_import}
        self.functions = {(f.domain, f.name, f.overload): f for f in model.functions}
        self.initializers: dict[str, Const] = {}
        for init in graph.initializer:
            self.initializers[init.name] = Const(dtypes.tensor_from_proto(init, base_dir))
        self.inputs = [_io_spec(vi) for vi in graph.input if vi.name not in self.initializers]
        self.outputs = [_io_spec(vi) for vi in graph.output]
        self._lifted: dict[tuple[int, Any, bool], tuple[Const, torch.Tensor]] = {}
        self._uses = _use_counts(graph)
        self._main: MutableMapping[str, Value] | None = None
        self.clamped = 0  # constant elements clamped into the compute dtype's range

    # -- dtype policy ----------------------------------------------------------------
    def policy(self, dtype: torch.dtype) -> torch.dtype:
        target = self.options.dtype
        if target is not None and dtype in dtypes.POLICY_FLOATS:
            return target
        return dtype

    def lift(
        self, c: Const, memory_format: torch.memory_format | None = None, exact: bool = False
    ) -> torch.Tensor:
        """A Const as a tensor of the program (compute dtype, device): becomes a buffer."""
        key = (id(c), memory_format, exact)
        hit = self._lifted.get(key)
        if hit is not None:
            return hit[1]
        with no_tracing():
            t = c.t
            target = t.dtype if exact else self.policy(t.dtype)
            if target != t.dtype:
                if t.is_floating_point() and torch.finfo(target).max < torch.finfo(t.dtype).max:
                    # fp32 masks like -3.4e38 must stay finite, not turn into -inf (and
                    # then NaN as 0 * -inf).
                    limit = torch.finfo(target).max
                    big = torch.isfinite(t) & (t.abs() > limit)
                    if bool(big.any()):
                        self.clamped += int(big.sum())
                        t = torch.where(big, t.clamp(-limit, limit), t)
                t = t.to(target)
            t = t.to(self.options.device)
            if memory_format is not None and t.dim() == 4:
                t = t.contiguous(memory_format=memory_format)
        self._lifted[key] = (c, t)
        return t

    # -- tracing -----------------------------------------------------------------------
    def example_inputs(
        self, shapes: Mapping[str, Sequence[int]], specs: Sequence[IOSpec] | None = None
    ) -> list[torch.Tensor]:
        return [
            torch.zeros(tuple(shapes[s.name]), dtype=s.dtype, device=self.options.device)
            for s in (self.inputs if specs is None else specs)
        ]

    def trace(
        self,
        shapes: Mapping[str, Sequence[int]],
        pinned: Mapping[str, np.ndarray] | None = None,
    ) -> Program:
        """Record the program for these input shapes; `pinned` inputs become constants."""
        from torch.fx.experimental.proxy_tensor import make_fx

        pinned = dict(pinned or {})
        traced_specs = [s for s in self.inputs if s.name not in pinned]
        pinned_consts = {
            name: Const(dtypes.from_numpy(np.array(a, copy=True), f"input {name!r}"))
            for name, a in pinned.items()
        }

        def forward(*args: torch.Tensor) -> list[torch.Tensor]:
            env: dict[str, Value] = dict(self.initializers)
            self._main = env
            env.update(pinned_consts)
            for spec, t in zip(traced_specs, args, strict=True):
                env[spec.name] = Dyn(self._boundary_in(t), frozenset({spec.name}))
            scope = Scope(self.opsets, self.functions)
            self.run_graph(self.model.graph.node, env, scope)
            outs = []
            for spec in self.outputs:
                if spec.name not in env:
                    raise NotSupported(f"graph output {spec.name!r} is never computed")
                outs.append(self._boundary_out(env[spec.name], spec))
            return outs

        example = self.example_inputs(shapes, traced_specs)
        with torch.no_grad(), _quiet_make_fx():
            gm = make_fx(forward, tracing_mode="fake", _allow_non_fake_inputs=True)(*example)
        fold_constants(gm)
        scalarize_constants(gm)
        if self.clamped:
            log.info(
                "%d constant elements lie outside %s's range and were clamped to its maximum",
                self.clamped,
                self.options.dtype,
            )
        return Program(
            module=gm,
            inputs=traced_specs,
            outputs=self.outputs,
            shapes={s.name: tuple(shapes[s.name]) for s in traced_specs},
            pinned=pinned,
            device=self.options.device,
        )

    def _boundary_in(self, t: torch.Tensor) -> torch.Tensor:
        target = self.policy(t.dtype)
        if target != t.dtype:
            t = t.to(target)
        if self.options.channels_last and t.dim() == 4 and t.is_floating_point():
            t = t.contiguous(memory_format=torch.channels_last)
        return t

    def _boundary_out(self, v: Value, spec: IOSpec) -> torch.Tensor:
        if isinstance(v, Const):
            with no_tracing():
                t = v.t.to(self.options.device)
        else:
            t = v.t
        if spec.elem_type and t.dtype != spec.dtype:
            t = t.to(spec.dtype)
        return t

    # -- interpretation ----------------------------------------------------------------
    def run_graph(
        self, nodes: Sequence[onnx.NodeProto], env: MutableMapping[str, Value], scope: Scope
    ) -> None:
        for node in nodes:
            self.run_node(node, env, scope)

    def _attrs(self, node: onnx.NodeProto, scope: Scope) -> dict[str, onnx.AttributeProto]:
        attrs: dict[str, onnx.AttributeProto] = {}
        for a in node.attribute:
            if a.ref_attr_name:
                bound = (scope.attrs or {}).get(a.ref_attr_name)
                if bound is None:
                    bound = (scope.defaults or {}).get(a.ref_attr_name)
                if bound is None:
                    continue
                copy = onnx.AttributeProto()
                copy.CopyFrom(bound)
                copy.name = a.name
                attrs[a.name] = copy
            else:
                attrs[a.name] = a
        return attrs

    def run_node(self, node: onnx.NodeProto, env: MutableMapping[str, Value], scope: Scope) -> None:
        domain = normalize_domain(node.domain)
        label = f"{domain + '.' if domain else ''}{node.op_type}"
        inputs: list[Value | None] = []
        for name in node.input:
            if not name:
                inputs.append(None)
                continue
            if name not in env:
                raise NotSupported(f"{label}: input {name!r} is not defined before use")
            inputs.append(env[name])
        attrs = self._attrs(node, scope)
        opset = scope.opsets.get(domain)
        if opset is None:
            raise NotSupported(f"{label}: the model imports no opset for domain {node.domain!r}")

        if domain == "" and node.op_type in SUBGRAPH_OPS:
            if node.op_type == "If":
                self._run_if(node, inputs, attrs, env, scope)
                return
            raise NotSupported(f"{label}: control flow (subgraphs) is not supported")

        converter = self.converters.get((domain, node.op_type))
        if converter is None:
            fn = scope.functions.get((node.domain, node.op_type, node.overload))
            if fn is None and node.overload == "":
                fn = scope.functions.get((node.domain, node.op_type, ""))
            if fn is None:
                resolved = node
                if any(a.ref_attr_name for a in node.attribute):
                    resolved = onnx.NodeProto()
                    resolved.CopyFrom(node)
                    del resolved.attribute[:]
                    resolved.attribute.extend(attrs.values())
                fn = schema_function(resolved, opset, [_type_proto(v) for v in inputs])
                if fn is not None:
                    attrs = {**schema_defaults(node, opset), **attrs}
            if fn is None:
                raise NotSupported(f"lepton has no lowering for {label} (opset {opset})")
            self._inline(fn, node, inputs, attrs, env, scope)
            return

        folding = node.op_type not in RANDOM_OPS and all(
            v is None or isinstance(v, Const) for v in inputs
        )
        ctx = NodeCtx(self, node, inputs, attrs, opset, folding)
        try:
            if folding:
                with no_tracing():
                    result = converter(ctx)
            else:
                result = converter(ctx)
        except (NotSupported, NeedValues):
            raise
        except RuntimeError as e:
            if "not implemented for" in str(e):
                first = str(e).splitlines()[0]
                raise NotSupported(f"{label}: torch has no kernel here ({first})") from None
            raise RuntimeError(f"lowering {label} node {node.name!r}: {e}") from e
        outs = result if isinstance(result, (tuple, list)) else (result,)
        deps = frozenset().union(*(v.deps for v in inputs if isinstance(v, Dyn)))
        for i, name in enumerate(node.output):
            if not name:
                continue
            if i >= len(outs) or outs[i] is None:
                raise NotSupported(f"{label}: output {i} ({name!r}) is not supported")
            out = outs[i]
            quant = ctx.quant_out if i == 0 else None
            if isinstance(out, Const):
                env[name] = out
            elif folding:
                env[name] = Const(out, quant)
            else:
                single = env is self._main and self._uses.get(name, 0) == 1
                env[name] = Dyn(out, deps, ctx.origin_out if single else None, quant)

    def _run_if(
        self,
        node: onnx.NodeProto,
        inputs: Sequence[Value | None],
        attrs: Mapping[str, onnx.AttributeProto],
        env: MutableMapping[str, Value],
        scope: Scope,
    ) -> None:
        cond = inputs[0]
        if not isinstance(cond, Const):
            deps = cond.deps if isinstance(cond, Dyn) else frozenset()
            if deps:
                raise NeedValues(deps, "If condition")
            raise NotSupported("If: the condition must be known at lowering time")
        taken = "then_branch" if bool(const_numpy(cond.t).reshape(-1)[0]) else "else_branch"
        branch = attrs[taken].g
        local: MutableMapping[str, Value] = ChainMap({}, env)  # type: ignore[arg-type]
        for init in branch.initializer:
            local[init.name] = Const(dtypes.tensor_from_proto(init, self.base_dir))
        self.run_graph(branch.node, local, scope)
        for out_name, vi in zip(node.output, branch.output, strict=False):
            if out_name:
                env[out_name] = local[vi.name]

    def _inline(
        self,
        fn: onnx.FunctionProto,
        node: onnx.NodeProto,
        inputs: Sequence[Value | None],
        attrs: Mapping[str, onnx.AttributeProto],
        env: MutableMapping[str, Value],
        scope: Scope,
    ) -> None:
        local: dict[str, Value] = {}
        for formal, v in zip(fn.input, inputs, strict=False):
            if v is not None:
                local[formal] = v
        opsets = dict(scope.opsets)
        opsets.update({normalize_domain(o.domain): o.version for o in fn.opset_import})
        defaults = {a.name: a for a in fn.attribute_proto}
        inner = Scope(opsets, scope.functions, attrs, defaults)
        self.run_graph(fn.node, local, inner)
        for out_name, formal in zip(node.output, fn.output, strict=False):
            if out_name:
                if formal not in local:
                    raise NotSupported(f"{node.op_type}: function output {formal!r} not computed")
                env[out_name] = local[formal]


def _use_counts(graph: onnx.GraphProto) -> dict[str, int]:
    """How many times each value name is read (node inputs, subgraphs, graph outputs)."""
    uses: dict[str, int] = {}
    for node in proto_nodes(graph):
        for name in node.input:
            if name:
                uses[name] = uses.get(name, 0) + 1
    for out in graph.output:
        uses[out.name] = uses.get(out.name, 0) + 1
    return uses


def _type_proto(v: Value | None) -> onnx.TypeProto:
    if v is None:
        return onnx.TypeProto()
    elem = dtypes.ONNX_TYPES.get(v.t.dtype, 0)
    return helper.make_tensor_type_proto(elem, list(v.t.shape))


@contextlib.contextmanager
def _restore_level(logger: logging.Logger, level: int) -> Iterator[None]:
    try:
        yield
    finally:
        logger.setLevel(level)


@contextlib.contextmanager
def _quiet_make_fx() -> Iterator[None]:
    import warnings

    # make_fx warns about tensors it burns in as constants: that is the point here. Fake
    # tensors log every failing op at ERROR level before the error propagates to us.
    fake_log = logging.getLogger("torch._subclasses.fake_tensor")
    level = fake_log.level
    fake_log.setLevel(logging.CRITICAL)
    with warnings.catch_warnings(), _restore_level(fake_log, level):
        warnings.simplefilter("ignore")
        # make_fx records each real tensor's metadata with a fake tensor, and without a
        # fake mode in the tracing context it builds a new FakeTensorMode (which captures a
        # Python stack trace) for every op: one shared mode makes tracing ~40% faster.
        try:
            from torch._guards import TracingContext, tracing
            from torch._subclasses.fake_tensor import FakeTensorMode

            mode = FakeTensorMode(allow_fallback_kernels=True, allow_non_fake_inputs=True)
            context = tracing(TracingContext(mode))
        except ImportError:  # a torch without these internals: just slower
            context = contextlib.nullcontext()
        with context:
            yield


# ---------------------------------------------------------------------------------------
# FX pass: fold ops whose inputs are all module constants.

_NO_FOLD = {"empty", "empty_like", "rand", "randn", "rand_like", "randn_like", "bernoulli"}


def fold_constants(gm: torch.fx.GraphModule, growth: int = 2) -> int:
    """Evaluate call_function nodes whose tensor inputs are all buffers; returns how many.

    A result is kept only if it is at most `growth` times the size of its inputs (so an
    expand of a small constant stays an expand).
    """
    values: dict[torch.fx.Node, Any] = {}
    folded = 0
    for node in list(gm.graph.nodes):
        if node.op == "get_attr":
            values[node] = getattr(gm, node.target)
            continue
        if node.op != "call_function":
            continue
        name = getattr(node.target, "__name__", str(node.target))
        if name.split(".")[0] in _NO_FOLD:
            continue
        deps = node.all_input_nodes
        if not deps or any(d not in values for d in deps):
            continue
        args = torch.fx.node.map_arg(node.args, lambda n: values[n])
        kwargs = torch.fx.node.map_arg(node.kwargs, lambda n: values[n])
        with torch.no_grad():
            result = node.target(*args, **kwargs)
        values[node] = result
        if not isinstance(result, torch.Tensor):
            continue  # a tuple: its getitem users fold
        in_numel = sum(v.numel() for d in deps if isinstance(v := values[d], torch.Tensor))
        if result.numel() > growth * max(in_numel, 1) and result.numel() > 4096:
            del values[node]
            continue
        attr = f"_folded_{folded}"
        gm.register_buffer(attr, result)
        with gm.graph.inserting_before(node):
            new = gm.graph.get_attr(attr)
        node.replace_all_uses_with(new)
        values[new] = result
        folded += 1
    gm.graph.eliminate_dead_code()
    used = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    for name in [n for n, _ in gm.named_buffers() if "." not in n and n not in used]:
        delattr(gm, name)
    gm.recompile()
    return folded


def scalarize_constants(gm: torch.fx.GraphModule) -> int:
    """add/sub/mul/div by a 0-d buffer of the other operand's dtype -> by a Python number.

    Same values (the number is the buffer's, already rounded to its dtype), one tensor
    fewer per op, and Inductor's attention pattern matcher expects a number for the scale
    of `softmax(q @ k / scale)` (a 0-d tensor there makes it fail).
    """
    ops = {
        torch.ops.aten.add.Tensor,
        torch.ops.aten.sub.Tensor,
        torch.ops.aten.mul.Tensor,
        torch.ops.aten.div.Tensor,
    }
    changed = 0
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target not in ops or len(node.args) != 2:
            continue
        a, b = node.args
        if not (isinstance(a, torch.fx.Node) and isinstance(b, torch.fx.Node)):
            continue
        if b.op != "get_attr":
            continue
        value = getattr(gm, b.target)
        a_val = a.meta.get("val")
        if value.dim() != 0 or a_val is None or a_val.dtype != value.dtype:
            continue
        if not value.is_floating_point() and value.dtype != torch.int64:
            continue
        node.args = (a, value.item())
        changed += 1
    if changed:
        gm.graph.eliminate_dead_code()
        used = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
        for name in [n for n, _ in gm.named_buffers() if "." not in n and n not in used]:
            delattr(gm, name)
        gm.recompile()
    return changed
