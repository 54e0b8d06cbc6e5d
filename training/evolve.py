"""Stage 3: latency-driven architecture evolving (paper Algorithm 1).

Start from a robust-trained UNet. Price every block with a latency lookup table (measured here through PyTorch,
or loaded from JSON measured elsewhere, e.g. on a phone). Score an action by dQuality / dLatency:
    remove block b: quality with b skipped (robust training makes skipping stand in for removal), saves L(b);
    duplicate block b: quality of the model with b copied, costs L(b).
While the latency target is not met, apply the removals with the smallest quality loss per ms saved; once it is
met, apply the additions with the largest gain per ms spent that still fit. Actions are applied a group at a
time, interleaved with robust training. Only latency is optimised, not size.

Quality comes from a pluggable scorer: ``toy`` (the toy world's probe-judged text alignment) or ``clip``
(CLIP score with a local CLIP model folder, for real data). Writes the chosen pipeline folder, the action
log ``evolve_log.json`` and ``evolve_curve.png`` (latency vs quality over iterations).

    python -m training.evolve --model runs/robust --output runs/evolved --target-ratio 0.5
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import shutil
from pathlib import Path

import torch

from pipelines import EfficientUNet2DConditionModel, SnapFusionPipeline
from pipelines.latency import LatencyTable, host_description

from .common import StageError, mark_complete, prepare_output, run_cli, save_config, start_stage_clock
from .models import load_stage_pipeline

STAGE = "evolve"
# Quality scorers besides CLIP (--scorer), by name: "module:class", the class made with (num_images, seed), called
# on (N, 3, H, W) images in [0, 1], with .prompts and .name.
SCORERS = {"toy": "training.toy.scorer:ToyScorer"}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="robust-trained pipeline folder")
    parser.add_argument("--output", required=True)
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--resume", default=None, help="accepted for the recipe; evolve restarts cleanly")
    parser.add_argument("--seed", type=int, default=0)
    t = parser.add_argument_group("latency")
    t.add_argument("--latency-table", default=None, help="JSON table measured elsewhere (else measured here)")
    t.add_argument("--latency-repeats", type=int, default=5)
    t.add_argument("--target-ms", type=float, default=None, help="UNet latency target per call (batch 2)")
    t.add_argument("--target-ratio", type=float, default=None, help="target as a fraction of the start latency")
    q = parser.add_argument_group("quality")
    q.add_argument("--scorer", choices=["clip", *SCORERS], default="toy", help="clip, or a registered scorer "
                   "(toy: the toy world's probe-judged text alignment)")  # fmt: skip
    q.add_argument("--clip-model", default=None, help="local CLIP model folder for --scorer clip")
    q.add_argument("--prompts", default=None, help="prompt file for --scorer clip (one per line)")
    q.add_argument("--eval-images", type=int, default=64, help="images per quality evaluation")
    q.add_argument("--eval-steps", type=int, default=10, help="sampling steps per evaluation (paper: 50)")
    q.add_argument("--eval-guidance", type=float, default=7.5)
    s = parser.add_argument_group("search")
    s.add_argument("--group-size", type=int, default=2, help="actions applied per iteration")
    s.add_argument("--max-iterations", type=int, default=10)
    s.add_argument("--no-additions", action="store_true", help="stop once the target is met")
    s.add_argument("--robust-steps", type=int, default=100, help="robust training steps after each iteration")
    s.add_argument("--robust-keep-prob", type=float, default=0.9)
    s.add_argument("--robust-batch-size", type=int, default=16)
    s.add_argument("--robust-lr", type=float, default=1e-4)
    s.add_argument("--data", default="toy", help="training data of the interleaved robust training")
    s.add_argument("--resolution", type=int, default=64)
    return parser.parse_args(argv)


# ---------------------------------------------------------------------- quality scorers


class ClipScorer:
    """CLIP score: the mean over the evolution's images of ``training.real_eval``'s per-image score (a local CLIP
    model, no download)."""

    def __init__(self, model_path: str, prompt_file: str, num_images: int):
        from .data import read_prompts
        from .real_eval import ClipScorer as PerImageClipScore
        from .real_eval import clip_folder

        clip_folder(model_path)  # a missing or wrong --clip-model: a one-line StageError before anything loads
        if prompt_file is None:
            raise StageError("--scorer clip needs --prompts FILE (one prompt per line).")
        self.score = PerImageClipScore(model_path)
        prompts = read_prompts(prompt_file)
        self.prompts = (prompts * math.ceil(num_images / len(prompts)))[:num_images]
        self.name = "CLIP score"

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> float:
        return float(self.score([_to_pil(im) for im in images], self.prompts).mean())


def make_scorer(args):
    """``--scorer``: CLIP score (``clip``) or a scorer registered by name in ``SCORERS``, made with
    (``--eval-images``, ``--seed``)."""
    if args.scorer == "clip":
        return ClipScorer(args.clip_model, args.prompts, args.eval_images)
    module, _, name = SCORERS[args.scorer].partition(":")
    return getattr(importlib.import_module(module), name)(args.eval_images, args.seed)


def _to_pil(x: torch.Tensor):
    import PIL.Image

    return PIL.Image.fromarray((x.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype("uint8"))


@torch.no_grad()
def score_pipeline(pipe: SnapFusionPipeline, scorer, args, skip=()) -> float:
    """Generate the scorer's prompts from fixed noise (seeded) with ``skip`` blocks skipped; return quality."""
    unet = pipe.unet
    unet.skip_blocks = frozenset(skip)
    try:
        size = unet.config.sample_size
        latents = torch.randn((len(scorer.prompts), unet.config.in_channels, size, size),
                              generator=torch.Generator("cpu").manual_seed(args.seed))  # fmt: skip
        images = []
        for i in range(0, len(scorer.prompts), 32):
            out = pipe(scorer.prompts[i : i + 32], num_inference_steps=args.eval_steps,
                       guidance_scale=args.eval_guidance, latents=latents[i : i + 32], output_type="pt")  # fmt: skip
            images.append(out.images.float().cpu())
        return scorer(torch.cat(images))
    finally:
        unet.skip_blocks = frozenset()


# ---------------------------------------------------------------------- the search


def main(args):
    start_stage_clock(args)  # the latency table and the search both count
    # 0. check inputs
    if (args.target_ms is None) == (args.target_ratio is None):
        raise StageError("give exactly one of --target-ms and --target-ratio.")
    if args.target_ratio is not None and not 0 < args.target_ratio < 1:
        raise StageError(f"--target-ratio must be in (0, 1); got {args.target_ratio}.")
    for name in ("group_size", "max_iterations", "eval_images", "eval_steps"):
        if getattr(args, name) < 1:
            raise StageError(f"--{name.replace('_', '-')} must be >= 1; got {getattr(args, name)}.")
    pipe = load_stage_pipeline(args.model, "--model")
    if not isinstance(pipe.unet, EfficientUNet2DConditionModel):
        pipe.unet = EfficientUNet2DConditionModel.from_unet(pipe.unet)
    unet = pipe.unet.eval()
    h = w = unet.config.sample_size

    # 1. latency table: loaded (measured elsewhere) or measured on this host
    if args.latency_table:
        table = LatencyTable.load(args.latency_table)
        lacking = table.missing(unet, h, w)
        if lacking:
            raise StageError(f"latency table {args.latency_table} lacks {len(lacking)} block(s) of this model, "
                             f"e.g. {lacking[0]}.")  # fmt: skip
    else:
        table = LatencyTable.measure(unet, h, w, batch=2, context_len=pipe.tokenizer.model_max_length,
                                     repeats=args.latency_repeats)  # fmt: skip
    start_ms = table.estimate(unet, h, w)["total_ms"]
    target = args.target_ms if args.target_ms is not None else start_ms * args.target_ratio
    floor_ms = table.estimate(unet.remove_blocks(unet.removable_blocks()), h, w)["total_ms"]
    if start_ms <= target:
        raise StageError(f"latency target {target:.2f} ms is already met: the model takes {start_ms:.2f} ms.")
    if floor_ms > target:
        raise StageError(f"latency target {target:.2f} ms is unreachable: removing every removable block "
                         f"still takes {floor_ms:.2f} ms.")  # fmt: skip
    scorer = make_scorer(args)
    out = prepare_output(args)
    save_config(args, out, STAGE)
    table.save(str(out / "latency_table.json"))

    # 2. Algorithm 1
    log = {"target_ms": target, "start_ms": start_ms, "latency_source": table.source, "device": table.device,
           "host": host_description(), "scorer": scorer.name, "iterations": []}  # fmt: skip
    quality = score_pipeline(pipe, scorer, args)
    print(f"start: {start_ms:.2f} ms/call, {scorer.name} {quality:.4f}, target {target:.2f} ms")
    log["iterations"].append({"iteration": 0, "latency_ms": start_ms, "quality": quality, "actions": []})
    for it in range(1, args.max_iterations + 1):
        unet = pipe.unet
        latency = table.estimate(unet, h, w)["total_ms"]
        blocks_ms = table.block_ms(unet, h, w)
        if latency > target:  # remove: smallest quality loss per ms saved
            cands = []
            for b in unet.removable_blocks():
                q = score_pipeline(pipe, scorer, args, skip=[b])
                cands.append({"action": "remove", "block": str(b), "d_quality": q - quality,
                              "d_latency_ms": -blocks_ms[b],
                              "score": (quality - q) / max(blocks_ms[b], 1e-6)})  # fmt: skip
            cands.sort(key=lambda c: c["score"])
            chosen, saved = [], 0.0
            for c in cands:
                if len(chosen) == args.group_size:
                    break
                chosen.append(c)
                saved += -c["d_latency_ms"]
                if latency - saved <= target:
                    break
            new_unet = unet.remove_blocks([c["block"] for c in chosen])
        elif args.no_additions:
            break
        else:  # add: largest quality gain per ms spent that still fits under the target
            cands = []
            for b in unet.blocks():
                trial = unet.duplicate_blocks([b])
                trial_ms = _price(table, trial, h, w, pipe)
                if trial_ms > target:
                    continue
                pipe.unet = trial
                q = score_pipeline(pipe, scorer, args)
                pipe.unet = unet
                d_ms = trial_ms - latency
                cands.append({"action": "duplicate", "block": str(b), "d_quality": q - quality,
                              "d_latency_ms": d_ms, "score": (q - quality) / max(d_ms, 1e-6)})  # fmt: skip
            cands = sorted((c for c in cands if c["d_quality"] > 0), key=lambda c: -c["score"])
            chosen, spent = [], 0.0
            for c in cands:
                if len(chosen) == args.group_size:
                    break
                if latency + spent + c["d_latency_ms"] <= target:
                    chosen.append(c)
                    spent += c["d_latency_ms"]
            if not chosen:
                print("target met and no addition improves quality within it: done")
                break
            new_unet = unet.duplicate_blocks([c["block"] for c in chosen])
        pipe.unet = new_unet.eval()
        # interleaved robust training of the changed model
        if args.robust_steps > 0:
            pipe = _robust_train(pipe, args, out / "iterations" / f"iter-{it}")
        quality = score_pipeline(pipe, scorer, args)
        latency = _price(table, pipe.unet, h, w, pipe)
        print(f"iteration {it}: {', '.join(c['action'] + ' ' + c['block'] for c in chosen)} -> "
              f"{latency:.2f} ms, {scorer.name} {quality:.4f}")  # fmt: skip
        log["iterations"].append({"iteration": it, "latency_ms": latency, "quality": quality, "actions": chosen,
                                  "architecture": pipe.unet.architecture(), "candidates": cands})  # fmt: skip
        (out / "evolve_log.json").write_text(json.dumps(log, indent=2))

    # 3. write the chosen architecture, the log and the curve
    final_ms = table.estimate(pipe.unet, h, w)["total_ms"]
    log.update(final_ms=final_ms, final_quality=quality, target_met=final_ms <= target,
               architecture=pipe.unet.architecture(),
               layout={k: pipe.unet.config[k] for k in ("down_layout", "mid_layout", "up_layout")})  # fmt: skip
    (out / "evolve_log.json").write_text(json.dumps(log, indent=2))
    _plot(log, out / "evolve_curve.png")
    pipe.unet.skip_blocks = frozenset()
    pipe.save_pretrained(out)
    save_config(args, out, STAGE)
    if (out / "iterations").exists():
        shutil.rmtree(out / "iterations")  # intermediate snapshots; the log keeps every step
    mark_complete(out, {"stage": STAGE, "final_ms": final_ms, "target_ms": target, "quality": quality})
    print(f"final: {final_ms:.2f} ms/call (start {start_ms:.2f}, target {target:.2f}), {scorer.name} {quality:.4f}")
    return out


def _price(table: LatencyTable, unet, h, w, pipe) -> float:
    lacking = table.missing(unet, h, w)
    if lacking:  # a duplicated block with a new signature: measure it on this host
        table.entries.update(LatencyTable.measure(unet, h, w, context_len=pipe.tokenizer.model_max_length,
                                                  existing=table).entries)  # fmt: skip
    return table.estimate(unet, h, w)["total_ms"]


def _robust_train(pipe, args, folder: Path):
    """A short robust-training run (``training.robust``, with its own parser's defaults) of the current
    architecture, in-process, into ``folder``; returns the trained pipeline."""
    from . import robust

    rargs = robust.parse_args([
        "--output", str(folder), "--overwrite", "--seed", str(args.seed), "--max-steps", str(args.robust_steps),
        "--batch-size", str(args.robust_batch_size), "--lr", str(args.robust_lr),
        "--block-keep-prob", str(args.robust_keep_prob), "--data", args.data, "--resolution", str(args.resolution),
        "--no-train-text-encoder", "--checkpoint-every", str(10**9), "--checkpoints-total-limit", "1",
        "--log-with", "none", "--default-steps", str(pipe.config.default_num_inference_steps),
        "--default-guidance", str(pipe.config.default_guidance_scale),
    ])  # fmt: skip
    robust.train_denoiser(rargs, "evolve_robust", block_keep_prob=rargs.block_keep_prob,
                          components=dict(pipe.components))  # fmt: skip
    return load_stage_pipeline(str(folder), "the robust-trained snapshot")


def _plot(log: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    its = log["iterations"]
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot([i["latency_ms"] for i in its], [i["quality"] for i in its], "o-")
    for i in its:
        ax.annotate(str(i["iteration"]), (i["latency_ms"], i["quality"]), textcoords="offset points", xytext=(4, 4))
    ax.axvline(log["target_ms"], color="gray", ls="--", label=f"target {log['target_ms']:.1f} ms")
    ax.set_xlabel(f"UNet latency per call, ms (table: {log['latency_source']})")
    ax.set_ylabel(log["scorer"])
    ax.set_title("Architecture evolving (Algorithm 1)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    run_cli(main, parse_args)
