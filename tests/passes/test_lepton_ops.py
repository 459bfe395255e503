"""Tier 1: the ai.lepton schema: validation, overloads, function bodies on ORT vs numpy refs."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import onnx_ir as ir
import pytest

from lepton_compile.passes import lepton_ops
from lepton_compile.passes.lepton_ops import ACTIVATIONS, DOMAIN, SCHEMAS
from lepton_compile.passes.testing import run_ort

RTOL, ATOL = 1e-5, 1e-5

PARAMS = {"leaky_relu": [0.1], "clip": [-0.5, 0.75], "hard_sigmoid": [0.3, 0.4]}

# (op, input shapes in schema order, base attributes)
OPS = {
    "FusedConv": ([(1, 4, 6, 6), (6, 2, 3, 3), (6,)], {"group": 2, "pads": [1, 0, 1, 2]}),
    "FusedGemm": ([(3, 5), (4, 5), (4,)], {"transB": 1, "alpha": 0.5, "beta": 2.0}),
    "FusedMatMul": ([(2, 3, 5), (5, 4), (4,)], {}),
}
OUTPUT_SHAPES = {"FusedConv": (1, 6, 6, 6), "FusedGemm": (3, 4), "FusedMatMul": (2, 3, 4)}


def lepton_model(
    op_type: str, attrs: dict, *, bias: bool = True, residual: bool = False, opset: int = 17
) -> onnx.ModelProto:
    """One ai.lepton node with every input fed, and its function attached."""
    shapes, _ = OPS[op_type]
    names = [spec.name for spec in SCHEMAS[op_type].inputs]
    inputs = [oh.make_tensor_value_info(names[0], onnx.TensorProto.FLOAT, shapes[0])]
    inputs.append(oh.make_tensor_value_info(names[1], onnx.TensorProto.FLOAT, shapes[1]))
    node_inputs = names[:2]
    if bias:
        inputs.append(oh.make_tensor_value_info(names[2], onnx.TensorProto.FLOAT, shapes[2]))
    node_inputs.append(names[2] if bias else "")
    if residual:
        z = oh.make_tensor_value_info("Z", onnx.TensorProto.FLOAT, OUTPUT_SHAPES[op_type])
        inputs.append(z)
        node_inputs.append("Z")
    while node_inputs[-1] == "":
        node_inputs.pop()
    node = oh.make_node(op_type, node_inputs, ["Y"], domain=DOMAIN, **attrs)
    output = oh.make_tensor_value_info("Y", onnx.TensorProto.FLOAT, OUTPUT_SHAPES[op_type])
    graph = oh.make_graph([node], "g", inputs, [output])
    model = oh.make_model(
        graph, opset_imports=[oh.make_opsetid("", opset), oh.make_opsetid(DOMAIN, 1)]
    )
    work = ir.serde.deserialize_model(model)
    assert lepton_ops.attach_functions(work)
    assert not lepton_ops.attach_functions(work), "attach_functions is not idempotent"
    return ir.serde.serialize_model(work)


def check_against_reference(model: onnx.ModelProto, op_type: str, attrs: dict) -> None:
    onnx.checker.check_model(model, full_check=True)
    rng = np.random.default_rng(11)
    feeds = {
        i.name: rng.standard_normal([d.dim_value for d in i.type.tensor_type.shape.dim]).astype(
            np.float32
        )
        for i in model.graph.input
    }
    (actual,) = run_ort(model, feeds)
    order = [spec.name for spec in SCHEMAS[op_type].inputs]
    expected = lepton_ops.reference(op_type, [feeds.get(n) for n in order], attrs)
    np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=ATOL)


def test_schema_is_complete():
    assert set(SCHEMAS) == {"FusedConv", "FusedGemm", "FusedMatMul"}
    required = {"none", "relu", "gelu", "silu", "sigmoid", "clip", "leaky_relu", "hardswish"}
    assert required <= set(ACTIVATIONS)
    for schema in SCHEMAS.values():
        names = [a.name for a in schema.attributes]
        assert len(names) == len(set(names))
        assert [i.name for i in schema.inputs][lepton_ops.RESIDUAL_INPUT] == "Z"
        assert schema.min_inputs == 2


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("op_type", sorted(OPS))
def test_function_body_matches_reference(op_type, activation):
    attrs = dict(OPS[op_type][1])
    if activation != "none":
        attrs["activation"] = activation
    if activation in PARAMS:
        attrs["activation_params"] = PARAMS[activation]
    model = lepton_model(op_type, attrs, bias=activation != "none")
    check_against_reference(model, op_type, attrs)


@pytest.mark.parametrize("opset", [10, 13, 20])
@pytest.mark.parametrize("op_type", sorted(OPS))
def test_residual_epilogue_at_several_opsets(op_type, opset):
    # Opset-dependent bodies: Clip with attributes (< 11), HardSwish (>= 14), Gelu (>= 20).
    attrs = {
        **OPS[op_type][1],
        "activation": "hardswish",
        "post_activation": "clip" if opset < 20 else "gelu",
    }
    if opset < 20:
        attrs["post_activation_params"] = [-1.0, 1.5]
    model = lepton_model(op_type, attrs, residual=True, opset=opset)
    assert model.ir_version >= lepton_ops.MIN_IR_VERSION
    check_against_reference(model, op_type, attrs)


def test_overloads_are_shared_and_pruned():
    model = lepton_model("FusedConv", {"activation": "relu", "pads": [1, 1, 1, 1]})
    work = ir.serde.deserialize_model(model)
    (node,) = work.graph
    assert node.overload == "float.relu"
    # A second node with other Conv attributes shares the body (attributes are references).
    other = ir.Node(
        DOMAIN,
        "FusedConv",
        list(node.inputs),
        [ir.AttrString("activation", "relu"), ir.AttrInt64s("strides", [2, 2])],
    )
    work.graph.append(other)
    assert lepton_ops.attach_functions(work)  # the new node gets its overload ...
    assert other.overload == "float.relu"
    assert len(work.functions) == 1  # ... and no body of its own
    # Changing the epilogue gives another overload; the unused body is dropped.
    node.attributes["activation"] = ir.AttrString("activation", "sigmoid")
    work.graph.remove(other)
    assert lepton_ops.attach_functions(work)
    assert [key[2] for key in work.functions] == ["float.sigmoid"]


def test_overload_names():
    node = ir.Node(
        DOMAIN,
        "FusedMatMul",
        [ir.Value(name="a"), ir.Value(name="b"), ir.Value(name="bias"), ir.Value(name="z")],
        [
            ir.AttrString("activation", "clip"),
            ir.AttrFloat32s("activation_params", [0.0, 6.0]),
            ir.AttrString("post_activation", "relu"),
        ],
    )
    assert lepton_ops.validate(node) is None
    assert lepton_ops.overload_name(node, ir.DataType.FLOAT16) == "float16.bias.clip(0,6).res.relu"


@pytest.mark.parametrize(
    ("attrs", "n_inputs", "why"),
    [
        ({"activation": "swish"}, 2, "not one of"),
        ({"activation": "clip", "activation_params": [1.0]}, 2, "takes 2 parameters"),
        ({"post_activation": "relu"}, 3, "needs the residual"),
        ({"pads": [1, 1, 1, 1]}, 2, "no attribute 'pads'"),
        ({"transA": 1.0}, 2, "must be a INT"),
        ({}, 1, "takes 2 to 4 inputs"),
    ],
)
def test_validate_rejects(attrs, n_inputs, why):
    inputs = [ir.Value(name=f"v{i}") for i in range(n_inputs)]
    attributes = [ir.convenience.convert_attribute(k, v) for k, v in attrs.items()]
    node = ir.Node(DOMAIN, "FusedGemm", inputs, attributes)
    reason = lepton_ops.validate(node)
    assert reason is not None and why in reason, reason


def test_reference_rejects_a_broadcast_residual():
    a, b = np.ones((2, 3), np.float32), np.ones((3, 4), np.float32)
    with pytest.raises(ValueError, match="residual shape"):
        lepton_ops.reference("FusedMatMul", [a, b, None, np.ones(4, np.float32)])


@pytest.mark.parametrize(
    "attrs",
    [
        {"strides": [2, 1], "dilations": [1, 2]},
        {"auto_pad": "SAME_UPPER", "strides": [2, 2]},
        {"auto_pad": "SAME_LOWER", "strides": [2, 2]},
        {"auto_pad": "VALID", "group": 2},
    ],
)
def test_conv_reference_matches_onnxruntime(attrs):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 4, 7, 6)).astype(np.float32)
    w = rng.standard_normal((6, 4 // attrs.get("group", 1), 3, 2)).astype(np.float32)
    node = oh.make_node("Conv", ["x", "w"], ["y"], **attrs)
    graph = oh.make_graph(
        [node],
        "g",
        [
            oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, x.shape),
            oh.make_tensor_value_info("w", onnx.TensorProto.FLOAT, w.shape),
        ],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    (expected,) = run_ort(model, {"x": x, "w": w})
    np.testing.assert_allclose(lepton_ops.conv_ref(x, w, **attrs), expected, rtol=1e-5, atol=1e-5)


def test_the_contract_module_is_dependency_free():
    """lepton_compile.contract imports the standard library only: any part may import it."""
    import ast
    import sys
    from pathlib import Path

    from lepton_compile import contract

    tree = ast.parse(Path(contract.__file__).read_text())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    assert roots <= set(sys.stdlib_module_names), roots - set(sys.stdlib_module_names)


def test_the_contract_defines_the_activations_every_part_uses():
    from lepton_compile.contract import ACTIVATION_CODES, activation_value, epilogue_value

    assert [ACTIVATIONS[n].code for n in ACTIVATIONS] == list(range(len(ACTIVATIONS)))
    assert ACTIVATION_CODES["none"] == 0
    x = np.linspace(-5, 5, 21)
    for name, spec in ACTIVATIONS.items():
        want = np.array([activation_value(name, v) for v in x])
        np.testing.assert_allclose(lepton_ops.activation_ref(name, x), want, atol=1e-12)
        assert spec.onnx_op is None or isinstance(spec.onnx_op, str)
    epi = lepton_ops.Epilogue("clip", (0.0, 6.0), "relu", ())
    assert epilogue_value(epi, 7.5, -8.0) == 0.0
    assert epilogue_value(epi, 7.5) == 6.0


def test_roofline_counts_lepton_ops_by_the_contract():
    """A lepton-target model costs the same with or without its function bodies inlined."""
    from lepton_compile.bench import roofline

    node = oh.make_node(
        "FusedConv",
        ["x", "w", "b", "z"],
        ["y"],
        domain=DOMAIN,
        pads=[1, 1, 1, 1],
        activation="gelu",
        post_activation="relu",
    )
    weights = [
        onnx.numpy_helper.from_array(np.ones((6, 4, 3, 3), np.float32), "w"),
        onnx.numpy_helper.from_array(np.ones(6, np.float32), "b"),
    ]
    graph = oh.make_graph(
        [node],
        "g",
        [
            oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4, 8, 8]),
            oh.make_tensor_value_info("z", onnx.TensorProto.FLOAT, [1, 6, 8, 8]),
        ],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 6, 8, 8])],
        weights,
    )
    opsets = [oh.make_opsetid("", 17), oh.make_opsetid(DOMAIN, 1)]
    bare = oh.make_model(graph, ir_version=10, opset_imports=opsets)
    work = ir.serde.deserialize_model(bare)
    lepton_ops.attach_functions(work)
    with_bodies = ir.serde.serialize_model(work)
    c_bare, c_bodies = roofline.count(bare), roofline.count(with_bodies)
    assert not c_bare.unknown and not c_bodies.unknown
    assert c_bare.flops == c_bodies.flops
    assert "ai.lepton.FusedConv" in c_bare.by_op
