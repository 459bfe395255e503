"""Loads lepton_compile.kernels for Tier 3 tests: Triton interpreter on CPU, or a real GPU.

Not a conftest.py: a second conftest module would shadow tests/conftest.py for the test
modules that do `from conftest import ...`. TRITON_INTERPRET is read when a @triton.jit
function is defined, so it must be set before the kernel modules are imported; `load` does
that (and re-imports them if something imported them earlier without it).

    LEPTON_KERNELS_ON_GPU=1   run the same tests on CUDA (Tier 4) instead of the interpreter
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest

ON_GPU = os.environ.get("LEPTON_KERNELS_ON_GPU") == "1"
_MODULES = ("_common", "gemm", "gemm_scaled", "gemm_int4", "gemm_tma", "conv", "specs")


def _interpreted(common: ModuleType) -> bool:
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(common.apply_activation, InterpretedFunction)


def load(name: str) -> ModuleType:
    """lepton_compile.kernels.<name>, imported for this test session's mode."""
    # Before triton itself is imported: its own library functions (tl.sigmoid, ...) are
    # @triton.jit functions too, and only become interpretable when defined under the flag.
    triton_was_imported = "triton" in sys.modules
    if not ON_GPU:
        os.environ["TRITON_INTERPRET"] = "1"
    # Triton 3.9 warns that its FP-fusion default flips in 3.10: pin today's default.
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    torch = pytest.importorskip("torch")
    pytest.importorskip("triton")
    if ON_GPU and not torch.cuda.is_available():
        pytest.skip("LEPTON_KERNELS_ON_GPU=1 but CUDA is not available")
    if not ON_GPU and triton_was_imported:
        from triton.language import standard
        from triton.runtime.interpreter import InterpretedFunction

        if not isinstance(standard.sigmoid, InterpretedFunction):
            pytest.fail(
                "triton was imported before TRITON_INTERPRET=1 was set; run tests/kernels in "
                "its own pytest process (or export TRITON_INTERPRET=1)",
                pytrace=False,
            )
    common = sys.modules.get("lepton_compile.kernels._common")
    if common is not None and _interpreted(common) == ON_GPU:
        for mod in _MODULES:  # imported in the other mode: define the kernels again
            full = f"lepton_compile.kernels.{mod}"
            if full in sys.modules:
                importlib.reload(sys.modules[full])
    return importlib.import_module(f"lepton_compile.kernels.{name}")


DEVICE = "cuda" if ON_GPU else "cpu"
REPO = Path(__file__).resolve().parents[2]


def e2e_models() -> ModuleType:
    """benchmarks/e2e_models.py, the project's small models (benchmarks/ is not a package)."""
    path = str(REPO / "benchmarks")
    if path not in sys.path:
        sys.path.append(path)  # last: its module names must not shadow anything
    return importlib.import_module("e2e_models")
