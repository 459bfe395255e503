"""Known-hopeless variants are skipped with the reason, unless their recipe is named."""

from __future__ import annotations

from pathlib import Path

import pytest

import lepton_compile
from lepton_compile import hopeless, recipes

SAPPHIRE_RAPIDS = hopeless.CpuFeatures.of(
    "x86_64", ["sse4_2", "avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16"]
)
ZEN3 = hopeless.CpuFeatures.of("x86_64", ["sse4_2", "avx2", "fma"])
COOPER_LAKE = hopeless.CpuFeatures.of("x86_64", ["avx512f", "avx512_bf16"])
GRAVITON3 = hopeless.CpuFeatures.of("aarch64", ["fp", "asimd", "fphp", "asimdhp", "bf16"])
OLD_ARM = hopeless.CpuFeatures.of("aarch64", ["fp", "asimd"])


def test_native_support_from_flags():
    assert hopeless.native_support("fp16", SAPPHIRE_RAPIDS) is True
    assert hopeless.native_support("bf16", SAPPHIRE_RAPIDS) is True
    assert hopeless.native_support("fp16", ZEN3) is False
    assert hopeless.native_support("bf16", ZEN3) is False
    assert hopeless.native_support("fp16", COOPER_LAKE) is False
    assert hopeless.native_support("bf16", COOPER_LAKE) is True
    assert hopeless.native_support("fp16", GRAVITON3) is True
    assert hopeless.native_support("bf16", OLD_ARM) is False
    # an architecture the table does not know is not judged
    assert hopeless.native_support("fp16", hopeless.CpuFeatures.of("riscv64", ["v"])) is None
    assert hopeless.native_support("int8", ZEN3) is None


def test_rule_applies_to_16_bit_floats_on_the_lepton_backend_on_the_cpu():
    why = hopeless.reason("fp16", "lepton", "cpu", ZEN3)
    assert why is not None
    assert why.startswith("not built: this CPU has no native fp16 matmul (no avx512_fp16/amx_fp16)")
    assert "Name the recipe in --recipes" in why
    assert hopeless.reason("fp16", "lepton+inductor", "cpu", ZEN3) is not None
    assert hopeless.reason("bf16", "lepton", "cpu", ZEN3) is not None
    assert hopeless.reason("fp16", "ort", "cpu", ZEN3) is None  # onnxruntime casts around
    assert hopeless.reason("fp16", "lepton", "cuda", ZEN3) is None  # the GPU has it
    assert hopeless.reason("fp16", "lepton", "cpu", SAPPHIRE_RAPIDS) is None
    assert hopeless.reason("fp32", "lepton", "cpu", ZEN3) is None
    assert hopeless.reason("fp16", "lepton", "cpu", None) is None  # flags unknown: build


def test_parse_cpuinfo_reads_x86_and_arm_flags():
    x86 = "processor\t: 0\nmodel name\t: X\nflags\t\t: fpu avx2 avx512_fp16\n\nprocessor\t: 1\n"
    assert hopeless.parse_cpuinfo(x86) == {"fpu", "avx2", "avx512_fp16"}
    arm = "processor\t: 0\nFeatures\t: fp asimd fphp asimdhp\nCPU part\t: 0xd40\n"
    assert "asimdhp" in hopeless.parse_cpuinfo(arm)
    assert hopeless.parse_cpuinfo("nothing here") == frozenset()


def test_named_recipes_are_those_given_one_by_one():
    assert recipes.named(None) == frozenset()
    assert recipes.named(["quantize", "default"]) == frozenset()
    assert recipes.named(["fp16", "prune"]) == {"fp16"}
    assert recipes.named([recipes.RECIPES["bf16"]]) == {"bf16"}


class _V:
    def __init__(self, recipe: str, backend: str, device: str = "cpu"):
        self.recipe = recipes.RECIPES[recipe]
        self.backend, self.device = backend, device
        self.id = f"{recipe}-{backend}-{device}"


def test_skips_leaves_named_recipes_alone():
    vs = [_V("original", "lepton"), _V("fp16", "ort"), _V("fp16", "lepton"), _V("bf16", "lepton")]
    out = hopeless.skips(vs, recipes.named(None), cpu=ZEN3)
    assert set(out) == {"fp16-lepton-cpu", "bf16-lepton-cpu"}
    assert hopeless.skips(vs, recipes.named(["fp16"]), cpu=ZEN3) == {
        "bf16-lepton-cpu": out["bf16-lepton-cpu"]
    }
    assert hopeless.skips(vs, (), cpu=SAPPHIRE_RAPIDS) == {}


@pytest.fixture
def no_fp16_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """This machine, as far as the rules can tell, has no native 16-bit float matmul; the
    default recipes are the original and fp16, to keep the run small."""
    monkeypatch.setattr(hopeless, "this_cpu", lambda: ZEN3)
    monkeypatch.setattr(recipes, "DEFAULT_RECIPES", ("original", "fp16"))
    monkeypatch.setitem(recipes.ALIASES, "default", ("original", "fp16"))


def _compile(path: Path, names: list[str] | None):
    return lepton_compile.compile(
        path,
        recipes=names,
        backends=["ort", "lepton"],
        quick=True,
        isolate=False,
        cache=False,
        eval_samples=2,
        calibration_samples=4,
    )


def test_engine_skips_the_hopeless_variant_unless_named(no_fp16_cpu: None, mlp_path: Path):
    pytest.importorskip("torch")
    res = _compile(mlp_path, None)
    by_id = {v.id: v for v in res.variants}
    assert list(by_id) == [
        "original-ort-cpu",
        "fp16-ort-cpu",
        "original-lepton-cpu",
        "fp16-lepton-cpu",
    ]
    skipped = by_id["fp16-lepton-cpu"]
    assert skipped.status == "skipped"
    assert "no native fp16 matmul" in skipped.reason and "--recipes" in skipped.reason
    assert skipped.artifact is None and not skipped.build  # nothing spent on it
    assert by_id["fp16-ort-cpu"].status != "skipped"  # the same recipe on onnxruntime runs
    rep = {v["id"]: v for v in res.report["variants"]}
    assert rep["fp16-lepton-cpu"]["status"] == "skipped"
    assert "no native fp16 matmul" in rep["fp16-lepton-cpu"]["reason"]

    named = {v.id: v for v in _compile(mlp_path, ["fp16"]).variants}
    assert named["fp16-lepton-cpu"].status != "skipped"
    assert named["fp16-lepton-cpu"].artifact is not None
