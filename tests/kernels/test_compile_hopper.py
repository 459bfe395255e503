"""Compile gate: every kernel x sm90 config x dtype compiles for Hopper on the CPU.

`triton.compile(ASTSource(...), target=GPUTarget("cuda", 90, 32))` runs the real compiler
down to a cubin (ptxas included) without a GPU. It catches what the interpreter cannot:
tl.dot shapes the hardware rejects, shared-memory overruns, lowering failures. The specs
(kernels/specs.py) compile in one child process without TRITON_INTERPRET, in parallel, in a
throwaway Triton cache; the table of shared memory and wgmma use is printed with the results.

The `torch.library.triton_op` wrappers (runtime/lepton/kernel_ops.py) are what AOTInductor
compiles into an exported GPU package: each must be registered as a triton_op, and every
kernel it may launch must be among the specs compiled here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from kernel_test_env import load

specs = load("specs")
from lepton_compile.runtime.lepton import kernel_ops  # noqa: E402  (after load: the interpreter flag)

ARCH = 90
LIMIT = specs.SHARED_LIMIT[ARCH]  # 227 KiB opt-in per block on H100/H200
SPECS = specs.all_specs(ARCH)
LABELS = [s.label for s in SPECS]


@pytest.fixture(scope="module")
def gate(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    out = tmp_path_factory.mktemp("gate") / "gate.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "lepton_compile.kernels.specs",
            "--arch",
            str(ARCH),
            "--json",
            str(out),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    if not out.exists():
        pytest.fail(f"compile gate did not run (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    data = json.loads(out.read_text())
    return {"meta": data, **{r["label"]: r for r in data["results"]}}


def test_gate_covers_every_spec(gate: dict, capsys: pytest.CaptureFixture) -> None:
    meta = gate["meta"]
    assert [r["label"] for r in meta["results"]] == LABELS
    lines = [
        f"compile gate: {len(LABELS)} specs for sm{ARCH}, triton {meta['triton']}, "
        f"{meta['wall_s']} s, shared-memory limit {LIMIT} B"
    ]
    for r in meta["results"]:
        if r["error"]:
            lines.append(f"  {r['label']:52s} FAILED")
        else:
            wgmma = "yes" if r["wgmma"] else "no"
            mma = "  mma.sync" if r["mma"] else ""
            tma = "  tma" if r.get("tma") else ""
            lines.append(f"  {r['label']:52s} shared {r['shared']:6d} B  wgmma {wgmma}{mma}{tma}")
    with capsys.disabled():
        print("\n" + "\n".join(lines))


@pytest.mark.parametrize("label", LABELS)
def test_compiles_for_hopper(gate: dict, label: str) -> None:
    r = gate[label]
    assert r["error"] is None, r["error"]
    assert r["shared"] <= LIMIT, f"{label}: {r['shared']} B shared memory > {LIMIT}"
    spec = SPECS[LABELS.index(label)]
    if spec.wgmma_expected and spec.family == "gemm" and " fp16 " in f" {label} ":
        assert r["wgmma"], f"{label}: no wgmma in the PTX (not on Hopper's tensor-core path)"
    if spec.family in ("gemm", "w8a8", "fp8", "int4", "conv", "gemm-tma"):
        assert r["wgmma"] or r["mma"], f"{label}: no tensor-core instruction in the PTX"
    if spec.family == "gemm-tma":
        assert r["wgmma"], f"{label}: not on Hopper's warpgroup MMA"
        assert r["tma"], f"{label}: tiles not loaded by TMA (no cp.async.bulk.tensor)"


def _kernel_id(kernel: object) -> tuple[str, str]:
    fn = getattr(kernel, "fn", kernel)  # JITFunction and InterpretedFunction wrap the def
    return fn.__module__.rsplit(".", 1)[-1], fn.__name__


@pytest.mark.parametrize("op", sorted(kernel_ops.OP_KERNELS))
def test_triton_op_wrappers_launch_only_gated_kernels(gate: dict, op: str) -> None:
    import torch

    namespace, name = op.split("::")
    assert hasattr(getattr(torch.ops, namespace), name), f"{op} is not registered"
    if hasattr(torch.library, "triton_op"):
        from torch._library.triton import triton_ops_to_kernels

        assert op in triton_ops_to_kernels, f"{op} is not a torch.library.triton_op"
    compiled = {_kernel_id(s.kernel) for s in SPECS if gate[s.label]["error"] is None}
    for kernel in kernel_ops.OP_KERNELS[op]:
        assert tuple(kernel) in compiled, f"{op} launches {kernel}, which the gate does not compile"
