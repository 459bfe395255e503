"""The pass tests' shared harness: run a pass and hold it to the tier-1 checks; read protos.

``run_pass`` is the tier-1 contract of DESIGN.md in one place: the input left alone, the
pass's ``modified`` flag, the op list, ``onnx.checker``, outputs on onnxruntime within
explicit tolerances, and a second run that changes nothing. The rest are small readers of
``onnx.ModelProto`` the test files share.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import onnx
import onnx_ir as ir

from lepton_compile.passes import optimize
from lepton_compile.passes.ort_session import session
from lepton_compile.passes.testing import assert_same_outputs

ONNX_DOMAINS = ("", "ai.onnx")


# -- op lists -------------------------------------------------------------------------------


def _graph(model: onnx.ModelProto | onnx.GraphProto) -> onnx.GraphProto:
    return model.graph if isinstance(model, onnx.ModelProto) else model


def ops(model: onnx.ModelProto | onnx.GraphProto) -> list[str]:
    """Op types of the (main) graph's nodes, in order."""
    return [node.op_type for node in _graph(model).node]


def domain_ops(model: onnx.ModelProto | onnx.GraphProto) -> list[str]:
    """Like ``ops``, with ``domain.op_type`` for ops outside the default domain."""
    return [
        n.op_type if n.domain in ONNX_DOMAINS else f"{n.domain}.{n.op_type}"
        for n in _graph(model).node
    ]


def op_counts(model: onnx.ModelProto | onnx.GraphProto) -> collections.Counter[str]:
    """How many nodes of each op type the (main) graph has."""
    return collections.Counter(ops(model))


# -- running passes -------------------------------------------------------------------------


def run_pass(
    model: onnx.ModelProto,
    passes: str | Sequence[str],
    expected_ops: Sequence[str] | None = None,
    *,
    rtol: float,
    atol: float,
    modified: bool = True,
    shapes: Mapping[str, Sequence[int]] | None = None,
    domains: bool = False,
    idempotent: Literal["all", "last"] = "all",
    **optimize_options: Any,
) -> onnx.ModelProto:
    """Run `passes` (a name, or names with the pass under test last) through ``optimize`` and
    hold the last to the tier-1 checks; the result.

    Checks: the input model is not modified; every pass ran; the last reports `modified`
    (and, when it changed nothing, the same node count); the op list is `expected_ops` (when
    given; ``domain_ops`` with `domains`); onnx.checker (full); the same outputs as `model`
    on ORT within `rtol`/`atol`; and a second run gives the same nodes and modifies nothing
    (no pass, or with `idempotent="last"` the last one: infer-shapes before it may still
    report shapes it records). ``optimize_options``: ``target``, ``options``, ``verify``
    and so on, for both runs.
    """
    names = [passes] if isinstance(passes, str) else list(passes)
    listed = domain_ops if domains else ops
    before = model.SerializeToString()
    result = optimize(model, passes=names, **optimize_options)
    assert model.SerializeToString() == before, "input model was modified"
    assert [r.name for r in result.records] == names
    last = result.records[-1]
    assert last.modified is modified
    if not modified:
        assert last.nodes_after == last.nodes_before
    if expected_ops is not None:
        assert listed(result.model) == list(expected_ops)
    onnx.checker.check_model(result.model, full_check=True)
    assert_same_outputs(model, result.model, rtol=rtol, atol=atol, shapes=shapes)
    again = optimize(result.model, passes=names, **optimize_options)
    checked = again.records if idempotent == "all" else again.records[-1:]
    assert [r.name for r in checked if r.modified] == [], f"{names[-1]} is not idempotent"
    assert listed(again.model) == listed(result.model)
    assert list(again.model.graph.node) == list(result.model.graph.node)
    return result.model


def apply(pass_: ir.passes.PassBase, model: onnx.ModelProto) -> tuple[onnx.ModelProto, bool]:
    """Run `pass_` on an IR copy of `model`: the result as a proto, and its `modified`."""
    result = pass_(ir.serde.deserialize_model(model))
    return ir.serde.serialize_model(result.model), result.modified


def run(
    model: onnx.ModelProto, feed: Mapping[str, np.ndarray], optimization: str = "all"
) -> list[np.ndarray]:
    """Outputs on onnxruntime's CPU provider, at its default optimization level unless told."""
    return session(model, optimization=optimization).run(None, dict(feed))


def check(model: onnx.ModelProto) -> None:
    onnx.checker.check_model(model, full_check=True)


def fidelity(ref: np.ndarray, out: np.ndarray) -> tuple[float, float]:
    """Cosine similarity and max-abs error of `out` against `ref`."""
    a = ref.astype(np.float64).ravel()
    b = out.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))), float(np.abs(a - b).max())


# -- reading protos -------------------------------------------------------------------------


def nodes(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    """Main-graph nodes by name."""
    return {n.name: n for n in model.graph.node}


def producer(model: onnx.ModelProto, value: str) -> onnx.NodeProto | None:
    return next((n for n in model.graph.node if value in n.output), None)


def consumers(model: onnx.ModelProto, value: str) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if value in n.input]


def initializer(model: onnx.ModelProto, name: str) -> onnx.TensorProto | None:
    return next((t for t in model.graph.initializer if t.name == name), None)


def attr(node: onnx.NodeProto, name: str, default: object = None) -> object:
    """The value of `node`'s attribute `name`, `default` where it has none."""
    a = next((a for a in node.attribute if a.name == name), None)
    return onnx.helper.get_attribute_value(a) if a is not None else default


def attrs(node: onnx.NodeProto) -> dict[str, Any]:
    """All of `node`'s attributes by name, strings as text."""
    values = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    return {k: v.decode() if isinstance(v, bytes) else v for k, v in values.items()}


def opset(model: onnx.ModelProto) -> int:
    """The model's default-domain opset."""
    return next(o.version for o in model.opset_import if o.domain in ONNX_DOMAINS)


# -- making models --------------------------------------------------------------------------


def bn_params(rng: np.random.Generator, c: int) -> dict[str, np.ndarray]:
    """BatchNormalization scale, bias, mean and (positive) var for `c` channels."""
    return {
        "gamma": rng.standard_normal(c).astype(np.float32),
        "beta": rng.standard_normal(c).astype(np.float32),
        "mean": rng.standard_normal(c).astype(np.float32),
        "var": (rng.random(c) + 0.5).astype(np.float32),
    }


def tinycnn_at(batch: int) -> onnx.ModelProto:
    """The example CNN (examples/make_models.py) with a static batch."""
    from make_models import tinycnn

    m = tinycnn()
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_value = batch
    return m


def tinycnn_images(n: int, seed: int, batch: int) -> list[dict[str, np.ndarray]]:
    """`n` seeded feeds for ``tinycnn_at(batch)``."""
    rng = np.random.default_rng(seed)
    return [{"images": rng.standard_normal((batch, 3, 96, 96), np.float32)} for _ in range(n)]


def with_random_weights(
    model: onnx.ModelProto, seed: int = 0, draw: type = np.float64
) -> onnx.ModelProto:
    """A light model with seeded random weights instead of constant fills, logits out.

    The onnx wheel's light models fill every weight with one constant, so their softmax is
    uniform (or one-hot) and would hide a wrongly folded or fused layer. Weights stay IR-3
    style initializer inputs, so a pipeline still has to free them first. `draw`: the dtype
    the normal weights are drawn in (numpy draws float32 and float64 differently).
    """
    rng = np.random.default_rng(seed)
    graph = model.graph
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}
    kept = []
    for node in graph.node:
        if node.op_type == "ConstantOfShape" and node.input[0] in inits:
            shape = [int(d) for d in inits[node.input[0]]]
            if len(shape) >= 2:
                array = rng.standard_normal(shape, draw) / np.sqrt(np.prod(shape[1:]))
            else:
                array = rng.uniform(0.5, 1.5, shape)  # BN scale/var and the like
            graph.initializer.append(
                onnx.numpy_helper.from_array(array.astype(np.float32), node.output[0])
            )
            graph.input.append(
                onnx.helper.make_tensor_value_info(node.output[0], onnx.TensorProto.FLOAT, shape)
            )
        else:
            kept.append(node)
    if kept[-1].op_type == "Softmax":
        graph.output[0].name = kept.pop().input[0]
    del graph.node[:]
    graph.node.extend(kept)
    return model
