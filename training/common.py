"""What every training stage shares: arguments, accelerate set-up, output-folder safety, the stage clock, errors.

Each stage script stays flat (parse_args -> main(args) with numbered steps); this module holds only the
plumbing that would otherwise be copied into each of them; the training loop itself is ``training/loop.py``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import NoReturn

CHECKPOINT_DIR = "checkpoints"
CONFIG_FILE = "training_config.json"
DONE_FILE = "stage_complete.json"
CLOCK_FILE = "stage_clock.json"


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
    """Check the output folder is safe to write: never clobber a finished stage or unrelated files."""
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise StageError(f"--output {out} exists and is a file.")
    done = out / DONE_FILE
    if done.exists() and not args.overwrite:
        raise StageError(
            f"{out} already holds a completed stage; pass --overwrite to replace it or pick a new --output."
        )
    ckpts = out / CHECKPOINT_DIR
    if ckpts.is_dir() and any(ckpts.iterdir()) and args.resume is None and not args.overwrite:
        raise StageError(f"{out} has checkpoints from an earlier run; pass --resume latest to continue it, "
                         "or --overwrite to start over.")  # fmt: skip
    if out.is_dir() and args.resume is None and not args.overwrite:
        stray = [p.name for p in out.iterdir() if p.name not in ("logs", CHECKPOINT_DIR)]
        if stray:
            raise StageError(f"{out} is not empty ({', '.join(sorted(stray)[:5])}); choose an empty --output.")
    if args.overwrite:
        done.unlink(missing_ok=True)
        (out / CLOCK_FILE).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    return out


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
