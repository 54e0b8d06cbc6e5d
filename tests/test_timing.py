"""pipelines/timing.py: wall-clock milliseconds that include the accelerator's queued work."""

import time

import pytest
import torch

from pipelines.timing import Timer, synchronize, time_ms

SLEEP_S = 0.05


@pytest.fixture
def syncs(monkeypatch):
    """Calls of ``torch.cuda.synchronize`` / ``torch.mps.synchronize``, in order, as ("cuda", device) / ("mps",)."""
    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(("cuda", torch.device(device))))
    monkeypatch.setattr(torch.mps, "synchronize", lambda: calls.append(("mps",)))
    return calls


def test_timer_measures_a_sleep_in_milliseconds():
    with Timer("cpu") as t:
        time.sleep(SLEEP_S)
    # sleep() waits at least its time; the upper bound only has to tell milliseconds from seconds or microseconds
    assert 1000 * SLEEP_S <= t.ms < 5000


def test_time_ms_calls_once_and_measures_a_sleep():
    calls = []
    ms = time_ms(lambda: (calls.append(1), time.sleep(SLEEP_S)), "cpu")
    assert calls == [1] and 1000 * SLEEP_S <= ms < 5000


def test_cpu_does_not_synchronize(syncs):
    with Timer("cpu"):
        pass
    synchronize(torch.device("cpu"))
    assert syncs == []


@pytest.mark.parametrize("device, expected", [("cuda", ("cuda", torch.device("cuda"))),
                                              ("cuda:1", ("cuda", torch.device("cuda:1"))), ("mps", ("mps",))])
def test_gpu_work_is_synchronized_before_and_after(syncs, device, expected):  # fmt: skip
    events = []

    def work():
        events.append(("work", len(syncs)))

    time_ms(work, device)
    assert syncs == [expected, expected]
    assert events == [("work", 1)]  # one sync before the call, one after
    syncs.clear()
    with Timer(torch.device(device)) as t:
        assert len(syncs) == 1
    assert syncs == [expected, expected] and t.ms >= 0


def test_timer_ms_is_none_until_the_block_ends():
    t = Timer()
    assert t.ms is None
    with t:
        assert t.ms is None
    assert t.ms is not None and t.ms >= 0
