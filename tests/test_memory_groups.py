"""Measurement stays under a total memory bound: groups of workers, each with the original."""

from __future__ import annotations

from dataclasses import dataclass

from lepton_compile.stages import memory_groups


@dataclass
class _Recipe:
    name: str


@dataclass
class _V:
    id: str
    recipe: _Recipe


def _variants(*names: str) -> list[_V]:
    return [_V(f"{n}-ort-cpu", _Recipe(n)) for n in names]


def test_everything_in_one_group_when_it_fits():
    vs = _variants("original", "a", "b")
    rss = {v.id: 100 for v in vs}
    assert memory_groups(vs, rss, 300) == [vs]  # type: ignore[arg-type]
    assert memory_groups(vs, rss, None) == [vs]  # type: ignore[arg-type]


def test_groups_each_hold_the_original_and_stay_under_the_bound():
    vs = _variants("original", "a", "b", "c", "d")
    rss = {v.id: 100 for v in vs}
    groups = memory_groups(vs, rss, 250)  # type: ignore[arg-type]
    assert [[v.recipe.name for v in g] for g in groups] == [
        ["original", "a"],
        ["original", "b"],
        ["original", "c"],
        ["original", "d"],
    ]
    groups = memory_groups(vs, rss, 300)  # type: ignore[arg-type]
    assert [[v.recipe.name for v in g] for g in groups] == [
        ["original", "a", "b"],
        ["original", "c", "d"],
    ]
    for g in groups:
        assert sum(rss[v.id] for v in g) <= 300


def test_a_variant_bigger_than_the_bound_still_gets_measured_beside_the_original():
    vs = _variants("original", "huge", "small")
    rss = {"original-ort-cpu": 100, "huge-ort-cpu": 1000, "small-ort-cpu": 10}
    groups = memory_groups(vs, rss, 200)  # type: ignore[arg-type]
    assert [[v.recipe.name for v in g] for g in groups] == [
        ["original", "huge"],
        ["original", "small"],
    ]


def test_engine_measures_in_groups_and_says_so(tinycnn_path):
    import lepton_compile

    result = lepton_compile.compile(
        tinycnn_path,
        recipes=["original", "fused", "fp16"],
        quick=True,
        cache=False,
        total_memory_bytes=1,  # every worker is over it: original + one variant per group
    )
    ok = [v for v in result.variants if v.status in ("ok", "dropped")]
    assert len(ok) == 3, [(v.id, v.reason) for v in result.variants]
    assert all(v.measurement is not None for v in ok)
    notes = result.report["model"]["notes"]
    assert any("measured in 2 groups, each with the original" in n for n in notes), notes
