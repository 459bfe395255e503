"""``executor.each``: the stages' independent work, as many at once as the executor allows."""

from __future__ import annotations

import threading

import pytest

from lepton_compile.executor import LocalExecutor, each


class _Wide:
    """An executor that allows ``parallelism`` variants' work at once."""

    def __init__(self, parallelism: int):
        self.parallelism = parallelism


def test_work_runs_at_once_up_to_the_executors_width_and_keeps_the_order():
    # Two items can only pass the barrier together: they ran at the same time.
    barrier = threading.Barrier(2, timeout=30)
    done: list[int] = []

    def work(i: int) -> int:
        barrier.wait()
        return i * 10

    assert each(_Wide(2), [1, 2, 3, 4], work, lambda i, r: done.append(i)) == [10, 20, 30, 40]
    assert sorted(done) == [1, 2, 3, 4]


def test_the_local_executor_runs_one_at_a_time_in_order():
    running = []
    seen = []

    def work(i: int) -> int:
        running.append(i)
        assert len(running) == 1  # nothing else in flight
        running.pop()
        return i

    ex = LocalExecutor(isolate=False, timeout_s=10, memory_limit=None)
    assert ex.parallelism == 1
    assert each(ex, [3, 1, 2], work, lambda i, r: seen.append(i)) == [3, 1, 2]
    assert seen == [3, 1, 2]


def test_an_error_is_raised_once_the_started_work_is_done():
    finished = []
    started = threading.Event()

    def work(i: int) -> int:
        if i == 0:
            started.wait(timeout=30)  # item 1 is under way when this one fails
            raise ValueError("bad input")
        started.set()
        finished.append(i)
        return i

    with pytest.raises(ValueError, match="bad input"):
        each(_Wide(2), [0, 1], work)
    assert finished == [1]
