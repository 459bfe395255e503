"""Shared pieces of the kernels: the ai.lepton epilogue (Triton and torch), input checks, launch.

Every kernel here ends in the epilogue of the `ai.lepton` fused ops:

    Y = cast(post_activation(activation(acc + bias) + residual))

computed in fp32 on the accumulator tile. Split-K GEMMs write fp32 partial sums to a
workspace and `splitk_epilogue_kernel` reduces them and runs the same epilogue.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypedDict

import torch
import triton
import triton.language as tl
from torch._subclasses.fake_tensor import is_fake

from lepton_compile.contract import ACTIVATION_CODES, ACTIVATIONS, resolve_activation

try:
    from torch.library import wrap_triton
except ImportError:  # torch < 2.6: nothing traces into the kernels; launch them directly

    def wrap_triton(triton_kernel: Any, /) -> Any:
        return triton_kernel


# ---------------------------------------------------------------------------------------
# Activations: the contract's (lepton_compile.contract). An activation's `code` is the
# constexpr the kernels branch on in `apply_activation`.

INT32_MAX = 2**31 - 1


class Epilogue(TypedDict, total=False):
    """The epilogue keywords every launcher and torch reference takes (`**epilogue`).

    activation / post_activation name a contract activation ("none" when absent), *_params
    its parameters (empty: the defaults); out_dtype is Y's dtype (absent or None: the
    launcher's default, the input dtype unless its docstring says otherwise).
    """

    activation: str
    activation_params: Sequence[float]
    post_activation: str
    post_activation_params: Sequence[float]
    out_dtype: torch.dtype | None


def split_epilogue(epilogue: Mapping[str, Any], default_out: Any) -> tuple[Any, dict[str, Any]]:
    """(out_dtype, the activation keywords) of a launcher's `**epilogue`; `default_out` when
    out_dtype is absent."""
    spec = dict(epilogue)
    return spec.pop("out_dtype", default_out), spec


def activation_args(name: str, params: Sequence[float], what: str = "activation") -> tuple:
    """(code, p0, p1) for an activation; ValueError for an unknown name or a wrong count."""
    resolved = resolve_activation(name, params, what)
    p = [*resolved, 0.0, 0.0]
    return ACTIVATION_CODES[name], p[0], p[1]


# The codes as compile-time globals of the kernels, so that the branches below follow the
# contract's numbering rather than repeat it.
ACT_RELU = tl.constexpr(ACTIVATION_CODES["relu"])
ACT_SIGMOID = tl.constexpr(ACTIVATION_CODES["sigmoid"])
ACT_TANH = tl.constexpr(ACTIVATION_CODES["tanh"])
ACT_LEAKY_RELU = tl.constexpr(ACTIVATION_CODES["leaky_relu"])
ACT_CLIP = tl.constexpr(ACTIVATION_CODES["clip"])
ACT_HARD_SIGMOID = tl.constexpr(ACTIVATION_CODES["hard_sigmoid"])
ACT_HARDSWISH = tl.constexpr(ACTIVATION_CODES["hardswish"])
ACT_SILU = tl.constexpr(ACTIVATION_CODES["silu"])
ACT_GELU = tl.constexpr(ACTIVATION_CODES["gelu"])
_BRANCHES = {"none", "relu", "sigmoid", "tanh", "leaky_relu", "clip", "hard_sigmoid"}
_BRANCHES |= {"hardswish", "silu", "gelu"}
# A contract activation added later needs its branch in apply_activation (and here).
assert set(ACTIVATIONS) == _BRANCHES, sorted(set(ACTIVATIONS) ^ _BRANCHES)


@triton.jit
def apply_activation(x, ACT: tl.constexpr, p0, p1):
    """The contract activation of code ACT on an fp32 tile (tl.math only: libdevice fails in
    the interpreter)."""
    if ACT == ACT_RELU:
        x = tl.maximum(x, 0.0)
    elif ACT == ACT_SIGMOID:
        x = tl.sigmoid(x)
    elif ACT == ACT_TANH:  # from exp of a non-positive argument (no overflow)
        e = tl.exp(-2.0 * tl.abs(x))
        t = (1.0 - e) / (1.0 + e)
        x = tl.where(x < 0, -t, t)
    elif ACT == ACT_LEAKY_RELU:  # alpha
        x = tl.where(x >= 0, x, p0 * x)
    elif ACT == ACT_CLIP:  # min, max
        x = tl.minimum(tl.maximum(x, p0), p1)
    elif ACT == ACT_HARD_SIGMOID:  # alpha, beta
        x = tl.minimum(tl.maximum(p0 * x + p1, 0.0), 1.0)
    elif ACT == ACT_HARDSWISH:
        x = x * tl.minimum(tl.maximum(x * (1.0 / 6.0) + 0.5, 0.0), 1.0)
    elif ACT == ACT_SILU:
        x = x * tl.sigmoid(x)
    elif ACT == ACT_GELU:  # erf form
        x = 0.5 * x * (1.0 + tl.math.erf(x * 0.7071067811865476))
    return x


@triton.jit
def epilogue_store(
    acc,
    offs_m,
    offs_n,
    M,
    N,
    epi,
    HAS_BIAS: tl.constexpr,
    ACT: tl.constexpr,
    HAS_RES: tl.constexpr,
    POST_ACT: tl.constexpr,
):
    """Y[m, n] = cast(post(act(acc + bias[n]) + res[m, n])) for the in-range part of a tile.

    `epi` holds the epilogue's run-time arguments as one tuple (the kernels pass eleven of
    them to every store), in the kernels' argument order: (bias_ptr, res_ptr, stride_rm,
    stride_rn, y_ptr, stride_ym, stride_yn, p0, p1, q0, q1). The flags stay separate: a
    constexpr loses its compile-time value inside a tuple.
    """
    bias_ptr, res_ptr, stride_rm, stride_rn, y_ptr, stride_ym, stride_yn, p0, p1, q0, q1 = epi
    mask_m = offs_m < M
    mask_n = offs_n < N
    mask = mask_m[:, None] & mask_n[None, :]
    acc = acc.to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
        acc = acc + bias[None, :]
    acc = apply_activation(acc, ACT, p0, p1)
    if HAS_RES:
        r_ptrs = res_ptr + offs_m[:, None] * stride_rm + offs_n[None, :] * stride_rn
        acc = acc + tl.load(r_ptrs, mask=mask, other=0.0).to(tl.float32)
    acc = apply_activation(acc, POST_ACT, q0, q1)
    y_ptrs = y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :] * stride_yn
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def store_partial(acc, offs_m, offs_n, M, N, ws_ptr, pid_k):
    """Split-K: an fp32 partial tile into workspace[pid_k] (a contiguous (SPLIT_K, M, N))."""
    mask = (offs_m < M)[:, None] & (offs_n < N)[None, :]
    ptrs = ws_ptr + pid_k * M * N + offs_m[:, None] * N + offs_n[None, :]
    tl.store(ptrs, acc.to(tl.float32), mask=mask)


@triton.jit
def splitk_epilogue_kernel(
    ws_ptr, bias_ptr, res_ptr, y_ptr,
    M, N,
    stride_rm, stride_rn, stride_ym, stride_yn, p0, p1, q0, q1,
    SPLIT_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_BIAS: tl.constexpr, ACT: tl.constexpr, HAS_RES: tl.constexpr, POST_ACT: tl.constexpr,
):  # fmt: skip
    """Second pass of split-K: sum the SPLIT_K fp32 partials in a fixed order, then the epilogue."""
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (offs_m < M)[:, None] & (offs_n < N)[None, :]
    ptrs = ws_ptr + offs_m[:, None] * N + offs_n[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for s in tl.static_range(SPLIT_K):
        acc += tl.load(ptrs + s * M * N, mask=mask, other=0.0)
    epi = (bias_ptr, res_ptr, stride_rm, stride_rn, y_ptr, stride_ym, stride_yn, p0, p1, q0, q1)
    epilogue_store(acc, offs_m, offs_n, M, N, epi, HAS_BIAS, ACT, HAS_RES, POST_ACT)


SPLITK_EPILOGUE_BLOCK = (32, 128)  # (BLOCK_M, BLOCK_N) of the reduce pass: memory bound


# ---------------------------------------------------------------------------------------
# torch references (fp32 inside).


def activation_reference(name: str, x: torch.Tensor, params: Sequence[float] = ()) -> torch.Tensor:
    """A contract activation of an fp32 tensor, with torch ops."""
    _, p0, p1 = activation_args(name, params)
    if name == "none":
        return x
    if name == "relu":
        return torch.relu(x)
    if name == "sigmoid":
        return torch.sigmoid(x)
    if name == "tanh":
        return torch.tanh(x)
    if name == "leaky_relu":
        return torch.where(x >= 0, x, p0 * x)
    if name == "clip":
        return torch.clamp(x, p0, p1)
    if name == "hard_sigmoid":
        return torch.clamp(p0 * x + p1, 0.0, 1.0)
    if name == "hardswish":
        return x * torch.clamp(x / 6.0 + 0.5, 0.0, 1.0)
    if name == "silu":
        return x * torch.sigmoid(x)
    if name == "gelu":
        return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))
    raise AssertionError(name)


def epilogue_reference(
    acc: torch.Tensor,
    bias: torch.Tensor | None,
    residual: torch.Tensor | None,
    default_out: torch.dtype,
    *,
    bias_dim: int = -1,
    activation: str = "none",
    activation_params: Sequence[float] = (),
    post_activation: str = "none",
    post_activation_params: Sequence[float] = (),
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """The fused epilogue in fp32 on `acc` (bias broadcast along `bias_dim`), cast at the end
    to out_dtype (None: `default_out`): what a launcher's torch reference ends with."""
    y = acc.float()
    if bias is not None:
        shape = [1] * y.dim()
        shape[bias_dim] = -1
        y = y + bias.float().reshape(shape)
    y = activation_reference(activation, y, activation_params)
    if residual is not None:
        y = y + residual.float()
    y = activation_reference(post_activation, y, post_activation_params)
    return y.to(out_dtype or default_out)


# ---------------------------------------------------------------------------------------
# Runtime: interpreter or GPU, architecture, input checks, launching.


def _defined_interpreted() -> bool:
    try:
        from triton.runtime.interpreter import InterpretedFunction
    except ImportError:
        return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on")
    return isinstance(apply_activation, InterpretedFunction)


# Triton reads TRITON_INTERPRET when a @triton.jit function is defined: what these kernels
# are was fixed when this module was imported, whatever the variable says later.
_INTERPRETED = _defined_interpreted()


def interpreting() -> bool:
    """Whether the kernels run in the Triton interpreter (TRITON_INTERPRET=1 at import)."""
    return _INTERPRETED


Arch = int | str  # 90, 80, 89, ... (compute capability major*10+minor) or "interpreter"


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for host-side ints (triton.cdiv is a constexpr function: slow on the host)."""
    return -(-a // b)


@dataclasses.dataclass(frozen=True)
class DeviceFacts:
    """What the launchers need to know of a device, read once per device."""

    arch: Arch
    smem: int  # opt-in shared memory per block in bytes (0 in the interpreter)
    sms: int


# The interpreter pretends to be a small machine, so that tests reach the split-K path.
_INTERPRETER_FACTS = DeviceFacts("interpreter", 0, 4)
_DEVICE_FACTS: dict[int, DeviceFacts] = {}


def device_facts(device: torch.device) -> DeviceFacts:
    """Architecture, shared memory and SM count of a CUDA device, memoized per device index."""
    if interpreting():
        return _INTERPRETER_FACTS
    index = device.index
    if index is None:
        index = torch.cuda.current_device()
    facts = _DEVICE_FACTS.get(index)
    if facts is None:
        facts = _DEVICE_FACTS[index] = _read_device_facts(index)
    return facts


def _read_device_facts(index: int) -> DeviceFacts:
    major, minor = torch.cuda.get_device_capability(index)
    props = triton.runtime.driver.active.utils.get_device_properties(index)
    sms = torch.cuda.get_device_properties(index).multi_processor_count
    return DeviceFacts(major * 10 + minor, int(props["max_shared_mem"]), int(sms))


def device_arch(device: torch.device) -> Arch:
    return device_facts(device).arch


def max_shared_memory(device: torch.device) -> int:
    """Opt-in shared memory per block of `device` in bytes (what a config may use)."""
    return device_facts(device).smem


def num_sms(device: torch.device) -> int:
    if interpreting() or device.type != "cuda":
        return _INTERPRETER_FACTS.sms
    return device_facts(device).sms


def check_device(name_tensors: dict[str, torch.Tensor | None]) -> torch.device:
    """All given tensors on one device, a CUDA device unless interpreting."""
    device = None
    for name, t in name_tensors.items():
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if device is None:
            device = t.device
        elif t.device != device:
            raise ValueError(
                f"{name} is on {t.device}, expected {device} (all inputs on one device)"
            )
        if t.numel() > INT32_MAX:
            raise ValueError(f"{name} has {t.numel()} elements: the kernels index with int32")
    assert device is not None
    if device.type != "cuda" and not interpreting():
        raise ValueError(
            f"inputs are on {device}: the kernels need a CUDA device "
            "(or TRITON_INTERPRET=1, set before importing lepton_compile.kernels)"
        )
    return device


def check_output_size(numel: int) -> None:
    if numel > INT32_MAX:
        raise ValueError(f"the output would have {numel} elements: the kernels index with int32")


def check_dtype(name: str, t: torch.Tensor, allowed: Sequence[torch.dtype]) -> None:
    if t.dtype not in allowed:
        names = ", ".join(str(d).replace("torch.", "") for d in allowed)
        raise ValueError(f"{name} has dtype {str(t.dtype).replace('torch.', '')}, expected {names}")


def check_shape(name: str, t: torch.Tensor, shape: Sequence[int]) -> None:
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {tuple(shape)}")


def check_matrix_layout(name: str, t: torch.Tensor) -> None:
    """A 2-D operand must be row- or column-major (unit stride in one dimension)."""
    if t.dim() != 2:
        raise ValueError(f"{name} must be 2-D, got shape {tuple(t.shape)}")
    if t.stride(1) != 1 and t.stride(0) != 1 and t.numel() > 1:
        raise ValueError(
            f"{name} has strides {t.stride()}: one dimension must have stride 1 "
            "(row- or column-major; call .contiguous())"
        )


FLOAT_OUT = (torch.float16, torch.bfloat16, torch.float32)


def check_epilogue_inputs(
    bias: torch.Tensor | None, residual: torch.Tensor | None, n: int, out_shape: Sequence[int]
) -> None:
    if bias is not None:
        check_dtype("bias", bias, FLOAT_OUT)
        if bias.dim() != 1 or bias.shape[0] != n:
            raise ValueError(f"bias has shape {tuple(bias.shape)}, expected ({n},)")
        if bias.stride(0) != 1 and n > 1:
            raise ValueError("bias must be contiguous")
    if residual is not None:
        check_dtype("residual", residual, FLOAT_OUT)
        check_shape("residual", residual, out_shape)


def gemm_bucket(m: int) -> str:
    """M bucket for configs: small M needs small tiles (and split-K) to fill the machine."""
    if m <= 32:
        return "m32"
    if m <= 128:
        return "m128"
    if m <= 512:
        return "m512"
    return "large"


def smem_estimate(cfg: triton.Config, a_bytes: int, b_bytes: int) -> int:
    """Shared memory of a pipelined GEMM config: stages x (A tile + B tile), in bytes."""
    k = cfg.kwargs
    stages = max(cfg.num_stages, 1)
    return stages * k["BLOCK_K"] * (k["BLOCK_M"] * a_bytes + k["BLOCK_N"] * b_bytes)


def config_key(cfg: triton.Config) -> tuple:
    return (tuple(sorted(cfg.kwargs.items())), cfg.num_warps, cfg.num_stages)


def dedupe(configs: Sequence[triton.Config]) -> list[triton.Config]:
    seen: set[tuple] = set()
    out = []
    for c in configs:
        if config_key(c) not in seen:
            seen.add(config_key(c))
            out.append(c)
    return out


def make_configs(rows: Sequence[tuple], names: Sequence[str]) -> list[triton.Config]:
    """triton.Config list from rows of (*values of `names`, num_stages, num_warps)."""
    return [
        triton.Config(
            dict(zip(names, row[:-2], strict=True)), num_stages=row[-2], num_warps=row[-1]
        )
        for row in rows
    ]


def pick_split_k(tiles: int, k_iters: int, sms: int, max_split: int = 16) -> int:
    """Split K when the output tiles leave most SMs idle and K is long enough to share."""
    if tiles * 2 > sms or k_iters < 8:
        return 1
    split = 1
    while split * 2 <= max_split and tiles * split * 2 <= sms and k_iters // (split * 2) >= 4:
        split *= 2
    return split


def _quick_bench(kernel_call: Callable[[], Any], quantiles: Sequence[float]) -> Any:
    # Autotuning timing: short windows keep a sweep of many shapes within minutes.
    return triton.testing.do_bench(kernel_call, warmup=5, rep=20, quantiles=quantiles)


# Host-side caches. Everything a launch needs that does not depend on the tensors' values
# is computed once: config lists, device facts, and, per tuning key, the autotuner's pick.
_CONFIGS: dict[tuple, tuple[triton.Config, ...]] = {}
_TUNERS: dict[tuple, Any] = {}
_BEST: dict[tuple, tuple[triton.Config, dict[str, Any]]] = {}
_TENSOR_ARGS: dict[tuple, tuple[str, ...]] = {}
_LAST_CONFIG: dict[str, triton.Config | None] = {}


def memo_configs(
    key: tuple, build: Callable[[], Sequence[triton.Config]]
) -> tuple[triton.Config, ...]:
    """`build()` as a tuple, computed once per key (family, arch, bucket, elem sizes, smem)."""
    configs = _CONFIGS.get(key)
    if configs is None:
        configs = _CONFIGS[key] = tuple(build())
    return configs


def reset_caches() -> None:
    """Forget memoized configs, device facts, epilogues, autotuners and their picks."""
    caches = (_CONFIGS, _TUNERS, _BEST, _TENSOR_ARGS, _LAST_CONFIG, _DEVICE_FACTS, _EPILOGUES)
    for cache in caches:
        cache.clear()


# Launches per kernel family ("gemm", "gemm_tma", "w8a8", "fp8", "int4", "conv2d",
# "depthwise", "splitk-epilogue") since the last reset: what tests read to show that a
# kernel really ran (a CUDA graph replay launches without passing here). One dict
# increment per launch.
_LAUNCHES: dict[str, int] = {}


def count_launch(family: str) -> None:
    _LAUNCHES[family] = _LAUNCHES.get(family, 0) + 1


def launch_counts() -> dict[str, int]:
    """Kernel launches per family since `reset_launch_counts()` (a copy)."""
    return dict(_LAUNCHES)


def reset_launch_counts() -> None:
    _LAUNCHES.clear()


def last_config(family: str) -> triton.Config | None:
    """The config the last launch of a kernel family ("gemm", "w8a8", "conv2d", ...) ran with."""
    return _LAST_CONFIG.get(family)


def launch_kwargs(cfg: triton.Config) -> dict[str, Any]:
    """What the autotuner adds to a launch for `cfg`: meta-parameters, num_warps, num_stages, ...

    `Config.all_kwargs()` where it exists (it adds num_ctas, and maxnreg when set).
    """
    all_kwargs = getattr(cfg, "all_kwargs", None)
    if all_kwargs is not None:
        return all_kwargs()
    kw = {**cfg.kwargs, "num_warps": cfg.num_warps, "num_stages": cfg.num_stages}
    for name in ("num_ctas", "maxnreg"):
        value = getattr(cfg, name, None)
        if value is not None:
            kw[name] = value
    return kw


def _can_autotune() -> bool:
    # The interpreter has no driver for do_bench ("0 active drivers").
    return not interpreting()


def _make_tuner(
    kernel: Any,
    configs: Sequence[triton.Config],
    key: Sequence[str],
    heuristics: dict[str, Callable[[dict], Any]] | None,
) -> Any:
    fn = triton.heuristics(heuristics)(kernel) if heuristics else kernel
    return triton.autotune(configs=list(configs), key=list(key), do_bench=_quick_bench)(fn)


def _run_config(
    kernel: Any,
    grid: Callable[[dict], tuple],
    args: dict[str, Any],
    cfg: triton.Config,
    cfg_kwargs: dict[str, Any],
    heuristics: dict[str, Callable[[dict], Any]] | None,
) -> None:
    # What Autotuner.run and Heuristics.run do for a known config: config kwargs over the
    # arguments, the config's pre-hook, heuristics over both, then the jit function with the
    # grid of that.
    # The launch goes through wrap_triton: inside a torch.library.triton_op that Inductor
    # traces (torch.compile, AOTInductor) it records the kernel into the graph; run eagerly
    # (or in the interpreter) it is the kernel itself.
    meta = {**args, **cfg_kwargs}
    if getattr(cfg, "pre_hook", None) is not None:
        cfg.pre_hook(meta)
    if heuristics:
        for name, fn in heuristics.items():
            meta[name] = fn(meta)
    wrap_triton(kernel)[grid(meta)](**meta)


def _traced(args: dict[str, Any]) -> bool:
    """True when the tensors are a trace's (fake or functional), not real memory: Inductor
    tracing into an op. Nothing can be timed then; the launch takes a known config."""
    for value in args.values():
        if isinstance(value, torch.Tensor):
            return type(value) is not torch.Tensor and is_fake(value)
    return False


def launch(
    kernel: Any,
    grid: Callable[[dict], tuple],
    args: dict[str, Any],
    configs: Sequence[triton.Config],
    tuner_id: tuple,
    key: Sequence[str],
    heuristics: dict[str, Callable[[dict], Any]] | None = None,
) -> triton.Config | None:
    """Run `kernel` with `args`: autotuned over `configs` on a GPU, the single config otherwise.

    `heuristics` compute constexprs from the arguments and the config (EVEN_K, ...). The
    interpreter cannot autotune over more than one config ("0 active drivers"), and a caller
    that passes one config (tests, a pinned config) should not pay for tuning: both call the
    jit function directly with the config's meta-parameters. The first call of a tuning key
    (tuner_id, the values of `key`, the tensors' dtypes) goes through triton's autotuner;
    later calls launch its pick directly, without the autotuner's per-call bookkeeping.
    Which arguments are tensors is read once per tuner_id: a launcher passes tensors (real
    or dummy pointers) for the same arguments on every call.
    """
    family = tuner_id[0]
    count_launch(family)
    traced = _traced(args)
    if len(configs) == 1 or not _can_autotune() or traced:
        if traced and len(configs) > 1:  # the pick of an eager run of these shapes, if any
            configs = [_traced_pick(tuner_id, args, key) or configs[0]]
        cfg = configs[0]
        _run_config(kernel, grid, args, cfg, launch_kwargs(cfg), heuristics)
        _LAST_CONFIG[family] = cfg
        return cfg
    tensors = _TENSOR_ARGS.get(tuner_id)
    if tensors is None:
        tensors = tuple(name for name, v in args.items() if isinstance(v, torch.Tensor))
        _TENSOR_ARGS[tuner_id] = tensors
    # Like triton's own key: the values of `key`, then the dtypes of the tensor arguments.
    tune_key = (tuner_id, *[args[name] for name in key], *[args[name].dtype for name in tensors])
    best = _BEST.get(tune_key)
    if best is not None:
        cfg, cfg_kwargs = best
        _run_config(kernel, grid, args, cfg, cfg_kwargs, heuristics)
        _LAST_CONFIG[family] = cfg
        return cfg
    tuner = _TUNERS.get(tuner_id)
    if tuner is None:
        tuner = _TUNERS[tuner_id] = _make_tuner(kernel, configs, key, heuristics)
    tuner[grid](**args)
    picked = getattr(tuner, "best_config", None)
    if picked is not None:
        _BEST[tune_key] = (picked, launch_kwargs(picked))
    _LAST_CONFIG[family] = picked
    return picked


def _traced_pick(tuner_id: tuple, args: dict[str, Any], key: Sequence[str]) -> Any:
    """The autotuner's pick for these shapes from an earlier eager launch (None if none)."""
    tensors = _TENSOR_ARGS.get(tuner_id)
    if tensors is None:
        return None
    tune_key = (tuner_id, *[args[name] for name in key], *[args[name].dtype for name in tensors])
    best = _BEST.get(tune_key)
    return best[0] if best is not None else None


def dot_upcast(dtype: torch.dtype) -> bool:
    """bf16 arithmetic is wrong in the interpreter: there, upcast bf16 tiles before tl.dot.

    On a GPU (and in the compile gate) this is always False: bf16 goes to the tensor cores.
    """
    return interpreting() and dtype == torch.bfloat16


# ---------------------------------------------------------------------------------------
# Triton building blocks of the GEMM-shaped kernels (fp16/bf16/fp32, W8A8, FP8, INT4, conv).


@triton.jit
def grouped_tile(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """(pid_m, pid_n) of a program, GROUP_M row-tiles at a time so B tiles stay in L2."""
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_pid_in_group = GROUP_M * num_pid_n
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_M
    group_size_m = tl.minimum(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
    pid_n = (pid % num_pid_in_group) // group_size_m
    return pid_m, pid_n


@triton.jit
def splitk_range(k_iters, pid_k, SPLIT_K: tl.constexpr):
    """[it_lo, it_hi): the K-iterations of split `pid_k` (all k_iters when SPLIT_K == 1)."""
    if SPLIT_K == 1:
        it_lo = 0
        it_hi = k_iters
    else:
        per_split = tl.cdiv(k_iters, SPLIT_K)
        it_lo = pid_k * per_split
        it_hi = tl.minimum(it_lo + per_split, k_iters)
    return it_lo, it_hi


@triton.jit
def gemm_program(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """(pid_m, pid_n, pid_k) of a split-K GEMM program: axis 0 walks the output tiles in
    grouped order, axis 1 the K splits."""
    pid_m, pid_n = grouped_tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    return pid_m, pid_n, tl.program_id(1)


@triton.jit
def gemm_tile(
    a_op,
    b_op,
    M,
    N,
    K,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    SPLIT_K: tl.constexpr,
    EVEN_K: tl.constexpr,
    ACC_TYPE: tl.constexpr,
    DOT_MODE: tl.constexpr,
):
    """This program's tile of A @ B over its share of K (see `gemm_program`), in ACC_TYPE:
    (acc, offs_m, offs_n, pid_k).

    a_op = (a_ptr, stride_am, stride_ak), b_op = (b_ptr, stride_bk, stride_bn). DOT_MODE 0:
    tl.dot on the loaded types; 1: operands upcast to fp32 first (interpreter bf16 only);
    2: fp8 with the accumulator promoted to fp32 after every BLOCK_K (Hopper's fp8 wgmma
    otherwise accumulates in reduced precision for the whole K).
    """
    a_ptr, stride_am, stride_ak = a_op
    b_ptr, stride_bk, stride_bn = b_op
    pid_m, pid_n, pid_k = gemm_program(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    # Rows/columns past M/N wrap around instead of being masked: loads stay unmasked along
    # M and N (the store masks them), which keeps them vectorized.
    offs_am = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)) % M
    offs_bn = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)) % N
    offs_k = tl.arange(0, BLOCK_K)
    it_lo, it_hi = splitk_range(tl.cdiv(K, BLOCK_K), pid_k, SPLIT_K)
    a_ptrs = a_ptr + offs_am[:, None] * stride_am + (it_lo * BLOCK_K + offs_k)[None, :] * stride_ak
    b_ptrs = b_ptr + (it_lo * BLOCK_K + offs_k)[:, None] * stride_bk + offs_bn[None, :] * stride_bn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_TYPE)
    for it in range(it_lo, it_hi):
        if EVEN_K:
            a = tl.load(a_ptrs)
            b = tl.load(b_ptrs)
        else:
            k_left = K - it * BLOCK_K
            # Typed zero tiles as `other`: the interpreter cannot cast a Python 0 to fp8.
            a = tl.load(
                a_ptrs,
                mask=offs_k[None, :] < k_left,
                other=tl.zeros((BLOCK_M, BLOCK_K), a_ptr.dtype.element_ty),
            )
            b = tl.load(
                b_ptrs,
                mask=offs_k[:, None] < k_left,
                other=tl.zeros((BLOCK_K, BLOCK_N), b_ptr.dtype.element_ty),
            )
        # out_dtype spelled out: triton 3.6 asserts it equals acc's type (int32 for int8).
        if DOT_MODE == 1:
            acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, out_dtype=ACC_TYPE)
        elif DOT_MODE == 2:
            acc = tl.dot(a, b, acc, max_num_imprecise_acc=BLOCK_K, out_dtype=ACC_TYPE)
        else:
            acc = tl.dot(a, b, acc, out_dtype=ACC_TYPE)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    return acc, offs_m, offs_n, pid_k


@triton.jit
def apply_scales(
    acc,
    offs_m,
    offs_n,
    M,
    N,
    a_scale_ptr,
    b_scale_ptr,
    A_PER_ROW: tl.constexpr,
    B_PER_COL: tl.constexpr,
):
    """fp32 acc x a_scale (per row of A, or one) x b_scale (per column of B, or one)."""
    acc = acc.to(tl.float32)
    if A_PER_ROW:
        sa = tl.load(a_scale_ptr + offs_m, mask=offs_m < M, other=0.0).to(tl.float32)
        acc = acc * sa[:, None]
    else:
        acc = acc * tl.load(a_scale_ptr).to(tl.float32)
    if B_PER_COL:
        sb = tl.load(b_scale_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)
        acc = acc * sb[None, :]
    else:
        acc = acc * tl.load(b_scale_ptr).to(tl.float32)
    return acc


@triton.jit
def store_tile(
    acc,
    offs_m,
    offs_n,
    M,
    N,
    epi,
    ws_ptr,
    pid_k,
    SPLIT_K: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    ACT: tl.constexpr,
    HAS_RES: tl.constexpr,
    POST_ACT: tl.constexpr,
):
    """The fused epilogue into Y (SPLIT_K == 1), else an fp32 partial into the workspace.

    `epi`: the epilogue's run-time arguments, as for `epilogue_store`.
    """
    if SPLIT_K == 1:
        epilogue_store(acc, offs_m, offs_n, M, N, epi, HAS_BIAS, ACT, HAS_RES, POST_ACT)
    else:
        store_partial(acc, offs_m, offs_n, M, N, ws_ptr, pid_k)


# ---------------------------------------------------------------------------------------
# Launcher pieces shared by the GEMMs and conv2d: epilogue arguments, output, configs,
# split-K.

GEMM_META = ("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M")
GEMM_BUCKETS = ("m32", "m128", "m512", "large")
GEMM_TUNE_KEY = ("M", "N", "K", "stride_ak", "stride_bn")

_EPILOGUES: dict[tuple, tuple] = {}
_PLAIN_NUMBERS = (float, int)


def _params_key(params: Sequence[float]) -> tuple | None:
    # Only plain numbers make a cache key (a tensor parameter could change in place).
    key = params if type(params) is tuple else tuple(params)
    for p in key:
        if type(p) not in _PLAIN_NUMBERS:
            return None
    return key


def epilogue_args(
    activation: str = "none",
    activation_params: Sequence[float] = (),
    post_activation: str = "none",
    post_activation_params: Sequence[float] = (),
) -> dict[str, Any]:
    """Kernel arguments of an epilogue: constexpr codes ACT/POST_ACT and params p0, p1, q0, q1."""
    pa, pq = _params_key(activation_params), _params_key(post_activation_params)
    key = (activation, pa, post_activation, pq) if pa is not None and pq is not None else None
    codes = _EPILOGUES.get(key) if key is not None else None
    if codes is None:
        act, p0, p1 = activation_args(activation, activation_params)
        post, q0, q1 = activation_args(post_activation, post_activation_params, "post_activation")
        codes = (act, p0, p1, post, q0, q1)
        if key is not None:
            _EPILOGUES[key] = codes
    act, p0, p1, post, q0, q1 = codes
    return {"ACT": act, "POST_ACT": post, "p0": p0, "p1": p1, "q0": q0, "q1": q1}


def epilogue_kernel_args(
    epi: dict[str, Any],
    bias: torch.Tensor | None,
    res2d: torch.Tensor | None,
    y2d: torch.Tensor,
    fused: bool = True,
) -> dict[str, Any]:
    """Epilogue kernel arguments (pointers, strides, params, constexprs) for a 2-D output view.

    fused=False (split-K main pass): bias, residual and activations are left to the reduce
    pass, so the kernel gets dummy pointers and ACT = POST_ACT = 0.
    """
    return dict(
        bias_ptr=bias if bias is not None and fused else y2d,
        res_ptr=res2d if res2d is not None and fused else y2d,
        y_ptr=y2d,
        stride_rm=res2d.stride(0) if res2d is not None else 0,
        stride_rn=res2d.stride(1) if res2d is not None else 0,
        stride_ym=y2d.stride(0),
        stride_yn=y2d.stride(1),
        p0=epi["p0"],
        p1=epi["p1"],
        q0=epi["q0"],
        q1=epi["q1"],
        HAS_BIAS=bias is not None and fused,
        ACT=epi["ACT"] if fused else 0,
        HAS_RES=res2d is not None and fused,
        POST_ACT=epi["POST_ACT"] if fused else 0,
    )


def run_splitk_epilogue(
    ws: torch.Tensor,
    bias: torch.Tensor | None,
    y2d: torch.Tensor,
    res2d: torch.Tensor | None,
    epi: dict[str, Any],
    split_k: int,
) -> None:
    """Launch the reduce pass over a (split_k, M, N) fp32 workspace into the 2-D view y2d."""
    m, n = y2d.shape
    bm, bn = SPLITK_EPILOGUE_BLOCK
    grid = (cdiv(m, bm), cdiv(n, bn))
    count_launch("splitk-epilogue")
    # The epilogue arguments of the main pass, with the workspace as the dummy pointer.
    args = epilogue_kernel_args(epi, bias, res2d, y2d)
    if bias is None:
        args["bias_ptr"] = ws
    if res2d is None:
        args["res_ptr"] = ws
    wrap_triton(splitk_epilogue_kernel)[grid](
        ws, M=m, N=n, SPLIT_K=split_k, BLOCK_M=bm, BLOCK_N=bn, num_warps=4, **args
    )


@dataclasses.dataclass(frozen=True)
class FusedOutput:
    """The output side of a launch: Y, its 2-D (rows, N) view, the residual's, bias, epilogue."""

    y: torch.Tensor
    y2d: torch.Tensor
    res2d: torch.Tensor | None
    bias: torch.Tensor | None
    epi: dict[str, Any]

    @classmethod
    def of_matrix(
        cls,
        y: torch.Tensor,
        bias: torch.Tensor | None,
        residual: torch.Tensor | None,
        epi: dict[str, Any],
    ) -> FusedOutput:
        """A GEMM's Y (..., N), with it and the residual (Y's shape) viewed as (M, N) (views
        of empty tensors too: the launcher returns Y at once then)."""
        m, n = math.prod(y.shape[:-1]), y.shape[-1]
        y2 = y if y.dim() == 2 else y.view(m, n)
        r2 = None
        if residual is not None:
            r2 = residual if residual.dim() == 2 else residual.reshape(m, n)
        return cls(y, y2, r2, bias, epi)

    def kernel_args(self, fused: bool = True) -> dict[str, Any]:
        """The epilogue's kernel arguments (see `epilogue_kernel_args`)."""
        return epilogue_kernel_args(self.epi, self.bias, self.res2d, self.y2d, fused)

    def reduce(self, ws: torch.Tensor, split_k: int) -> None:
        """Sum a split-K workspace into Y through the epilogue (`run_splitk_epilogue`)."""
        run_splitk_epilogue(ws, self.bias, self.y2d, self.res2d, self.epi, split_k)


def check_out_dtype(out_dtype: torch.dtype) -> None:
    if out_dtype not in FLOAT_OUT:
        raise ValueError(f"out_dtype {out_dtype} is not one of float16, bfloat16, float32")


def gemm_rows(
    a: torch.Tensor,
    n: int,
    bias: torch.Tensor | None,
    residual: torch.Tensor | None,
    epi_spec: Mapping[str, Any],
) -> tuple[torch.Tensor, tuple, dict[str, Any]]:
    """(a as 2-D rows, Y's shape, epilogue args) of a GEMM of a (..., K) with N columns.

    epi_spec: the activation keywords (`split_epilogue`).
    """
    out_shape = (*a.shape[:-1], n)
    check_epilogue_inputs(bias, residual, n, out_shape)
    epi = epilogue_args(**epi_spec)
    a2 = a if a.dim() == 2 else a.reshape(-1, a.shape[-1])
    return a2, out_shape, epi


def check_gemm_inputs(
    a: torch.Tensor,
    b: torch.Tensor,
    bias: torch.Tensor | None,
    residual: torch.Tensor | None,
    out_dtype: torch.dtype,
    epi_spec: Mapping[str, Any],
) -> tuple[torch.Tensor, int, int, int, tuple, dict[str, Any]]:
    """Shape/layout checks of a GEMM a (..., K) @ b (K, N): (a2, m, k, n, out_shape, epi)."""
    if a.dim() < 1:
        raise ValueError("a must have at least one dimension")
    check_matrix_layout("b", b)
    k, n = b.shape
    if a.shape[-1] != k:
        raise ValueError(f"a has shape {tuple(a.shape)} and b {tuple(b.shape)}: inner dims differ")
    check_out_dtype(out_dtype)
    a2, out_shape, epi = gemm_rows(a, n, bias, residual, epi_spec)
    check_matrix_layout("a (as 2-D)", a2)
    return a2, a2.shape[0], k, n, out_shape, epi


def new_output(shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An uninitialized Y of `shape` (ValueError past int32 indexing)."""
    check_output_size(math.prod(shape))
    return torch.empty(shape, device=device, dtype=dtype)


def gemm_strides(a2: torch.Tensor, b: torch.Tensor) -> dict[str, int]:
    """stride_am, stride_ak, stride_bk, stride_bn of 2-D operands a (M, K) and b (K, N)."""
    a_st, b_st = a2.stride(), b.stride()
    return dict(stride_am=a_st[0], stride_ak=a_st[1], stride_bk=b_st[0], stride_bn=b_st[1])


def scale_block_k(rows: list[tuple], elem_bytes: int) -> list[tuple]:
    """Config rows for operands wider than 2 bytes: BLOCK_K (the third value) scaled down, not
    below 16, so that the tiles keep the footprint the table was made for."""
    return [(bm, bn, max(16, bk * 2 // elem_bytes), *rest) for bm, bn, bk, *rest in rows]


def table_configs(
    arch: Arch,
    m: int | None,
    sm90: dict[str, list[tuple]],
    sm80: dict[str, list[tuple]],
    interpreter: list[tuple],
    adjust: Callable[[list[tuple]], list[tuple]] | None = None,
) -> list[triton.Config]:
    """GEMM configs from M-bucketed tables of rows (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M,
    num_stages, num_warps): sm90's for Hopper and newer, sm80's below, `interpreter` there.

    m=None gives the union over all buckets (the compile gate compiles each of them);
    `adjust` rewrites the table rows (fp32 operands: smaller K-blocks or fewer stages).
    """
    if arch == "interpreter":
        return make_configs(interpreter, GEMM_META)
    table = sm90 if int(arch) >= 90 else sm80
    buckets = GEMM_BUCKETS if m is None else (gemm_bucket(m),)
    rows = [row for b in buckets for row in table[b]]
    if adjust is not None:
        rows = adjust(rows)
    return dedupe(make_configs(rows, GEMM_META))


def fit_smem(
    configs: Sequence[triton.Config], limit: int, a_bytes: int, b_bytes: int
) -> list[triton.Config]:
    """Configs whose pipelined tiles fit in `limit` bytes, else the smallest one.

    limit 0 (the interpreter, which has no shared memory to fill): all of them.
    """
    if limit <= 0:
        return list(configs)
    fitting = [c for c in configs if smem_estimate(c, a_bytes, b_bytes) <= limit]
    if not fitting:  # a smaller GPU than any table was made for: the smallest config
        fitting = [min(configs, key=lambda c: smem_estimate(c, a_bytes, b_bytes))]
    return fitting


def pinned_or_memo(
    config: triton.Config | None, key: tuple, build: Callable[[], Sequence[triton.Config]]
) -> Sequence[triton.Config]:
    """The caller's pinned config alone (no autotuning), else `memo_configs(key, build)`."""
    if config is not None:
        return (config,)
    return memo_configs(key, build)


class SplitKRule:
    """The SPLIT_K heuristic of a GEMM launch: `fixed`, else `pick_split_k` per config.

    Split-K is decided per config (its tiles and K-blocks), not from the first config of a
    bucket, so autotuning compares each tile shape with the split that suits it. The
    workspace is sized for the largest split any candidate config may take.
    """

    def __init__(self, fixed: int | None, sms: int) -> None:
        if fixed is not None and fixed < 1:
            raise ValueError(f"split_k must be >= 1, got {fixed}")
        self.fixed = fixed
        self.sms = sms

    def __call__(self, meta: dict) -> int:
        if self.fixed is not None:
            return self.fixed
        tiles = cdiv(meta["M"], meta["BLOCK_M"]) * cdiv(meta["N"], meta["BLOCK_N"])
        return pick_split_k(tiles, cdiv(meta["K"], meta["BLOCK_K"]), self.sms)

    @property
    def key(self) -> tuple:
        """What tells tuners apart: the fixed split, or the machine size the rule reads."""
        return ("fixed", self.fixed) if self.fixed is not None else ("auto", self.sms)


def gemm_split_k(
    split_k: int | None,
    configs: Sequence[triton.Config],
    m: int,
    n: int,
    k: int,
    device: torch.device,
    y2d: torch.Tensor,
) -> tuple[SplitKRule, torch.Tensor]:
    """(rule, workspace): the SPLIT_K rule, and a (max split, m, n) fp32 workspace (y2d
    itself when no config splits)."""
    rule = SplitKRule(split_k, num_sms(device))
    most = max(rule({"M": m, "N": n, "K": k, **c.kwargs}) for c in configs)
    ws = torch.empty((most, m, n), device=device, dtype=torch.float32) if most > 1 else y2d
    return rule, ws


def launched_split(rule: SplitKRule, args: dict[str, Any], cfg: triton.Config | None) -> int:
    """The SPLIT_K the launch of `cfg` ran with (reduce its partials when > 1)."""
    if cfg is None:
        raise RuntimeError("the autotuner did not report its pick: split-K unknown")
    return rule({**args, **cfg.kwargs})


def gemm_grid(meta: dict) -> tuple:
    tiles = cdiv(meta["M"], meta["BLOCK_M"]) * cdiv(meta["N"], meta["BLOCK_N"])
    return (tiles, meta["SPLIT_K"])


def even_k(meta: dict) -> bool:
    return meta["K"] % meta["BLOCK_K"] == 0


def launch_gemm(
    kernel: Any,
    args: dict[str, Any],
    configs: Sequence[triton.Config],
    out: FusedOutput,
    split_k: int | None,
    tuner_id: tuple,
    key: Sequence[str] = GEMM_TUNE_KEY,
    heuristics: dict[str, Callable[[dict], Any]] | None = None,
) -> None:
    """Launch a split-K GEMM kernel (grid `gemm_grid`), then the reduce pass if it split K.

    `args`: the kernel's own arguments, M, N and K among them; the epilogue's come from
    `out`, the workspace and the SPLIT_K rule (per config, see SplitKRule) from here.
    `heuristics` default: EVEN_K alone.
    """
    m, n, k = args["M"], args["N"], args["K"]
    rule, ws = gemm_split_k(split_k, configs, m, n, k, out.y2d.device, out.y2d)
    args = {**out.kernel_args(), **args, "ws_ptr": ws}
    cfg = launch(
        kernel,
        gemm_grid,
        args,
        configs,
        tuner_id=(*tuner_id, rule.key),
        key=key,
        heuristics={**(heuristics or {"EVEN_K": even_k}), "SPLIT_K": rule},
    )
    split = launched_split(rule, args, cfg)
    if split > 1:
        out.reduce(ws, split)
