"""Wall-clock timing that counts accelerator work where it happens (CUDA and MPS run asynchronously)."""

from __future__ import annotations

import time
from typing import Callable

import torch


def synchronize(device: torch.device | str) -> None:
    """Wait for the queued work of ``device`` (no-op on the CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


class Timer:
    """``with Timer(device) as t: ...`` then ``t.ms``: milliseconds of the block, synchronising before and after."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.ms: float | None = None

    def __enter__(self) -> Timer:
        synchronize(self.device)
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        synchronize(self.device)
        self.ms = (time.perf_counter() - self._start) * 1000.0


def time_ms(fn: Callable[[], object], device: torch.device | str = "cpu") -> float:
    """Milliseconds of one call of ``fn``, synchronising ``device`` before and after."""
    with Timer(device) as t:
        fn()
    return t.ms


def interleaved(
    fns: dict[str, Callable[[], object]], device: torch.device, warmup: int, repeats: int, log=print
) -> dict[str, list[float]]:
    """Time every function ``repeats`` times, interleaved (A, B, A, B, ...) after ``warmup`` interleaved rounds,
    so a slow drift of the machine (another job, thermal state) hits all candidates alike."""
    with torch.inference_mode():
        for r in range(warmup):
            for name, fn in fns.items():
                ms = time_ms(fn, device)
                log(f"  warm-up {r + 1}/{warmup} {name}: {ms:.1f} ms")
        samples: dict[str, list[float]] = {name: [] for name in fns}
        for r in range(repeats):
            for name, fn in fns.items():
                samples[name].append(time_ms(fn, device))
                log(f"  run {r + 1}/{repeats} {name}: {samples[name][-1]:.1f} ms")
    return samples
