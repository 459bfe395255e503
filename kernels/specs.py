"""Compile specs: every kernel x config x dtype as a representative `triton.compile` input.

The compile gate (tests/kernels/test_compile_hopper.py) compiles each spec for a GPU target
on the CPU; the ahead-of-time build (a later milestone) needs the same list. A spec mirrors
what the launcher passes at run time for a typical shape: pointers and the integer sizes
and strides the JIT would find divisible by 16 are marked so, unit strides are constants
(the JIT specializes arguments equal to 1), and the epilogue is the heaviest one (bias,
GELU, residual, ReLU) so register pressure is the worst a config will see.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Iterable
from typing import Any

import torch
import triton
import triton.language as tl

from lepton_compile.contract import ACTIVATION_CODES
from lepton_compile.kernels import conv, gemm, gemm_int4, gemm_scaled, gemm_tma
from lepton_compile.kernels._common import SPLITK_EPILOGUE_BLOCK, splitk_epilogue_kernel

# Opt-in shared memory per block: H100/H200 (sm90) 227 KiB, A100 (sm80) 163 KiB.
SHARED_LIMIT = {90: 232448, 80: 166912}

TRITON_TYPES = {
    torch.float16: "fp16",
    torch.bfloat16: "bf16",
    torch.float32: "fp32",
    torch.int8: "i8",
    torch.uint8: "u8",
    torch.float8_e4m3fn: "fp8e4nv",
}
FLOAT_ARGS = frozenset({"p0", "p1", "q0", "q1"})
_EPILOGUE = {
    "HAS_BIAS": True,
    "ACT": ACTIVATION_CODES["gelu"],
    "HAS_RES": True,
    "POST_ACT": ACTIVATION_CODES["relu"],
}


@dataclasses.dataclass(frozen=True)
class CompileSpec:
    label: str  # e.g. "gemm fp16 128x256x64 g8 s3 w8"
    kernel: Any  # the @triton.jit function
    signature: dict[str, str]
    constexprs: dict[str, Any]
    attrs: dict[tuple[int, ...], list]
    num_warps: int
    num_stages: int
    wgmma_expected: bool  # a Hopper tensor-core GEMM tile that should lower to wgmma
    family: str  # gemm, w8a8, fp8, int4, gemm-tma, conv, depthwise, splitk-epilogue


def _spec(
    label: str,
    kernel: Any,
    ptr_types: dict[str, torch.dtype],
    constexprs: dict[str, Any],
    ones: Iterable[str],
    aligned: Iterable[str],
    num_warps: int,
    num_stages: int,
    family: str,
    wgmma_expected: bool = False,
    descriptors: dict[str, str] | None = None,
) -> CompileSpec:
    """`descriptors`: TMA tensor-descriptor arguments and their types ("tensordesc<...>")."""
    ones, aligned = set(ones), set(aligned)
    descriptors = descriptors or {}
    signature: dict[str, str] = {}
    consts: dict[str, Any] = {}
    attrs: dict[tuple[int, ...], list] = {}
    for i, (name, is_constexpr) in enumerate(_constexpr_flags(kernel)):
        if is_constexpr:
            signature[name] = "constexpr"
            consts[name] = constexprs[name]
        elif name in ones:
            signature[name] = "constexpr"
            consts[name] = 1
        elif name in descriptors:
            signature[name] = descriptors[name]
        elif name.endswith("_ptr"):
            signature[name] = "*" + TRITON_TYPES[ptr_types[name]]
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif name in FLOAT_ARGS:
            signature[name] = "fp32"
        else:
            signature[name] = "i32"
            if name in aligned:
                attrs[(i,)] = [["tt.divisibility", 16]]
    return CompileSpec(
        label, kernel, signature, consts, attrs, num_warps, num_stages, wgmma_expected, family
    )


def _constexpr_flags(kernel: Any) -> list[tuple[str, bool]]:
    """(name, is constexpr) per argument; under TRITON_INTERPRET `kernel` has no `params`."""
    params = getattr(kernel, "params", None)
    if params is not None:
        return [(p.name, bool(p.is_constexpr)) for p in params]
    sig = inspect.signature(kernel.fn)
    return [(n, "constexpr" in str(p.annotation)) for n, p in sig.parameters.items()]


def _cfg_label(cfg: triton.Config) -> str:
    k = cfg.kwargs
    tile = "x".join(str(k[n]) for n in ("BLOCK_M", "BLOCK_N", "BLOCK_K", "BLOCK_C") if n in k)
    group = f" g{k['GROUP_M']}" if "GROUP_M" in k else ""
    return f"{tile}{group} s{cfg.num_stages} w{cfg.num_warps}"


def _dname(dtype: torch.dtype) -> str:
    return TRITON_TYPES[dtype]


def _wgmma_tile(cfg: triton.Config, arch: int) -> bool:
    return arch >= 90 and cfg.kwargs["BLOCK_M"] >= 64 and cfg.num_warps % 4 == 0


@dataclasses.dataclass(frozen=True)
class _Kernel:
    """What the specs of one kernel share: the typical launch's pointer dtypes (None: the
    spec's input dtype), unit strides, integers divisible by 16, constexprs besides the
    config's."""

    fn: Any
    family: str
    ptrs: dict[str, torch.dtype | None]
    ones: tuple[str, ...]
    aligned: tuple[str, ...]
    consts: dict[str, Any]

    def spec(
        self,
        label: str,
        cfg: triton.Config,
        dtype: torch.dtype,
        wgmma: bool = False,
        *,
        ones: tuple[str, ...] | None = None,
        aligned: tuple[str, ...] | None = None,
        descriptors: dict[str, str] | None = None,
        **consts: Any,
    ) -> CompileSpec:
        """The spec "<label> <config>" of `cfg` with `dtype` inputs; `consts` (constexprs),
        `ones` and `aligned` (argument names) replace the kernel's typical ones."""
        return _spec(
            f"{label} {_cfg_label(cfg)}",
            self.fn,
            {name: d or dtype for name, d in self.ptrs.items()},
            {**cfg.kwargs, **self.consts, **consts},
            self.ones if ones is None else ones,
            self.aligned if aligned is None else aligned,
            cfg.num_warps,
            cfg.num_stages,
            self.family,
            wgmma_expected=wgmma,
            descriptors=descriptors,
        )


_F32 = torch.float32


def _ptrs(*names: str, **fixed: torch.dtype) -> dict[str, torch.dtype | None]:
    """Pointer arguments: `names` of the spec's input dtype (None), `fixed` of their own."""
    return {**dict.fromkeys(names), **fixed}


# A row-major, B (K, N) row-major; the K-major variant is B as an nn.Linear weight (N, K).
_GEMM = _Kernel(
    gemm.gemm_kernel,
    "gemm",
    _ptrs("a_ptr", "b_ptr", "bias_ptr", "res_ptr", "y_ptr", ws_ptr=_F32),
    ("stride_ak", "stride_bn", "stride_rn", "stride_yn"),
    ("M", "N", "K", "stride_am", "stride_bk", "stride_bn", "stride_rm", "stride_ym"),
    {**_EPILOGUE, "SPLIT_K": 1, "EVEN_K": True, "DOT_MODE": 0},
)
_K_MAJOR: dict[str, Any] = {
    "ones": ("stride_ak", "stride_bk", "stride_rn", "stride_yn"),
    "aligned": ("M", "N", "K", "stride_am", "stride_bn", "stride_rm", "stride_ym"),
}
_NO_EPILOGUE = {"HAS_BIAS": False, "ACT": 0, "HAS_RES": False, "POST_ACT": 0}


def gemm_specs(arch: int = 90) -> list[CompileSpec]:
    """gemm_kernel: each config x (fp16, bf16, fp32); A row-major, B (K, N) row-major."""
    specs = []
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        for cfg in gemm.get_configs(arch, None, dtype.itemsize):
            wgmma = _wgmma_tile(cfg, arch) and dtype != torch.float32
            specs.append(_GEMM.spec(f"gemm {_dname(dtype)}", cfg, dtype, wgmma))
    # The other paths once each: B K-major (an nn.Linear weight), masked K, split-K.
    fp16 = torch.float16
    cfg = gemm.get_configs(arch, 4096)[0]
    specs.append(_GEMM.spec("gemm fp16 B K-major", cfg, fp16, _wgmma_tile(cfg, arch), **_K_MAJOR))
    cfg = gemm.get_configs(arch, 64)[0]
    split: dict[str, Any] = {**_NO_EPILOGUE, "SPLIT_K": 4, "EVEN_K": False}
    label = "gemm fp16 split-K 4, masked K"
    aligned = ("M", "N", "stride_bk")
    specs.append(_GEMM.spec(label, cfg, fp16, _wgmma_tile(cfg, arch), aligned=aligned, **split))
    bm, bn = SPLITK_EPILOGUE_BLOCK
    for out in (torch.float16, torch.bfloat16):
        consts = {**_EPILOGUE, "SPLIT_K": 4, "BLOCK_M": bm, "BLOCK_N": bn}
        specs.append(
            _spec(
                f"splitk-epilogue {_dname(out)} {bm}x{bn} w4",
                splitk_epilogue_kernel,
                {"ws_ptr": torch.float32, "bias_ptr": out, "res_ptr": out, "y_ptr": out},
                consts,
                ("stride_rn", "stride_yn"),
                ("M", "N", "stride_rm", "stride_ym"),
                4,
                1,
                "splitk-epilogue",
            )
        )
    return specs


def scaled_specs(arch: int = 90) -> list[CompileSpec]:
    """scaled_gemm_kernel: int8 (W8A8) and fp8 e4m3 (sm89+) x each config; B K-major."""
    specs = []
    kinds = [("w8a8", torch.int8)] + ([("fp8", torch.float8_e4m3fn)] if arch >= 89 else [])
    fp16 = torch.float16
    ptrs = _ptrs("a_ptr", "b_ptr", a_scale_ptr=_F32, b_scale_ptr=_F32, ws_ptr=_F32)
    ptrs.update(bias_ptr=fp16, res_ptr=fp16, y_ptr=fp16)
    for kind, dtype in kinds:
        consts = {**_EPILOGUE, "SPLIT_K": 1, "EVEN_K": True, "A_PER_ROW": True, "B_PER_COL": True}
        consts["ACC_TYPE"] = tl.int32 if kind == "w8a8" else tl.float32
        consts["DOT_MODE"] = 2 if kind == "fp8" else 0
        kernel = _Kernel(gemm_scaled.scaled_gemm_kernel, kind, ptrs, **_K_MAJOR, consts=consts)
        for cfg in gemm_scaled.get_configs(arch):
            specs.append(kernel.spec(kind, cfg, dtype, _wgmma_tile(cfg, arch)))
        if kind == "fp8":  # fast accumulation once
            cfg = gemm_scaled.get_configs(arch, 4096)[0]
            fast = kernel.spec("fp8 fast-accum", cfg, dtype, _wgmma_tile(cfg, arch), DOT_MODE=0)
            specs.append(fast)
    return specs


# 3x3 channel-blocked implicit GEMM (1x1 where a config is for pointwise convs only).
_CONV = _Kernel(
    conv.conv2d_kernel,
    "conv",
    _ptrs("x_ptr", "w_ptr", "bias_ptr", "res_ptr", "y_ptr", ws_ptr=_F32),
    ("stride_xc", "stride_wc", "stride_rn", "stride_yn"),
    (
        "COUT",
        "CIN_G",
        "COUT_G",
        "stride_xn",
        "stride_xh",
        "stride_xw",
        "stride_wo",
        "stride_wr",  # channels-last weight: S * CIN_G
        "stride_ws",  # CIN_G
        "stride_rm",
        "stride_ym",
    ),
    {**_EPILOGUE, "SPLIT_K": 1, "DOT_MODE": 0, "R": 3, "S": 3, "K_FLAT": False, "EVEN_C": True},
)
_DEPTHWISE = _Kernel(
    conv.depthwise_conv2d_kernel,
    "depthwise",
    _ptrs("x_ptr", "w_ptr", "bias_ptr", "res_ptr", "y_ptr"),
    ("stride_xc", "stride_wo", "stride_rn", "stride_yn"),
    (
        "COUT",
        "stride_xn",
        "stride_xh",
        "stride_xw",
        "stride_wr",
        "stride_ws",
        "stride_rm",
        "stride_ym",
    ),
    {**_EPILOGUE, "R": 3, "S": 3, "MULT": 1},
)


def conv_specs(arch: int = 90) -> list[CompileSpec]:
    """conv2d_kernel (3x3 channel-blocked; 1x1 for 8-warp tiles; 7x7 RGB stem gathered flat)
    and depthwise_conv2d_kernel, x (fp16, bf16, fp32)."""
    specs = []
    # The RGB stem: few channels per group, K gathered flat over (r, s, c).
    flat: dict[str, Any] = {"R": 7, "S": 7, "K_FLAT": True, "EVEN_C": False}
    flat_aligned = ("COUT", "COUT_G", "stride_wo", "stride_rm", "stride_ym")
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        elem, d = dtype.itemsize, _dname(dtype)
        pointwise_only = {
            _cfg_label(c) for c in conv.get_configs(arch, None, True, elem) if c.num_warps > 4
        }
        for cfg in conv.get_configs(arch, None, pointwise=True, elem_bytes=elem):
            pw = _cfg_label(cfg) in pointwise_only
            wgmma = _wgmma_tile(cfg, arch) and dtype != torch.float32
            rs: dict[str, Any] = {"R": 1, "S": 1} if pw else {}
            specs.append(_CONV.spec(f"conv{'1x1' if pw else '3x3'} {d}", cfg, dtype, wgmma, **rs))
            if not pw and dtype == torch.float16:
                flat_spec = _CONV.spec(
                    "conv7x7 flat-K fp16", cfg, dtype, aligned=flat_aligned, **flat
                )
                specs.append(flat_spec)
        # split-K once (small batch, long K)
        cfg = conv.get_configs(arch, 64, False, elem)[0]
        specs.append(_CONV.spec(f"conv3x3 split-K 4 {d}", cfg, dtype, SPLIT_K=4))
        for cfg in conv.get_depthwise_configs(arch):
            specs.append(_DEPTHWISE.spec(f"depthwise3x3 {d}", cfg, dtype))
    return specs


_INT4 = _Kernel(
    gemm_int4.int4_gemm_kernel,
    "int4",
    _ptrs(
        "a_ptr",
        "scale_ptr",
        "zero_ptr",
        "bias_ptr",
        "res_ptr",
        "y_ptr",
        b_ptr=torch.uint8,
        ws_ptr=_F32,
    ),
    ("stride_ak", "stride_rn", "stride_yn"),
    ("M", "N", "K", "stride_am", "stride_bn", "stride_sn", "stride_rm", "stride_ym"),
    {**_EPILOGUE, "SPLIT_K": 1, "EVEN_K": True, "QBLOCK": 32, "HAS_ZERO": True, "DOT_MODE": 0},
)


def int4_specs(arch: int = 90) -> list[CompileSpec]:
    """int4_gemm_kernel: every config with fp16 A (one scale per K-tile, zero points), once
    each with bf16 and fp32 A, the per-element scale path (BLOCK_K > the block) and split-K."""

    def one(label: str, cfg: triton.Config, dtype: torch.dtype, **over: Any) -> CompileSpec:
        wgmma = _wgmma_tile(cfg, arch) and dtype != torch.float32
        consts = {"ONE_GROUP": 32 % cfg.kwargs["BLOCK_K"] == 0, **over}
        return _INT4.spec(f"int4 {_dname(dtype)}{label}", cfg, dtype, wgmma, **consts)

    specs = [one("", cfg, torch.float16) for cfg in gemm_int4.get_configs(arch)]
    large = gemm_int4.get_configs(arch, 4096)[0]
    small = gemm_int4.get_configs(arch, 1)[0]
    specs.append(one("", large, torch.bfloat16))
    specs.append(one("", gemm_int4.get_configs(arch, 4096, elem_bytes=4)[0], torch.float32))
    specs.append(one(" no zero points, block 128,", large, torch.float16, HAS_ZERO=False))
    wide_k = triton.Config({**small.kwargs, "BLOCK_K": 64}, num_warps=4, num_stages=4)
    gathered = {"ONE_GROUP": False, "EVEN_K": False}
    specs.append(one(" per-element scales, masked K,", wide_k, torch.float16, **gathered))
    specs.append(one(" split-K 4,", small, torch.float16, SPLIT_K=4, HAS_BIAS=False, HAS_RES=False))
    return specs


_TMA = _Kernel(
    gemm_tma.gemm_tma_kernel,
    "gemm-tma",
    _ptrs("bias_ptr", "res_ptr", "y_ptr"),
    ("stride_rn", "stride_yn"),
    ("M", "N", "K", "stride_rm", "stride_ym"),
    {**_EPILOGUE, "NUM_SMS": 132, "DOT_MODE": 0},
)


def tma_specs(arch: int = 90) -> list[CompileSpec]:
    """gemm_tma_kernel (sm90+): every config with fp16 and a K-major B (a linear layer's
    weight); once with a row-major B and once in bf16."""
    if arch < 90:
        return []
    specs = []
    for i, cfg in enumerate(gemm_tma.get_configs(arch)):
        variants = [(torch.float16, True)]
        if i == 0:
            variants += [(torch.float16, False), (torch.bfloat16, True)]
        for dtype, kmajor in variants:
            k = cfg.kwargs
            d = _dname(dtype)
            b_block = [k["BLOCK_N"], k["BLOCK_K"]] if kmajor else [k["BLOCK_K"], k["BLOCK_N"]]
            descs = {
                "a_desc": f"tensordesc<{d}[{k['BLOCK_M']}, {k['BLOCK_K']}]>",
                "b_desc": f"tensordesc<{d}[{b_block[0]}, {b_block[1]}]>",
            }
            label = f"gemm-tma {d} B {'K-major' if kmajor else 'row-major'}"
            tma = _TMA.spec(label, cfg, dtype, True, descriptors=descs, B_KMAJOR=kmajor)
            specs.append(tma)
    return specs


def all_specs(arch: int = 90) -> list[CompileSpec]:
    return (
        gemm_specs(arch)
        + scaled_specs(arch)
        + int4_specs(arch)
        + tma_specs(arch)
        + conv_specs(arch)
    )


@dataclasses.dataclass(frozen=True)
class CompileResult:
    label: str
    shared: int  # bytes of shared memory
    wgmma: bool  # PTX has wgmma (Hopper warpgroup MMA)
    mma: bool  # PTX has mma.sync (Ampere-style tensor-core MMA)
    num_warps: int
    seconds: float
    tma: bool = False  # PTX has cp.async.bulk.tensor (TMA tile loads)


def compile_spec(spec: CompileSpec, arch: int = 90) -> CompileResult:
    """triton.compile one spec for cuda:`arch` on this machine (no GPU needed)."""
    import time

    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    t0 = time.perf_counter()
    src = ASTSource(spec.kernel, spec.signature, spec.constexprs, spec.attrs)
    compiled = triton.compile(
        src,
        target=GPUTarget("cuda", arch, 32),
        options={"num_warps": spec.num_warps, "num_stages": spec.num_stages},
    )
    ptx = compiled.asm["ptx"]
    return CompileResult(
        spec.label,
        int(compiled.metadata.shared),
        "wgmma" in ptx,
        "mma.sync" in ptx,
        spec.num_warps,
        time.perf_counter() - t0,
        "cp.async.bulk.tensor" in ptx,
    )


def _compile_index(arch: int, index: int) -> dict[str, Any]:
    spec = all_specs(arch)[index]
    try:
        result = dataclasses.asdict(compile_spec(spec, arch))
        result["error"] = None
    except Exception as e:  # a failed compile is a gate result, not a crash of the gate
        result = {"label": spec.label, "error": f"{type(e).__name__}: {e}"[:2000]}
    result.update(family=spec.family, wgmma_expected=spec.wgmma_expected, index=index)
    return result


def run_gate(arch: int = 90, jobs: int | None = None) -> list[dict[str, Any]]:
    """Compile every spec for cuda:`arch` in a fresh Triton cache, `jobs` processes at once.

    Must run where TRITON_INTERPRET is unset (under the interpreter @triton.jit gives
    functions that cannot be compiled): tests call `python -m lepton_compile.kernels.specs`.
    """
    import multiprocessing
    import os
    import tempfile
    from concurrent.futures import ProcessPoolExecutor

    n = len(all_specs(arch))
    jobs = jobs or os.cpu_count() or 1
    # Default: a throwaway cache, so every spec really compiles and nothing is left behind.
    # LEPTON_COMPILE_GATE_CACHE=DIR keeps one (CI may persist it: Triton's cache key covers
    # the kernel source, the compiler version and the options, so a changed kernel recompiles).
    keep = os.environ.get("LEPTON_COMPILE_GATE_CACHE")
    with tempfile.TemporaryDirectory(prefix="lepton-triton-cache-") as tmp:
        os.environ["TRITON_CACHE_DIR"] = keep or tmp
        if jobs == 1:
            return [_compile_index(arch, i) for i in range(n)]
        ctx = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
            return list(pool.map(_compile_index, [arch] * n, range(n)))


def main(argv: list[str] | None = None) -> int:
    """python -m lepton_compile.kernels.specs [--arch 90] [--jobs N] [--json PATH]"""
    import argparse
    import json
    import os
    import sys
    import time

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90)
    parser.add_argument("--jobs", type=int, default=None)
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print(
            "unset TRITON_INTERPRET: the interpreter's functions cannot be compiled",
            file=sys.stderr,
        )
        return 2
    t0 = time.perf_counter()
    results = run_gate(args.arch, args.jobs)
    wall = time.perf_counter() - t0
    limit = SHARED_LIMIT.get(args.arch)
    meta = {
        "arch": args.arch,
        "triton": triton.__version__,
        "shared_limit": limit,
        "wall_s": round(wall, 1),
        "results": results,
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(meta, f, indent=1)
    failed = [r for r in results if r["error"] or (limit and r["shared"] > limit)]
    for r in results:
        state = (
            "FAIL " + r["error"].splitlines()[0]
            if r["error"]
            else (f"shared {r['shared']:6d}  wgmma {'yes' if r['wgmma'] else 'no '}")
        )
        print(f"{r['label']:52s} {state}")
    print(f"{len(results)} compiles for sm{args.arch} in {wall:.0f} s, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
