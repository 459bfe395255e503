"""Triton kernels for the ai.lepton fused and quantized layers, and the per-layer dispatch.

    gemm          A @ B (fp16/bf16/fp32) + fused epilogue; split-K for small M
    gemm_tma      the same on Hopper's path: TMA tile loads, persistent programs, wgmma
    gemm_scaled   W8A8 int8 and FP8 e4m3 GEMMs with per-token x per-channel scales + epilogue
    gemm_int4     INT4 weight-only GEMM (MatMulNBits layout), dequantized in-kernel
    conv          conv2d as implicit GEMM on NHWC (stride, padding, dilation, groups) and a
                  depthwise kernel, + epilogue
    configs       the autotune config tables of every kernel, per architecture and M bucket
    dispatch      per-layer choice between our kernel and torch's route, by measurement
    specs         every kernel x config as a compile spec (the Hopper compile gate, AOT later)

The epilogue is the ai.lepton contract's (lepton_compile.contract):
Y = post(act(base + bias) + residual). The lepton backend calls the kernels through torch
custom ops (lepton_compile/runtime/lepton/kernel_ops.py). This package imports no submodule
on its own, and `dispatch` imports neither torch nor triton: set TRITON_INTERPRET=1 before
importing a kernel module to run the kernels in the Triton interpreter on CPU tensors.
"""
