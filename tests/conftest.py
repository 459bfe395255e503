"""Shared fixtures: small models as ONNX text, the example model, the onnx wheel's light models."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import numpy_helper, parser

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

LIGHT_DIR = Path(os.path.dirname(onnx.__file__)) / "backend" / "test" / "data" / "light"


@pytest.fixture(autouse=True, scope="session")
def _private_result_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tests never read or fill the user's result cache."""
    os.environ["LEPTON_CACHE"] = str(tmp_path_factory.mktemp("cache") / "results.sqlite")
    # onnxruntime only, unless a test asks for more: a torch worker per variant is slow to start.
    os.environ.setdefault("LEPTON_BACKENDS", "ort")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests under tests/kernels form the interpreter tier (see pyproject's markers)."""
    kernels = ROOT / "tests" / "kernels"
    for item in items:
        if kernels in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.interpreter)


def light_models() -> list[Path]:
    return sorted(LIGHT_DIR.glob("light_*.onnx"))


@pytest.fixture(scope="session")
def tinycnn_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from make_models import tinycnn

    p = tmp_path_factory.mktemp("models") / "tinycnn.onnx"
    onnx.save(tinycnn(), p)
    return p


def text_model(text: str, weights: dict[str, np.ndarray] | None = None) -> onnx.ModelProto:
    m = parser.parse_model(text)
    for k, v in (weights or {}).items():
        m.graph.initializer.append(numpy_helper.from_array(v, k))
    return m


class MarkNodePass(ir.passes.InPlacePass):
    """Numerically neutral: names the first ``op_type`` node ``mark``, so that a judge or a
    fake timer can tell the pass ran; a second run changes nothing. Subclasses set both."""

    op_type = ""
    mark = ""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        for node in model.graph:
            if node.op_type == self.op_type and node.name != self.mark:
                node.name = self.mark
                return ir.passes.PassResult(model, True)
        return ir.passes.PassResult(model, False)


def mlp_text(inputs: int, hidden: int, outputs: int, *, softmax: bool = True) -> str:
    """ONNX text of a dynamic-batch MLP: MatMul+Add (w1, b1), Relu, MatMul+Add (w2, b2), then
    softmax scores unless ``softmax`` is False."""
    head = "ob = Add (o, b2)\n    y = Softmax <axis = -1> (ob)" if softmax else "y = Add (o, b2)"
    return f"""
<ir_version: 8, opset_import: ["" : 17]>
mlp (float[B, {inputs}] x) => (float[B, {outputs}] y) {{
    h = MatMul (x, w1)
    hb = Add (h, b1)
    r = Relu (hb)
    o = MatMul (r, w2)
    {head}
}}
"""


@pytest.fixture
def mlp_path(tmp_path: Path) -> Path:
    """A dynamic-batch MLP classifier: MatMul+Add head, softmax scores."""
    rng = np.random.default_rng(0)
    m = text_model(
        mlp_text(32, 64, 8),
        {
            "w1": rng.standard_normal((32, 64)).astype(np.float32) * 0.2,
            "b1": rng.standard_normal(64).astype(np.float32) * 0.1,
            "w2": rng.standard_normal((64, 8)).astype(np.float32) * 0.2,
            "b2": rng.standard_normal(8).astype(np.float32) * 0.1,
        },
    )
    p = tmp_path / "mlp.onnx"
    onnx.save(m, p)
    return p
