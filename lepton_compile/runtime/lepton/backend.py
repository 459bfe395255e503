"""LeptonBackend / LeptonSession: the Backend protocol (runtime/base.py) over lowered programs.

A session owns one `Lowering` of the model and a small cache of programs, one per set of
input shapes (and values of pinned inputs, see below). Each program runs in one of three
modes: eager (the fx GraphModule), `torch.compile` with Inductor, and on CUDA either of those
captured whole as a CUDA graph (static input buffers: feeds are copied in, the graph is
replayed, outputs are copied out). Capture that fails falls back to eager replay of the
same program, logged and recorded in `describe()`.

Pinned inputs: a converter that needs a value at lowering time (a Reshape target, Slice
bounds, ...) which comes from a graph input rather than from an initializer makes the
session specialize on that input's value: it is treated as a constant, and a feed with a
different value gets its own program. Only small inputs (shape-like, at most
`lower.PIN_LIMIT` elements) are pinned; production models after passes never need it.
"""

from __future__ import annotations

import logging
import math
import platform
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lepton_compile.errors import NotSupported

log = logging.getLogger(__name__)

TORCH_HINT = (
    "the lepton backend needs torch: pip install 'lepton-compile[lepton]' "
    "(CPU-only machines: pip install torch --index-url https://download.pytorch.org/whl/cpu)"
)
_DTYPES = {
    None: None,
    "": None,
    "model": None,
    "fp32": "fp32",
    "float32": "fp32",
    "float": "fp32",
    "fp16": "fp16",
    "float16": "fp16",
    "half": "fp16",
    "bf16": "bf16",
    "bfloat16": "bf16",
}
KNOWN_OPTIONS = (
    "dtype",
    "channels_last",
    "cuda_graphs",
    "compile",
    "threads",
    "tf32",
    "kernels",
    "kernel_cache",
)
KERNEL_MODES = ("auto", "triton", "torch")
MAX_PROGRAMS = 16


def torch_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def parse_options(device: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """Validated options with defaults filled in; ValueError on a bad value."""
    unknown = sorted(set(options) - set(KNOWN_OPTIONS))
    if unknown:
        log.warning("lepton backend ignores unknown options: %s", ", ".join(unknown))
    dtype = options.get("dtype")
    if dtype not in _DTYPES:
        raise ValueError(f"lepton option dtype must be fp32, fp16 or bf16, got {dtype!r}")
    compile_ = options.get("compile")
    if compile_ not in (None, "", "inductor"):
        raise ValueError(f"lepton option compile must be None or 'inductor', got {compile_!r}")
    on_cuda = device.startswith("cuda")
    cuda_graphs = bool(options.get("cuda_graphs", on_cuda)) and on_cuda
    threads = options.get("threads")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ValueError(f"lepton option threads must be a positive int, got {threads!r}")
    kernels = options.get("kernels") or "auto"
    if kernels not in KERNEL_MODES:
        raise ValueError(
            f"lepton option kernels must be one of {', '.join(KERNEL_MODES)}, got {kernels!r}"
        )
    return {
        "dtype": _DTYPES[dtype],
        "channels_last": bool(options.get("channels_last", False)),
        "cuda_graphs": cuda_graphs,
        "compile": compile_ or None,
        "threads": threads,
        "tf32": bool(options.get("tf32", False)),
        "kernels": kernels,
        "kernel_cache": bool(options.get("kernel_cache", True)),
    }


def option_space(device: str) -> dict[str, tuple[Any, ...]]:
    """The backend's own modes a search may vary per variant, with their values on `device`.

    The first value of each is the default. `channels_last` and `kernels` apply everywhere;
    `cuda_graphs` and `tf32` only on CUDA. `kernels` on the CPU: "auto" means torch's ops
    (our Triton kernels run only in the interpreter there), so only "auto" is offered.
    """
    on_cuda = device.startswith("cuda")
    space: dict[str, tuple[Any, ...]] = {
        "channels_last": (False, True),
        "kernels": ("auto", "torch", "triton") if on_cuda else ("auto",),
    }
    if on_cuda:
        space["cuda_graphs"] = (True, False)
        space["tf32"] = (False, True)
    return space


def option_label(options: Mapping[str, Any]) -> str:
    """A short tag for a variant's non-default backend options ("cl", "nograph", "k=torch")."""
    parts = []
    if options.get("channels_last"):
        parts.append("cl")
    if options.get("cuda_graphs") is False:
        parts.append("nograph")
    if options.get("tf32"):
        parts.append("tf32")
    kernels = options.get("kernels")
    if kernels and kernels != "auto":
        parts.append(f"k={kernels}")
    return "+".join(parts)


class _Eager:
    """Runs a program (or its compiled form) on the device; inputs arrive on the CPU."""

    def __init__(self, fn: Callable[..., Any], device: Any):
        self.fn = fn
        self.device = device

    def __call__(self, inputs: Sequence[Any]) -> list[Any]:
        import torch

        with torch.inference_mode():
            args = [t.to(self.device) for t in inputs]
            return list(self.fn(*args))


class _CudaGraph:
    """The whole forward captured as one CUDA graph over static input/output buffers."""

    def __init__(self, fn: Callable[..., Any], example: Sequence[Any], warmup: int = 3):
        import torch

        self.static_in = [t.clone() for t in example]
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.inference_mode(), torch.cuda.stream(stream):
            for _ in range(warmup):  # allocator, cuDNN/cuBLAS handles, autotuning
                fn(*self.static_in)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(self.graph):
            self.static_out = list(fn(*self.static_in))
        torch.cuda.synchronize()

    def __call__(self, inputs: Sequence[Any]) -> list[Any]:
        for dst, src in zip(self.static_in, inputs, strict=True):
            dst.copy_(src, non_blocking=True)
        self.graph.replay()
        return self.static_out  # read before the next replay (run() copies to numpy)


class LeptonSession:
    """A model lowered to torch; `run(feeds)` -> numpy outputs, as every backend's session."""

    def __init__(
        self,
        model: Path | Any,
        device: str,
        options: Mapping[str, Any],
        *,
        kernel_timer: Any = None,
        kernel_cache: Any = None,
    ):
        """`model`: a path, or an onnx.ModelProto (external data then resolves nowhere).

        `kernel_timer` (kernels.dispatch.Timer) replaces the CUDA-event timing of the
        per-layer choice, and makes kernels="auto" measure on the CPU too; `kernel_cache`
        (get/put) replaces the result cache the choices are kept in.
        """
        import onnx
        import torch

        from lepton_compile.runtime.lepton.lower import Lowering, Options, unsupported_ops

        self.device = device
        self.options = parse_options(device, options)
        if self.options["threads"]:
            torch.set_num_threads(self.options["threads"])
        if isinstance(model, onnx.ModelProto):
            self.path = None
            base_dir = None
        else:
            self.path = Path(model)
            base_dir = str(self.path.parent)
            model = onnx.load(str(self.path), load_external_data=False)
        missing = unsupported_ops(model)
        if missing:
            raise NotSupported(f"lepton has no lowering for {', '.join(missing)}")
        compute = {
            None: None,
            "fp32": torch.float32,
            "fp16": torch.float16,
            "bf16": torch.bfloat16,
        }[self.options["dtype"]]
        self.router = self._make_router(torch.device(device), kernel_timer, kernel_cache)
        self._lowering = Lowering(
            model,
            Options(torch.device(device), compute, self.options["channels_last"], self.router),
            base_dir=base_dir,
        )
        self.input_names = [s.name for s in self._lowering.inputs]
        self.output_names = [s.name for s in self._lowering.outputs]
        self._specs = {s.name: s for s in self._lowering.inputs}
        self._pin: set[str] = set()
        self._programs: OrderedDict[Any, tuple[Any, Any]] = OrderedDict()
        self._graph_fallback: str | None = None
        self._compile_options: dict[str, Any] | None = None
        self._graphs_active = False
        self._set_flags()
        shapes = {s.name: s.shape for s in self._lowering.inputs}
        if all(shape is not None and None not in shape for shape in shapes.values()):
            self._lower_static(shapes)  # type: ignore[arg-type]

    def _make_router(self, device: Any, timer: Any, cache: Any) -> Any:
        """The per-layer kernel router: measured choices cached by device and versions."""
        from lepton_compile.runtime.lepton.routing import KernelRouter

        mode = self.options["kernels"]
        parts: dict[str, Any] = {}
        if device.type == "cuda" and mode == "auto" and timer is None:
            if cache is None and self.options["kernel_cache"]:
                cache = _open_choice_cache()
            parts = _device_parts(device)
        return KernelRouter(
            mode,
            device,
            tf32=self.options["tf32"],
            timer=timer,
            cache=cache,
            cache_parts=parts,
        )

    # -- lowering ------------------------------------------------------------------------
    def _lower_static(self, shapes: Mapping[str, Sequence[int]]) -> None:
        """Lower at load time (errors surface here, for the search) unless values are needed."""
        from lepton_compile.runtime.lepton.lower import PIN_LIMIT, NeedValues

        try:
            self._build(shapes, {})
        except NeedValues as e:
            big = [n for n in e.names if math.prod(shapes[n]) > PIN_LIMIT]
            if big:
                raise NotSupported(
                    f"{e.what}: must be known at lowering time, but comes from the values "
                    f"of input(s) {', '.join(sorted(big))}"
                ) from None
            self._pin |= e.names  # lower at the first run, when the values are known

    def _key(self, shapes: Mapping[str, Sequence[int]], pinned: Mapping[str, np.ndarray]) -> Any:
        return (
            tuple((n, tuple(s)) for n, s in sorted(shapes.items())),
            tuple((n, a.dtype.str, a.shape, a.tobytes()) for n, a in sorted(pinned.items())),
        )

    def _build(
        self, shapes: Mapping[str, Sequence[int]], pinned: Mapping[str, np.ndarray]
    ) -> tuple[Any, Any]:
        program = self._lowering.trace(shapes, pinned)
        runner = self._runner(program)
        key = self._key(program.shapes, program.pinned)
        self._programs[key] = (program, runner)
        while len(self._programs) > MAX_PROGRAMS:
            self._programs.popitem(last=False)
        return program, runner

    def _program(self, arrays: Mapping[str, np.ndarray]) -> tuple[Any, Any]:
        from lepton_compile.runtime.lepton.lower import PIN_LIMIT, NeedValues

        while True:
            pinned = {n: arrays[n] for n in sorted(self._pin)}
            shapes = {n: a.shape for n, a in arrays.items() if n not in self._pin}
            key = self._key(shapes, pinned)
            hit = self._programs.get(key)
            if hit is not None:
                self._programs.move_to_end(key)
                return hit
            try:
                return self._build(shapes, pinned)
            except NeedValues as e:
                big = [n for n in e.names if arrays[n].size > PIN_LIMIT]
                if big or e.names <= self._pin:
                    raise NotSupported(
                        f"{e.what}: must be known at lowering time, but comes from the values "
                        f"of input(s) {', '.join(sorted(e.names))}"
                    ) from None
                self._pin |= e.names

    def _runner(self, program: Any) -> Any:
        import torch

        fn: Callable[..., Any] = program.module
        example = self._lowering.example_inputs(program.shapes, program.inputs)
        if self.options["compile"] == "inductor":
            fn = self._compile(program.module, example)
        if self.options["cuda_graphs"]:
            try:
                runner = _CudaGraph(fn, example)
                self._graphs_active = True
                return runner
            except Exception as e:
                self._graph_fallback = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
                log.warning("CUDA graph capture failed, running without: %s", self._graph_fallback)
                try:
                    torch.cuda.synchronize()
                except Exception:  # a sticky error from the capture: eager runs will say so
                    log.debug("synchronize after the failed capture raised", exc_info=True)
        return _Eager(fn, program.device)

    def _compile(self, module: Any, example: Sequence[Any]) -> Callable[..., Any]:
        """torch.compile with Inductor, compiled now rather than in the first measurement.

        Inductor's pattern matcher can rewrite a graph into one that does not trace (torch
        2.13: its attention rewrite broadcasts a 4-D mask against 3-D batched matmuls, as in
        minilm-l6); if compiling fails, it is retried once with the pattern matcher off.
        """
        import torch

        errors = []
        for options in ({}, {"pattern_matcher": False}):
            try:
                fn = torch.compile(
                    module, backend="inductor", dynamic=False, fullgraph=True, options=options
                )
                with torch.inference_mode():
                    fn(*example)
                self._compile_options = options
                return fn
            except Exception as e:
                lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
                errors.append(" ".join(lines[:3]) or type(e).__name__)
                log.debug("torch.compile failed with options %s", options, exc_info=True)
        raise NotSupported(f"torch.compile (inductor) failed: {errors[-1][:400]}")

    def _set_flags(self) -> None:
        import torch

        if self.options["threads"] and torch.get_num_threads() != self.options["threads"]:
            torch.set_num_threads(self.options["threads"])
        if self.device.startswith("cuda"):
            torch.backends.cuda.matmul.allow_tf32 = self.options["tf32"]
            torch.backends.cudnn.allow_tf32 = self.options["tf32"]
            torch.backends.cudnn.benchmark = True

    # -- the Session protocol ------------------------------------------------------------
    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        from lepton_compile.runtime.lepton import dtypes

        unknown = sorted(set(feeds) - set(self._specs))
        if unknown:
            raise ValueError(f"unknown input(s) {', '.join(unknown)}; inputs: {self.input_names}")
        arrays: dict[str, np.ndarray] = {}
        for name, spec in self._specs.items():
            if name not in feeds:
                raise ValueError(f"missing input {name!r}")
            a = np.asarray(feeds[name])
            t = dtypes.from_numpy(a, f"input {name!r}")
            if t.dtype != spec.dtype:
                raise ValueError(f"input {name!r}: expected {spec.dtype}, got {a.dtype}")
            arrays[name] = a
        self._set_flags()
        program, runner = self._program(arrays)
        tensors = [
            dtypes.from_numpy(np.require(arrays[s.name], requirements="C")) for s in program.inputs
        ]
        outs = runner(tensors)
        return {
            spec.name: dtypes.to_numpy(t) for spec, t in zip(program.outputs, outs, strict=True)
        }

    def program_for(self, feeds: Mapping[str, np.ndarray]) -> Any:
        """The lowered `Program` that `run(feeds)` runs: its fx GraphModule and I/O specs.

        What `lepton_compile.export` hands to torch.export; inputs that the session pins by
        value (see the module docstring) are constants in it and absent from its inputs.
        """
        program, _ = self._program({name: np.asarray(a) for name, a in feeds.items()})
        return program

    def describe(self) -> dict[str, Any]:
        import torch

        if self.device.startswith("cuda"):
            device_name = torch.cuda.get_device_name(torch.device(self.device))
        else:
            device_name = _cpu_name()
        return {
            "backend": "lepton",
            "torch": torch.__version__,
            "device": self.device,
            "device_name": device_name,
            "dtype": self.options["dtype"] or "as declared",
            "channels_last": self.options["channels_last"],
            "cuda_graphs": self._graphs_active,
            "cuda_graphs_fallback": self._graph_fallback,
            "compile": self.options["compile"],
            "compile_options": self._compile_options,
            "threads": torch.get_num_threads(),
            "tf32": self.options["tf32"] if self.device.startswith("cuda") else None,
            "cudnn_benchmark": True if self.device.startswith("cuda") else None,
            "lowering": "torch.fx GraphModule of ATen ops (make_fx), shapes folded",
            "programs": len(self._programs),
            "pinned_inputs": sorted(self._pin),
            "clamped_constants": self._lowering.clamped,
            **self.router.describe(),
        }

    def kernel_layers(self) -> list[dict[str, Any]]:
        """Per-layer records of the kernel choice (op, shapes, each candidate's time, choice)."""
        return self.router.describe()["kernel_layers"]

    def kernel_summary(self) -> str:
        """One line: "31 of 53 layers on our kernels"."""
        return self.router.describe()["kernel_summary"]


def _open_choice_cache() -> Any:
    """The result cache the kernel choices are kept in (None if it cannot be opened)."""
    try:
        from lepton_compile.bench.cache import open_cache

        return open_cache()
    except Exception:  # a cache must never fail a load
        log.debug("kernel choice cache unavailable", exc_info=True)
        return None


def _device_parts(device: Any) -> dict[str, Any]:
    """What keys a measured kernel choice besides the layer: the machine and its versions."""
    import torch

    parts: dict[str, Any] = {
        "gpu": torch.cuda.get_device_name(device),
        "capability": list(torch.cuda.get_device_capability(device)),
    }
    try:
        from lepton_compile.bench.device import device_record, record_key

        parts["device"] = record_key(device_record())
    except Exception:
        log.debug("device record unavailable for the kernel choice key", exc_info=True)
        parts["torch"] = torch.__version__
    return parts


class LeptonBackend:
    """ONNX -> torch (fx) programs on CPU or CUDA; see the package docstring."""

    name = "lepton"

    def devices(self) -> list[str]:
        if not torch_available():
            return []
        import torch

        return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]

    def load(
        self, path: Path, device: str = "cpu", options: Mapping[str, Any] | None = None
    ) -> LeptonSession:
        if not torch_available():
            raise NotSupported(TORCH_HINT)
        base = device.split(":", 1)[0]
        if base not in self.devices():
            raise NotSupported(f"the lepton backend cannot use device {device!r} here")
        return LeptonSession(Path(path), device, options or {})
