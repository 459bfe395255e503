"""Named passes and named pipelines (ordered pass-name lists) for each target."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any

import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from lepton_compile.passes import cleanup
from lepton_compile.passes.cleanup import (
    ConstantFoldingPass,
    DeduplicateInitializersPass,
    EliminateDropoutPass,
    EliminateIdentityPass,
    LiftConstantsPass,
    RemoveInitializerInputsPass,
    RemoveUnusedPass,
    SimplifyPass,
)
from lepton_compile.passes.fusion import (
    FuseBatchNormPass,
    FuseChannelAffinePass,
    FuseHardSwishPass,
    FuseMatMulAddPass,
    FuseMatMulBatchNormPass,
    FusePadPass,
    QuietShapeInferencePass,
)
from lepton_compile.passes.fusion_gemm_nd import FuseMatMulAddNdPass
from lepton_compile.passes.fusion_lepton import FuseLeptonPass
from lepton_compile.passes.fusion_nn import (
    DetectSiLUPass,
    FuseAttentionPass,
    FuseGeluPass,
    FuseHardActivationsPass,
    FuseLayerNormPass,
)

# "ort": standard ONNX ops only, for onnxruntime. "lepton": our runtime; it will add
# custom-domain fusions (passes registered with targets={"lepton"}) to the same pipelines.
TARGETS: tuple[str, ...] = ("ort", "lepton")


@dataclasses.dataclass(frozen=True)
class PassSpec:
    """A registered pass: `factory(**options)` builds a fresh in-place pass instance."""

    name: str
    description: str
    factory: Callable[..., ir.passes.PassBase]
    targets: frozenset[str] = frozenset(TARGETS)

    def build(self, **options: Any) -> ir.passes.PassBase:
        return self.factory(**options)


_REGISTRY: dict[str, PassSpec] = {}


def register_pass(
    name: str,
    description: str,
    factory: Callable[..., ir.passes.PassBase],
    targets: Iterable[str] = TARGETS,
) -> PassSpec:
    """Add a pass to the registry (names are unique)."""
    if name in _REGISTRY:
        raise ValueError(f"pass {name!r} is already registered")
    unknown = set(targets) - set(TARGETS)
    if unknown:
        raise ValueError(f"pass {name!r}: unknown targets {sorted(unknown)}")
    spec = PassSpec(name, description, factory, frozenset(targets))
    _REGISTRY[name] = spec
    return spec


def _lift_constants(**options: Any) -> ir.passes.PassBase:
    # All Constant nodes, whatever their size: fusions look for initializers.
    options = {"lift_all_constants": True, "size_limit": 0, **options}
    return LiftConstantsPass(**options)


def _infer_shapes(**options: Any) -> ir.passes.PassBase:
    # Not strict: custom-domain ops without a schema must not stop the pipeline.
    options = {"strict_mode": False, **options}
    return QuietShapeInferencePass(**options)


register_pass(
    "infer-shapes",
    "onnx shape inference; records value types and shapes (folding does its own)",
    _infer_shapes,
)
register_pass(
    "remove-initializer-inputs",
    "graph inputs that have an initializer become plain initializers (IR >= 4)",
    RemoveInitializerInputsPass,
)
register_pass(
    "fold-constants",
    "fold constant subgraphs, static Shape/Gather chains and ConstantOfShape",
    ConstantFoldingPass,
)
register_pass(
    "lift-constants",
    "Constant nodes become initializers",
    _lift_constants,
)
register_pass(
    "remove-unused",
    "remove dead nodes, unused initializers and unread optional outputs",
    RemoveUnusedPass,
)
register_pass(
    "eliminate-dropout",
    "inference-mode Dropout (any opset) is bypassed",
    EliminateDropoutPass,
)
register_pass(
    "eliminate-identity",
    "Identity nodes are bypassed (kept where a graph output would lose its name)",
    EliminateIdentityPass,
)
register_pass(
    "simplify",
    "no-op Add/Mul/Cast/Reshape/Pad/Slice/Expand/Transpose removed; Reshape, Transpose, "
    "Squeeze/Unsqueeze, Slice and lossless Cast chains merged",
    SimplifyPass,
)
register_pass(
    "fuse-batchnorm",
    "BatchNormalization after Conv/ConvTranspose/Gemm folded into its weights",
    FuseBatchNormPass,
)
register_pass(
    "fuse-channel-affine",
    "per-channel constant Mul/Add after Conv or BatchNormalization folded into its weights",
    FuseChannelAffinePass,
)
register_pass(
    "fuse-matmul-add",
    "Add(MatMul(a, b), c) with 2-D a, b becomes Gemm",
    FuseMatMulAddPass,
)
register_pass(
    "fuse-hardswish",
    "x*Clip(x+3,0,6)/6 becomes HardSwish (opset >= 14) or x*HardSigmoid(x)",
    FuseHardSwishPass,
)
register_pass(
    "fuse-hard-activations",
    "Clip(a*x+b,0,1), Clip(x+3,0,6)*(1/6), x*... become HardSigmoid/HardSwish (opset >= 14)",
    FuseHardActivationsPass,
)
register_pass(
    "fuse-layernorm",
    "ReduceMean/Sub/Pow/Sqrt/Div (+Mul/Add) becomes LayerNormalization (opset >= 17)",
    FuseLayerNormPass,
)
register_pass(
    "fuse-gelu",
    "erf and tanh GELU formulas become Gelu (opset >= 20); below, only counted",
    FuseGeluPass,
)
register_pass(
    "detect-silu",
    "x*Sigmoid(x) annotated lepton.pattern=silu (no standard op)",
    DetectSiLUPass,
)
register_pass(
    "fuse-attention",
    "MatMul/scale/mask/Softmax/MatMul annotated lepton.pattern=sdpa; Attention at opset >= 23",
    FuseAttentionPass,
)
register_pass(
    "fuse-matmul-batchnorm",
    "BatchNormalization after MatMul with a constant 2-D operand folded into Gemm or MatMul+Add",
    FuseMatMulBatchNormPass,
)
register_pass(
    "fuse-pad",
    "constant zero Pad folded into Conv/AveragePool pads; into MaxPool when the value is -inf-safe",
    FusePadPass,
)
register_pass(
    "fuse-lepton",
    "Conv/Gemm/MatMul + bias + activation (+ residual [+ activation]) become ai.lepton Fused* ops",
    FuseLeptonPass,
    targets={"lepton"},
)
# Not for the ort target: onnxruntime makes this rewrite itself where it chooses to (static
# shapes, not an attention projection it keeps for AttentionFusion), and done ahead of it the
# bias sits in the Gemm, where BiasGelu and the attention fusions no longer see it.
register_pass(
    "fuse-matmul-add-nd",
    "Add(MatMul(a, b[K, N]), c[N]) with static N-D a becomes Reshape-Gemm-Reshape, Reshapes "
    "merged and shared; kept only if the graph has fewer nodes (target lepton only)",
    FuseMatMulAddNdPass,
    targets={"lepton"},
)
register_pass(
    "cse",
    "common subexpression elimination (random ops and training-mode Dropout never merged)",
    cleanup.CommonSubexpressionEliminationPass,
)


# Hashed (ours, not onnx-ir's, see DeduplicateInitializersPass), so that large weights
# (the light models' constant fills) are compared without keeping a second copy of
# their bytes as dictionary keys.
register_pass(
    "dedup-initializers",
    "initializers with equal dtype, shape and content are merged",
    DeduplicateInitializersPass,
)
register_pass(
    "topological-sort",
    "nodes sorted topologically (stable)",
    common_passes.TopologicalSortPass,
)

_CLEANUP: tuple[str, ...] = (
    "remove-initializer-inputs",
    "fold-constants",
    "lift-constants",
    "remove-unused",
    "eliminate-dropout",
    "eliminate-identity",
    "simplify",
)
_FINISH: tuple[str, ...] = (
    # Merged initializers make more nodes identical: dedup first, then CSE.
    "dedup-initializers",
    "cse",
    "remove-unused",
    "topological-sort",
)

# Pipelines as data. A pipeline may name passes of several targets; `resolve_pipeline`
# keeps those that apply to the requested target.
PIPELINES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        # Cleanup and folding only: no op is replaced by a different op.
        "basic": (*_CLEANUP, *_FINISH),
        # Standard-op fusions on top; ORT-portable. Custom-domain ("lepton") fusions
        # go after fuse-matmul-add, once they exist.
        "fused": (
            *_CLEANUP,
            "fuse-batchnorm",
            "fuse-matmul-batchnorm",
            "fuse-channel-affine",
            "fuse-pad",
            "fuse-matmul-add",
            "fuse-hardswish",
            "fuse-hard-activations",
            "fuse-layernorm",
            "fuse-gelu",
            "detect-silu",
            "fuse-attention",
            # Last fusion: absorbs the activations the fusions above produce (lepton only).
            "fuse-lepton",
            # After every fusion that wants MatMul+Add; merges and shares its Reshapes itself.
            # lepton only (see its registration).
            "fuse-matmul-add-nd",
            *_FINISH,
        ),
    }
)


def list_passes(target: str | None = None) -> list[tuple[str, str]]:
    """[(name, description)] of all registered passes, or of those for `target`."""
    if target is not None:
        check_target(target)
    return [
        (spec.name, spec.description)
        for spec in _REGISTRY.values()
        if target is None or target in spec.targets
    ]


def get_pass(name: str) -> PassSpec:
    """The registered pass `name`; ValueError naming it and the known ones if absent."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown pass {name!r}; known passes: {', '.join(sorted(_REGISTRY))}"
        ) from None


def check_target(target: str) -> None:
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; known targets: {', '.join(TARGETS)}")


def resolve_pipeline(
    pipeline: str | None = "fused",
    target: str = "ort",
    passes: Iterable[str] | None = None,
    skip: Iterable[str] = (),
) -> list[str]:
    """The ordered pass names to run: `passes` if given, else the pipeline's, minus `skip`.

    Every name is validated. A pass not meant for `target` is dropped from a named
    pipeline, but asking for it explicitly in `passes` is an error.
    """
    check_target(target)
    skip = list(skip)
    for name in skip:
        get_pass(name)
    if passes is not None:
        names = list(passes)
        for name in names:
            if target not in get_pass(name).targets:
                raise ValueError(f"pass {name!r} is not available for target {target!r}")
    else:
        if pipeline is None or pipeline not in PIPELINES:
            raise ValueError(
                f"unknown pipeline {pipeline!r}; known pipelines: {', '.join(PIPELINES)}"
            )
        names = [name for name in PIPELINES[pipeline] if target in get_pass(name).targets]
    return [name for name in names if name not in skip]
