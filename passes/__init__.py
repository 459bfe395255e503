"""Graph passes on onnx-ir: named passes and pipelines that optimize an ONNX model."""

from lepton_compile.passes.cleanup import (
    ConstantFoldingPass,
    EliminateDropoutPass,
    RemoveInitializerInputsPass,
    RemoveUnusedPass,
    SimplifyPass,
)
from lepton_compile.passes.fusion import (
    FuseBatchNormPass,
    FuseChannelAffinePass,
    FuseHardSwishPass,
    FuseMatMulAddPass,
)
from lepton_compile.passes.instruments import (
    InstrumentedPipeline,
    PassInstrument,
    PassRecord,
    TimingInstrument,
)
from lepton_compile.passes.pipeline import OptimizeResult, build_pipeline, optimize
from lepton_compile.passes.registry import (
    PIPELINES,
    TARGETS,
    PassSpec,
    get_pass,
    list_passes,
    register_pass,
    resolve_pipeline,
)

__all__ = [
    "PIPELINES",
    "TARGETS",
    "ConstantFoldingPass",
    "EliminateDropoutPass",
    "FuseBatchNormPass",
    "FuseChannelAffinePass",
    "FuseHardSwishPass",
    "FuseMatMulAddPass",
    "InstrumentedPipeline",
    "OptimizeResult",
    "PassInstrument",
    "PassRecord",
    "PassSpec",
    "RemoveInitializerInputsPass",
    "RemoveUnusedPass",
    "SimplifyPass",
    "TimingInstrument",
    "build_pipeline",
    "get_pass",
    "list_passes",
    "optimize",
    "register_pass",
    "resolve_pipeline",
]
