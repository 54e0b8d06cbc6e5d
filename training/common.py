"""What every training stage shares: arguments, accelerate set-up, output-folder safety, the stage clock, errors.

Each stage script stays flat (parse_args -> main(args) with numbered steps); this module holds only the
plumbing that would otherwise be copied into each of them; the training loop itself is ``training/loop.py``.
"""

from __future__ import annotations

import argparse
import atexit
import datetime
import fcntl
import json
import math
import os
import socket
import sys
import time
from pathlib import Path
from typing import NoReturn

CHECKPOINT_DIR = "checkpoints"
CONFIG_FILE = "training_config.json"
DONE_FILE = "stage_complete.json"
CLOCK_FILE = "stage_clock.json"
LOCK_FILE = "run.lock"


class StageError(ValueError):
    """Bad input to a training stage: the message says what was wrong and what is allowed."""


def add_common_args(parser: argparse.ArgumentParser, *, lr: float = 1e-4, batch_size: int = 16,
                    max_steps: int = 1000) -> argparse.ArgumentParser:  # fmt: skip
    g = parser.add_argument_group("common training options")
    g.add_argument("--output", required=True, help="output folder (a diffusers folder when the stage completes)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--max-steps", type=int, default=max_steps, help="optimizer steps to run")
    g.add_argument("--batch-size", type=int, default=batch_size, help="per-process batch size")
    g.add_argument("--gradient-accumulation-steps", type=int, default=1)
    g.add_argument("--lr", type=float, default=lr)
    g.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay (paper: 0.01)")
    g.add_argument("--warmup-steps", type=int, default=0)
    g.add_argument("--lr-schedule", choices=["constant", "cosine"], default="constant",
                   help="after warm-up: constant, or cosine decay to 0 at --max-steps")  # fmt: skip
    g.add_argument("--max-grad-norm", type=float, default=1.0)
    g.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], default="no")
    g.add_argument("--gradient-checkpointing", action="store_true")
    g.add_argument("--ema-decay", type=float, default=0.0, help="EMA of the trained model's weights; 0 disables")
    g.add_argument("--checkpoint-every", type=int, default=500, help="save a resumable checkpoint every N steps")
    g.add_argument("--checkpoints-total-limit", type=int, default=2, help="keep at most this many checkpoints")
    g.add_argument("--resume", default=None, help="'latest' or a checkpoint folder to resume from")
    g.add_argument("--overwrite", action="store_true", help="replace a completed output folder")
    g.add_argument("--log-with", default="tensorboard", help="accelerate tracker ('tensorboard', 'none')")
    g.add_argument("--num-workers", type=int, default=0, help="data loader workers")
    return parser


def validate_common_args(args) -> None:
    for name in ("max_steps", "batch_size", "gradient_accumulation_steps", "checkpoint_every"):
        value = getattr(args, name)
        if value < 1:
            raise StageError(f"--{name.replace('_', '-')} must be >= 1; got {value}.")
    if not (args.lr > 0 and math.isfinite(args.lr)):
        raise StageError(f"--lr must be a positive number; got {args.lr}.")
    if not 0.0 <= args.ema_decay < 1.0:
        raise StageError(f"--ema-decay must be in [0, 1); got {args.ema_decay}.")
    if args.resume is not None and args.resume != "latest" and not Path(args.resume).is_dir():
        raise StageError(f"--resume must be 'latest' or an existing checkpoint folder; got {args.resume!r}.")


def fail(message: str) -> NoReturn:
    """A command line's bad input: one line ``error: ...`` on stderr and exit code 2 (no traceback)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def run_cli(main, parse_args) -> None:
    """Run a stage's ``main(parse_args())``: a ``StageError`` is reported by ``fail``."""
    try:
        main(parse_args())
    except StageError as e:
        fail(str(e))


def prepare_output(args) -> Path:
    """Check the output folder is safe to write: never clobber a finished stage, unrelated files, or a folder that
    another live run is writing (``claim_output``, held until the stage completes)."""
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise StageError(f"--output {out} exists and is a file.")
    if is_main_rank():  # first: a live run on this folder is refused before anything else is read or written
        claim_output(out)
    try:
        _check_output(out, args)
    except StageError:
        release_output(out)
        raise
    if args.overwrite and is_main_rank():
        (out / DONE_FILE).unlink(missing_ok=True)
        (out / CLOCK_FILE).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _check_output(out: Path, args) -> None:
    if (out / DONE_FILE).exists() and not args.overwrite:
        raise StageError(
            f"{out} already holds a completed stage; pass --overwrite to replace it or pick a new --output."
        )
    ckpts = out / CHECKPOINT_DIR
    if ckpts.is_dir() and any(ckpts.iterdir()) and args.resume is None and not args.overwrite:
        raise StageError(f"{out} has checkpoints from an earlier run; pass --resume latest to continue it, "
                         "or --overwrite to start over.")  # fmt: skip
    if out.is_dir() and args.resume is None and not args.overwrite:
        stray = [p.name for p in out.iterdir() if p.name not in ("logs", CHECKPOINT_DIR, LOCK_FILE)]
        if stray:
            raise StageError(f"{out} is not empty ({', '.join(sorted(stray)[:5])}); choose an empty --output.")


def make_accelerator(args, stage: str):
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration, set_seed

    log_with = None if args.log_with in (None, "", "none") else args.log_with
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=log_with,
        project_config=ProjectConfiguration(project_dir=args.output, logging_dir=os.path.join(args.output, "logs")),
    )
    set_seed(args.seed)
    if log_with is not None:
        accelerator.init_trackers(f"snapfusion-{stage}", config=_jsonable(vars(args)))
    start_stage_clock(args)
    return accelerator


# Stage clock: the seconds of work a stage has kept, summed over the processes that ran it. A resumed run adds the
# time saved with its checkpoint (or completed sub-stage); work lost to an interruption is not counted.
_CLOCK = {"start": None, "before": 0.0, "restored": False, "out": None}


def start_stage_clock(args) -> None:
    clock_file = Path(args.output) / CLOCK_FILE
    restored = args.resume is not None and clock_file.exists()
    before = float(json.loads(clock_file.read_text())["elapsed_s"]) if restored else 0.0
    _CLOCK.update(start=time.time(), before=before, restored=restored, out=Path(args.output))


def restore_clock(elapsed_s: float) -> None:
    """Resumed from a checkpoint: the kept time is the time saved with it (not a later save's)."""
    _CLOCK["before"], _CLOCK["start"] = elapsed_s, time.time()


def stage_seconds() -> float:
    return _CLOCK["before"] + (time.time() - _CLOCK["start"] if _CLOCK["start"] is not None else 0.0)


def save_clock(out: Path) -> None:
    """Record the stage's kept time (after a checkpoint or a completed sub-stage); read back on resume."""
    (Path(out) / CLOCK_FILE).write_text(json.dumps({"elapsed_s": stage_seconds()}))


def reuse_substage_time(folder: Path) -> None:
    """A completed sub-stage (e.g. the teacher's VAE) loaded instead of retrained: count the seconds it took,
    unless the clock was restored from a save that already includes them."""
    f = Path(folder) / "seconds.json"
    if not _CLOCK["restored"] and f.exists():
        _CLOCK["before"] += float(json.loads(f.read_text())["seconds"])


def _jsonable(d: dict) -> dict:
    return {k: (v if isinstance(v, (int, float, str, bool)) or v is None else str(v)) for k, v in d.items()}


def save_config(args, folder: Path, stage: str, extra: dict | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    config = {"stage": stage, "args": _jsonable(vars(args)), "argv": sys.argv, **(extra or {})}
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2))


def mark_complete(out: Path, info: dict) -> None:
    """Write the stage's result line; ``seconds`` is its kept time on the stage clock (see ``stage_seconds``)."""
    if _CLOCK["start"] is not None and _CLOCK["out"] == Path(out) and "seconds" not in info:
        info = {**info, "seconds": round(stage_seconds(), 1)}
    (out / DONE_FILE).write_text(json.dumps(info, indent=2))
    release_output(out)


# Memory: what a stage holds and what the machine has left, to refuse a stage that cannot fit before it starts.


def available_memory_gb(device) -> float:
    """Memory free for this process on ``device``: CUDA's free memory, else the host's MemAvailable."""
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        return torch.cuda.mem_get_info(device)[0] / 1e9
    with open("/proc/meminfo") as f:
        fields = dict(line.split(":", 1) for line in f)
    return int(fields["MemAvailable"].split()[0]) * 1024 / 1e9


def reset_peak_memory(device=None) -> None:
    """Start a new peak-memory window (the process's peak RSS on Linux; CUDA's peak allocation)."""
    import torch

    if device is not None and getattr(device, "type", str(device)) == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM, the peak resident set size
    except OSError:
        pass


def peak_memory_gb(device=None) -> float:
    """Peak memory since ``reset_peak_memory``: CUDA's max allocated on a GPU, else the process's peak RSS."""
    import torch

    if device is not None and getattr(device, "type", str(device)) == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e9
    return float("nan")


def check_training_memory(stage: str, params, device, ema: bool) -> float:
    """The memory that training ``params`` adds (fp32 gradients and AdamW moments, + an EMA copy), in GB; a
    ``StageError`` saying how much is needed, before anything is allocated, when the device has less free."""
    n = sum(p.numel() for p in params if p.requires_grad)
    need = n * (4 + 8 + (4 if ema else 0)) / 1e9
    free = available_memory_gb(device)
    if need > free:
        raise StageError(f"{stage}: training {n / 1e6:.0f}M parameters needs {need:.1f} GB more (fp32 gradients "
                         f"{4 * n / 1e9:.1f} GB + AdamW state {8 * n / 1e9:.1f} GB" + (" + EMA" if ema else "")
                         + f"), on top of the weights already loaded and the activations, but only {free:.1f} GB "
                         f"are free on {device}; use a machine with more memory.")  # fmt: skip
    return need


# Live-run lock: a run holds an exclusive flock on <output>/run.lock (its pid, host, start time and command inside)
# while it writes the folder. The kernel drops the lock when the process dies, so a crashed run's file blocks
# nothing; the next run takes it over. A run started on a folder that a live run holds, or inside one (a stage in a
# live recipe's folder), is refused before it writes anything. Under ``accelerate launch`` the main rank holds it.
_HELD: dict[Path, int] = {}  # lock file -> open descriptor holding its flock, for this process


def is_main_rank() -> bool:
    """The global main process of a launch (``RANK`` unset or 0): the one that claims output folders."""
    return os.environ.get("RANK", "0") in ("", "0")


def _holder(lock: Path) -> str:
    try:
        info = json.loads(lock.read_text())
        return f"pid {info['pid']} on host {info['host']}, started {info['started']}: {info['command']}"
    except (OSError, ValueError, KeyError, TypeError):
        return f"its details are not readable in {lock}"


def _try_flock(lock: Path) -> int | None:
    """An open descriptor holding the exclusive flock of ``lock`` (created if missing), or None if another holds it."""
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the holder released (and removed) the file between our open and flock: try again


def live_holder(folder) -> str | None:
    """Who holds ``folder``'s live-run lock (pid, host, start, command) when another live process does, else None."""
    lock = Path(folder).resolve() / LOCK_FILE
    if lock in _HELD or not lock.is_file():
        return None
    fd = _try_flock(lock)
    if fd is None:
        return _holder(lock)
    os.close(fd)  # nobody holds it: the file of a run that ended without releasing it
    return None


def claim_output(folder) -> None:
    """Hold ``folder``'s live-run lock for this process until ``release_output`` (or exit); a ``StageError`` naming
    the other run when a live run holds it or a folder above it. Taken again by the same process: a no-op."""
    folder = Path(folder).resolve()
    for parent in folder.parents:  # a live run writing a folder above (a recipe around this stage)
        holder = live_holder(parent)
        if holder:
            raise StageError(f"{folder} is inside {parent}, which another live run is writing ({holder}); "
                             "wait for it to end or stop it.")  # fmt: skip
    lock = folder / LOCK_FILE
    if lock in _HELD:
        return
    folder.mkdir(parents=True, exist_ok=True)
    fd = _try_flock(lock)
    if fd is None:
        raise StageError(f"{folder} is being written by another live run ({_holder(lock)}); wait for it to end "
                         "or stop it.")  # fmt: skip
    info = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv),
            "started": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")}  # fmt: skip
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps(info).encode())
    _HELD[lock] = fd


def release_output(folder) -> None:
    """Give up ``folder``'s live-run lock if this process holds it (the lock file is removed)."""
    lock = Path(folder).resolve() / LOCK_FILE
    fd = _HELD.pop(lock, None)
    if fd is not None:
        lock.unlink(missing_ok=True)
        os.close(fd)


@atexit.register
def _release_all() -> None:
    for lock in list(_HELD):
        release_output(lock.parent)
