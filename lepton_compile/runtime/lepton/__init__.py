"""The lepton backend: an ONNX graph lowered to a torch program that runs on CPU and CUDA.

    from lepton_compile.runtime.lepton import LeptonBackend
    sess = LeptonBackend().load(path, device="cuda", options={"dtype": "fp16"})
    outputs = sess.run({"x": array})                 # {name: np.ndarray}

Lowering (lower.py): the graph is interpreted node by node in topological order, one small
converter per (domain, op_type) (registry.py, ops_*.py), and `torch.fx.experimental.
proxy_tensor.make_fx` (fake tensors) records the ATen ops the converters issue into an fx
GraphModule. We chose make_fx over hand-built fx nodes or generated code because it gives
concrete shapes while converting (so each converter is plain eager torch code that can
branch on shapes) and an ATen-level graph that Inductor and CUDA graph capture take as is.
Values known at lowering time (initializers, Constant, the Shape/Gather/Concat/Range
arithmetic on static shapes) are computed eagerly on the CPU and never recorded, so the
program is straight-line tensor code without dynamic shape logic. Initializers become
buffers. A program is specialized to one set of input shapes; sessions cache one per set.

Ops without a converter are lowered through their ONNX function body when one exists
(model-local functions, and schema functions such as SoftmaxCrossEntropyLoss or Attention);
anything else raises NotSupported naming the op, and the search skips that variant. So do
element types torch cannot compute in (uint16/32/64, 4-bit and 2-bit types, strings). If
with a condition known at lowering time inlines the taken branch; Loop, Scan and sequence
ops are not supported.

Execution modes (backend.py): `dtype` fp32/fp16/bf16 (float tensors computed in that type,
float I/O kept as the model declares, cast at the boundary), `channels_last` (NHWC memory
format for 4-D activations and conv weights), `cuda_graphs` (default on for CUDA: the
whole forward captured and replayed), `compile="inductor"` (torch.compile of the program),
`kernels` auto/triton/torch (routing.py: per fused or quantized layer, our Triton kernel or
torch's ops; "auto" measures both on CUDA and keeps the faster, on the CPU it means torch's).
`option_space(device)` lists the modes a search may vary per variant.

Quantized models compute in integers or FP8 (quant_layers.py): QDQ Conv/MatMul/Gemm with
INT8 or FP8 E4M3 operands, MatMulInteger/ConvInteger in int32, and com.microsoft
MatMulNBits (INT4 weights) on our INT4 kernel or with the weight dequantized at load.
`describe()` lists every such layer with the candidates' times and the choice.

torch is imported lazily: importing this package does not import it.
"""

from __future__ import annotations

from lepton_compile.runtime.lepton.backend import (
    KERNEL_MODES,
    TORCH_HINT,
    LeptonBackend,
    LeptonSession,
    option_label,
    option_space,
    parse_options,
    torch_available,
)


def supported_ops() -> list[str]:
    """Every op with a converter, as "Op" (ONNX domain) or "domain.Op" (imports torch)."""
    from lepton_compile.runtime.lepton.registry import load_converters

    return sorted(f"{d + '.' if d else ''}{o}" for d, o in load_converters())


__all__ = [
    "KERNEL_MODES",
    "TORCH_HINT",
    "LeptonBackend",
    "LeptonSession",
    "option_label",
    "option_space",
    "parse_options",
    "supported_ops",
    "torch_available",
]
