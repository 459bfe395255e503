"""Known-hopeless variants: (recipe precision, backend, device) combinations that cannot win here.

Some combinations are known to lose before anything is built: torch runs a 16-bit float
matmul on a CPU without native support for that format through a slow fallback (a BERT-class
encoder in fp16 on the lepton backend took 1.4 s per inference where the FP32 original took
28 ms), so building, verifying and measuring it only spends the run's time. Such a variant is
skipped with the reason, unless the user named its recipe in ``--recipes``.

The rules are data (``RULES``); whether this CPU has native support is a pure function of its
feature flags (``native_support``), so that both can be tested with made-up CPUs.
"""

from __future__ import annotations

import functools
import platform
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

# Feature flags (as /proc/cpuinfo spells them) that give native matmul in a 16-bit float
# format; any one of them is enough. Architectures not listed are not judged.
NATIVE_FLAGS: Mapping[tuple[str, str], tuple[str, ...]] = {
    ("x86", "fp16"): ("avx512_fp16", "amx_fp16"),
    ("x86", "bf16"): ("avx512_bf16", "amx_bf16"),
    ("arm", "fp16"): ("fphp", "asimdhp"),
    ("arm", "bf16"): ("bf16",),
}

_ARCHES = {
    "x86_64": "x86",
    "amd64": "x86",
    "i386": "x86",
    "i686": "x86",
    "aarch64": "arm",
    "arm64": "arm",
}

_LEPTON = ("lepton", "lepton+inductor")


@dataclass(frozen=True)
class CpuFeatures:
    """What the rules need to know of a CPU: its architecture family and feature flags."""

    arch: str  # "x86", "arm", or the machine name when neither
    flags: frozenset[str]

    @classmethod
    def of(cls, machine: str, flags: Iterable[str]) -> CpuFeatures:
        m = machine.lower()
        return cls(_ARCHES.get(m, m), frozenset(f.lower() for f in flags))


@dataclass(frozen=True)
class Rule:
    """Variants of recipes in ``precision`` on ``backends`` and ``device`` are hopeless on a
    CPU without native ``precision`` matmul; ``why`` says what happens there instead."""

    precision: str
    backends: tuple[str, ...]
    device: str
    why: str


RULES: tuple[Rule, ...] = (
    Rule("fp16", _LEPTON, "cpu", "torch runs fp16 here far slower than fp32"),
    Rule("bf16", _LEPTON, "cpu", "torch runs bf16 here far slower than fp32"),
)


def native_support(precision: str, cpu: CpuFeatures) -> bool | None:
    """Whether ``cpu`` multiplies ``precision`` matrices natively; None when its flags do not
    tell (an architecture or a format the table does not know)."""
    flags = NATIVE_FLAGS.get((cpu.arch, precision))
    if flags is None:
        return None
    return any(f in cpu.flags for f in flags)


class _VariantLike(Protocol):
    id: str
    backend: str
    device: str

    @property
    def recipe(self) -> Any: ...


def reason(
    precision: str,
    backend: str,
    device: str,
    cpu: CpuFeatures | None,
    rules: Iterable[Rule] = RULES,
) -> str | None:
    """Why a variant of this precision, backend and device cannot win on ``cpu`` (None: it may).

    Unknown CPU features never make a variant hopeless: the rule needs the flags to say no.
    """
    if cpu is None:
        return None
    for rule in rules:
        if (rule.precision, device) != (precision, rule.device) or backend not in rule.backends:
            continue
        if native_support(precision, cpu) is False:
            flags = NATIVE_FLAGS[(cpu.arch, precision)]
            return (
                f"not built: this CPU has no native {precision} matmul (no {'/'.join(flags)}); "
                f"{rule.why}. Name the recipe in --recipes to build it anyway"
            )
    return None


def skips(
    variants: Iterable[_VariantLike], named: Iterable[str], cpu: CpuFeatures | None = None
) -> dict[str, str]:
    """Variant id -> why it is skipped, for the hopeless variants whose recipe was not named.

    ``cpu`` defaults to this machine's (``this_cpu``).
    """
    explicit = set(named)
    cpu = this_cpu() if cpu is None else cpu
    out: dict[str, str] = {}
    for v in variants:
        if v.recipe.name in explicit:
            continue
        why = reason(v.recipe.precision, v.backend, v.device, cpu)
        if why:
            out[v.id] = why
    return out


def parse_cpuinfo(text: str) -> frozenset[str]:
    """The feature flags of the first processor in /proc/cpuinfo text (x86 "flags", Arm
    "Features")."""
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in ("flags", "features"):
            return frozenset(value.split())
    return frozenset()


@functools.lru_cache(maxsize=1)
def this_cpu(cpuinfo: str = "/proc/cpuinfo") -> CpuFeatures | None:
    """This machine's CPU features, or None where /proc/cpuinfo cannot be read or lists none."""
    try:
        flags = parse_cpuinfo(Path(cpuinfo).read_text(errors="replace"))
    except OSError:
        return None
    if not flags:
        return None
    return CpuFeatures.of(platform.machine(), flags)
