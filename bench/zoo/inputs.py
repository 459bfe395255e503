"""Feeds for zoo models: random inputs at each model's fixed shapes, dtypes read from the model."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx

from lepton_compile.bench.zoo.catalogue import ZooError, model_spec
from lepton_compile.bench.zoo.fetching import fetch

__all__ = ["example_inputs"]


def example_inputs(
    name: str,
    path: str | os.PathLike[str] | None = None,
    *,
    seed: int = 0,
    cache_dir: str | os.PathLike[str] | None = None,
) -> dict[str, np.ndarray]:
    """Random feeds for model `name` at its fixed input shapes, dtypes read from the model.

    Floats are uniform in [0, 1); integers uniform in the spec's input_ranges (default
    [0, 2)). `path` defaults to the cached file, fetched if needed.
    """
    spec = model_spec(name)
    model_path = Path(path) if path is not None else fetch(name, cache_dir)
    graph = onnx.load(str(model_path), load_external_data=False).graph
    inits = {i.name for i in graph.initializer}
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for vi in graph.input:
        if vi.name in inits:
            continue
        dtype = onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
        shape = spec.input_shapes.get(vi.name)
        if shape is None:
            dims = vi.type.tensor_type.shape.dim
            if not all(d.HasField("dim_value") and d.dim_value > 0 for d in dims):
                raise ZooError(f"{name}: input {vi.name} is dynamic and has no fixed shape")
            shape = [d.dim_value for d in dims]
        if np.issubdtype(dtype, np.integer):
            low, high = spec.input_ranges.get(vi.name, (0, 2))
            feeds[vi.name] = rng.integers(low, high, size=shape, dtype=dtype)
        elif dtype == np.bool_:
            feeds[vi.name] = rng.integers(0, 2, size=shape).astype(np.bool_)
        else:
            feeds[vi.name] = rng.random(shape, dtype=np.float32).astype(dtype)
    return feeds
