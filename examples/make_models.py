"""Writes the small example models shipped in examples/ (fixed seeds, so the files are stable).

    python examples/make_models.py [OUTDIR]

tinycnn.onnx: a residual conv net with BatchNorm, Dropout, Identity and a MatMul+Add head —
the patterns the fused recipe folds — on a dynamic batch (the tool fixes it to 1).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper, parser

TINYCNN = """
<ir_version: 8, opset_import: ["" : 17]>
tinycnn (float[N, 3, 96, 96] images) => (float[N, 10] probs) {
    c1 = Conv <pads = [1, 1, 1, 1], strides = [2, 2]> (images, w1, b1)
    n1 = BatchNormalization (c1, s1, o1, m1, v1)
    r1 = Relu (n1)
    c2 = Conv <pads = [1, 1, 1, 1]> (r1, w2, b2)
    n2 = BatchNormalization (c2, s2, o2, m2, v2)
    r2 = Relu (n2)
    c3 = Conv <pads = [1, 1, 1, 1]> (r2, w3, b3)
    n3 = BatchNormalization (c3, s3, o3, m3, v3)
    res = Add (n3, r1)
    r3 = Relu (res)
    c4 = Conv <pads = [1, 1, 1, 1], strides = [2, 2]> (r3, w4, b4)
    r4 = Relu (c4)
    d4 = Dropout (r4)
    i4 = Identity (d4)
    g = GlobalAveragePool (i4)
    f = Flatten <axis = 1> (g)
    mm = MatMul (f, wfc)
    logits = Add (mm, bfc)
    probs = Softmax <axis = -1> (logits)
}
"""


def bn_weights(rng: np.random.Generator, c: int, tag: str) -> dict[str, np.ndarray]:
    """BatchNormalization inputs s, o, m, v (suffixed ``tag``) for ``c`` channels, near identity."""
    return {
        f"s{tag}": rng.uniform(0.5, 1.5, c).astype(np.float32),
        f"o{tag}": rng.normal(0, 0.1, c).astype(np.float32),
        f"m{tag}": rng.normal(0, 0.1, c).astype(np.float32),
        f"v{tag}": rng.uniform(0.5, 1.5, c).astype(np.float32),
    }


def _conv(rng: np.random.Generator, cout: int, cin: int, tag: str) -> dict[str, np.ndarray]:
    fan_in = cin * 9
    return {
        f"w{tag}": (rng.standard_normal((cout, cin, 3, 3)) * np.sqrt(2.0 / fan_in)).astype(
            np.float32
        ),
        f"b{tag}": rng.normal(0, 0.05, cout).astype(np.float32),
    }


def tinycnn(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    weights: dict[str, np.ndarray] = {}
    weights |= _conv(rng, 32, 3, "1") | bn_weights(rng, 32, "1")
    weights |= _conv(rng, 32, 32, "2") | bn_weights(rng, 32, "2")
    weights |= _conv(rng, 32, 32, "3") | bn_weights(rng, 32, "3")
    weights |= _conv(rng, 64, 32, "4")
    weights["wfc"] = (rng.standard_normal((64, 10)) * 0.3).astype(np.float32)
    weights["bfc"] = rng.normal(0, 0.1, 10).astype(np.float32)
    model = parser.parse_model(TINYCNN)
    model.graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in weights.items())
    model.producer_name = "lepton-compile examples"
    onnx.checker.check_model(model, full_check=True)
    return model


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else Path(__file__).parent
    out.mkdir(parents=True, exist_ok=True)
    onnx.save(tinycnn(), out / "tinycnn.onnx")
    print(f"wrote {out / 'tinycnn.onnx'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
