"""Synthetic ONNX models of known architectures, random weights, any batch and size.

    resnet50(batch, width=64, hw=224)        ResNet-50 (bottlenecks 3-4-6-3, BatchNorm)
    detector(batch, width=16, hw=640)        a YOLO-class detector: Conv-BN-SiLU, C2f blocks,
                                             SPPF, an FPN neck with upsampling and depthwise-
                                             separable convs, three detection heads
    bert(batch, seq=128, hidden=768, ...)    a BERT-class encoder: embeddings, LayerNorm,
                                             multi-head attention, GELU (erf) FFN
    convnet(batch, ...)                      a small CNN: stem, depthwise + pointwise block
                                             with a residual, strided conv, classifier
    mlp(batch, ...)                          MatMul + bias + ReLU / GELU layers

The end-to-end GPU benchmark (`lepton_e2e.py`) runs the first three at full size; tests run
all of them at tiny sizes. Weights are N(0, 1 / fan_in) so activations keep their scale
through depth; BatchNorm statistics are random but sane. Only numpy and onnx are imported.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


class Builder:
    """A graph under construction: fresh names, initializers, nodes."""

    def __init__(self, name: str, seed: int = 0) -> None:
        self.name = name
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._count = 0

    def fresh(self, base: str) -> str:
        self._count += 1
        return f"{base}_{self._count}"

    def const(self, base: str, array: np.ndarray) -> str:
        name = self.fresh(base)
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def weight(self, base: str, shape: Sequence[int], fan_in: int, gain: float = 1.0) -> str:
        w = self.rng.standard_normal(shape) * gain / math.sqrt(max(fan_in, 1))
        return self.const(base, w.astype(np.float32))

    def op(self, op_type: str, inputs: Sequence[str], n_out: int = 1, **attrs) -> str:
        outs = [self.fresh(op_type.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=outs[0], **attrs))
        return outs[0] if n_out == 1 else outs  # type: ignore[return-value]

    def input(self, name: str, shape: Sequence[int], dtype: int = TensorProto.FLOAT) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, dtype, list(shape)))
        return name

    def output(self, value: str, name: str, dtype: int = TensorProto.FLOAT) -> None:
        self.nodes.append(helper.make_node("Identity", [value], [name], name=f"out_{name}"))
        self.outputs.append(helper.make_tensor_value_info(name, dtype, None))

    def model(self) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, self.name, self.inputs, self.outputs, self.inits)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
        m.ir_version = 8
        m = onnx.shape_inference.infer_shapes(m)
        onnx.checker.check_model(m)
        return m

    # -- layers ----------------------------------------------------------------------------
    def conv(
        self,
        x: str,
        cin: int,
        cout: int,
        k: int = 3,
        stride: int = 1,
        group: int = 1,
        bias: bool = True,
        gain: float = 1.4,
    ) -> str:
        w = self.weight("w", (cout, cin // group, k, k), cin // group * k * k, gain=gain)
        ins = [x, w]
        if bias:
            ins.append(self.const("b", self.rng.normal(0, 0.05, cout).astype(np.float32)))
        pad = k // 2
        return self.op(
            "Conv", ins, pads=[pad] * 4, strides=[stride, stride], group=group, kernel_shape=[k, k]
        )

    def bn(self, x: str, c: int) -> str:
        r = self.rng
        scale = self.const("bn_s", (r.random(c) * 0.5 + 0.75).astype(np.float32))
        shift = self.const("bn_t", r.normal(0, 0.05, c).astype(np.float32))
        mean = self.const("bn_m", r.normal(0, 0.05, c).astype(np.float32))
        var = self.const("bn_v", (r.random(c) * 0.5 + 0.75).astype(np.float32))
        return self.op("BatchNormalization", [x, scale, shift, mean, var], epsilon=1e-5)

    def silu(self, x: str) -> str:
        return self.op("Mul", [x, self.op("Sigmoid", [x])])

    def cbs(self, x: str, cin: int, cout: int, k: int = 3, stride: int = 1, group: int = 1):
        """Conv (no bias) -> BatchNorm -> SiLU."""
        return self.silu(self.bn(self.conv(x, cin, cout, k, stride, group, bias=False), cout))

    def linear(self, x: str, k: int, n: int, bias: bool = True) -> str:
        y = self.op("MatMul", [x, self.weight("w", (k, n), k)])
        if bias:
            y = self.op("Add", [y, self.const("b", self.rng.normal(0, 0.02, n).astype(np.float32))])
        return y

    def gelu(self, x: str) -> str:
        """erf-GELU as exported below opset 20: x * (erf(x / sqrt 2) + 1) * 0.5."""
        sqrt2 = self.const("sqrt2", np.array(math.sqrt(2.0), np.float32))
        one = self.const("one", np.array(1.0, np.float32))
        half = self.const("half", np.array(0.5, np.float32))
        e = self.op("Erf", [self.op("Div", [x, sqrt2])])
        return self.op("Mul", [self.op("Mul", [x, self.op("Add", [e, one])]), half])

    def layer_norm(self, x: str, d: int) -> str:
        g = self.const("ln_g", (1.0 + self.rng.normal(0, 0.02, d)).astype(np.float32))
        b = self.const("ln_b", self.rng.normal(0, 0.02, d).astype(np.float32))
        return self.op("LayerNormalization", [x, g, b], axis=-1, epsilon=1e-12)

    def shape_const(self, values: Sequence[int]) -> str:
        return self.const("shape", np.array(values, np.int64))


# ---------------------------------------------------------------------------------------
# CNNs


def resnet50(batch: int = 1, width: int = 64, hw: int = 224, classes: int = 1000):
    """ResNet-50 v1.5 (stride in the 3x3), BatchNorm after every conv, random weights."""
    b = Builder("resnet50")
    x = b.input("images", [batch, 3, hw, hw])
    y = b.op("Relu", [b.bn(b.conv(x, 3, width, 7, 2, bias=False), width)])
    y = b.op("MaxPool", [y], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    cin = width
    for stage, (blocks, mid) in enumerate(zip((3, 4, 6, 3), (1, 2, 4, 8), strict=True)):
        m = width * mid
        cout = m * 4
        for i in range(blocks):
            stride = 2 if i == 0 and stage > 0 else 1
            z = b.op("Relu", [b.bn(b.conv(y, cin, m, 1, bias=False), m)])
            z = b.op("Relu", [b.bn(b.conv(z, m, m, 3, stride, bias=False), m)])
            # A small last conv per block keeps the residual sum from growing with depth.
            z = b.bn(b.conv(z, m, cout, 1, bias=False, gain=0.3), cout)
            short = y
            if i == 0:
                short = b.bn(b.conv(y, cin, cout, 1, stride, bias=False), cout)
            y = b.op("Relu", [b.op("Add", [z, short])])
            cin = cout
    y = b.op("Flatten", [b.op("GlobalAveragePool", [y])])
    fc_b = b.const("fc_b", np.zeros(classes, np.float32))
    y = b.op("Gemm", [y, b.weight("fc", (classes, cin), cin), fc_b], transB=1)
    b.output(y, "logits")
    return b.model()


def _c2f(b: Builder, x: str, c: int, n: int) -> str:
    """YOLOv8's C2f: 1x1 conv, split, n bottlenecks (residual), concat, 1x1 conv."""
    y = b.cbs(x, c, c, 1)
    halves = b.op("Split", [y, b.const("split", np.array([c // 2, c // 2], np.int64))], 2, axis=1)
    parts = list(halves)
    z = parts[-1]
    for _ in range(n):
        t = b.cbs(z, c // 2, c // 2, 3)
        t = b.cbs(t, c // 2, c // 2, 3)
        z = b.op("Add", [z, t])
        parts.append(z)
    return b.cbs(b.op("Concat", parts, axis=1), c // 2 * len(parts), c, 1)


def _dw_sep(b: Builder, x: str, c: int) -> str:
    """Depthwise 3x3 + pointwise 1x1, each Conv-BN-SiLU (PP-YOLOE / PicoDet neck style)."""
    return b.cbs(b.cbs(x, c, c, 3, 1, group=c), c, c, 1)


def detector(batch: int = 1, width: int = 16, hw: int = 640, classes: int = 80):
    """A YOLO-class detector (YOLOv8n-like backbone, FPN neck, 3 heads) with random weights."""
    b = Builder("detector")
    x = b.input("images", [batch, 3, hw, hw])
    w = width
    p = b.cbs(x, 3, w, 3, 2)
    p = b.cbs(p, w, 2 * w, 3, 2)
    p = _c2f(b, p, 2 * w, 1)
    p3 = _c2f(b, b.cbs(p, 2 * w, 4 * w, 3, 2), 4 * w, 2)
    p4 = _c2f(b, b.cbs(p3, 4 * w, 8 * w, 3, 2), 8 * w, 2)
    p5 = _c2f(b, b.cbs(p4, 8 * w, 16 * w, 3, 2), 16 * w, 1)
    # SPPF
    s = b.cbs(p5, 16 * w, 8 * w, 1)
    pools = [s]
    for _ in range(3):
        pools.append(b.op("MaxPool", [pools[-1]], kernel_shape=[5, 5], pads=[2, 2, 2, 2]))
    p5 = b.cbs(b.op("Concat", pools, axis=1), 32 * w, 16 * w, 1)
    scales = b.const("scales", np.array([1, 1, 2, 2], np.float32))

    def up(t: str) -> str:
        return b.op("Resize", [t, "", scales], mode="nearest")

    n4 = _dw_sep(b, b.cbs(b.op("Concat", [up(p5), p4], axis=1), 24 * w, 8 * w, 1), 8 * w)
    n3 = _dw_sep(b, b.cbs(b.op("Concat", [up(n4), p3], axis=1), 12 * w, 4 * w, 1), 4 * w)
    heads = []
    for t, c in ((n3, 4 * w), (n4, 8 * w), (p5, 16 * w)):
        box = b.conv(b.cbs(t, c, c, 3), c, 64, 1)
        cls = b.conv(b.cbs(t, c, c, 3), c, classes, 1)
        out = b.op("Concat", [box, cls], axis=1)
        heads.append(b.op("Reshape", [out, b.shape_const([0, 64 + classes, -1])]))
    b.output(b.op("Concat", heads, axis=2), "preds")
    return b.model()


def convnet(batch: int = 2, width: int = 16, hw: int = 16, classes: int = 10):
    """A small CNN: stem, depthwise + pointwise block with a residual, strided conv, head."""
    b = Builder("convnet")
    x = b.input("x", [batch, 3, hw, hw])
    y = b.op("Relu", [b.conv(x, 3, width, 3, 2)])
    z = b.op("Relu", [b.conv(y, width, width, 3, 1, group=width)])
    z = b.conv(z, width, width, 1)
    y = b.op("Relu", [b.op("Add", [z, y])])
    y = b.op("Relu", [b.conv(y, width, 2 * width, 3, 2)])
    y = b.op("Flatten", [b.op("GlobalAveragePool", [y])])
    y = b.linear(y, 2 * width, classes)
    b.output(y, "y")
    return b.model()


def mlp(batch: int = 4, d_in: int = 32, hidden: int = 64, d_out: int = 10):
    """MatMul + bias + ReLU, MatMul + bias + GELU, MatMul + bias."""
    b = Builder("mlp")
    x = b.input("x", [batch, d_in])
    y = b.op("Relu", [b.linear(x, d_in, hidden)])
    y = b.gelu(b.linear(y, hidden, hidden))
    b.output(b.linear(y, hidden, d_out), "y")
    return b.model()


# ---------------------------------------------------------------------------------------
# Transformer encoder


def _attention(b: Builder, x: str, batch: int, seq: int, d: int, heads: int) -> str:
    dh = d // heads

    def split(t: str) -> str:  # (B, S, D) -> (B, H, S, dh); 0 copies a dim (any batch)
        t = b.op("Reshape", [t, b.shape_const([0, 0, heads, dh])])
        return b.op("Transpose", [t], perm=[0, 2, 1, 3])

    q, k, v = (split(b.linear(x, d, d)) for _ in range(3))
    kt = b.op("Transpose", [k], perm=[0, 1, 3, 2])
    scale = b.const("scale", np.array(1.0 / math.sqrt(dh), np.float32))
    s = b.op("Mul", [b.op("MatMul", [q, kt]), scale])
    p = b.op("Softmax", [s], axis=-1)
    o = b.op("Transpose", [b.op("MatMul", [p, v])], perm=[0, 2, 1, 3])
    o = b.op("Reshape", [o, b.shape_const([0, 0, d])])
    return b.linear(o, d, d)


def bert(
    batch: int = 1,
    seq: int = 128,
    hidden: int = 768,
    heads: int = 12,
    ffn: int = 3072,
    layers: int = 12,
    vocab: int = 30522,
    embeddings: bool = True,
):
    """A BERT-class encoder (post-LayerNorm), random weights; input token ids or hidden states.

    embeddings=False takes (batch, seq, hidden) float hidden states (an attention block).
    """
    b = Builder("bert")
    if embeddings:
        ids = b.input("input_ids", [batch, seq], TensorProto.INT64)
        emb = b.rng.standard_normal((vocab, hidden)) * 0.5
        table = b.const("word_emb", emb.astype(np.float32))
        pos = b.const("pos_emb", (b.rng.standard_normal((1, seq, hidden)) * 0.1).astype(np.float32))
        x = b.layer_norm(b.op("Add", [b.op("Gather", [table, ids]), pos]), hidden)
    else:
        x = b.input("x", [batch, seq, hidden])
    for _ in range(layers):
        x = b.layer_norm(b.op("Add", [_attention(b, x, batch, seq, hidden, heads), x]), hidden)
        h = b.gelu(b.linear(x, hidden, ffn))
        x = b.layer_norm(b.op("Add", [b.linear(h, ffn, hidden), x]), hidden)
    b.output(x, "hidden")
    return b.model()


def attention_block(batch: int = 2, seq: int = 16, hidden: int = 32, heads: int = 2):
    """One encoder layer on float hidden states (the tests' attention block)."""
    return bert(batch, seq, hidden, heads, 2 * hidden, layers=1, embeddings=False)


def rebatch(model: onnx.ModelProto, batch: int) -> onnx.ModelProto:
    """The same model for another batch size (the builders' graphs never bake the batch in)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = {i.name for i in out.graph.initializer}
    for vi in out.graph.input:
        if vi.name not in inits:
            vi.type.tensor_type.shape.dim[0].dim_value = batch
    del out.graph.value_info[:]
    for vi in out.graph.output:
        if vi.type.tensor_type.HasField("shape"):
            vi.type.tensor_type.ClearField("shape")
    return onnx.shape_inference.infer_shapes(out)


def example_feeds(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs for a model of this module (token ids inside the vocabulary)."""
    rng = np.random.default_rng(seed)
    feeds = {}
    inits = {i.name for i in model.graph.initializer}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        shape = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        if vi.type.tensor_type.elem_type == TensorProto.INT64:
            vocab = next(
                (i.dims[0] for i in model.graph.initializer if i.name.startswith("word_emb")),
                100,
            )
            feeds[vi.name] = rng.integers(0, vocab, shape, dtype=np.int64)
        else:
            feeds[vi.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


MODELS = {
    "resnet50": resnet50,
    "detector": detector,
    "bert": bert,
    "convnet": convnet,
    "mlp": mlp,
    "attention": attention_block,
}


def recipe_variant(
    recipe: str,
    model: onnx.ModelProto,
    calibration: Sequence[dict[str, np.ndarray]] = (),
) -> onnx.ModelProto:
    """`model` built by one of lepton-compile's recipes (its pipeline and precision step,
    every layer compressed: no accuracy search). Imports lepton_compile."""
    import onnx_ir as ir

    from lepton_compile import steps
    from lepton_compile.passes import optimize
    from lepton_compile.recipes import RECIPES

    spec = RECIPES[recipe]
    out = model
    if spec.pipeline:
        built = optimize(model, pipeline=spec.pipeline, target=spec.target).model
        out = built if isinstance(built, onnx.ModelProto) else ir.serde.serialize_model(built)
    if spec.precision_pass:
        out = steps.apply(spec.precision_pass, out, model, list(calibration), spec.options, None)
        out = out.model
    return out
