"""What every training stage shares: arguments, accelerate set-up, output-folder safety, checkpoints, EMA.

Each stage script stays flat (parse_args -> main(args) with numbered steps); this module holds only the
plumbing that would otherwise be copied into each of them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

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


def run_cli(main, parse_args) -> None:
    """Run a stage's ``main(parse_args())``: bad input is one line on stderr and exit code 2."""
    try:
        main(parse_args())
    except StageError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2)


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
    restored = getattr(args, "resume", None) is not None and clock_file.exists()
    before = float(json.loads(clock_file.read_text())["elapsed_s"]) if restored else 0.0
    _CLOCK.update(start=time.time(), before=before, restored=restored, out=Path(args.output))


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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _jsonable(d: dict) -> dict:
    return {k: (v if isinstance(v, (int, float, str, bool)) or v is None else str(v)) for k, v in d.items()}


def save_config(args, folder: Path, stage: str, extra: dict | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    config = {"stage": stage, "args": _jsonable(vars(args)), "argv": sys.argv, **(extra or {})}
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2))


def latest_checkpoint(out: Path) -> Path | None:
    ckpts = sorted((out / CHECKPOINT_DIR).glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
    return ckpts[-1] if ckpts else None


def save_checkpoint(accelerator, args, out: Path, step: int, stage: str) -> None:
    """accelerate state (models, optimizers, schedulers, RNG) + the full config, written atomically."""
    folder = out / CHECKPOINT_DIR / f"step-{step}"
    tmp = out / CHECKPOINT_DIR / f".tmp-step-{step}"
    accelerator.wait_for_everyone()
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        save_config(args, tmp, stage, {"step": step})
        (tmp / "step.json").write_text(json.dumps({"step": step, "elapsed_s": stage_seconds()}))
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
        ckpts = sorted((out / CHECKPOINT_DIR).glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
        for old in ckpts[: max(0, len(ckpts) - args.checkpoints_total_limit)]:
            shutil.rmtree(old)
        save_clock(out)
    accelerator.wait_for_everyone()


def maybe_resume(accelerator, args, out: Path) -> int:
    """Load the checkpoint named by ``--resume``; return the step to continue from (0 without resume)."""
    if args.resume is None:
        return 0
    folder = latest_checkpoint(out) if args.resume == "latest" else Path(args.resume)
    if folder is None:
        accelerator.print(f"--resume latest: no checkpoint in {out / CHECKPOINT_DIR}, starting from step 0")
        return 0
    try:
        info = json.loads((folder / "step.json").read_text())
        step = int(info["step"])
        accelerator.load_state(str(folder))
    except Exception as e:  # any unreadable or truncated file: say which checkpoint is corrupt
        raise StageError(f"Checkpoint {folder} is corrupt or incompatible ({type(e).__name__}: {e}); "
                         "delete it to resume from an earlier one.") from None  # fmt: skip
    if "elapsed_s" in info:  # the time kept up to this checkpoint (not a later one's)
        _CLOCK["before"], _CLOCK["start"] = float(info["elapsed_s"]), time.time()
    accelerator.print(f"resumed from {folder} at step {step}")
    return step


def mark_complete(out: Path, info: dict) -> None:
    """Write the stage's result line; ``seconds`` is its kept time on the stage clock (see ``stage_seconds``)."""
    if _CLOCK["start"] is not None and _CLOCK["out"] == Path(out) and "seconds" not in info:
        info = {**info, "seconds": round(stage_seconds(), 1)}
    (out / DONE_FILE).write_text(json.dumps(info, indent=2))


def write_rank_checksum(accelerator, model, out: Path) -> None:
    """Each process writes a checksum of its trained weights (rank_checksums/rank{i}.txt): under DDP every rank
    must end with identical weights, and this makes that checkable."""
    import hashlib

    h = hashlib.sha256()
    for name, p in sorted(accelerator.unwrap_model(model).state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().float().cpu().numpy().tobytes())
    folder = out / "rank_checksums"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"rank{accelerator.process_index}.txt").write_text(h.hexdigest())


def optimizer_step(accelerator, loss, params, optimizer, lr_scheduler, max_grad_norm: float) -> None:
    """Backward, clip (on the step that syncs gradients), optimizer and LR-scheduler step: one update."""
    accelerator.backward(loss)
    if accelerator.sync_gradients:
        accelerator.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()
    lr_scheduler.step()
    optimizer.zero_grad()


def make_optimizer(params, args):
    return torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)


def make_lr_scheduler(optimizer, args):
    """Linear warm-up over ``--warmup-steps``, then constant or cosine decay to 0 at ``--max-steps``."""
    warmup = max(0, args.warmup_steps)
    cosine = getattr(args, "lr_schedule", "constant") == "cosine"

    def factor(s: int) -> float:
        if s < warmup:
            return (s + 1) / warmup
        if not cosine:
            return 1.0
        done = (s - warmup) / max(1, args.max_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, done)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def progress(accelerator, total: int, initial: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, disable=not accelerator.is_local_main_process)


def make_ema(model, args):
    if args.ema_decay <= 0:
        return None
    from diffusers.training_utils import EMAModel

    return EMAModel(model.parameters(), decay=args.ema_decay)


def snr_weight_truncated(alphas: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Truncated SNR weight max(alpha^2 / sigma^2, 1) of the paper's distillation loss (Sec. 4)."""
    return torch.clamp(alphas**2 / sigmas.clamp(min=1e-8) ** 2, min=1.0)
