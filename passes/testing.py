"""Test helpers: small models from ONNX text + arrays, seeded inputs, ORT output comparison."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
import onnx.numpy_helper

from lepton_compile.passes.ort_session import session

_NP_TYPES: dict[int, type] = {
    onnx.TensorProto.FLOAT: np.float32,
    onnx.TensorProto.DOUBLE: np.float64,
    onnx.TensorProto.FLOAT16: np.float16,
    onnx.TensorProto.INT64: np.int64,
    onnx.TensorProto.INT32: np.int32,
    onnx.TensorProto.BOOL: np.bool_,
}


def model_from_text(
    text: str, initializers: Mapping[str, np.ndarray] | None = None
) -> onnx.ModelProto:
    """Parse ONNX text and attach `initializers` (names the text uses but does not define)."""
    model = onnx.parser.parse_model(text)
    for name, array in (initializers or {}).items():
        model.graph.initializer.append(onnx.numpy_helper.from_array(np.asarray(array), name))
    return model


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Graph inputs the caller must feed (those without an initializer)."""
    inits = {init.name for init in model.graph.initializer}
    return [inp for inp in model.graph.input if inp.name not in inits]


def random_inputs(
    model: onnx.ModelProto,
    seed: int = 0,
    shapes: Mapping[str, Sequence[int]] | None = None,
) -> dict[str, np.ndarray]:
    """Seeded inputs of each fed input's declared (or given) shape: floats in [-1, 1)."""
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for inp in graph_inputs(model):
        tensor_type = inp.type.tensor_type
        if shapes and inp.name in shapes:
            shape = list(shapes[inp.name])
        else:
            shape = [d.dim_value for d in tensor_type.shape.dim]
            if any(not d.HasField("dim_value") for d in tensor_type.shape.dim):
                raise ValueError(f"input {inp.name!r} has a dynamic shape: pass `shapes`")
        dtype = _NP_TYPES[tensor_type.elem_type]
        if np.issubdtype(dtype, np.floating):
            feeds[inp.name] = (rng.random(shape) * 2 - 1).astype(dtype)
        elif dtype == np.bool_:
            feeds[inp.name] = rng.random(shape) < 0.5
        else:
            feeds[inp.name] = rng.integers(-8, 8, shape).astype(dtype)
    return feeds


def run_ort(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Outputs on ORT's CPU provider with ORT's own graph optimizations off."""
    return session(model).run(None, dict(feeds))


def assert_same_outputs(
    reference: onnx.ModelProto,
    candidate: onnx.ModelProto,
    *,
    rtol: float,
    atol: float,
    seed: int = 0,
    shapes: Mapping[str, Sequence[int]] | None = None,
) -> list[np.ndarray]:
    """Both models give the same output shapes and values (within rtol/atol) on seeded inputs."""
    feeds = random_inputs(reference, seed, shapes)
    expected = run_ort(reference, feeds)
    actual = run_ort(candidate, feeds)
    assert len(expected) == len(actual)
    for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
        assert e.shape == a.shape, f"output {i}: shape {a.shape}, expected {e.shape}"
        np.testing.assert_allclose(a, e, rtol=rtol, atol=atol, err_msg=f"output {i}")
    return actual
