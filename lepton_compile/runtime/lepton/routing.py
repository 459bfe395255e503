"""Per-layer routes of a lowered program: our Triton kernel or torch's ops, chosen per layer.

A converter for a fused or quantized layer (ops_lepton.py, ops_quant.py) offers its routes,
each a function of the layer's tensors; `KernelRouter.run` asks the chooser
(`lepton_compile.kernels.dispatch`) which one to record in the program, and records the
decision for `describe()`. Choosing happens while the program is traced (at load for static
shapes): timing runs the routes on real tensors of the layer's shapes, outside the trace,
with the real weights and random activations. On CUDA the picked Triton kernel is run once
there too, so its autotuning is done before any CUDA graph captures the program.

    kernels="auto"    CUDA: measured per layer (cached); CPU: torch's route (the kernels run
                      only in Triton's interpreter there)
    kernels="triton"  our kernel wherever it supports the layer; on the CPU in the interpreter
    kernels="torch"   torch's route everywhere
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from lepton_compile.kernels.dispatch import (
    MODES,
    OURS,
    TORCH,
    Candidate,
    Chooser,
    LayerChoice,
    Timer,
    choice_counts,
    cuda_timer,
    summary,
)
from lepton_compile.runtime.lepton import kernel_ops
from lepton_compile.runtime.lepton.lower import NodeCtx, no_tracing

log = logging.getLogger(__name__)

# Our kernels' input types; fp32 runs TF32 on the GPU's tensor cores.
KERNEL_FLOATS = (torch.float16, torch.bfloat16, torch.float32)


@dataclasses.dataclass
class Route:
    """One way to compute a layer: fn(*args) -> the layer's output tensor."""

    fn: Callable[..., torch.Tensor]
    args: Sequence[Any]
    ours: bool
    unavailable: str | None = None  # why it cannot run this layer


def unavailable(reason: str) -> Route:
    return Route(lambda *a: torch.empty(0), (), True, reason)


def _is_fake(t: Any) -> bool:
    from torch._subclasses.fake_tensor import FakeTensor

    return isinstance(t, FakeTensor)


def _real_like(t: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A real tensor with `t`'s shape, dtype, strides and device, of plausible values."""
    shape, stride, dtype, device = tuple(t.shape), tuple(t.stride()), t.dtype, t.device
    out = torch.empty_strided(shape, stride, dtype=dtype, device=device)
    if dtype.is_floating_point:
        src = torch.randn(shape, generator=gen) * 0.5
    elif dtype == torch.bool:
        src = torch.randint(0, 2, shape, generator=gen).bool()
    elif dtype == torch.uint8:
        src = torch.randint(0, 256, shape, generator=gen)
    else:
        src = torch.randint(-128, 128, shape, generator=gen)
    out.copy_(src.to(dtype))
    return out


class KernelRouter:
    """Chooses and records a route per layer for one session.

    `timer` (ms per call, see kernels.dispatch.Timer) replaces the CUDA-event timer and makes
    "auto" measure on the CPU too (tests inject timings this way); `cache` and `cache_parts`
    keep measured choices (kernels.dispatch.Chooser).
    """

    def __init__(
        self,
        mode: str,
        device: torch.device,
        *,
        tf32: bool = False,
        timer: Timer | None = None,
        cache: Any = None,
        cache_parts: Mapping[str, Any] | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"kernels must be one of {', '.join(MODES)}, got {mode!r}")
        self.mode = mode
        self.device = device
        self.tf32 = tf32
        on_cuda = device.type == "cuda"
        self.chooser = Chooser(
            mode,
            measure=on_cuda or timer is not None,
            timer=timer or cuda_timer,
            cache=cache if on_cuda else None,
            cache_parts=cache_parts,
        )
        self.records: dict[str, LayerChoice] = {}
        self._names: dict[int, str] = {}
        self._triton: str | None | bool = False  # False: not checked yet

    # -- what our kernels can do here ----------------------------------------------------
    def triton_unavailable(self) -> str | None:
        """None if our kernels may run in this session, else why not (checked once)."""
        if self._triton is False:
            if self.mode == "torch":
                reason: str | None = "kernels=torch"
            elif self.device.type == "cpu" and self.mode == "auto" and not self.chooser.measure:
                reason = "on the CPU our kernels run only in the interpreter (kernels=triton)"
            else:
                reason = kernel_ops.triton_unavailable(self.device)
            self._triton = reason
        return self._triton  # type: ignore[return-value]

    def float_unavailable(self, dtype: torch.dtype) -> str | None:
        """Why our float kernels cannot compute in `dtype` here (None: they can)."""
        reason = self.triton_unavailable()
        if reason is not None:
            return reason
        if dtype not in KERNEL_FLOATS:
            return f"no kernel computes in {dtype}"
        if dtype == torch.float32 and self.device.type == "cuda" and not self.tf32:
            return "fp32 would run as TF32 on tensor cores (the tf32 option is off)"
        return None

    def arch(self) -> int | str:
        """Compute capability (90, 89, ...) of the device, or "interpreter"."""
        if self.device.type != "cuda":
            return "interpreter"
        major, minor = torch.cuda.get_device_capability(self.device)
        return major * 10 + minor

    # -- choosing ------------------------------------------------------------------------
    def layer_name(self, ctx: NodeCtx) -> str:
        name = ctx.node.name
        if not name:
            name = self._names.setdefault(id(ctx.node), f"{ctx.op_type}_{len(self._names)}")
        return name

    def run(
        self,
        ctx: NodeCtx,
        op: str,
        signature: Mapping[str, Any],
        routes: Mapping[str, Route],
    ) -> torch.Tensor:
        """The output of the layer by the chosen route (recorded into the trace)."""
        layer = self.layer_name(ctx)
        gen = torch.Generator().manual_seed(0)
        real: dict[int, torch.Tensor] = {}

        def materialize(args: Sequence[Any]) -> list[Any]:
            out = []
            for a in args:
                if isinstance(a, torch.Tensor) and _is_fake(a):
                    if id(a) not in real:
                        real[id(a)] = _real_like(a, gen)
                    a = real[id(a)]
                out.append(a)
            return out

        def example(route: Route) -> Callable[[], Any]:
            cache: list[list[Any]] = []

            def call() -> Any:
                if not cache:
                    cache.append(materialize(route.args))
                return route.fn(*cache[0])

            return call

        candidates = [
            Candidate(
                name,
                None if r.unavailable is not None else example(r),
                r.ours,
                r.unavailable or "",
            )
            for name, r in routes.items()
        ]
        sig = {
            **signature,
            "device": str(self.device),
            "layouts": [_layout(a) for a in _tensors(routes)],
        }
        with no_tracing(), torch.no_grad():
            choice = self.chooser.choose(layer, op, sig, candidates)
            picked = routes[choice.choice]
            if picked.ours and self.device.type == "cuda" and choice.source != "measured":
                example(picked)()  # autotune now, before a CUDA graph captures the program
        self.records[layer] = choice
        return picked.fn(*picked.args)

    # -- reporting -----------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        choices = list(self.records.values())
        return {
            "kernels": self.mode,
            "kernel_summary": summary(choices),
            "kernel_layers": [c.to_dict() for c in choices],
            "kernel_choice_counts": choice_counts(choices),
        }


def _tensors(routes: Mapping[str, Route]) -> list[torch.Tensor]:
    first = next((r for r in routes.values() if r.unavailable is None), None)
    if first is None:
        return []
    return [a for a in first.args if isinstance(a, torch.Tensor)]


def _layout(t: torch.Tensor) -> str:
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and t.shape[1] > 1:
        return "channels_last"
    return "contiguous" if t.is_contiguous() else "strided"


def shape_signature(
    op: str, tensors: Sequence[torch.Tensor | None], **attrs: Any
) -> dict[str, Any]:
    """The signature of a layer: op, input shapes and dtypes (None for absent inputs), attrs."""
    return {
        "op": op,
        "shapes": [list(t.shape) if t is not None else [] for t in tensors],
        "dtypes": [str(t.dtype).replace("torch.", "") if t is not None else "" for t in tensors],
        "attrs": {k: v for k, v in attrs.items()},
    }


__all__ = [
    "KERNEL_FLOATS",
    "OURS",
    "TORCH",
    "KernelRouter",
    "Route",
    "shape_signature",
    "unavailable",
]
