"""What a compile run is asked to do: one dataclass that the CLI and the Python API both build.

Every knob of ``lepton_compile.compile`` lives here with its default, and ``validate`` turns
a bad value into the one-line ``InputError`` the CLI exits with (code 2). The protocol and
the racing rules that follow from the options are derived here too, so that the two
front ends cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lepton_compile.bench.protocol import Protocol
from lepton_compile.bench.race import RaceRules
from lepton_compile.compress import DEFAULT_SEARCH_BUDGET_S
from lepton_compile.errors import InputError
from lepton_compile.search import OBJECTIVES
from lepton_compile.worker import DEFAULT_TIMEOUT_S

# The MLflow experiment a run is logged to unless another is named.
DEFAULT_EXPERIMENT = "lepton-compile"
KERNEL_MODES = ("auto", "triton", "torch")
EXECUTORS = ("local", "ray")
# A variant this many times slower than the original in the screen is not measured further.
DEFAULT_SCREEN_FACTOR = 2.0


@dataclass
class CompileOptions:
    """The options of one compile run (see ``lepton_compile.compile`` for each one's meaning)."""

    input_shapes: Mapping[str, Sequence[int]] | None = None
    objective: str = "energy"
    recipes: Sequence[Any] | None = None  # names or Recipe objects; None: the defaults
    backends: Sequence[str] | None = None
    device: str = "auto"
    inputs_dir: str | Path | None = None
    max_accuracy_drop: float = 0.01
    max_latency_ms: float | None = None
    # Serving profile: measure every verified variant at each of these batch sizes.
    batch_sizes: Sequence[int] | None = None
    meter: str = "auto"
    cpu_watts: float | None = None
    protocol: Protocol | None = None
    quick: bool = False
    window_s: float | None = None
    calibration_samples: int = 32
    eval_samples: int = 16
    seed: int = 0
    isolate: bool = True
    variant_timeout_s: float = DEFAULT_TIMEOUT_S
    memory_limit_bytes: int | None = None
    total_memory_bytes: int | None = None
    budget_s: float | None = None
    cache: bool = True
    cache_path: str | Path | None = None
    metric: Callable[[list[dict], list[dict]], float] | None = None
    search_budget_s: float = DEFAULT_SEARCH_BUDGET_S
    min_trials: int | None = None
    max_trials: int | None = None
    measure_budget_s: float | None = None
    screen_factor: float | None = DEFAULT_SCREEN_FACTOR
    # lepton backend: our Triton kernels or torch's route per layer (auto: measured per layer
    # on a GPU, torch on a CPU; triton: ours wherever a kernel exists; torch: never ours).
    kernels: str = "auto"
    # Log the run to MLflow once it is done (lepton_compile.tracking): True for MLflow's
    # default tracking store ($MLFLOW_TRACKING_URI), or a tracking URI; None: not logged.
    mlflow: bool | str | None = None
    mlflow_experiment: str = DEFAULT_EXPERIMENT
    # Where the variants' work runs: worker processes here ("local"), or Ray actors ("ray") on
    # the cluster at ray_address (None: the one `ray start` left for this machine), measured
    # on a node with target_resource (None: "GPU" for CUDA variants, else any one node).
    executor: str = "local"
    ray_address: str | None = None
    target_resource: str | None = None
    # Where the run's work directory goes (None: the system's temporary directory). With Ray,
    # a directory every node mounts at the same path carries the artifacts between nodes.
    work_dir: str | Path | None = None

    def validate(self) -> None:
        """Raise InputError on a value no run could use."""
        if self.objective not in OBJECTIVES:
            raise InputError(f"--objective must be one of {', '.join(OBJECTIVES)}")
        if not 0.0 <= self.max_accuracy_drop <= 1.0:
            raise InputError("--max-accuracy-drop must be between 0 and 1 (or 0% and 100%)")
        for name in ("window_s", "search_budget_s", "variant_timeout_s", "cpu_watts"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise InputError(f"--{name.replace('_', '-')} must be a finite number above 0")
        # A budget of 0 is allowed: only the original is verified and measured.
        if self.budget_s is not None and not (math.isfinite(self.budget_s) and self.budget_s >= 0):
            raise InputError("--budget-s must be a finite number, 0 or more")
        if self.batch_sizes is not None:
            sizes = list(self.batch_sizes)
            if not sizes or not all(isinstance(b, int) and b >= 1 for b in sizes):
                raise InputError("--batch-sizes must be whole numbers of 1 or more, like 1,8,32")
        if self.kernels not in KERNEL_MODES:
            raise InputError(f"--kernels must be one of {', '.join(KERNEL_MODES)}")
        if not (self.mlflow is None or isinstance(self.mlflow, bool) or str(self.mlflow).strip()):
            raise InputError("--mlflow: the tracking URI is empty")
        if not (isinstance(self.mlflow_experiment, str) and self.mlflow_experiment.strip()):
            raise InputError("--mlflow-experiment must be a non-empty name")
        self._validate_executor()
        if self.metric is not None and not callable(self.metric):
            raise InputError("metric must be a callable metric(outputs, labels) -> float")
        self.race_rules()  # its own checks

    def _validate_executor(self) -> None:
        if self.executor not in EXECUTORS:
            raise InputError(f"--executor must be one of {', '.join(EXECUTORS)}")
        for flag, value in (
            ("--ray-address", self.ray_address),
            ("--target-resource", self.target_resource),
        ):
            if value is not None and not (isinstance(value, str) and value.strip()):
                raise InputError(f"{flag} must be a non-empty string")
            if value is not None and self.executor != "ray":
                raise InputError(f"{flag} needs --executor ray")
        if self.work_dir is not None and not Path(self.work_dir).is_dir():
            raise InputError(f"--work-dir {self.work_dir}: not a directory")
        if self.executor == "ray" and not self.isolate:
            raise InputError("--no-isolate runs variants in this process: not with --executor ray")

    def measurement_protocol(self) -> Protocol:
        proto = self.protocol or (Protocol.quick() if self.quick else Protocol())
        if self.window_s is not None:
            proto = dataclasses.replace(proto, window_s_override=self.window_s)
        return proto

    def race_rules(self) -> RaceRules:
        """The racing rules: the defaults (shorter with ``quick``) and the user's flags."""
        lo, hi, budget = (2, 4, 10.0) if self.quick else (4, 20, 60.0)
        lo = self.min_trials if self.min_trials is not None else lo
        hi = self.max_trials if self.max_trials is not None else max(hi, lo)
        try:
            return RaceRules(
                objective=self.objective,
                min_trials=lo,
                max_trials=hi,
                budget_s=self.measure_budget_s if self.measure_budget_s is not None else budget,
                screen_factor=self.screen_factor,
            )
        except ValueError as e:
            raise InputError(
                f"--min-trials/--max-trials/--measure-budget-s/--screen-factor: {e}"
            ) from None

    def profiled_batches(self) -> list[int] | None:
        """The batch sizes to profile, ascending; ``quick`` keeps the smallest and the largest."""
        if not self.batch_sizes:
            return None
        sizes = sorted(set(self.batch_sizes))
        return [sizes[0], sizes[-1]] if self.quick and len(sizes) > 2 else sizes

    def backend_options(self, backend: str) -> dict[str, Any]:
        """Load options for a variant's backend."""
        return {"kernels": self.kernels} if backend.startswith("lepton") else {}

    def metric_name(self) -> str | None:
        m = self.metric
        if m is None:
            return None
        return f"{getattr(m, '__module__', '?')}.{getattr(m, '__qualname__', '?')}"
