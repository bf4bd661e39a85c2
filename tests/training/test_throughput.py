"""The step clock: what counts as waiting for data."""

from __future__ import annotations

import pytest

from ichor.training import throughput
from ichor.training.throughput import StepClock


def test_data_wait_runs_from_the_end_of_the_previous_steps_hooks_to_the_step_start(monkeypatch):
    """A step's own logging (between ``step_ended`` and ``hooks_ended``) is in the interval, not in the wait."""
    now = iter([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 10.0])
    monkeypatch.setattr(throughput.time, "perf_counter", lambda: next(now))
    clock = StepClock()
    clock.step_started()  # 0: the epoch's first step
    assert clock.step_ended() is None  # 1: nothing before it to time against
    clock.hooks_ended()  # 2: its logging done
    clock.step_started()  # 3: the next batch arrived after 1 s of waiting
    assert clock.step_ended() == (3.0, 1.0)  # 4: the whole loop since the last step's end, of which 1 s waiting
    clock.step_started()  # 5: no hooks_ended call: the wait counts from the step's end
    assert clock.step_ended() == (6.0, pytest.approx(1.0))  # 10
