"""Triton kernels for the ai.lepton fused ops: each with its launcher and torch reference.

    gemm          A @ B (fp16/bf16/fp32) + fused epilogue; split-K for small M
    gemm_scaled   W8A8 int8 and FP8 e4m3 GEMMs with per-token x per-channel scales + epilogue
    conv          conv2d as implicit GEMM on NHWC (stride, padding, dilation, groups) and a
                  depthwise kernel, + epilogue
    specs         every kernel x config as a compile spec (the Hopper compile gate, AOT later)

The epilogue is the one of passes/lepton_ops.py: Y = post(act(base + bias) + residual).
Nothing here is imported by the CPU path (torch and triton are optional extras), and this
package imports no submodule on its own: set TRITON_INTERPRET=1 before importing one to run
the kernels in the Triton interpreter on CPU tensors.
"""
