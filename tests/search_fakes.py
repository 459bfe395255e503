"""Stand-ins for the accuracy searches' tests: a model is the set of its compressed layers."""

from __future__ import annotations

from collections.abc import Callable, Sequence


class AdditiveEvaluator:
    """drop(model) = sum of the per-layer damage of the layers still compressed."""

    metric_ref = None
    feeds = [{}, {}]

    def __init__(self, damage: dict[str, float]):
        self.damage = damage
        self.evaluations = 0

    def drop(self, model: object) -> float:
        self.evaluations += 1
        compressed = model  # the fake "model" is the set of compressed layers
        return sum(self.damage[n] for n in compressed)  # type: ignore[attr-defined]

    def drops(self, models: Sequence[object]) -> list[float]:
        """As ``compress.Evaluator.drops``: through the process's probe runner, if any."""
        from lepton_compile import compress

        runner = compress._probe_runner
        if runner is None or len(models) <= 1:
            return [self.drop(m) for m in models]
        return runner.drops(self, models)  # type: ignore[arg-type]


def keep_maker(names: Sequence[str]) -> Callable[[Sequence[str]], frozenset[str]]:
    """make(kept): the layers of `names` left compressed when `kept` stay uncompressed."""
    return lambda kept: frozenset(n for n in names if n not in set(kept))
