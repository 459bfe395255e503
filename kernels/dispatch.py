"""Per-layer dispatch: each fused or quantized layer runs on whichever candidate measured faster.

A layer (one ai.lepton or quantized node, at its real shapes) has candidates: our Triton
kernel and torch's route (cuBLAS/cuDNN with a separate epilogue, `_int_mm`, `_scaled_mm`).
`Chooser.choose` picks one:

    kernels="torch"   torch's route wherever there is one
    kernels="triton"  our kernel wherever it supports the layer (else torch's, with the reason)
    kernels="auto"    time every available candidate on the layer's shapes and take the faster;
                      ours only when it beats torch's by `margin` (a kernel must never make a
                      model slower), torch's on a tie or when nothing could be timed

Timing goes through a `timer(fn, candidate=..., layer=...) -> ms` callable: `cuda_timer`
(CUDA events, warm-up, median) on a GPU, or any callable a test injects. A measured choice is
kept in a cache (anything with `get(key)` and `put(key, value, meta=...)`, such as
`lepton_compile.bench.cache.ResultCache`) under a key of the op, its signature (shapes,
dtypes, attributes), the candidates, the device and KERNELS_VERSION, so a second load of the
same model on the same machine does not time again.

Pure Python: importing this module imports neither torch nor triton.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

log = logging.getLogger(__name__)

# Bump when a kernel, its configs or the candidates change what a cached timing means.
KERNELS_VERSION = "2"
MODES = ("auto", "triton", "torch")
# Ours must take at most this fraction of torch's time to be picked: a tie goes to torch.
DEFAULT_MARGIN = 0.97
OURS = "triton"
TORCH = "torch"


class Timer(Protocol):
    def __call__(self, fn: Callable[[], Any], *, candidate: str, layer: str) -> float:
        """Milliseconds one call of `fn` takes (a median over repetitions)."""
        ...


class ChoiceCache(Protocol):
    def get(self, key: str) -> dict[str, Any] | None: ...

    def put(
        self, key: str, value: dict[str, Any], meta: Mapping[str, Any] | None = None
    ) -> Any: ...


@dataclasses.dataclass
class Candidate:
    """One way to compute a layer. `fn` runs it once on example inputs (None: unavailable)."""

    name: str
    fn: Callable[[], Any] | None
    ours: bool
    reason: str = ""  # why it is unavailable, when fn is None


@dataclasses.dataclass
class LayerChoice:
    """What was decided for one layer, as the session's describe() reports it."""

    layer: str
    op: str
    shapes: list[list[int]]
    dtypes: list[str]
    choice: str
    ours: bool
    source: str  # forced | measured | cache | default | only
    times_ms: dict[str, float] = dataclasses.field(default_factory=dict)
    unavailable: dict[str, str] = dataclasses.field(default_factory=dict)
    errors: dict[str, str] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: v for k, v in d.items() if v or k in ("choice", "ours", "source")}


def summary(choices: Sequence[LayerChoice]) -> str:
    """One line for a report: "31 of 53 layers on our kernels"."""
    ours = sum(1 for c in choices if c.ours)
    noun = "layer" if len(choices) == 1 else "layers"
    return f"{ours} of {len(choices)} {noun} on our kernels"


def choice_counts(choices: Sequence[LayerChoice]) -> dict[str, dict[str, int]]:
    """{op: {candidate: layers}}: how often each candidate was picked, per op."""
    out: dict[str, dict[str, int]] = {}
    for c in choices:
        per_op = out.setdefault(c.op, {})
        per_op[c.choice] = per_op.get(c.choice, 0) + 1
    return out


def cache_key(parts: Mapping[str, Any]) -> str:
    """sha256 of a canonical JSON of `parts` (plain data only)."""
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


class Chooser:
    """Picks a candidate per layer; see the module docstring for the modes.

    `measure`: whether "auto" times candidates (False: torch's route, no timing; the CPU
    default, since the Triton kernels do not run natively there). `timer` defaults to
    `cuda_timer`. `cache` and `cache_parts` (the device record and versions, plain data) keep
    measured choices across sessions.
    """

    def __init__(
        self,
        mode: str = "auto",
        *,
        measure: bool = True,
        timer: Timer | None = None,
        cache: ChoiceCache | None = None,
        cache_parts: Mapping[str, Any] | None = None,
        margin: float = DEFAULT_MARGIN,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"kernels must be one of {', '.join(MODES)}, got {mode!r}")
        if not 0.0 < margin <= 1.0:
            raise ValueError(f"margin must be in (0, 1], got {margin}")
        self.mode = mode
        self.measure = measure
        self.timer: Timer = timer or cuda_timer
        self.cache = cache
        self.cache_parts = dict(cache_parts or {})
        self.margin = margin

    def key(self, op: str, signature: Mapping[str, Any], names: Sequence[str]) -> str:
        return cache_key(
            {
                "kind": "lepton-kernel-choice",
                "op": op,
                "signature": dict(signature),
                "candidates": sorted(names),
                "kernels_version": KERNELS_VERSION,
                "margin": self.margin,
                **self.cache_parts,
            }
        )

    def choose(
        self,
        layer: str,
        op: str,
        signature: Mapping[str, Any],
        candidates: Sequence[Candidate],
    ) -> LayerChoice:
        """The candidate for one layer. `signature` holds its shapes, dtypes and attributes
        (plain data: it keys the cache; "shapes" and "dtypes" are also reported)."""
        if not candidates:
            raise ValueError(f"layer {layer!r} has no candidates")
        shapes = [list(s) for s in signature.get("shapes", [])]
        dtypes = [str(d) for d in signature.get("dtypes", [])]
        available = [c for c in candidates if c.fn is not None]
        unavailable = {c.name: c.reason or "unavailable" for c in candidates if c.fn is None}
        if not available:
            raise ValueError(f"layer {layer!r}: no candidate can run it ({unavailable})")

        def decide(c: Candidate, source: str, **kw: Any) -> LayerChoice:
            return LayerChoice(
                layer, op, shapes, dtypes, c.name, c.ours, source, unavailable=unavailable, **kw
            )

        ours = [c for c in available if c.ours]
        theirs = [c for c in available if not c.ours]
        if self.mode == "torch":
            return decide((theirs or ours)[0], "forced")
        if self.mode == "triton":
            return decide((ours or theirs)[0], "forced")
        if len(available) == 1:
            return decide(available[0], "only")
        if not self.measure:
            return decide((theirs or ours)[0], "default")

        key = self.key(op, signature, [c.name for c in available])
        hit = self._cache_get(key)
        if hit is not None:
            picked = next((c for c in available if c.name == hit.get("choice")), None)
            if picked is not None:
                cached = {k: float(v) for k, v in (hit.get("times_ms") or {}).items()}
                return decide(picked, "cache", times_ms=cached)

        times: dict[str, float] = {}
        errors: dict[str, str] = {}
        for c in available:
            assert c.fn is not None
            try:
                times[c.name] = float(self.timer(c.fn, candidate=c.name, layer=layer))
            except Exception as e:  # a candidate that fails to run is not a choice
                errors[c.name] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
                log.debug("layer %s: candidate %s failed", layer, c.name, exc_info=True)
        timed_ours = [c for c in ours if c.name in times]
        timed_theirs = [c for c in theirs if c.name in times]
        if not timed_ours and not timed_theirs:
            # Nothing ran: torch's route, which the model ran on before any kernel existed.
            return decide((theirs or ours)[0], "default", errors=errors)
        best_ours = min(timed_ours, key=lambda c: times[c.name], default=None)
        best_theirs = min(timed_theirs, key=lambda c: times[c.name], default=None)
        if best_theirs is None:
            picked = best_ours
        elif best_ours is None:
            picked = best_theirs
        else:
            faster = times[best_ours.name] < self.margin * times[best_theirs.name]
            picked = best_ours if faster else best_theirs
        assert picked is not None
        choice = decide(picked, "measured", times_ms=times, errors=errors)
        if not errors:  # a failure may be transient (memory): decide again next time
            self._cache_put(key, {"choice": picked.name, "times_ms": times}, op, layer)
        return choice

    def _cache_get(self, key: str) -> dict[str, Any] | None:
        if self.cache is None:
            return None
        try:
            return self.cache.get(key)
        except Exception:  # the cache must never fail a load
            log.debug("kernel choice cache: get failed", exc_info=True)
            return None

    def _cache_put(self, key: str, value: dict[str, Any], op: str, layer: str) -> None:
        if self.cache is None:
            return
        try:
            self.cache.put(key, value, meta={"kind": "kernel-choice", "op": op, "layer": layer})
        except Exception:
            log.debug("kernel choice cache: put failed", exc_info=True)


def cuda_timer(
    fn: Callable[[], Any],
    *,
    candidate: str = "",
    layer: str = "",
    warmup: int = 3,
    reps: int = 15,
    window_ms: float = 0.5,
) -> float:
    """Median milliseconds per call of `fn` on the current CUDA stream, from CUDA events.

    The warm-up calls also run Triton's autotuning for the shape, so a kernel is tuned
    before any CUDA graph captures it. Calls are batched so that each timed window lasts at
    least `window_ms` (event resolution is about half a microsecond).
    """
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    one = max(start.elapsed_time(end), 1e-3)
    inner = max(1, min(100, int(window_ms / one)))
    samples = []
    for _ in range(reps):
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) / inner)
    return statistics.median(samples)


def wall_timer(
    fn: Callable[[], Any], *, candidate: str = "", layer: str = "", warmup: int = 1, reps: int = 5
) -> float:
    """Median wall-clock milliseconds per call of `fn` (CPU: synchronous calls)."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples)


__all__ = [
    "DEFAULT_MARGIN",
    "KERNELS_VERSION",
    "MODES",
    "OURS",
    "TORCH",
    "Candidate",
    "ChoiceCache",
    "Chooser",
    "LayerChoice",
    "Timer",
    "cache_key",
    "choice_counts",
    "cuda_timer",
    "summary",
    "wall_timer",
]
