"""Tier 1: each cleanup rule (passes/cleanup_rules.py) on a small model, and its negatives.

Every positive case checks the op list, `modified`, onnx.checker, equal outputs on ORT
(fixed seed, explicit tolerances) and that a second run changes nothing. Every negative
case checks that the model comes back unchanged and still computes the same thing.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
import onnx.numpy_helper
import pytest
from pass_harness import ops, run_pass

from lepton_compile.passes import optimize
from lepton_compile.passes.testing import assert_same_outputs, model_from_text

# Shape ops move values without arithmetic: outputs must match exactly.
EXACT = {"rtol": 0.0, "atol": 0.0}
I64_MAX = 2**63 - 1


def i64(*values: int) -> np.ndarray:
    return np.array(values, np.int64)


def node_of(model: onnx.ModelProto, op_type: str) -> onnx.NodeProto:
    (node,) = [n for n in model.graph.node if n.op_type == op_type]
    return node


def const_input(model: onnx.ModelProto, node: onnx.NodeProto, index: int) -> list[int]:
    inits = {i.name: i for i in model.graph.initializer}
    return onnx.numpy_helper.to_array(inits[node.input[index]]).tolist()


def attr(node: onnx.NodeProto, name: str):
    (a,) = [a for a in node.attribute if a.name == name]
    return onnx.helper.get_attribute_value(a)


def run(
    model: onnx.ModelProto, expected_ops: list[str], *, passes: Sequence[str] = ("simplify",), **kw
) -> onnx.ModelProto:
    """`passes` (simplify by default) through the harness's checks, outputs compared exactly."""
    return run_pass(model, list(passes), expected_ops, **EXACT, **kw)


def keep(model: onnx.ModelProto, **kwargs) -> onnx.ModelProto:
    """A negative case: simplify must leave the model as it is."""
    return run(model, ops(model), modified=False, **kwargs)


def text(opset: int, signature: str, body: str, value_info: str = "") -> str:
    info = f" <{value_info}>" if value_info else ""
    return f"""
        <ir_version: 8, opset_import: ["" : {opset}]>
        g {signature}{info} {{
            {body}
        }}
    """


# --- exact x+0, x*1 ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "const"),
    [
        ("y = Add(r, c)", np.float32(0.0)),
        ("y = Add(c, r)", np.zeros(3, np.float32)),  # broadcasts along x's last dim only
        ("y = Sub(r, c)", np.zeros((1, 3), np.float32)),
        ("y = Mul(c, r)", np.float32(1.0)),
        ("y = Div(r, c)", np.ones((2, 1), np.float32)),
    ],
)
def test_noop_binary(body, const):
    model = model_from_text(
        text(17, "(float[2,3] x) => (float[2,3] z)", f"r = Relu(x)\n {body}\n z = Sigmoid(y)"),
        {"c": np.asarray(const)},
    )
    run(model, ["Relu", "Sigmoid"], passes=("infer-shapes", "simplify"))


@pytest.mark.parametrize(
    ("body", "const"),
    [
        ("y = Add(r, c)", np.float32(1e-12)),  # LayerNorm's epsilon: onnxscript drops it
        ("y = Mul(r, c)", np.float32(1.000001)),
        ("y = Div(r, c)", np.float32(0.99999)),
        ("y = Sub(c, r)", np.float32(0.0)),  # 0 - x is -x
        ("y = Div(c, r)", np.float32(1.0)),  # 1 / x
        ("y = Add(r, c)", np.zeros((2, 2, 3), np.float32)),  # grows x to (2, 2, 3)
    ],
)
def test_near_noop_binary_kept(body, const):
    out_type = "float[A,B,C]" if np.asarray(const).ndim == 3 else "float[2,3]"
    model = model_from_text(
        text(17, f"(float[2,3] x) => ({out_type} z)", f"r = Relu(x)\n {body}\n z = Sigmoid(y)"),
        {"c": np.asarray(const)},
    )
    out = optimize(model, passes=["infer-shapes", "simplify"])
    assert out.records[-1].modified is False
    assert ops(out.model) == ["Relu", body.split("(")[0].split()[-1], "Sigmoid"]
    assert_same_outputs(model, out.model, **EXACT)


def test_epsilon_keeps_zero_variance_finite():
    # x / sqrt(0 + 1e-12) is finite; with the epsilon dropped it is inf or nan.
    model = model_from_text(
        text(
            17,
            "(float[2,3] x) => (float[2,3] y)",
            "z = Sub(x, x)\n v = Mul(z, z)\n e = Add(v, eps)\n s = Sqrt(e)\n y = Div(z, s)",
        ),
        {"eps": np.float32(1e-12)},
    )
    out = optimize(model, passes=["simplify"])
    (y,) = assert_same_outputs(model, out.model, **EXACT)
    assert np.isfinite(y).all()


# --- no-op Reshape ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "declared"),
    [([2, 3, 4], "float[2,3,4] x"), ([0, 3, -1], "float[N,3,4] x"), ([0, 0, 4], "float[N,M,4] x")],
)
def test_noop_reshape(shape, declared):
    model = model_from_text(
        text(17, f"({declared}) => (float[N,3,4] y)", "r = Reshape(x, s)\n y = Relu(r)"),
        {"s": i64(*shape)},
    )
    run(model, ["Relu"], shapes={"x": [2, 3, 4]})


@pytest.mark.parametrize(
    ("shape", "declared", "feed", "removed"),
    [
        ([3, 2, 4], "float[2,3,4] x", [2, 3, 4], False),  # same size, other shape
        ([-1, 4, 3], "float[N,3,4] x", [2, 3, 4], False),
        ([3, 0, 4], "float[N,3,4] x", [3, 3, 4], False),  # dim 0 is not known to be 3
        ([-1, 3, 4], "float[2,3,4] x", [2, 3, 4], True),  # -1 is the one dim left: 2
        ([0, -1, 4], "float[N,M,4] x", [2, 3, 4], True),  # -1 is then M
    ],
)
def test_noop_reshape_negatives_and_limits(shape, declared, feed, removed):
    model = model_from_text(
        text(17, f"({declared}) => (float[A,B,C] y)", "r = Reshape(x, s)\n y = Relu(r)"),
        {"s": i64(*shape)},
    )
    if removed:
        run(model, ["Relu"], shapes={"x": feed})
    else:
        keep(model, shapes={"x": feed})


def test_noop_reshape_allowzero_keeps_literal_zero():
    # allowzero=1: `0` is a zero-size dim, not a copy of the input's.
    model = model_from_text(
        text(
            14,
            "(float[2,3] x) => (float[2,3] y)",
            "r = Reshape<allowzero = 1>(x, s)\n y = Relu(r)",
        ),
        {"s": i64(2, 3)},
    )
    run(model, ["Relu"])
    model = model_from_text(
        text(
            14, "(float[N,3] x) => (float[A,3] y)", "r = Reshape<allowzero = 1>(x, s)\n y = Relu(r)"
        ),
        {"s": i64(0, 3)},
    )
    out = optimize(model, passes=["simplify"])
    assert out.records[0].modified is False


# --- no-op Pad -------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge"])
def test_noop_pad(mode):
    model = model_from_text(
        text(
            17,
            "(float[2,3] x) => (float[2,3] y)",
            f'p = Pad<mode = "{mode}">(x, pads, v)\n y = Relu(p)',
        ),
        {"pads": i64(0, 0, 0, 0), "v": np.array(1.0, np.float32)},
    )
    run(model, ["Relu"])


def test_noop_pad_opset9_attribute():
    model = model_from_text(
        text(
            9,
            "(float[2,3] x) => (float[2,3] y)",
            "p = Pad<pads = [0, 0, 0, 0]>(x)\n y = Relu(p)",
        )
    )
    run(model, ["Relu"])


def test_pad_with_padding_kept():
    model = model_from_text(
        text(17, "(float[2,3] x) => (float[2,4] y)", "p = Pad(x, pads)\n y = Relu(p)"),
        {"pads": i64(0, 0, 0, 1)},
    )
    keep(model)


def test_pad_overridable_initializer_input_kept():
    # IR 3: the pads are a graph input with a default; a caller may feed other pads.
    model = model_from_text(
        """
        <ir_version: 3, opset_import: ["" : 11]>
        g (float[2,3] x, int64[4] pads) => (float[A,B] y) {
            p = Pad(x, pads)
            y = Relu(p)
        }
        """,
        {"pads": i64(0, 0, 0, 0)},
    )
    out = optimize(model, passes=["simplify"])
    assert out.records[0].modified is False
    assert ops(out.model) == ["Pad", "Relu"]


# --- no-op Slice -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("starts", "ends", "axes", "declared"),
    [
        ([0], [I64_MAX], [1], "float[N,3] x"),  # open end, any dim
        ([-3], [3], [-1], "float[N,3] x"),  # bounds that cover the static dim
        ([0, 0], [100, 50], [0, 1], "float[2,3] x"),
    ],
)
def test_noop_slice(starts, ends, axes, declared):
    model = model_from_text(
        text(17, f"({declared}) => (float[N,3] y)", "s = Slice(x, b, e, a)\n y = Relu(s)"),
        {"b": i64(*starts), "e": i64(*ends), "a": i64(*axes)},
    )
    run(model, ["Relu"], shapes={"x": [2, 3]})


def test_noop_slice_opset9_attributes():
    model = model_from_text(
        text(
            9,
            "(float[2,3] x) => (float[2,3] y)",
            "s = Slice<starts = [0], ends = [1000], axes = [1]>(x)\n y = Relu(s)",
        )
    )
    run(model, ["Relu"])


@pytest.mark.parametrize(
    ("starts", "ends", "steps"),
    [
        ([0], [2], [1]),  # stops early
        ([1], [I64_MAX], [1]),  # starts late
        ([0], [1000], [1]),  # dim 0 is symbolic: 1000 may be short of it
        ([-1], [-I64_MAX], [-1]),  # reverses
    ],
)
def test_slice_that_drops_or_reorders_kept(starts, ends, steps):
    model = model_from_text(
        text(17, "(float[N,3] x) => (float[A,3] y)", "s = Slice(x, b, e, a, k)\n y = Relu(s)"),
        {"b": i64(*starts), "e": i64(*ends), "a": i64(0), "k": i64(*steps)},
    )
    keep(model, shapes={"x": [4, 3]})


# --- no-op Expand ----------------------------------------------------------------


@pytest.mark.parametrize("shape", [[1, 3], [3], [1], [1, 1]])
def test_noop_expand(shape):
    model = model_from_text(
        text(17, "(float[N,3] x) => (float[N,3] y)", "e = Expand(x, s)\n y = Relu(e)"),
        {"s": i64(*shape)},
    )
    run(model, ["Relu"], shapes={"x": [2, 3]})


@pytest.mark.parametrize("shape", [[2, 3], [1, 3], [4]])
def test_broadcasting_expand_kept(shape):
    model = model_from_text(
        text(17, "(float[2,1] x) => (float[A,B] y)", "e = Expand(x, s)\n y = Relu(e)"),
        {"s": i64(*shape)},
    )
    keep(model)


# --- Squeeze / Unsqueeze ---------------------------------------------------------


@pytest.mark.parametrize("opset", [11, 13])
def test_squeeze_unsqueeze_cancel(opset):
    if opset >= 13:
        body = "s = Squeeze(x, a)\n u = Unsqueeze(s, b)\n y = Relu(u)"
    else:
        body = "s = Squeeze<axes = [1]>(x)\n u = Unsqueeze<axes = [-2]>(s)\n y = Relu(u)"
    model = model_from_text(
        text(opset, "(float[2,1,3] x) => (float[2,1,3] y)", body),
        {"a": i64(1), "b": i64(-2)} if opset >= 13 else None,
    )
    run(model, ["Relu"])


@pytest.mark.parametrize("opset", [11, 13])
def test_unsqueeze_squeeze_cancel(opset):
    if opset >= 13:
        body = "u = Unsqueeze(x, a)\n s = Squeeze(u, a)\n y = Relu(s)"
    else:
        body = "u = Unsqueeze<axes = [0, 3]>(x)\n s = Squeeze<axes = [3, 0]>(u)\n y = Relu(s)"
    model = model_from_text(
        text(opset, "(float[N,3] x) => (float[N,3] y)", body),
        {"a": i64(0, -1)} if opset >= 13 else None,
    )
    run(model, ["Relu"], shapes={"x": [2, 3]})


def test_squeeze_unsqueeze_on_other_axes_kept():
    model = model_from_text(
        text(
            13,
            "(float[2,1,3,1] x) => (float[2,3,1,1] y)",
            "s = Squeeze(x, a)\n u = Unsqueeze(s, b)\n y = Relu(u)",
        ),
        {"a": i64(1), "b": i64(3)},
    )
    keep(model)


def test_unsqueeze_then_squeeze_without_axes_kept_when_x_has_ones():
    # Squeeze without axes would also drop x's own 1-dim.
    model = model_from_text(
        text(
            13,
            "(float[2,1] x) => (float[2] y)",
            "u = Unsqueeze(x, a)\n s = Squeeze(u)\n y = Relu(s)",
        ),
        {"a": i64(0)},
    )
    keep(model)


@pytest.mark.parametrize(
    ("first", "second", "merged"),
    [
        ([0], [2], [0, 2]),
        ([2], [0], [0, 3]),
        ([0, -1], [1], [0, 1, 4]),  # x[2,3] -> [1,2,3,1] -> [1,1,2,3,1]
        ([1], [1], [1, 2]),
    ],
)
def test_merge_unsqueeze_opset13(first, second, merged):
    dims = ",".join(f"D{i}" for i in range(2 + len(first) + len(second)))
    model = model_from_text(
        text(
            13,
            f"(float[2,3] x) => (float[{dims}] y)",
            "u = Unsqueeze(x, a)\n v = Unsqueeze(u, b)\n y = Relu(v)",
        ),
        {"a": i64(*first), "b": i64(*second)},
    )
    out = run(model, ["Unsqueeze", "Relu"])
    assert const_input(out, node_of(out, "Unsqueeze"), 1) == merged


def test_merge_unsqueeze_opset11_attributes():
    model = model_from_text(
        text(
            11,
            "(float[2,3] x) => (float[1,2,1,3] y)",
            "u = Unsqueeze<axes = [1]>(x)\n v = Unsqueeze<axes = [0]>(u)\n y = Relu(v)",
        )
    )
    out = run(model, ["Unsqueeze", "Relu"])
    assert attr(node_of(out, "Unsqueeze"), "axes") == [0, 2]


def test_merge_unsqueeze_negative_axes_need_rank():
    model = model_from_text(
        text(
            13,
            "(float[2,3] x) => (float[A,B,C,D] y)",
            "r = Relu(x)\n u = Unsqueeze(r, a)\n y = Unsqueeze(u, b)",
        ),
        {"a": i64(-1), "b": i64(0)},
    )
    # Without shape inference the rank of r is unknown: nothing to do.
    keep(model)
    # With it, the pair merges.
    out = run(model, ["Relu", "Unsqueeze"], passes=("infer-shapes", "simplify"))
    assert const_input(out, node_of(out, "Unsqueeze"), 1) == [0, 3]


@pytest.mark.parametrize("opset", [11, 13])
def test_merge_squeeze(opset):
    if opset >= 13:
        body = "s = Squeeze(x, a)\n t = Squeeze(s, b)\n y = Relu(t)"
        inits = {"a": i64(0), "b": i64(-1)}
    else:
        body = "s = Squeeze<axes = [0]>(x)\n t = Squeeze<axes = [3]>(s)\n y = Relu(t)"
        inits = None
    model = model_from_text(text(opset, "(float[1,2,1,3,1] x) => (float[2,1,3] y)", body), inits)
    out = run(model, ["Squeeze", "Relu"])
    node = node_of(out, "Squeeze")
    axes = const_input(out, node, 1) if opset >= 13 else attr(node, "axes")
    assert axes == [0, 4]


def test_merge_squeeze_without_axes_on_static_shape():
    # (1,2,1,3) -> Squeeze axis 0 -> (2,1,3) -> Squeeze every 1 -> (2,3): axes [0, 2] of x.
    model = model_from_text(
        text(
            13,
            "(float[1,2,1,3] x) => (float[2,3] y)",
            "s = Squeeze(x, a)\n t = Squeeze(s)\n y = Relu(t)",
        ),
        {"a": i64(0)},
    )
    out = run(model, ["Squeeze", "Relu"], passes=("infer-shapes", "simplify"))
    assert const_input(out, node_of(out, "Squeeze"), 1) == [0, 2]


# --- Reshape chains --------------------------------------------------------------


def test_merge_reshape_zero_copies_intermediate_dim():
    # The onnxoptimizer 0.4.2 bug: the `0` is the intermediate's 12, not x's 2.
    model = model_from_text(
        text(
            17,
            "(float[2,12] x) => (float[A,B] y)",
            "r = Reshape(x, s1)\n t = Reshape(r, s2)\n y = Relu(t)",
        ),
        {"s1": i64(12, 2), "s2": i64(0, -1)},
    )
    out = run(model, ["Reshape", "Relu"])
    assert const_input(out, node_of(out, "Reshape"), 1) == [12, -1]
    (y,) = assert_same_outputs(model, out, **EXACT)
    assert y.shape == (12, 2)


def test_merge_reshape_chain_of_three():
    model = model_from_text(
        text(
            17,
            "(float[2,12] x) => (float[24] y)",
            "a = Reshape(x, s1)\n b = Reshape(a, s2)\n c = Reshape(b, s3)\n y = Relu(c)",
        ),
        {"s1": i64(12, 2), "s2": i64(4, 6), "s3": i64(24)},
    )
    run(model, ["Reshape", "Relu"])


@pytest.mark.parametrize(
    ("s1", "s2", "merged"),
    [
        ([-1, 6], [0, 3, 2], [-1, 3, 2]),  # the only unknown `0`: -1 by element count
        ([0, 3, 4], [0, 12], None),  # both `0`s copy x's dim 0: [0, 12], a no-op
        ([-1, 6], [-1, 2, 3], [-1, 2, 3]),  # no `0`: the first shape does not matter
    ],
)
def test_merge_reshape_symbolic(s1, s2, merged):
    dims = ",".join(f"D{i}" for i in range(len(s2)))
    model = model_from_text(
        text(
            17,
            f"(float[N,12] x) => (float[{dims}] y)",
            "r = Reshape(x, s1)\n t = Reshape(r, s2)\n y = Relu(t)",
        ),
        {"s1": i64(*s1), "s2": i64(*s2)},
    )
    if merged is None:
        run(model, ["Relu"], shapes={"x": [4, 12]})
        return
    out = run(model, ["Reshape", "Relu"], shapes={"x": [4, 12]})
    assert const_input(out, node_of(out, "Reshape"), 1) == merged


def test_reshape_zero_on_unknown_intermediate_dim_kept():
    # `0` is the intermediate's dim 0 (2N, unknown) and a -1 takes the rest: no merge.
    model = model_from_text(
        text(
            17,
            "(float[N,12] x) => (float[A,B,C] y)",
            "r = Reshape(x, s1)\n t = Reshape(r, s2)\n y = Relu(t)",
        ),
        {"s1": i64(-1, 6), "s2": i64(0, 3, -1)},
    )
    keep(model, shapes={"x": [4, 12]})


def test_reshape_shape_from_own_dims():
    # x.view(x.size(0), -1) as exported: the Shape chain becomes Reshape(x, [0, -1]).
    model = model_from_text(
        text(
            13,
            "(float[N,3,4] x) => (float[N,12] y)",
            """
            s = Shape(x)
            d = Gather<axis = 0>(s, i0)
            u = Unsqueeze(d, a0)
            c = Concat<axis = 0>(u, m1)
            r = Reshape(x, c)
            y = Relu(r)
            """,
        ),
        {"i0": np.array(0, np.int64), "a0": i64(0), "m1": i64(-1)},
    )
    out = run(model, ["Reshape", "Relu"], shapes={"x": [2, 3, 4]})
    assert const_input(out, node_of(out, "Reshape"), 1) == [0, -1]


def test_reshape_shape_from_moved_dim_kept():
    # Dim 1 of x placed at position 0, with a -1 as well: not expressible as constants.
    model = model_from_text(
        text(
            13,
            "(float[N,M] x) => (float[M,N] y)",
            """
            s = Shape(x)
            d = Gather<axis = 0>(s, i1)
            u = Unsqueeze(d, a0)
            c = Concat<axis = 0>(u, m1)
            r = Reshape(x, c)
            y = Relu(r)
            """,
        ),
        {"i1": np.array(1, np.int64), "a0": i64(0), "m1": i64(-1)},
    )
    keep(model, shapes={"x": [2, 3]})


@pytest.mark.parametrize("perm", [[0, 2, 1, 3], [0, 1, 3, 2], [2, 0, 1, 3]])
def test_reshape_of_transpose_moving_only_unit_dims(perm):
    # An LSTM's (T, 2, 1, H) output made (T, 1, 2, H) and flattened.
    model = model_from_text(
        text(
            17,
            "(float[4,2,1,8] x) => (float[A,B] y)",
            f"t = Transpose<perm = {perm}>(x)\n r = Reshape(t, s)\n y = Relu(r)",
        ),
        {"s": i64(4, 16) if perm[0] == 0 else i64(1, 64)},
    )
    run(model, ["Reshape", "Relu"])


def test_reshape_of_reordering_transpose_kept():
    model = model_from_text(
        text(
            17,
            "(float[4,2,1,8] x) => (float[8,8] y)",
            "t = Transpose<perm = [1, 0, 2, 3]>(x)\n r = Reshape(t, s)\n y = Relu(r)",
        ),
        {"s": i64(8, 8)},
    )
    keep(model)


# --- Transpose chains ------------------------------------------------------------


@pytest.mark.parametrize(
    ("p1", "p2", "expected"),
    [
        ([1, 2, 0], [1, 2, 0], [2, 0, 1]),
        ([1, 2, 0], [2, 0, 1], None),
        (None, None, None),  # both reverse
        (None, [0, 2, 1], [2, 0, 1]),
    ],
)
def test_merge_transpose(p1, p2, expected):
    first = "Transpose" if p1 is None else f"Transpose<perm = {p1}>"
    second = "Transpose" if p2 is None else f"Transpose<perm = {p2}>"
    model = model_from_text(
        text(
            17,
            "(float[2,3,4] x) => (float[A,B,C] y)",
            f"a = {first}(x)\n b = {second}(a)\n y = Relu(b)",
        )
    )
    if expected is None:
        run(model, ["Relu"])
    else:
        out = run(model, ["Transpose", "Relu"])
        assert attr(node_of(out, "Transpose"), "perm") == expected


# --- Cast chains -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "mid", "to", "expected"),
    [
        ("float", 11, 1, ["Relu"]),  # float -> double -> float: x
        ("int32", 7, 1, ["Cast", "Relu"]),  # int32 -> int64 exact: one Cast
        ("float16", 1, 11, ["Cast", "Relu"]),
        ("float", 1, 10, ["Cast", "Relu"]),  # onnxscript's pair: float -> float16 direct
    ],
)
def test_merge_lossless_cast(source, mid, to, expected):
    out_type = {1: "float", 10: "float16", 11: "double"}[to]
    model = model_from_text(
        text(
            17,
            f"({source}[2,3] x) => ({out_type}[2,3] y)",
            f"a = Cast<to = {mid}>(x)\n b = Cast<to = {to}>(a)\n y = Relu(b)",
        )
    )
    run(model, expected)


@pytest.mark.parametrize(
    ("source", "mid", "to"),
    [
        ("float", 6, 1),  # float -> int32 -> float truncates
        ("float", 10, 1),  # float -> float16 -> float rounds
        ("double", 1, 11),  # double -> float -> double rounds
        ("int64", 6, 7),  # int64 -> int32 -> int64 wraps
    ],
)
def test_lossy_cast_chain_kept(source, mid, to):
    out_type = {1: "float", 7: "int64", 11: "double"}[to]
    model = model_from_text(
        text(
            17,
            f"({source}[2,3] x) => ({out_type}[2,3] y)",
            f"a = Cast<to = {mid}>(x)\n b = Cast<to = {to}>(a)\n y = Abs(b)",
        )
    )
    kept = keep(model)
    # The point of the rule: these really differ from one Cast.
    if source == "float" and mid == 6:
        direct = model_from_text(
            text(17, "(float[2,3] x) => (float[2,3] y)", "b = Cast<to = 1>(x)\n y = Abs(b)")
        )
        with pytest.raises(AssertionError):
            assert_same_outputs(kept, direct, **EXACT)


# --- Slice chains ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "second", "merged"),
    [
        # (starts, ends, steps) on axis 1 of x[N,10], then of the result
        ((2, I64_MAX, 1), (1, 5, 2), (3, 7, 2)),
        ((1, 9, 2), (1, I64_MAX, 2), (3, 9, 4)),
        ((-6, I64_MAX, 1), (0, -1, 1), (4, 9, 1)),  # negatives resolved on the static dim
        ((8, I64_MAX, 1), (3, 5, 1), (11, 13, 1)),  # empty either way
    ],
)
def test_merge_slices_same_axis(first, second, merged):
    model = model_from_text(
        text(
            17,
            "(float[N,10] x) => (float[N,C] y)",
            "a = Slice(x, b1, e1, ax, k1)\n b = Slice(a, b2, e2, ax, k2)\n y = Relu(b)",
        ),
        {
            "b1": i64(first[0]),
            "e1": i64(first[1]),
            "k1": i64(first[2]),
            "b2": i64(second[0]),
            "e2": i64(second[1]),
            "k2": i64(second[2]),
            "ax": i64(1),
        },
    )
    passes = ("infer-shapes", "simplify") if min(*first, *second) < 0 else ("simplify",)
    out = run(model, ["Slice", "Relu"], passes=passes, shapes={"x": [3, 10]})
    node = node_of(out, "Slice")
    assert [const_input(out, node, i)[0] for i in (1, 2, 4)] == list(merged)


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ((0, I64_MAX, -1), (1, 5, 1)),  # negative step
        ((-3, I64_MAX, 1), (1, 2, 1)),  # negative start, dim 0 unknown
    ],
)
def test_slices_not_composable_kept(first, second):
    model = model_from_text(
        text(
            17,
            "(float[N,M] x) => (float[A,B] y)",
            "a = Slice(x, b1, e1, ax, k1)\n b = Slice(a, b2, e2, ax, k2)\n y = Relu(b)",
        ),
        {
            "b1": i64(first[0]),
            "e1": i64(first[1]),
            "k1": i64(first[2]),
            "b2": i64(second[0]),
            "e2": i64(second[1]),
            "k2": i64(second[2]),
            "ax": i64(0),
        },
    )
    keep(model, shapes={"x": [6, 4]})


def test_merge_slices_opset9_attributes():
    model = model_from_text(
        text(
            9,
            "(float[4,6] x) => (float[2,2] y)",
            "a = Slice<starts = [1], ends = [4], axes = [0]>(x)\n"
            "b = Slice<starts = [1, 2], ends = [1000, 4], axes = [0, 1]>(a)\n y = Relu(b)",
        )
    )
    out = run(model, ["Slice", "Relu"])
    node = node_of(out, "Slice")
    assert attr(node, "starts") == [2, 2]
    assert attr(node, "ends") == [4, 4]


def test_shared_first_op_merged_into_each_reader():
    # Both readers of `t` merge with it; `t` then dies: 3 Transposes -> 2.
    model = model_from_text(
        text(
            17,
            "(float[2,3,4] x) => (float[A,B,C] y, float[D,E,F] z)",
            "t = Transpose<perm = [1, 2, 0]>(x)\n"
            "y = Transpose<perm = [2, 0, 1]>(t)\n z = Transpose<perm = [1, 0, 2]>(t)",
        )
    )
    run(model, ["Identity", "Transpose"])


# --- folding: Gather of a partly static Shape ---------------------------------------


def test_fold_gather_of_static_dim_in_dynamic_shape():
    model = model_from_text(
        text(
            17,
            "(float[N,3,4] x) => (float[N,3,4] y)",
            """
            s = Shape(x)
            d = Gather<axis = 0>(s, i)
            f = Cast<to = 1>(d)
            y = Mul(x, f)
            """,
        ),
        {"i": np.array(-1, np.int64)},  # scalar index: onnxscript's folder leaves it
    )
    out = run(model, ["Mul"], passes=("fold-constants",), shapes={"x": [2, 3, 4]})
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in out.graph.initializer}
    assert float(inits[out.graph.node[0].input[1]]) == 4.0


def test_gather_of_symbolic_dim_kept():
    model = model_from_text(
        text(
            17,
            "(float[N,3,4] x) => (float[N,3,4] y)",
            """
            s = Shape(x)
            d = Gather<axis = 0>(s, i)
            f = Cast<to = 1>(d)
            y = Mul(x, f)
            """,
        ),
        {"i": np.array(0, np.int64)},
    )
    out = optimize(model, passes=["fold-constants"])
    assert ops(out.model) == ["Shape", "Gather", "Cast", "Mul"]
    assert_same_outputs(model, out.model, shapes={"x": [2, 3, 4]}, **EXACT)
