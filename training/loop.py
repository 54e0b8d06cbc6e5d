"""The training loop every stage runs: a stage supplies its model, its data and its loss; this does the rest.

    loop = TrainLoop(args, STAGE)                                  # output-folder check, accelerate, seed, clock
    optimizer = make_optimizer(model.parameters(), args)
    model, loader = loop.prepare(model, optimizer, loader)         # accelerate prepare, EMA, --resume
    loop.run(infinite(loader), loss_fn)                            # loss_fn(batch) -> loss or (loss, logs)
    model = loop.finish()                                          # per-process checksums, EMA weights copied in
    loop.save(pipeline, {"final_loss": loop.loss})                 # save_pretrained + stage_complete.json

One optimizer step: backward through accelerate, gradient clipping on the step that syncs gradients, optimizer and
LR-scheduler step, EMA update (``--ema-decay`` > 0). Every micro-batch's loss is checked to be finite (a
``StageError`` naming the step otherwise). Every ``--checkpoint-every`` steps a resumable checkpoint (accelerate
state: models, optimizer, scheduler, EMA, every RNG, including the stage's own streams ``loop.random`` and
``loop.generator``) is written; ``--resume latest`` continues from the last one and draws what an uninterrupted run
would have drawn.

``warm_up`` is the plain loop of a stage's from-scratch sub-phases (e.g. the teacher's VAE), kept out of
accelerate's state so the main phase's checkpoints stay resumable.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import shutil
import time
from pathlib import Path

import torch

from .common import (
    CHECKPOINT_DIR, StageError, check_training_memory, make_accelerator, mark_complete, peak_memory_gb,
    prepare_output, reset_peak_memory, restore_clock, reuse_substage_time, save_clock, save_config, stage_seconds,
)  # fmt: skip


# ---------------------------------------------------------------------- optimizer, schedule, EMA


def make_optimizer(params, args):
    return torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)


def make_lr_scheduler(optimizer, args):
    """Linear warm-up over ``--warmup-steps``, then constant or cosine decay to 0 at ``--max-steps``."""
    warmup = max(0, args.warmup_steps)
    cosine = args.lr_schedule == "cosine"

    def factor(s: int) -> float:
        if s < warmup:
            return (s + 1) / warmup
        if not cosine:
            return 1.0
        done = (s - warmup) / max(1, args.max_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, done)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def make_ema(model, args):
    if args.ema_decay <= 0:
        return None
    from diffusers.training_utils import EMAModel

    return EMAModel(model.parameters(), decay=args.ema_decay)


def progress(accelerator, total: int, initial: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, disable=not accelerator.is_local_main_process)


def check_finite(loss: torch.Tensor, step: int, stage: str) -> float:
    """``loss.item()``, or a ``StageError`` naming the step when it is NaN or infinite."""
    value = loss.item()
    if not math.isfinite(value):
        raise StageError(f"{stage}: the loss became {value} at step {step}; lower --lr (or check the data).")
    return value


# ---------------------------------------------------------------------- checkpoints and checksums


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
        restore_clock(float(info["elapsed_s"]))
    accelerator.print(f"resumed from {folder} at step {step}")
    return step


def write_rank_checksum(accelerator, model, out: Path) -> None:
    """Each process writes a checksum of its trained weights (rank_checksums/rank{i}.txt): under DDP every rank
    must end with identical weights, and this makes that checkable."""
    h = hashlib.sha256()
    for name, p in sorted(accelerator.unwrap_model(model).state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().float().cpu().numpy().tobytes())
    folder = out / "rank_checksums"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"rank{accelerator.process_index}.txt").write_text(h.hexdigest())


# ---------------------------------------------------------------------- the loops


def warm_up(accelerator, name: str, steps: int, optimizer, loss_fn) -> None:
    """A plain optimisation loop kept out of accelerate's state (a stage's from-scratch sub-phases): ``loss_fn()``,
    backward, optimizer step; no clipping, no LR schedule, no checkpoints."""
    bar = progress(accelerator, steps, 0, name)
    for step in range(steps):
        loss = loss_fn()
        value = check_finite(loss, step + 1, name)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        bar.update()
        bar.set_postfix(loss=f"{value:.4f}")
        accelerator.log({f"{name}/loss": value}, step=step)
    bar.close()


def load_substage(accelerator, folder: Path, model_class, what: str):
    """A sub-phase (e.g. the teacher's VAE) completed by an earlier, interrupted run: the model saved in ``folder``,
    its seconds added to the stage clock; None when there is none."""
    if not (folder / "config.json").exists():
        return None
    accelerator.print(f"{what} already trained: loading {folder}")
    reuse_substage_time(folder)
    return model_class.from_pretrained(folder)


def save_substage(accelerator, out: Path, folder: Path, model, metrics: dict, seconds: float) -> None:
    """Keep a completed sub-phase (model, metrics, seconds) so that a resumed stage loads it instead of retraining."""
    if accelerator.is_main_process:
        model.save_pretrained(folder)
        (folder / "metrics.json").write_text(json.dumps(metrics, indent=2))
        (folder / "seconds.json").write_text(json.dumps({"seconds": seconds}))
        save_clock(out)
    accelerator.wait_for_everyone()


class RandomStreams:
    """A stage's own random streams, seeded with ``seed``: ``random`` (python) and ``generator`` (torch, CPU). They
    are saved with every checkpoint, so that a resumed run continues them instead of starting new ones."""

    def __init__(self, seed: int):
        self.random = random.Random(seed)
        self.generator = torch.Generator().manual_seed(seed)

    def state_dict(self) -> dict:
        return {"random": self.random.getstate(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.random.setstate(state["random"])
        self.generator.set_state(state["generator"])


class TrainLoop:
    """One stage's run: created after the stage has checked its arguments (it claims ``--output``)."""

    def __init__(self, args, stage: str, config_extra: dict | None = None):
        self.args, self.stage = args, stage
        self.out = prepare_output(args)
        self.accelerator = make_accelerator(args, stage)  # seeds every RNG with --seed, starts the stage clock
        save_config(args, self.out, stage, config_extra)
        self.device = self.accelerator.device
        streams = RandomStreams(args.seed + self.accelerator.process_index)
        self.streams, self.random, self.generator = streams, streams.random, streams.generator
        self.model = self.optimizer = self.lr_scheduler = self.ema = self.params = None
        self.step = self.start = 0
        self.loss = None  # the last step's loss (float)
        self.step_seconds: list[float] = []  # wall time of each optimizer step of this run
        reset_peak_memory(self.device)

    def prepare(self, model, optimizer, loader=None, *extra_models):
        """accelerate ``prepare`` of the trained ``model``, ``extra_models`` trained with it, ``optimizer`` (with an
        LR scheduler made here) and ``loader``; then the EMA (``--ema-decay`` > 0) and ``--resume``. Returns the
        prepared ``model``, ``loader`` (None without one) and ``extra_models``; ``self.start`` is the first step.
        Draw a stage's own random numbers from ``self.random`` / ``self.generator`` (restored on resume)."""
        args, accelerator = self.args, self.accelerator
        # before anything is allocated: a stage that cannot fit says how much it needs (not an OOM later)
        check_training_memory(self.stage, [p for m in (model, *extra_models) for p in m.parameters()], self.device,
                              args.ema_decay > 0)  # fmt: skip
        self.lr_scheduler = make_lr_scheduler(optimizer, args)
        dataset = getattr(loader, "dataset", None)
        objects = [model, *extra_models, optimizer] + ([loader] if loader is not None else []) + [self.lr_scheduler]
        prepared = accelerator.prepare(*objects)
        model, extra = prepared[0], list(prepared[1 : 1 + len(extra_models)])
        self.optimizer = prepared[1 + len(extra_models)]
        loader = prepared[-2] if loader is not None else None
        self.lr_scheduler = prepared[-1]
        self.model = model
        self.params = [p for m in (model, *extra) for p in m.parameters()]  # clipped together
        self.ema = make_ema(accelerator.unwrap_model(model), args)
        if self.ema is not None:
            self.ema.to(self.device)
            accelerator.register_for_checkpointing(self.ema)
        accelerator.register_for_checkpointing(self.streams)
        self.start = self.step = maybe_resume(accelerator, args, self.out)
        if self.start and hasattr(dataset, "offset"):  # fresh samples after a resume
            dataset.offset = self.start * args.batch_size * accelerator.num_processes
        return (model, loader, *extra)

    def run(self, batches, loss_fn) -> None:
        """Train until ``--max-steps``; ``loss_fn(next(batches))`` is the loss or (loss, {name: value to log})."""
        args, accelerator, model, params = self.args, self.accelerator, self.model, self.params
        bar = progress(accelerator, args.max_steps, self.start, self.stage)
        resumed = self.start > 0
        t_step = time.perf_counter()
        while self.step < args.max_steps:
            if resumed:  # the first fetch makes a new loader iterator, which draws its seed from the CPU RNG: keep
                with torch.random.fork_rng(devices=[]):  # the RNG as the checkpoint restored it
                    batch = next(batches)
                resumed = False
            else:
                batch = next(batches)
            with accelerator.accumulate(model):
                out = loss_fn(batch)
                loss, logs = out if isinstance(out, tuple) else (out, {})
                self.loss = check_finite(loss, self.step + 1, self.stage)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(params, args.max_grad_norm)
                self.optimizer.step()
                self.lr_scheduler.step()
                self.optimizer.zero_grad()
            if accelerator.sync_gradients:
                self.step += 1
                if self.ema is not None:
                    self.ema.step(accelerator.unwrap_model(model).parameters())
                now = time.perf_counter()
                self.step_seconds.append(now - t_step)
                t_step = now
                bar.update()
                bar.set_postfix(loss=f"{self.loss:.5f}")
                logs = {f"{self.stage}/{k}": v for k, v in logs.items()}
                lr = self.lr_scheduler.get_last_lr()[0]
                accelerator.log({f"{self.stage}/loss": self.loss, "lr": lr, **logs}, step=self.step)
                if self.step % args.checkpoint_every == 0 and self.step < args.max_steps:
                    save_checkpoint(accelerator, args, self.out, self.step, self.stage)
        bar.close()

    def finish(self):
        """After the last step: every process writes its weights' checksum; returns the unwrapped model, with the
        EMA weights copied in when there is an EMA."""
        self.accelerator.wait_for_everyone()
        write_rank_checksum(self.accelerator, self.model, self.out)
        model = self.accelerator.unwrap_model(self.model)
        if self.ema is not None:
            self.ema.copy_to(model.parameters())
        return model

    def resources(self) -> dict:
        """Seconds per optimizer step (median of this run's steps after the first, which warms up) and the peak
        memory since the stage started (GB: the process's peak RSS on a CPU, the peak allocation on a GPU)."""
        steps = sorted(self.step_seconds[1:] or self.step_seconds)
        info = {"peak_memory_gb": round(peak_memory_gb(self.device), 2), "device": str(self.device)}
        if steps:
            info["seconds_per_step"] = round(steps[len(steps) // 2], 3)
        return info

    def save(self, pipeline, info: dict) -> Path:
        """The main process saves ``pipeline`` with ``save_pretrained`` and writes ``stage_complete.json``
        ({stage, steps, **info, seconds}); then the trackers are closed."""
        if self.accelerator.is_main_process:
            pipeline.save_pretrained(self.out)
            mark_complete(self.out, {"stage": self.stage, "steps": self.step, **self.resources(), **info})
        self.accelerator.end_training()
        return self.out
