"""Seeded mutators for the CLI fuzz suite: small models, and their byte, protobuf, graph, flag,
``--inputs`` data and report mutations, turned into a deterministic list of cases.

A case is data (bytes and argv with placeholders), built from ``random.Random`` seeded by its
index, so the same index always gives the same case and a failure reproduces by its id.
Sizes stay small on purpose: every "huge" dimension is far past any machine's memory, so that
an allocation fails at once instead of filling memory that other processes share.
"""

from __future__ import annotations

import copy
import io
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from conftest import mlp_text, text_model
from onnx import TensorProto, helper, numpy_helper, parser

SEED = "lepton-fuzz/1"

SideFiles = list[tuple[str, bytes]]  # files beside the model: (name, bytes); "x/" is a dir

# Flags that keep a run of the main command on a valid model well under a second.
FAST_COMPILE = [
    "--quick",
    "--no-cache",
    "--no-isolate",
    "--recipes",
    "original,fused",
    "--calibration-samples",
    "4",
    "--eval-samples",
    "2",
    "-q",
]

# ---------------------------------------------------------------------------------------------
# Base models: small, valid, and covering float, conv and integer-id inputs.


@dataclass(frozen=True)
class Base:
    """A valid model and the feed it takes at batch 1: (name, numpy dtype, shape) per input."""

    name: str
    model: onnx.ModelProto
    feed: tuple[tuple[str, str, tuple[int, ...]], ...]


def _mlp() -> Base:
    rng = np.random.default_rng(0)
    m = text_model(
        mlp_text(8, 16, 4),
        {
            "w1": rng.standard_normal((8, 16)).astype(np.float32),
            "b1": rng.standard_normal(16).astype(np.float32),
            "w2": rng.standard_normal((16, 4)).astype(np.float32),
            "b2": rng.standard_normal(4).astype(np.float32),
        },
    )
    return Base("mlp", m, (("x", "float32", (1, 8)),))


def _conv() -> Base:
    rng = np.random.default_rng(1)
    m = text_model(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        conv (float[N, 2, 8, 8] images) => (float[N, 3] probs) {
            c = Conv <pads = [1, 1, 1, 1]> (images, w, b)
            n = BatchNormalization (c, s, o, mu, var)
            r = Relu (n)
            g = GlobalAveragePool (r)
            f = Flatten <axis = 1> (g)
            probs = Softmax <axis = -1> (f)
        }
        """,
        {
            "w": rng.standard_normal((3, 2, 3, 3)).astype(np.float32),
            "b": rng.standard_normal(3).astype(np.float32),
            "s": rng.uniform(0.5, 1.5, 3).astype(np.float32),
            "o": rng.standard_normal(3).astype(np.float32),
            "mu": rng.standard_normal(3).astype(np.float32),
            "var": rng.uniform(0.5, 1.5, 3).astype(np.float32),
        },
    )
    return Base("conv", m, (("images", "float32", (1, 2, 8, 8)),))


def _ids() -> Base:
    rng = np.random.default_rng(2)
    m = text_model(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        emb (int64[B, 6] ids, int64[B, 6] mask) => (float[B, 4] pooled) {
            e = Gather <axis = 0> (table, ids)
            mf = Cast <to = 1> (mask)
            me = Unsqueeze (mf, ax)
            w = Mul (e, me)
            pooled = ReduceMean <axes = [1], keepdims = 0> (w)
        }
        """,
        {
            "table": rng.standard_normal((20, 4)).astype(np.float32),
            "ax": np.array([-1], dtype=np.int64),
        },
    )
    return Base("ids", m, (("ids", "int64", (1, 6)), ("mask", "int64", (1, 6))))


def _static() -> Base:
    m = parser.parse_model(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        tiny (float[1, 4] x) => (float[1, 4] y) {
            h = Relu (x)
            y = Add (h, x)
        }
        """
    )
    return Base("static", m, (("x", "float32", (1, 4)),))


BASES: dict[str, Base] = {b.name: b for b in (_mlp(), _conv(), _ids(), _static())}


def _clone(m: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(m)
    return out


# ---------------------------------------------------------------------------------------------
# Byte level: the serialized file, damaged.

ByteMutator = Callable[[random.Random, bytes], tuple[str, bytes]]


def _flip_bits(rng: random.Random, data: bytes) -> tuple[str, bytes]:
    b = bytearray(data)
    k = rng.randint(1, 8)
    for _ in range(k):
        b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    return f"flip{k}bits", bytes(b)


def _set_bytes(rng: random.Random, data: bytes) -> tuple[str, bytes]:
    b = bytearray(data)
    k = rng.randint(1, 6)
    for _ in range(k):
        b[rng.randrange(len(b))] = rng.randrange(256)
    return f"set{k}bytes", bytes(b)


def _truncate(rng: random.Random, data: bytes) -> tuple[str, bytes]:
    return "truncate", data[: rng.randrange(1, len(data))]


def _insert_garbage(rng: random.Random, data: bytes) -> tuple[str, bytes]:
    at = rng.randrange(len(data) + 1)
    return "insert", data[:at] + rng.randbytes(rng.randint(1, 32)) + data[at:]


def _delete_range(rng: random.Random, data: bytes) -> tuple[str, bytes]:
    at = rng.randrange(len(data))
    return "delete", data[:at] + data[at + rng.randint(1, 16) :]


def _duplicate_range(rng: random.Random, data: bytes) -> tuple[str, bytes]:
    a = rng.randrange(len(data))
    b = min(len(data), a + rng.randint(1, 64))
    return "duplicate", data[:b] + data[a:b] + data[b:]


def _zero_range(rng: random.Random, data: bytes) -> tuple[str, bytes]:
    a = rng.randrange(len(data))
    n = rng.randint(1, 32)
    return "zeros", data[:a] + bytes(min(n, len(data) - a)) + data[a + n :]


def _empty(rng: random.Random, data: bytes) -> tuple[str, bytes]:
    return "empty", b""


def _random_bytes(rng: random.Random, data: bytes) -> tuple[str, bytes]:
    return "random", rng.randbytes(rng.choice([1, 2, 7, 64, 500]))


def _text_instead(rng: random.Random, data: bytes) -> tuple[str, bytes]:
    texts = [
        b'<ir_version: 8, opset_import: ["" : 17]>\ng (float[1] x) => (float[1] y) { y = Abs (x) }',
        b'{"ir_version": 8, "graph": {}}',
        b"ir_version: 8\ngraph { name: 'g' }\n",
        "ünïcödé ✓\n".encode(),
        b"\x00" * 64,
        b"\xff" * 64,
    ]
    return "text", rng.choice(texts)


def _corrupt_string(rng: random.Random, data: bytes) -> tuple[str, bytes]:
    # A byte inside a name, op type or domain set to a value that cannot start UTF-8 text: the
    # framing stays valid, so only the text is damaged.
    words = [
        w for w in (b"MatMul", b"Relu", b"Softmax", b"Conv", b"Gather", b"x", b"y") if w in data
    ]
    w = rng.choice(words)
    at = data.index(w) + rng.randrange(len(w))
    bad = rng.choice([0x80, 0xC0, 0xF5, 0xFE, 0xFF])
    return "utf8", data[:at] + bytes([bad]) + data[at + 1 :]


def _varint_overflow(rng: random.Random, data: bytes) -> tuple[str, bytes]:
    # Field 1 (ir_version) as an over-long varint, then the rest of the file.
    return "varint", b"\x08" + b"\xff" * rng.randint(9, 12) + data


def _other_message(rng: random.Random, data: bytes) -> tuple[str, bytes]:
    # A valid protobuf of another ONNX message: parses, but as the wrong thing.
    m = onnx.ModelProto()
    m.ParseFromString(data)
    msg = rng.choice([m.graph, m.graph.node[0], m.opset_import[0]] + list(m.graph.initializer[:1]))
    return "other-message", msg.SerializeToString()


BYTE_MUTATORS: list[ByteMutator] = [
    _flip_bits,
    _set_bytes,
    _truncate,
    _insert_garbage,
    _delete_range,
    _duplicate_range,
    _zero_range,
    _empty,
    _random_bytes,
    _text_instead,
    _corrupt_string,
    _varint_overflow,
    _other_message,
]


# ---------------------------------------------------------------------------------------------
# Protobuf level: field values changed, the file still parses.

ProtoMutator = Callable[[random.Random, onnx.ModelProto], str]

_HUGE_DIMS = [2**40, 2**62, 2**63 - 1]  # far past memory: numpy refuses at once
_ODD_DIMS = [-1, -7, 0, *_HUGE_DIMS]
_ELEM_TYPES = [0, 2, 3, 6, 8, 9, 10, 11, 13, 14, 16, 17, 21, 23, 99, -1]


def _user_inputs(m: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    inits = {i.name for i in m.graph.initializer}
    return [i for i in m.graph.input if i.name not in inits]


def _ir_version(rng: random.Random, m: onnx.ModelProto) -> str:
    v = rng.choice([0, -1, 1, 2, 3, 7, 11, 12, 99, 2**40, -(2**63)])
    m.ir_version = v
    return f"ir{v}"


def _opset_version(rng: random.Random, m: onnx.ModelProto) -> str:
    v = rng.choice([0, -1, 1, 6, 12, 18, 21, 23, 99, 10000, 2**31, 2**62])
    m.opset_import[0].version = v
    return f"opset{v}"


def _opset_imports(rng: random.Random, m: onnx.ModelProto) -> str:
    kind = rng.choice(["none", "duplicate", "unknown-domain", "ai.onnx", "empty-domain-name"])
    if kind == "none":
        del m.opset_import[:]
    elif kind == "duplicate":
        m.opset_import.add(domain="", version=rng.choice([9, 13, 17, 19]))
    elif kind == "unknown-domain":
        m.opset_import.add(domain="com.nowhere", version=rng.choice([1, 99]))
    elif kind == "ai.onnx":
        m.opset_import[0].domain = "ai.onnx"
    else:
        m.opset_import.add(domain="", version=0)
    return f"imports-{kind}"


def _input_dims(rng: random.Random, m: onnx.ModelProto) -> str:
    vi = rng.choice(_user_inputs(m) or list(m.graph.input))
    shape = vi.type.tensor_type.shape
    kind = rng.choice(["value", "value", "param", "no-shape", "rank+1", "rank-1", "scalar"])
    if kind == "value" and shape.dim:
        d = shape.dim[rng.randrange(len(shape.dim))]
        d.dim_value = rng.choice(_ODD_DIMS)
        return f"dim{d.dim_value}"
    if kind == "param" and shape.dim:
        d = shape.dim[rng.randrange(len(shape.dim))]
        d.dim_param = rng.choice(["", "N", "?", "batch size", "é", "-1", "x" * 300])
        return "dim-param"
    if kind == "no-shape":
        vi.type.tensor_type.ClearField("shape")
    elif kind == "rank+1":
        shape.dim.add().dim_value = rng.choice([1, 3])
    elif kind == "rank-1" and shape.dim:
        del shape.dim[-1]
    else:
        del shape.dim[:]
    return f"input-{kind}"


def _output_type(rng: random.Random, m: onnx.ModelProto) -> str:
    vi = m.graph.output[0]
    if rng.random() < 0.5:
        vi.type.tensor_type.elem_type = rng.choice(_ELEM_TYPES)
        return f"output-elem{vi.type.tensor_type.elem_type}"
    shape = vi.type.tensor_type.shape
    if shape.dim:
        shape.dim[-1].dim_value = rng.choice([*_ODD_DIMS, 5])
    return "output-dim"


def _elem_type(rng: random.Random, m: onnx.ModelProto) -> str:
    t = rng.choice(_ELEM_TYPES)
    vi = rng.choice(_user_inputs(m) or list(m.graph.input))
    vi.type.tensor_type.elem_type = t
    return f"input-elem{t}"


def _initializer_type(rng: random.Random, m: onnx.ModelProto) -> str:
    if not m.graph.initializer:
        return _elem_type(rng, m)
    init = rng.choice(list(m.graph.initializer))
    init.data_type = rng.choice(_ELEM_TYPES)
    return f"init-type{init.data_type}"


def _initializer_dims(rng: random.Random, m: onnx.ModelProto) -> str:
    if not m.graph.initializer:
        return _input_dims(rng, m)
    init = rng.choice(list(m.graph.initializer))
    kind = rng.choice(["odd", "extra", "drop", "swap"])
    if kind == "odd" and init.dims:
        init.dims[rng.randrange(len(init.dims))] = rng.choice(_ODD_DIMS)
    elif kind == "extra":
        init.dims.append(rng.choice([1, 2]))
    elif kind == "drop" and init.dims:
        del init.dims[-1]
    else:
        init.dims[:] = list(reversed(init.dims))
    return f"init-dims-{kind}"


def _initializer_data(rng: random.Random, m: onnx.ModelProto) -> str:
    if not m.graph.initializer:
        return _ir_version(rng, m)
    init = rng.choice(list(m.graph.initializer))
    kind = rng.choice(["truncate", "extend", "typed-field", "both"])
    if kind == "truncate":
        init.raw_data = init.raw_data[: rng.randrange(max(1, len(init.raw_data)))]
    elif kind == "extend":
        init.raw_data += b"\x00" * rng.choice([1, 4, 64])
    elif kind == "typed-field":
        init.ClearField("raw_data")
        init.float_data.extend([1.0] * rng.choice([0, 1, 3]))
    else:
        init.int64_data.extend([1, 2, 3])
    return f"init-data-{kind}"


def _external_data(rng: random.Random, m: onnx.ModelProto) -> str:
    if not m.graph.initializer:
        return _ir_version(rng, m)
    init = rng.choice(list(m.graph.initializer))
    where = rng.choice(["missing.bin", "../outside.bin", "/etc/hostname", "", ".", "model.onnx"])
    init.ClearField("raw_data")
    init.data_location = TensorProto.EXTERNAL
    entries = [("location", where)]
    if rng.random() < 0.5:
        entries += [("offset", rng.choice(["0", "-1", "99999999999", "x"])), ("length", "16")]
    for k, v in entries:
        init.external_data.add(key=k, value=v)
    return "external"


def _duplicate_name(rng: random.Random, m: onnx.ModelProto) -> str:
    g = m.graph
    kind = rng.choice(["input", "initializer", "node-output", "output-is-input"])
    if kind == "input":
        g.input.append(copy.deepcopy(g.input[0]))
    elif kind == "initializer" and g.initializer:
        g.initializer.append(copy.deepcopy(g.initializer[0]))
    elif kind == "node-output" and len(g.node) > 1:
        g.node[0].output[0] = g.node[-1].output[0]
    else:
        g.output[0].name = g.input[0].name
    return f"dup-{kind}"


def _dangling_input(rng: random.Random, m: onnx.ModelProto) -> str:
    node = rng.choice(list(m.graph.node))
    node.input[rng.randrange(len(node.input))] = rng.choice(["ghost", "", " ", "y"])
    return "dangling"


def _missing_initializer(rng: random.Random, m: onnx.ModelProto) -> str:
    if not m.graph.initializer:
        return _dangling_input(rng, m)
    del m.graph.initializer[rng.randrange(len(m.graph.initializer))]
    return "no-init"


def _attribute(rng: random.Random, m: onnx.ModelProto) -> str:
    nodes = [n for n in m.graph.node if n.attribute]
    if not nodes:
        node = rng.choice(list(m.graph.node))
        node.attribute.append(helper.make_attribute("bogus", rng.choice([1, 1.5, "s", [1, 2]])))
        return "attr-unknown"
    a = rng.choice(list(rng.choice(nodes).attribute))
    kind = rng.choice(["type-tag", "float", "string", "ints", "value", "tensor", "graph"])
    if kind == "type-tag":
        a.type = rng.choice([1, 3, 4, 5, 7, 8, 0])  # says one type, holds another
    elif kind == "float":
        a.ClearField("i")
        a.ClearField("ints")
        a.type, a.f = onnx.AttributeProto.FLOAT, 1.5
    elif kind == "string":
        a.ClearField("i")
        a.ClearField("ints")
        a.type, a.s = onnx.AttributeProto.STRING, b"\xff\xfe"
    elif kind == "ints":
        a.ClearField("i")
        a.type = onnx.AttributeProto.INTS
        a.ints[:] = [rng.choice([-1, 0, 99, 2**40]) for _ in range(rng.randint(0, 5))]
    elif kind == "value":
        if a.type == onnx.AttributeProto.INT:
            a.i = rng.choice([99, -99, 2**40, -(2**63)])
        elif a.type == onnx.AttributeProto.INTS:
            a.ints[:] = [rng.choice([-1, 0, 99]) for _ in range(len(a.ints) or 1)]
        else:
            a.name = "unknown_attr"
    elif kind == "tensor":
        a.ClearField("i")
        a.ClearField("ints")
        a.type = onnx.AttributeProto.TENSOR
        a.t.CopyFrom(numpy_helper.from_array(np.zeros((2,), np.float32), "t"))
    else:
        a.ClearField("i")
        a.ClearField("ints")
        a.type = onnx.AttributeProto.GRAPH
        a.g.CopyFrom(helper.make_graph([], "empty", [], []))
    return f"attr-{kind}"


def _metadata(rng: random.Random, m: onnx.ModelProto) -> str:
    kind = rng.choice(["doc", "props", "producer", "functions", "training"])
    if kind == "doc":
        m.doc_string = rng.choice(["", "ü" * 1000, "\x00nul", "line\nbreak"])
        m.graph.doc_string = "✓"
    elif kind == "props":
        for k in ("k", "k", "", "lepton_compile.optimized_from"):
            m.metadata_props.add(key=k, value=rng.choice(["", "v", "\x00"]))
    elif kind == "producer":
        m.producer_name, m.producer_version, m.model_version = "\x00", "é", -1
    elif kind == "functions":
        # A model-local function that calls itself: a recursion for whoever inlines it.
        fn = helper.make_function(
            "local",
            "Loop1",
            ["a"],
            ["b"],
            [helper.make_node("Loop1", ["a"], ["b"], domain="local")],
            [helper.make_opsetid("", 17), helper.make_opsetid("local", 1)],
        )
        m.functions.append(fn)
        m.opset_import.add(domain="local", version=1)
        node = m.graph.node[0]
        node.op_type, node.domain = "Loop1", "local"
        del node.input[1:]
        del node.attribute[:]
    else:
        m.training_info.add().algorithm.CopyFrom(helper.make_graph([], "t", [], []))
    return f"meta-{kind}"


PROTO_MUTATORS: list[ProtoMutator] = [
    _ir_version,
    _opset_version,
    _opset_imports,
    _input_dims,
    _output_type,
    _elem_type,
    _initializer_type,
    _initializer_dims,
    _initializer_data,
    _external_data,
    _duplicate_name,
    _dangling_input,
    _missing_initializer,
    _attribute,
    _metadata,
]


# ---------------------------------------------------------------------------------------------
# Graph level: the structure changed (nodes, edges, ops, types).


def _remove_node(rng: random.Random, m: onnx.ModelProto) -> str:
    del m.graph.node[rng.randrange(len(m.graph.node))]
    return "remove-node"


def _duplicate_node(rng: random.Random, m: onnx.ModelProto) -> str:
    i = rng.randrange(len(m.graph.node))
    m.graph.node.insert(i, copy.deepcopy(m.graph.node[i]))
    return "dup-node"


def _rename_edge(rng: random.Random, m: onnx.ModelProto) -> str:
    node = rng.choice(list(m.graph.node))
    node.output[0] = node.output[0] + "_renamed"
    return "rename-edge"


def _cycle(rng: random.Random, m: onnx.ModelProto) -> str:
    nodes = list(m.graph.node)
    if len(nodes) < 2:
        nodes[0].input[0] = nodes[0].output[0]
        return "self-loop"
    i = rng.randrange(len(nodes) - 1)
    j = rng.randrange(i + 1, len(nodes))
    nodes[i].input[0] = nodes[j].output[0]  # an earlier node reads a later node's output
    return "cycle"


def _shuffle_nodes(rng: random.Random, m: onnx.ModelProto) -> str:
    nodes = [copy.deepcopy(n) for n in m.graph.node]
    rng.shuffle(nodes)
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    return "unsorted"


def _unknown_op(rng: random.Random, m: onnx.ModelProto) -> str:
    node = rng.choice(list(m.graph.node))
    kind = rng.choice(["default", "domain", "domain-imported", "lepton"])
    if kind == "default":
        node.op_type = "Frobnicate"
    elif kind == "domain":
        node.domain = "com.nowhere"
    elif kind == "domain-imported":
        node.domain = "com.nowhere"
        m.opset_import.add(domain="com.nowhere", version=1)
    else:
        node.domain = "ai.lepton"
        m.opset_import.add(domain="ai.lepton", version=1)
    return f"unknown-op-{kind}"


def _string_input(rng: random.Random, m: onnx.ModelProto) -> str:
    vi = rng.choice(_user_inputs(m))
    vi.type.tensor_type.elem_type = TensorProto.STRING
    if rng.random() < 0.5:
        # A string input the graph consumes the way it can: cast to a number first.
        cast = helper.make_node("Cast", [vi.name], [vi.name + "_num"], to=TensorProto.FLOAT)
        for n in m.graph.node:
            n.input[:] = [vi.name + "_num" if x == vi.name else x for x in n.input]
        m.graph.node.insert(0, cast)
        return "string-input-cast"
    return "string-input"


def _dynamic_dims(rng: random.Random, m: onnx.ModelProto) -> str:
    vi = rng.choice(_user_inputs(m))
    for i, d in enumerate(vi.type.tensor_type.shape.dim):
        if i > 0 or rng.random() < 0.5:
            d.dim_param = rng.choice(["H", "W", "S", ""])
    return "dynamic-dims"


def _arity(rng: random.Random, m: onnx.ModelProto) -> str:
    node = rng.choice(list(m.graph.node))
    if rng.random() < 0.5 and len(node.input) > 0:
        del node.input[-1]
        return "too-few-inputs"
    node.input.append(node.input[0])
    return "too-many-inputs"


def _extra_output(rng: random.Random, m: onnx.ModelProto) -> str:
    kind = rng.choice(["intermediate", "input", "initializer", "none", "unproduced"])
    g = m.graph
    if kind == "intermediate":
        g.output.append(helper.make_value_info(g.node[0].output[0], onnx.TypeProto()))
    elif kind == "input":
        g.output.append(copy.deepcopy(g.input[0]))
    elif kind == "initializer" and g.initializer:
        init = g.initializer[0]
        g.output.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    elif kind == "none":
        del g.output[:]
    else:
        g.output.append(helper.make_tensor_value_info("nowhere", TensorProto.FLOAT, [1]))
    return f"output-{kind}"


def _empty_graph(rng: random.Random, m: onnx.ModelProto) -> str:
    g = m.graph
    del g.node[:]
    if rng.random() < 0.5:
        # Output is the input itself: a valid model with no nodes.
        inp = _user_inputs(m)[0]
        del g.output[:]
        g.output.append(copy.deepcopy(inp))
        return "no-nodes-passthrough"
    return "no-nodes"


def _subgraph(rng: random.Random, m: onnx.ModelProto) -> str:
    # An If whose branches disagree with each other (or are empty).
    inp = _user_inputs(m)[0]
    then = helper.make_graph(
        [helper.make_node("Identity", [inp.name], ["t_out"])],
        "then",
        [],
        [helper.make_tensor_value_info("t_out", inp.type.tensor_type.elem_type, None)],
    )
    other = helper.make_graph([], "else", [], [])
    cond = helper.make_tensor("cond", TensorProto.BOOL, [], [rng.random() < 0.5])
    m.graph.initializer.append(cond)
    m.graph.node.append(
        helper.make_node("If", ["cond"], ["if_out"], then_branch=then, else_branch=other)
    )
    m.graph.output.append(helper.make_value_info("if_out", onnx.TypeProto()))
    return "if-branches"


def _value_info(rng: random.Random, m: onnx.ModelProto) -> str:
    # A recorded intermediate shape or type that contradicts the graph.
    node = rng.choice(list(m.graph.node))
    t = rng.choice([TensorProto.FLOAT, TensorProto.INT64, TensorProto.STRING])
    m.graph.value_info.append(
        helper.make_tensor_value_info(node.output[0], t, [rng.choice([1, 3, 7]), 999])
    )
    return "value-info"


def _string_output(rng: random.Random, m: onnx.ModelProto) -> str:
    # A graph output of strings: what a label lookup at the end of a classifier gives.
    out = m.graph.output[0]
    src = out.name + "_pre"
    for n in m.graph.node:
        n.output[:] = [src if x == out.name else x for x in n.output]
    m.graph.node.append(helper.make_node("Cast", [src], [out.name], to=TensorProto.STRING))
    out.type.tensor_type.elem_type = TensorProto.STRING
    return "string-output"


def _dead_code(rng: random.Random, m: onnx.ModelProto) -> str:
    # Valid, and for the passes to clean up: a node and an initializer nobody reads.
    src = _user_inputs(m)[0].name
    m.graph.node.append(helper.make_node("Neg", [src], ["unused_neg"]))
    m.graph.initializer.append(numpy_helper.from_array(np.ones(3, np.float32), "unused_init"))
    return "dead-code"


def _constant_node(rng: random.Random, m: onnx.ModelProto) -> str:
    # An initializer as a Constant node instead (what many exporters write).
    if not m.graph.initializer:
        return _dead_code(rng, m)
    i = rng.randrange(len(m.graph.initializer))
    init = m.graph.initializer[i]
    node = helper.make_node("Constant", [], [init.name], value=copy.deepcopy(init))
    del m.graph.initializer[i]
    m.graph.node.insert(0, node)
    return "constant-node"


def _initializers_as_inputs(rng: random.Random, m: onnx.ModelProto) -> str:
    # The old IR style: every weight is also a graph input (with a default value).
    for init in m.graph.initializer:
        m.graph.input.append(
            helper.make_tensor_value_info(init.name, init.data_type, list(init.dims))
        )
    return "inits-as-inputs"


def _identity_chain(rng: random.Random, m: onnx.ModelProto) -> str:
    # Identity nodes on the way to the output (and one on an input), all removable.
    out = m.graph.output[0].name
    src = out + "_pre"
    for n in m.graph.node:
        n.output[:] = [src if x == out else x for x in n.output]
    m.graph.node.append(helper.make_node("Identity", [src], [out + "_id"]))
    m.graph.node.append(helper.make_node("Identity", [out + "_id"], [out]))
    return "identity-chain"


def _output_twice(rng: random.Random, m: onnx.ModelProto) -> str:
    m.graph.output.append(copy.deepcopy(m.graph.output[0]))
    return "output-twice"


def _same_node_names(rng: random.Random, m: onnx.ModelProto) -> str:
    for n in m.graph.node:
        n.name = rng.choice(["n", "", "ü"])
    return "node-names"


GRAPH_MUTATORS: list[ProtoMutator] = [
    _dead_code,
    _constant_node,
    _initializers_as_inputs,
    _identity_chain,
    _output_twice,
    _same_node_names,
    _string_output,
    _remove_node,
    _duplicate_node,
    _rename_edge,
    _cycle,
    _shuffle_nodes,
    _unknown_op,
    _string_input,
    _dynamic_dims,
    _arity,
    _extra_output,
    _empty_graph,
    _subgraph,
    _value_info,
]


# ---------------------------------------------------------------------------------------------
# Flags. Numbers that would make a valid run long (huge windows, sample counts) are left out:
# the suite is bounded by its case count, and every case must end in well under a second.

_BAD_NUMBERS = ["-1", "0", "nan", "-inf", "abc", "", "1e999", "0x10", "--"]
_BAD_FRACTIONS = ["-1", "-1%", "200%", "1.5", "nan", "inf", "abc", "", "%", "5%%", "1e999", "0"]


def _shape_flag(rng: random.Random, base: Base) -> list[str]:
    name, _, shape = rng.choice(base.feed)
    good = "x".join(map(str, shape))
    bad = [
        name,
        f"={good}",
        f"{name}=",
        f"{name}={good}x",
        f"{name}=ax{good}",
        f"{name}=-1x{good}",
        f"{name}=0x{good}",
        f"{name}=1.5x{good}",
        f"{name}={good}x1",
        f"{name}=1",
        f"nope={good}",
        f"{name}=99999999999" + good[1:],
        f"{name}={2**62}" + good[1:],
        f"{name}={good}={good}",
        f"{name}={good.replace('x', ',')}",
        f"{name}=2" + good[1:],
        f"{name}=1x99" if len(shape) == 2 else f"{name}=1x9x8x8",
        "é=1",
    ]
    return ["--input-shape", rng.choice(bad)]


def _compile_flags(rng: random.Random, base: Base) -> tuple[str, list[str]]:
    kind = rng.choice(
        [
            "input-shape",
            "input-shape",
            "accuracy",
            "recipes",
            "backend",
            "objective",
            "number",
            "number",
            "int",
            "metric",
            "device",
            "unknown",
            "valid",
        ]
    )
    if kind == "input-shape":
        return kind, _shape_flag(rng, base)
    if kind == "accuracy":
        return kind, ["--max-accuracy-drop", rng.choice(_BAD_FRACTIONS)]
    if kind == "recipes":
        value = rng.choice(
            ["turbo", "", ",", "original", "fused,fused", "FUSED", "fp16", "int8-qdq", "fused,x"]
        )
        return kind, ["--recipes", value]
    if kind == "backend":
        return kind, ["--backend", rng.choice(["nope", "", "ORT", "ort,lepton"])]
    if kind == "objective":
        return kind, ["--objective", rng.choice(["speed", "", "ENERGY"])]
    if kind == "number":
        flag = rng.choice(
            [
                "--window-s",
                "--budget-s",
                "--variant-timeout-s",
                "--max-latency-ms",
                "--cpu-watts",
                "--search-budget-s",
                "--memory-limit-gb",
            ]
        )
        return kind, [flag, rng.choice(_BAD_NUMBERS)]
    if kind == "int":
        flag = rng.choice(["--calibration-samples", "--eval-samples", "--seed"])
        return kind, [flag, rng.choice(["-1", "0", "1.5", "abc", "", "-99"])]
    if kind == "metric":
        spec = rng.choice(
            ["nope", ":f", "m:", "no_such_module_zz:f", "json:no_such_fn", "/nowhere/m.py:f"]
        )
        return kind, ["--metric", spec]
    if kind == "device":
        return kind, ["--device", rng.choice(["cuda", "tpu", ""]), "--meter", "estimate"]
    if kind == "unknown":
        return kind, [rng.choice(["--frobnicate", "-z", "--quick=1", "--json=yes", "extra.onnx"])]
    return kind, []


def _optimize_flags(rng: random.Random, base: Base) -> tuple[str, list[str]]:
    kind = rng.choice(
        ["input-shape", "verify-shape", "target", "pipeline", "passes", "skip", "seed", "unknown"]
    )
    if kind == "input-shape":
        return kind, _shape_flag(rng, base)
    if kind == "verify-shape":
        return kind, ["--verify-shape", _shape_flag(rng, base)[1]]
    if kind == "target":
        return kind, ["--target", rng.choice(["tensorrt", "", "ORT"])]
    if kind == "pipeline":
        return kind, ["--pipeline", rng.choice(["nope", "", "default", "fused-lepton", "all"])]
    if kind == "passes":
        return kind, ["--passes", rng.choice(["nope", ",", "", "cse,cse", "fold-constants,x"])]
    if kind == "skip":
        return kind, ["--skip", rng.choice(["nope", ",", "cse", "fuse-batchnorm,cse"])]
    if kind == "seed":
        return kind, ["--seed", rng.choice(["-1", "abc", "1.5", str(2**64)])]
    return kind, [rng.choice(["--frobnicate", "--json=1", "extra.onnx", "-o"])]


# ---------------------------------------------------------------------------------------------
# --inputs data: .npz feeds, right or wrong.


def _npz(arrays: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _good_feed(base: Base, rng: np.random.Generator) -> dict[str, np.ndarray]:
    feed = {}
    for name, dtype, shape in base.feed:
        if np.dtype(dtype).kind == "i":
            feed[name] = rng.integers(0, 20, size=shape).astype(dtype)
        else:
            feed[name] = rng.standard_normal(shape).astype(dtype)
    return feed


@dataclass
class InputsDir:
    """What ``--inputs`` names: a directory of files, or something that is not one."""

    kind: str = "dir"  # dir | missing | file
    files: list[tuple[str, bytes]] = field(default_factory=list)
    metric: str | None = None  # source of a --metric module that judges by the labels


# --metric functions, well and badly behaved. One that exits the process is left out: a
# metric is the user's own code, run in this process on purpose.
METRICS = {
    "ok": "def fn(outputs, labels):\n    return float(len(outputs))\n",
    "raises": "def fn(outputs, labels):\n    raise ValueError('bad metric')\n",
    "nan": "def fn(outputs, labels):\n    return float('nan')\n",
    "inf": "def fn(outputs, labels):\n    return float('-inf')\n",
    "string": "def fn(outputs, labels):\n    return 'high'\n",
    "none": "def fn(outputs, labels):\n    return None\n",
    "array": "import numpy as np\ndef fn(outputs, labels):\n    return np.ones(3)\n",
    "arity": "def fn(outputs):\n    return 1.0\n",
    "not-callable": "fn = 3\n",
    "import-error": "raise RuntimeError('fails at import')\n",
    "syntax": "def fn(:\n",
}


def _inputs(rng: random.Random, base: Base) -> tuple[str, InputsDir]:
    nrng = np.random.default_rng(rng.randrange(2**32))
    good = [_good_feed(base, nrng) for _ in range(3)]
    name0, dtype0, shape0 = base.feed[0]
    kind = rng.choice(
        [
            "valid",
            "valid-one",
            "wrong-name",
            "missing-input",
            "dtype",
            "shape",
            "nan",
            "inf",
            "empty-dir",
            "not-npz",
            "corrupt-npz",
            "truncated-npz",
            "object-array",
            "labels-only",
            "zero-size",
            "scalar",
            "missing-dir",
            "is-file",
            "npz-dir",
            "metric",
            "metric",
        ]
    )

    def files(feeds: Sequence[dict[str, Any]]) -> list[tuple[str, bytes]]:
        return [(f"{i:03d}.npz", _npz(f)) for i, f in enumerate(feeds)]

    if kind == "valid":
        return kind, InputsDir(files=files(good))
    if kind == "metric":
        behaviour = rng.choice(sorted(METRICS))
        labelled = [{**f, "label": np.array([i % 2])} for i, f in enumerate(good)]
        if rng.random() < 0.2:
            labelled = good  # a metric without labels
        return f"metric-{behaviour}", InputsDir(files=files(labelled), metric=METRICS[behaviour])
    if kind == "valid-one":
        return kind, InputsDir(files=files(good[:1]))
    if kind == "wrong-name":
        bad = [{("X" + k): v for k, v in f.items()} for f in good]
        return kind, InputsDir(files=files(bad))
    if kind == "missing-input":
        return kind, InputsDir(files=files([{k: v for k, v in list(f.items())[1:]} for f in good]))
    if kind == "dtype":
        new = rng.choice(["float64", "float16", "int32", "int64", "bool", "uint8", "complex64"])
        return kind, InputsDir(files=files([{**f, name0: f[name0].astype(new)} for f in good]))
    if kind == "shape":
        shape = rng.choice([(2, *shape0[1:]), shape0[1:], (*shape0, 1), (0, *shape0[1:])])
        return kind, InputsDir(files=files([{**f, name0: np.zeros(shape, dtype0)} for f in good]))
    if kind in ("nan", "inf"):
        if np.dtype(dtype0).kind != "f":
            return kind, InputsDir(files=files(good))
        value = np.nan if kind == "nan" else np.inf
        return kind, InputsDir(
            files=files([{**f, name0: np.full(shape0, value, dtype0)} for f in good])
        )
    if kind == "empty-dir":
        return kind, InputsDir()
    if kind == "not-npz":
        return kind, InputsDir(files=[("a.txt", b"hello"), ("b.npy", b"\x93NUMPY")])
    if kind == "corrupt-npz":
        return kind, InputsDir(files=[("000.npz", rng.randbytes(rng.choice([0, 10, 300])))])
    if kind == "truncated-npz":
        data = _npz(good[0])
        return kind, InputsDir(files=[("000.npz", data[: rng.randrange(1, len(data))])])
    if kind == "object-array":
        obj = np.array([{"a": 1}, None], dtype=object)
        buf = io.BytesIO()
        np.savez(buf, **{name0: obj})
        return kind, InputsDir(files=[("000.npz", buf.getvalue())])
    if kind == "labels-only":
        return kind, InputsDir(files=files([{"label": np.array([1])}]))
    if kind == "zero-size":
        return kind, InputsDir(
            files=files([{**f, name0: np.zeros((0,) * len(shape0), dtype0)} for f in good])
        )
    if kind == "scalar":
        return kind, InputsDir(files=files([{**f, name0: np.array(1, dtype0)} for f in good]))
    if kind == "missing-dir":
        return kind, InputsDir(kind="missing")
    if kind == "is-file":
        return kind, InputsDir(kind="file")
    return kind, InputsDir(files=[("sub.npz/", b"")])  # a directory named like a feed


# ---------------------------------------------------------------------------------------------
# Gate: report JSON, damaged. These work on a real report, given at test time.


def _paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, (*prefix, i))
    return out


def _get(obj: Any, path: tuple) -> Any:
    for p in path:
        obj = obj[p]
    return obj


_ODD_VALUES: list[Any] = [None, "x", "", [], {}, -1, 0, 1e308, True, "nan", [1, 2], {"a": 1}]


REPORT_KINDS = [
    "delete",
    "delete",
    "replace",
    "replace",
    "replace-key",
    "best-id",
    "no-variants",
    "schema",
    "numbers",
    "nan",
    "top-level",
    "truncate",
    "bytes",
    "deep",
    "empty",
]


def mutate_report(rng: random.Random, rep: dict[str, Any], kind: str) -> bytes:
    """A copy of ``rep`` damaged the ``kind`` way, serialized (sometimes not even as JSON)."""
    rep = copy.deepcopy(rep)
    important = [
        p for p in _paths(rep) if p and p[0] in ("best", "variants", "model", "device", "schema")
    ]
    if kind == "delete":
        p = rng.choice(important)
        parent = _get(rep, p[:-1])
        del parent[p[-1]]
    elif kind == "replace":
        p = rng.choice(important)
        _get(rep, p[:-1])[p[-1]] = rng.choice(_ODD_VALUES)
    elif kind == "replace-key":
        p = rng.choice([("best",), ("variants",), ("model",), ("device",), ("best", "id")])
        _get(rep, p[:-1])[p[-1]] = rng.choice(_ODD_VALUES)
    elif kind == "best-id":
        rep["best"]["id"] = rng.choice(["nope", "", None, 3])
    elif kind == "no-variants":
        rep["variants"] = []
    elif kind == "schema":
        rep["schema"] = rng.choice(["lepton-compile/report/v2", None, "", 1])
    elif kind == "numbers":
        for v in rep["variants"]:
            for key in ("latency_ms", "energy_j"):
                if isinstance(v.get(key), dict):
                    for k in v[key]:
                        v[key][k] = rng.choice(_ODD_VALUES)
            if isinstance(v.get("accuracy"), dict):
                v["accuracy"]["drop"] = rng.choice(_ODD_VALUES)
    elif kind == "nan":
        # JSON that Python writes and reads, other parsers reject: NaN, Infinity.
        for v in rep["variants"]:
            if isinstance(v.get("latency_ms"), dict):
                v["latency_ms"]["mean"] = rng.choice([float("nan"), float("inf"), -0.0, 0.0])
                v["latency_ms"]["ci95"] = rng.choice([float("nan"), -1.0, float("inf")])
    elif kind == "top-level":
        return json.dumps(rng.choice([[rep], "report", 1, None])).encode()
    elif kind == "truncate":
        text = json.dumps(rep).encode()
        return text[: rng.randrange(len(text))]
    elif kind == "bytes":
        text = bytearray(json.dumps(rep).encode())
        for _ in range(rng.randint(1, 4)):
            text[rng.randrange(len(text))] = rng.choice([0x80, 0xFF, 0x00, ord("{"), ord('"')])
        return bytes(text)
    elif kind == "deep":
        depth = rng.choice([1000, 100_000])
        nested = b"[" * depth + b"]" * depth
        return b'{"schema": "lepton-compile/report/v1", "best": ' + nested + b"}"
    else:
        return b""
    return json.dumps(rep).encode()


def _gate_flags(rng: random.Random) -> tuple[str, list[str]]:
    flag = rng.choice(
        ["--max-latency-regression", "--max-energy-regression", "--max-accuracy-drop"]
    )
    return "fraction", [flag, rng.choice(_BAD_FRACTIONS)]


# ---------------------------------------------------------------------------------------------
# Cases.


@dataclass
class Case:
    """One run of the CLI: the files to lay out, and the argv (paths as placeholders).

    Placeholders: {model}, {out}, {inputs}, {base}, {cur}; the test puts real paths in.
    ``occupant`` says what sits at the output path before the run: None, "user-dir",
    "user-file", "user-symlink", "empty-dir", "ours" (an earlier output of the tool),
    "ours+user" (an earlier output the user has added a file to), or "input" (-o is the
    input model itself).
    """

    id: str
    command: str  # compile | optimize | gate
    argv: list[str]
    model: bytes | None = None
    model_name: str = "model.onnx"
    inputs: InputsDir | None = None
    occupant: str | None = None
    reports: tuple[str | None, str | None] = (None, None)  # how base, cur are damaged
    report_seed: int = 0
    side_files: SideFiles = field(default_factory=list)  # beside the model (external data)

    def out_name(self) -> str | None:
        """The output path's name inside the case directory (as the argv or default gives)."""
        if "{out}" in self.argv:
            return "out.onnx" if self.command == "optimize" else "out"
        if self.command == "compile":
            return self.model_name.rsplit(".", 1)[0] + ".lepton"
        if self.command == "optimize":
            return self.model_name.rsplit(".", 1)[0] + ".opt.onnx"
        return "gate.md" if "{gate_md}" in self.argv else None


CATEGORIES: list[tuple[str, str]] = [
    ("compile", "byte"),
    ("compile", "proto"),
    ("compile", "graph"),
    ("compile", "flags"),
    ("compile", "inputs"),
    ("compile", "output"),
    ("optimize", "byte"),
    ("optimize", "proto"),
    ("optimize", "graph"),
    ("optimize", "flags"),
    ("optimize", "output"),
    ("gate", "report"),
    ("gate", "flags"),
]

_COMPILE_OCCUPANTS = ["user-dir", "user-file", "user-symlink", "empty-dir", "ours", "ours+user"]
_OPTIMIZE_OCCUPANTS = ["user-file", "user-dir", "input"]


def _to_external(rng: random.Random, m: onnx.ModelProto) -> tuple[str, SideFiles]:
    """Weights moved to a side file, which is then right, short, empty, missing or a dir."""
    data = bytearray()
    for init in m.graph.initializer:
        raw = init.raw_data
        offset = len(data)
        data += raw
        init.ClearField("raw_data")
        init.data_location = TensorProto.EXTERNAL
        del init.external_data[:]
        for k, v in (
            ("location", "weights.bin"),
            ("offset", str(offset)),
            ("length", str(len(raw))),
        ):
            init.external_data.add(key=k, value=v)
    kind = rng.choice(["valid", "valid", "short", "empty", "missing", "directory"])
    files: SideFiles = {
        "valid": [("weights.bin", bytes(data))],
        "short": [("weights.bin", bytes(data[: len(data) // 2]))],
        "empty": [("weights.bin", b"")],
        "missing": [],
        "directory": [("weights.bin/", b"")],
    }[kind]
    return f"external-{kind}", files


def _mutate_model(rng: random.Random, level: str, base: Base) -> tuple[str, bytes, SideFiles]:
    if level == "byte":
        name, data = rng.choice(BYTE_MUTATORS)(rng, base.model.SerializeToString())
        return name, data, []
    m = _clone(base.model)
    files: SideFiles = []
    if level == "proto" and m.graph.initializer and rng.random() < 0.08:
        name, files = _to_external(rng, m)
        return name, m.SerializeToString(), files
    mutators = PROTO_MUTATORS if level == "proto" else GRAPH_MUTATORS
    name = rng.choice(mutators)(rng, m)
    # Now and then two at once, where the first left a graph to work on. The second mutator
    # may not fit what the first left (no node inputs to rewire): then the first stands alone.
    if rng.random() < 0.15 and m.graph.node and m.graph.output and _user_inputs(m):
        second = _clone(m)
        try:
            name += "+" + rng.choice(mutators)(rng, second)
            m = second
        except (IndexError, ValueError):
            pass
    return name, m.SerializeToString(), files


def make_case(index: int) -> Case:
    """The case at ``index``: its category by round robin, the rest from a seeded rng."""
    command, level = CATEGORIES[index % len(CATEGORIES)]
    rng = random.Random(f"{SEED}/{index}")
    base = BASES[rng.choice(sorted(BASES))]
    tag = f"{index:04d}-{command}-{level}-{base.name}"

    if command == "gate":
        argv = ["gate", "{base}", "{cur}"]
        reports: tuple[str | None, str | None] = (None, None)
        occupant = None
        if level == "flags":
            name, flags = _gate_flags(rng)
            if rng.random() < 0.08:
                # --output naming a directory of the user's: refused, not written into.
                name, flags, occupant = "output-is-dir", [], "user-dir"
        else:
            name, flags = rng.choice(REPORT_KINDS), []
            reports = rng.choice([(None, name), (name, None)])
        if occupant is not None or rng.random() < 0.3:
            flags += ["--output", "{gate_md}"]
        return Case(
            f"{index:04d}-gate-{level}-{name}",
            "gate",
            argv + flags,
            reports=reports,
            report_seed=rng.randrange(2**32),
            occupant=occupant,
        )

    model = base.model.SerializeToString()
    name = "valid"
    side: SideFiles = []
    if level in ("byte", "proto", "graph"):
        name, model, side = _mutate_model(rng, level, base)
    inputs = None
    flags: list[str] = []
    if level == "flags":
        name, flags = (_compile_flags if command == "compile" else _optimize_flags)(rng, base)
        if rng.random() < 0.2:  # a bad flag on a damaged model: whichever is seen first
            _, model, side = _mutate_model(rng, rng.choice(["byte", "proto"]), base)
    elif level == "inputs":
        name, inputs = _inputs(rng, base)
        flags = ["--inputs", "{inputs}"]
        if inputs.metric is not None:
            flags += ["--metric", "{metric}:fn"]

    occupant = None
    if level == "output":
        choices = _COMPILE_OCCUPANTS if command == "compile" else _OPTIMIZE_OCCUPANTS
        occupant = rng.choice(choices)
        name = occupant
        if rng.random() < 0.3:
            _, model, side = _mutate_model(rng, rng.choice(["byte", "proto", "graph"]), base)
            name += "-damaged"
    elif rng.random() < 0.15:
        occupant = rng.choice(
            _COMPILE_OCCUPANTS if command == "compile" else _OPTIMIZE_OCCUPANTS[:2]
        )
        name += f"-over-{occupant}"

    model_name = "model.onnx"
    if rng.random() < 0.05:
        model_name = rng.choice(["my model ü.onnx", "model", ".hidden.onnx", "m.v1.onnx"])
    if level == "byte" and rng.random() < 0.06:
        # No model file at all, or a directory where the model should be.
        name = rng.choice(["missing", "directory"])
        model = None if name == "missing" else model
        side = [(model_name + "/", b"")] if name == "directory" else []
    use_default_out = occupant is None and rng.random() < 0.1
    if command == "compile":
        argv = ["{model}", *([] if use_default_out else ["-o", "{out}"]), *FAST_COMPILE]
    else:
        argv = ["optimize", "{model}", *([] if use_default_out else ["-o", "{out}"]), "-q"]
        if rng.random() < 0.3:
            argv.append("--json")
        if rng.random() < 0.97:
            argv.append("--no-speed-check")  # timing the result takes seconds; a few keep it
    if level == "output" and occupant != "input" and rng.random() < 0.25:
        argv.append("--force")
        name += "-force"
    if command == "optimize" and level in ("proto", "graph") and rng.random() < 0.3:
        # Unverified, a damaged model that onnx.checker passes goes through every pass.
        argv.append("--no-verify")
        name += "-no-verify"
    return Case(
        f"{tag}-{name}",
        command,
        argv + flags,
        model=model,
        model_name=model_name,
        inputs=inputs,
        occupant=occupant,
        side_files=side,
    )


def make_cases(n: int) -> list[Case]:
    return [make_case(i) for i in range(n)]


def e2e_cases() -> list[Case]:
    """A handful of cases for the real entry point, with variants in worker processes."""
    isolated = [a for a in FAST_COMPILE if a != "--no-isolate"]
    rng = random.Random(f"{SEED}/e2e")
    conv = _clone(BASES["conv"].model)
    _string_output(rng, conv)
    _, utf8 = _corrupt_string(rng, BASES["mlp"].model.SerializeToString())
    static = BASES["static"].model.SerializeToString()
    return [
        Case(
            "e2e-compile-string-output",
            "compile",
            ["{model}", "-o", "{out}", *isolated],
            model=conv.SerializeToString(),
        ),
        Case(
            "e2e-compile-utf8-over-user-dir",
            "compile",
            ["{model}", "-o", "{out}", *isolated],
            model=utf8,
            occupant="user-dir",
        ),
        Case(
            "e2e-optimize-truncated",
            "optimize",
            ["optimize", "{model}", "-o", "{out}", "-q"],
            model=static[: len(static) // 2],
        ),
        Case(
            "e2e-gate-deep",
            "gate",
            ["gate", "{base}", "{cur}"],
            reports=(None, "deep"),
            report_seed=1,
        ),
    ]
