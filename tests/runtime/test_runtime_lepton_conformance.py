"""Conformance: the ONNX backend tests shipped with onnx, run on the lepton backend (CPU).

`onnx.backend.test.BackendTest` drives a thin adapter (`LeptonONNXBackend`) over every node
test (1,884 cases in onnx 1.23) and the on-disk model tests (simple, pytorch-converted,
pytorch-operator). A case whose model needs something lepton does not lower (an op outside
the supported set, an element type torch cannot compute in such as uint32 or int4, an
attribute value, control flow) is skipped with NotSupported's reason; every other case
must pass. The "real" model tests are left out: they download models. The whole run takes
about 40 s on two cores, so it always runs in full (no subset). The summary line
("N passed / M not supported / 0 failed") is printed even without -s.
"""

from __future__ import annotations

import collections
import logging
import re
import time
import unittest
import warnings

import pytest

pytest.importorskip("torch", reason="the lepton backend needs torch")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnx.backend.base  # noqa: E402
from onnx.backend.test import BackendTest  # noqa: E402
from onnx.backend.test.loader import load_model_tests  # noqa: E402

from lepton_compile.errors import NotSupported  # noqa: E402
from lepton_compile.runtime.lepton import LeptonSession  # noqa: E402

# Cases whose expected outputs are tighter than float16 arithmetic can promise: the
# reference rounds differently by one or two ulps (onnxruntime 1.32 fails them as well).
TOLERANCES = {
    "test_attention_4d_causal_fp16": {"rtol": 3e-3, "atol": 1e-7},
    "test_attention_4d_causal_fp16_expanded": {"rtol": 3e-3, "atol": 1e-7},
}

SKIP_PREFIX = "lepton: "


class LeptonRep(onnx.backend.base.BackendRep):
    def __init__(self, session: LeptonSession):
        self.session = session

    def run(self, inputs, **kwargs):
        feeds = dict(zip(self.session.input_names, inputs, strict=False))
        try:
            out = self.session.run(feeds)
        except NotSupported as e:
            raise unittest.SkipTest(f"{SKIP_PREFIX}{e}") from None
        return [out[name] for name in self.session.output_names]


class LeptonONNXBackend(onnx.backend.base.Backend):
    """The onnx.backend API over LeptonSession: NotSupported becomes a skip."""

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return device == "CPU"

    @classmethod
    def prepare(cls, model, device="CPU", **kwargs):
        try:
            return LeptonRep(LeptonSession(model, "cpu", {}))
        except NotSupported as e:
            raise unittest.SkipTest(f"{SKIP_PREFIX}{e}") from None

    @classmethod
    def run_model(cls, model, inputs, device="CPU", **kwargs):
        return cls.prepare(model, device).run(inputs)


def _kind(reason: str) -> str:
    if "element type" in reason or "string tensors" in reason:
        return "element type"
    if "has no lowering for" in reason:
        return "op outside the supported set"
    if "sequence_type" in reason or "optional_type" in reason:
        return "sequence/optional values"
    if "control flow" in reason:
        return "control flow (Loop/Scan)"
    return "attribute or input value"


def _run_suite() -> tuple[unittest.TestResult, int, float]:
    real = [c.name for c in load_model_tests(kind="real")]
    backend_test = BackendTest(LeptonONNXBackend, __name__, test_kwargs=TOLERANCES)
    backend_test.include(r"_cpu$")
    for name in real:
        backend_test.exclude(rf"^{re.escape(name)}_")
    suite = backend_test.test_suite
    start = time.perf_counter()
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            result = unittest.TestResult()
            suite.run(result)
    finally:
        logging.disable(logging.NOTSET)
    return result, suite.countTestCases(), time.perf_counter() - start


@pytest.mark.slow
def test_onnx_backend_conformance(capsys: pytest.CaptureFixture[str]) -> None:
    result, total, seconds = _run_suite()
    ours = [(t, r) for t, r in result.skipped if r.startswith(SKIP_PREFIX)]
    skipped_other = len(result.skipped) - len(ours)  # include/exclude patterns, CUDA
    failed = result.failures + result.errors
    ran = total - skipped_other
    passed = ran - len(ours) - len(failed)
    kinds = collections.Counter(_kind(r) for _, r in ours)
    outside = collections.Counter()
    for _, r in ours:
        m = re.search(r"has no lowering for (.+?)(?: \(opset \d+\))?$", r)
        if m:
            outside.update(op.strip() for op in m.group(1).split(","))
    with capsys.disabled():  # the summary shows without -s
        print(
            f"\nONNX backend tests on lepton (CPU), {seconds:.0f} s: {passed} passed / "
            f"{len(ours)} not supported / {len(failed)} failed (of {ran})"
        )
        for kind, n in kinds.most_common():
            print(f"  not supported, {kind}: {n}")
        print("  ops outside the set:", ", ".join(f"{o} ({n})" for o, n in outside.most_common()))
    assert passed > 1500, "far fewer cases pass than expected"
    details = "\n".join(f"{t.id()}: {tb.strip().splitlines()[-1]}" for t, tb in failed[:30])
    assert not failed, f"{len(failed)} conformance cases failed:\n{details}"
