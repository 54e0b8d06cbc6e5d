"""Device and dtype choice: one rule for the app, the CLIs, export, training and the benchmarks."""

from __future__ import annotations

import torch

# The names every command line accepts for --dtype, and the torch dtype each means.
DTYPES = {
    "fp32": torch.float32, "float32": torch.float32,
    "fp16": torch.float16, "float16": torch.float16,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
}  # fmt: skip


def available_devices() -> list[str]:
    """The device types this machine can run on, best first (e.g. ``["cuda", "cpu"]``)."""
    found = ["cuda"] if torch.cuda.is_available() else []
    if torch.backends.mps.is_available():
        found.append("mps")
    return found + ["cpu"]


def parse_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"dtype {name!r} is not supported; choose one of fp32, fp16, bf16.")
    return DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float16`` -> ``"float16"``."""
    return str(dtype).replace("torch.", "")


def pick_device(device: str | None = None, dtype: str | None = None) -> tuple[torch.device, torch.dtype]:
    """The best available device (CUDA, then MPS, then CPU) in fp16 on a GPU and fp32 on the CPU.

    ``device`` ("cpu", "cuda", "cuda:1", "mps") and ``dtype`` ("fp32", "fp16", "bf16") override the choice; a device
    this machine does not have is a ``ValueError`` naming the ones it has, never a silent fallback."""
    available = available_devices()
    if device is None:
        device = available[0]
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {device!r} is not a device name; choose one of {', '.join(available)}.") from None
    if dev.type not in available:
        raise ValueError(
            f"device {device!r} is not available on this machine; choose one of {', '.join(available)}."
        )
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s).")
    if dtype is None:
        return dev, torch.float32 if dev.type == "cpu" else torch.float16
    return dev, parse_dtype(dtype)


def set_num_threads(threads: int | None = None) -> int:
    """Choose and apply torch's CPU thread count; returns it. One rule for the app and the CLI.

    ``threads`` (a ``--threads`` flag), else the environment's ``SNAPFUSION_NUM_THREADS``, else ``OMP_NUM_THREADS``
    when set (torch already follows it; left as it is), else the cores this process may run on
    (``os.sched_getaffinity``) that the 1-minute load average leaves idle, at least 1. Torch's own default (one thread
    per core) collapses on a busy machine: its threads wait for each other at every op while other processes hold
    the cores (measured in docs/app.md: 4.8x slower per step than one thread with two busy loops on 2 cores)."""
    import os

    if threads is None and os.environ.get("SNAPFUSION_NUM_THREADS"):
        value = os.environ["SNAPFUSION_NUM_THREADS"]
        if not value.isdigit():
            raise ValueError(f"SNAPFUSION_NUM_THREADS must be a positive integer; got {value!r}.")
        threads = int(value)
    if threads is None and os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    if threads is None:
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:  # macOS, Windows
            cores = os.cpu_count() or 1
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):
            load = 0.0
        threads = max(1, min(cores, round(cores - load)))
    if threads < 1:
        raise ValueError(f"threads must be >= 1; got {threads}.")
    torch.set_num_threads(threads)
    return threads
