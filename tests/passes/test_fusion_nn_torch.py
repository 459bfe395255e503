"""Tier 1: fusion_nn rules on what torch.onnx.export (TorchScript exporter) really writes.

Exporters write LayerNormalization from opset 17 and Gelu from 20 themselves, so the
decomposed forms come from older opsets; `onnx.version_converter` lifts those models to
an opset where the fused op exists, keeping the decomposition (ReduceMean's axes move to
an input at 18), which is what a user's opset-upgraded model looks like.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import version_converter
from pass_harness import ops

from lepton_compile.passes import optimize
from lepton_compile.passes.fusion_nn import (
    PATTERN_KEY,
    DetectSiLUPass,
    FuseGeluPass,
    FuseLayerNormPass,
)
from lepton_compile.passes.testing import run_ort

torch = pytest.importorskip("torch", reason="torch is needed to export the test modules")

RTOL, ATOL = 1e-4, 1e-5


def export(module, args: tuple, opset: int) -> onnx.ModelProto:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript exporter deprecation notices
        torch.onnx.export(module.eval(), args, buffer, opset_version=opset, dynamo=False)
    return onnx.load_from_string(buffer.getvalue())


def at_opset(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    return version_converter.convert_version(model, opset)


def check_against_torch(module, args: tuple, model: onnx.ModelProto) -> None:
    onnx.checker.check_model(model, full_check=True)
    feeds = {inp.name: a.numpy() for inp, a in zip(model.graph.input, args, strict=True)}
    with torch.no_grad():
        expected = module(*args).numpy()
    np.testing.assert_allclose(run_ort(model, feeds)[0], expected, rtol=RTOL, atol=ATOL)


def fuse(model: onnx.ModelProto, name: str) -> onnx.ModelProto:
    """One pass after folding (exporters write the formula's scalars as Constant nodes)."""
    result = optimize(model, passes=["fold-constants", "lift-constants", name])
    assert result.records[-1].modified is True
    again = optimize(result.model, passes=[name])
    assert again.records[0].modified is False
    return result.model


@pytest.fixture(scope="module")
def x():
    torch.manual_seed(0)
    return torch.randn(2, 8, 16)


@pytest.mark.parametrize("affine", [True, False])
def test_layernorm_export(x, affine):
    module = torch.nn.LayerNorm(16, elementwise_affine=affine)
    if affine:
        with torch.no_grad():
            module.weight.normal_()
            module.bias.normal_()
    exported = export(module, (x,), 14)
    assert "LayerNormalization" not in ops(exported)
    # Opset 14: no LayerNormalization to write; the pattern is only counted.
    result = FuseLayerNormPass()(ir.from_proto(exported))
    assert result.detected == {"layernorm": 1} and not result.modified
    for opset in (17, 18):  # axes as attribute / as input
        out = fuse(at_opset(exported, opset), "fuse-layernorm")
        assert ops(out) == ["LayerNormalization"]
        check_against_torch(module, (x,), out)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_export(x, approximate):
    module = torch.nn.GELU(approximate=approximate)
    exported = export(module, (x,), 17)
    assert "Gelu" not in ops(exported)
    result = FuseGeluPass()(ir.from_proto(exported))
    assert result.detected == {"gelu": 1} and not result.modified
    out = fuse(at_opset(exported, 20), "fuse-gelu")
    assert ops(out) == ["Gelu"]
    assert out.graph.node[0].attribute[0].s.decode() == approximate
    check_against_torch(module, (x,), out)


def test_silu_export(x):
    module = torch.nn.SiLU()
    exported = export(module, (x,), 14)
    result = DetectSiLUPass()(ir.from_proto(exported))
    assert result.detected == {"silu": 1} and result.modified
    assert {n.metadata_props[PATTERN_KEY] for n in result.model.graph} == {"silu"}


class KerasHardSwish(torch.nn.Module):
    """Keras MobileNetV3's hard_swish: x * (ReLU6(x + 3) * (1/6))."""

    def forward(self, x):
        return x * (torch.nn.functional.relu6(x + 3.0) * (1.0 / 6.0))


@pytest.mark.parametrize(
    ("module", "opset", "expected"),
    [
        (torch.nn.Hardswish(), 13, None),  # x * HardSigmoid(x): no HardSwish before 14
        (torch.nn.Hardswish(), 14, ["HardSwish"]),  # the opset-13 export, converted
        (torch.nn.Hardsigmoid(), 13, None),  # already HardSigmoid
        (KerasHardSwish(), 13, ["HardSigmoid", "Mul"]),
        (KerasHardSwish(), 14, ["HardSwish"]),
    ],
    ids=["hardswish-13", "hardswish-14", "hardsigmoid", "keras-13", "keras-14"],
)
def test_hard_activation_exports(x, module, opset, expected):
    exported = at_opset(export(module, (x,), 13), opset)
    if expected is None:
        out = optimize(exported, passes=["fuse-hard-activations"])
        assert out.records[0].modified is False
        assert ops(out.model) == ops(exported)
        return
    out = fuse(exported, "fuse-hard-activations")
    assert sorted(ops(out)) == sorted(expected)
    check_against_torch(module, (x,), out)


class Attention(torch.nn.Module):
    """A multi-head self-attention block written out, as BERT-style models are."""

    def __init__(self, dim: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.out = torch.nn.Linear(dim, dim)

    def forward(self, x, mask):
        b, s, d = x.shape
        q, k, v = self.qkv(x).reshape(b, s, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-2, -1) / (d // self.heads) ** 0.5 + mask
        y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, s, d)
        return self.out(y)


class SDPA(torch.nn.Module):
    def forward(self, q, k, v):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v)


@pytest.mark.parametrize("block", ["written-out", "sdpa"])
def test_attention_export(block):
    torch.manual_seed(0)
    if block == "sdpa":
        module, args = SDPA(), tuple(torch.randn(2, 2, 8, 4) for _ in range(3))
    else:
        module, args = Attention(), (torch.randn(2, 8, 16), torch.randn(2, 1, 1, 8))
    exported = export(module, args, 14)

    # Opset 14: found and annotated by the whole "fused" pipeline, nothing rewritten.
    result = optimize(exported, "fused")
    tagged = [
        n for n in result.model.graph.node if any(p.key == PATTERN_KEY for p in n.metadata_props)
    ]
    assert {n.op_type for n in tagged} >= {"MatMul", "Softmax"}
    assert "Attention" not in ops(result.model)
    check_against_torch(module, args, result.model)

    # Opset 23: the standard Attention op.
    upgraded = optimize(at_opset(exported, 23), "fused").model
    assert ops(upgraded).count("Attention") == 1
    assert "Softmax" not in ops(upgraded)
    check_against_torch(module, args, upgraded)
