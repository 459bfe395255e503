"""lepton-compile: verified, measured optimization of ONNX models.

result = lepton_compile.compile("model.onnx", input_shapes={"x": [1, 3, 224, 224]})
result.best, result.variants, result.pareto, result.save("out/")
lepton_compile.log_to_mlflow("out/", tracking_uri="http://mlflow:5000")
"""

from __future__ import annotations

__version__ = "0.1.0"

from lepton_compile.engine import CompileResult, compile  # noqa: E402
from lepton_compile.options import CompileOptions  # noqa: E402
from lepton_compile.runtime import load  # noqa: E402
from lepton_compile.tracking import log_to_mlflow  # noqa: E402
from lepton_compile.variant import Status, VariantResult  # noqa: E402

__all__ = [
    "CompileOptions",
    "CompileResult",
    "Status",
    "VariantResult",
    "__version__",
    "compile",
    "load",
    "log_to_mlflow",
]
