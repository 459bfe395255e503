"""Where variants run and what measures them: a pure function of what this host offers.

A run measures variants on one or more (backend, device) targets. Energy meters are per
device (NVML sees one GPU, RAPL or the estimate see the CPU), and figures from two meters do
not compare, so every device that is measured gets its own meter and its own original: the
original recipe runs on every target, and variants are judged only against the original
measured on the same device with the same meter. The pick is made among the variants of the
*primary* device (the GPU when the run targets one).

``plan_targets`` takes what is available (each backend's devices) as data, so the choice can
be tested on a machine without a GPU.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from lepton_compile.errors import InputError

DEVICES = ("auto", "cpu", "cuda")
METERS = ("auto", "nvml", "rapl", "estimate")


@dataclass(frozen=True)
class TargetPlan:
    """The targets of a run, in order (the primary device's first), and a meter per device."""

    targets: tuple[tuple[str, str], ...]
    primary: str
    meters: Mapping[str, str]
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def devices(self) -> tuple[str, ...]:
        seen: list[str] = []
        for _, d in self.targets:
            if d not in seen:
                seen.append(d)
        return tuple(seen)


def meter_for(meter: str, device: str) -> str | None:
    """The meter kind to ask for on ``device``, or None when the requested one cannot see it.

    ``auto`` lets the energy module choose per device (NVML on a GPU; RAPL, else the labelled
    estimate, on the CPU). NVML measures GPUs only; RAPL and the estimate measure the CPU only.
    """
    if meter == "auto":
        return "auto"
    if meter == "nvml":
        return "nvml" if device == "cuda" else None
    return meter if device == "cpu" else None


def plan_targets(
    available: Mapping[str, Sequence[str]],
    backends: Sequence[str],
    device: str = "auto",
    meter: str = "auto",
) -> TargetPlan:
    """Choose (backend, device) targets and per-device meters.

    ``available`` maps each backend name to the devices it can use on this host. With
    ``device="auto"`` the primary device is CUDA when any requested backend can use it, else
    the CPU; a backend that cannot use the primary device still runs on the CPU (measured
    with the CPU's meter against the CPU original, and not a candidate for the pick). An
    explicit device must be usable by every requested backend. A target whose device the
    requested meter cannot see is left out with a note; none left is an InputError.
    """
    if device not in DEVICES:
        raise InputError(f"--device must be one of {', '.join(DEVICES)}, not {device!r}")
    if meter not in METERS:
        raise InputError(f"--meter must be one of {', '.join(METERS)}, not {meter!r}")
    if not backends:
        raise InputError("no backend to run on")
    notes: list[str] = []
    if device == "auto":
        primary = "cuda" if any("cuda" in available.get(b, ()) for b in backends) else "cpu"
    else:
        primary = device
    chosen: list[tuple[str, str]] = []
    for b in backends:
        devs = list(available.get(b, ()))
        if primary in devs:
            chosen.append((b, primary))
        elif device == "auto" and "cpu" in devs:
            chosen.append((b, "cpu"))
            notes.append(
                f"backend {b} cannot use {primary} here: it runs on the cpu, measured against "
                "the original on the cpu, and is not a candidate for the pick"
            )
        else:
            raise InputError(
                f"backend {b!r} cannot use device {device!r} here "
                f"(available: {', '.join(devs) or 'none'})"
            )
    meters: dict[str, str] = {}
    kept: list[tuple[str, str]] = []
    for b, d in chosen:
        kind = meter_for(meter, d)
        if kind is None:
            notes.append(f"--meter {meter} cannot measure the {d}: backend {b} on the {d} left out")
            continue
        meters[d] = kind
        kept.append((b, d))
    if not any(d == primary for _, d in kept):
        raise InputError(f"--meter {meter} cannot measure the {primary}, the device of this run")
    # The primary device's targets first: the first is the baseline's.
    kept.sort(key=lambda t: t[1] != primary)
    return TargetPlan(tuple(kept), primary, meters, tuple(notes))
