"""GPU check: each full-size training stage for a fixed number of steps (512x512, bf16 autocast), as JSON.

Turns docs/gpu_plan.md's estimates into measurements in a few minutes on a lent GPU: for every stage of the
full-size recipe (training/configs/sd15.json) it builds that stage's models at SD-v1.5 size with random weights
(speed and memory do not depend on them), runs ``--steps`` optimizer steps of the stage's own loss (the functions
the stages train with: ``train_teacher.denoising_loss``, ``distill.distillation_loss``, the decoder's MSE) with
AdamW, gradient checkpointing and bf16 autocast, and writes seconds per step (median after the first), images per
second and peak memory per stage.

    python -m benchmarks.gpu_check --out docs/benchmarks/gpu_check.json                 # needs CUDA
    python -m benchmarks.gpu_check --device cpu --resolution 64 --steps 3 --out x.json  # the same on a CPU
    python -m benchmarks.gpu_check --estimate                    # no GPU: the memory estimate of docs/gpu_plan.md

Stages: ``teacher_v`` (SD-v1.5 UNet, denoising loss), ``robust`` (the same with blocks skipped, p = 0.9),
``evolve_eval`` (the search's inner loop: one guided UNet call, no gradient, sd15 and snapfusion UNets),
``distill_sd16`` (sd15 teacher, 2 DDIM steps -> sd15 student), ``distill_eff16`` (snapfusion -> snapfusion),
``distilled`` (sd15 16-step teacher -> snapfusion 8-step student), ``decoder`` (50%-pruned VAE decoder against the
original). The ``snapfusion`` UNet (paper Table 3) stands in for the evolved one.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from argparse import Namespace
from contextlib import nullcontext

import torch
import torch.nn.functional as F

STAGES = ("teacher_v", "robust", "evolve_eval", "distill_sd16", "distill_eff16", "distilled", "decoder")


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="docs/benchmarks/gpu_check.json", help="JSON to write")
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (for a smaller check of the script)")
    p.add_argument("--resolution", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=1, help="images per step per GPU")
    p.add_argument("--steps", type=int, default=5, help="optimizer steps per stage (the first is not timed)")
    p.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16", help="autocast dtype")
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    p.add_argument("--size", choices=["full", "smoke"], default="full",
                   help="full: SD-v1.5 size; smoke: the smoke recipe's widths (tests of this script)")  # fmt: skip
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--estimate", action="store_true", help="print the per-GPU memory estimate (parameter counts and "
                   "activations counted on the meta device) as JSON; runs anywhere")  # fmt: skip
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------- the estimate


def activation_gb(preset: str, resolution: int, checkpointing: bool = True) -> float:
    """Activations one training image keeps in a UNet pass, bf16, counted on the meta device: with checkpointing the
    inputs of every block (kept for the backward) plus the largest block's own outputs (recomputed one at a time),
    else every layer's output; x2 for the inputs autograd saves besides outputs. Attention matrices are not stored
    (memory-efficient attention, as on a GPU)."""
    from pipelines import EfficientUNet2DConditionModel

    with torch.device("meta"):
        unet = EfficientUNet2DConditionModel.from_preset(preset, sample_size=resolution // 8)
    stash, inner, hooks = [], {}, []
    for k, block in enumerate(m for _, stage in unet._stages() for m in stage):
        hooks.append(block.register_forward_hook(
            lambda m, i, o: stash.append(sum(t.numel() for t in i if isinstance(t, torch.Tensor)))))  # fmt: skip
        for leaf in (m for m in block.modules() if not list(m.children())):
            hooks.append(leaf.register_forward_hook(
                lambda m, i, o, k=k: inner.__setitem__(k, inner.get(k, 0) + o.numel())))  # fmt: skip
    with torch.no_grad():
        unet(torch.zeros(1, 4, resolution // 8, resolution // 8, device="meta"), torch.zeros(1, device="meta"),
             torch.zeros(1, 77, unet.config.cross_attention_dim, device="meta"))  # fmt: skip
    for h in hooks:
        h.remove()
    kept = sum(stash) + max(inner.values()) if checkpointing else sum(inner.values())
    return 2 * kept * 2 / 1e9


def estimate(batch: int, resolution: int) -> dict:
    """Per-GPU memory of each full-size stage under DDP, bf16 autocast, AdamW, gradient checkpointing (GB)."""
    m = {"sd15": 859.52e6, "snapfusion": 767.52e6, "text": 123.06e6, "vae": 83.65e6, "pruned_decoder": 12.39e6}
    act = {p: activation_gb(p, resolution) for p in ("sd15", "snapfusion")}

    def trained(n, ddp=True, ema=False):  # fp32 weights, grads, AdamW moments (+ DDP buckets, + EMA copy)
        return n * (16 + (4 if ddp else 0) + (4 if ema else 0)) / 1e9

    def frozen(*names):  # fp32 weights
        return sum(m[x] for x in names) * 4 / 1e9

    rows = {  # (static GB, activations GB, what)
        "teacher_v": (trained(m["sd15"], ema=True) + frozen("text", "vae"), batch * act["sd15"],
                      "sd15 UNet trained (+EMA); text encoder, VAE frozen"),
        "robust": (trained(m["sd15"]) + frozen("text", "vae"), batch * act["sd15"], "sd15 UNet trained"),
        "evolve": (trained(m["sd15"], ddp=False) + frozen("text", "vae"), batch * act["sd15"],
                   "one process: the search's generation + interleaved robust training"),
        "distill_sd16": (trained(m["sd15"]) + frozen("sd15", "text", "vae"), 3 * batch * act["sd15"],
                         "sd15 student trained; sd15 teacher frozen; CFG-aware step = 3 student passes"),
        "distill_eff16": (trained(m["snapfusion"]) + frozen("snapfusion", "text", "vae"),
                          3 * batch * act["snapfusion"], "snapfusion-size student and teacher"),
        "distilled": (trained(m["snapfusion"]) + frozen("sd15", "text", "vae"), 3 * batch * act["snapfusion"],
                      "snapfusion student; 16-step sd15 teacher frozen"),
        "decoder": (trained(m["pruned_decoder"]) + frozen("sd15", "snapfusion", "text", "vae")
                    + 20256 * 4 * (resolution // 8) ** 2 * 4 / 1e9,
                    # rough, not counted: ~20 saved 64-channel tensors at full resolution and ~20 128-channel ones at
                    # half, bf16, no checkpointing in the decoder
                    batch * resolution**2 * (20 * 64 + 20 * 128 / 4) * 2 / 1e9,
                    "pruned decoder trained; teacher + student pipelines and the 20,256-latent pool held"),
    }  # fmt: skip
    return {"batch_per_gpu": batch, "resolution": resolution,
            "activations_per_image_gb": {k: round(v, 3) for k, v in act.items()},
            "stages": {k: {"static_gb": round(s, 1), "activations_gb": round(a, 1), "total_gb": round(s + a, 1),
                           "what": w} for k, (s, a, w) in rows.items()}}  # fmt: skip


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _components(size: str, preset: str, resolution: int):
    from training.models import build_from_scratch
    from training.toy.world import VOCABULARY

    return build_from_scratch(preset if size == "full" else "smoke", resolution, VOCABULARY, "v_prediction")


def _unet(size: str, preset: str, resolution: int, cross_dim: int):
    from pipelines import EfficientUNet2DConditionModel

    if size == "full":
        return EfficientUNet2DConditionModel.from_preset(preset, sample_size=resolution // 8)
    return EfficientUNet2DConditionModel.from_preset(
        preset, sample_size=resolution // 4, cross_attention_dim=cross_dim, block_out_channels=(16, 32, 32, 32),
        num_attention_heads=2, norm_num_groups=8)  # fmt: skip


def _time_steps(step_fn, params, steps: int, device, autocast) -> dict:
    """``steps`` AdamW steps of ``step_fn() -> loss`` (or forward-only calls when ``params`` is empty)."""
    from training.common import check_training_memory, peak_memory_gb, reset_peak_memory

    check_training_memory("this stage", params, device, ema=False)  # says what it needs instead of an OOM
    opt = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.01) if params else None
    reset_peak_memory(device)
    seconds = []
    for _ in range(steps):
        t0 = time.perf_counter()
        with autocast:
            loss = step_fn()
        if opt is not None:
            loss.float().backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - t0)
    per_step = statistics.median(seconds[1:] or seconds)
    return {"seconds_per_step": round(per_step, 4), "first_step_seconds": round(seconds[0], 3),
            "peak_memory_gb": round(peak_memory_gb(device), 2),
            "trainable_params_m": round(sum(p.numel() for p in params) / 1e6, 2)}  # fmt: skip


def run_stage(name: str, args, device, autocast) -> dict:
    """Build stage ``name``'s models on ``device`` and time ``args.steps`` steps; returns its measurements."""
    from training.distill import distillation_loss, step_grids
    from training.train_teacher import denoising_loss

    torch.manual_seed(0)
    c = _components(args.size, "sd15", args.resolution)
    te, vae, sched = c["text_encoder"].to(device).eval(), c["vae"].to(device).eval(), c["scheduler"]
    te.requires_grad_(False)
    vae.requires_grad_(False)
    b, r = args.batch_size, args.resolution
    ids = c["tokenizer"](["a photo"] * b, padding="max_length", max_length=c["tokenizer"].model_max_length,
                         return_tensors="pt").input_ids.to(device)  # fmt: skip
    with torch.no_grad():
        cond = te(ids)[0]  # (B, 77, 768)
        uncond = te(c["tokenizer"]([""] * b, padding="max_length", max_length=c["tokenizer"].model_max_length,
                                   return_tensors="pt").input_ids.to(device))[0]  # fmt: skip
    x = torch.rand(b, 3, r, r, device=device) * 2 - 1
    ac = sched.alphas_cumprod.to(device)
    cross = te.config.hidden_size

    def latents():
        with torch.no_grad():
            return vae.encode(x).latent_dist.sample() * vae.config.scaling_factor  # (B, 4, R/8, R/8)

    if name in ("teacher_v", "robust"):
        unet = c["unet"].to(device).train()
        unet.enable_gradient_checkpointing()
        unet.set_block_keep_prob(0.9 if name == "robust" else 1.0)

        def step():
            z = latents()
            t = torch.randint(0, 1000, (b,), device=device)
            return denoising_loss(unet, z, cond, torch.randn_like(z), t, ac, "v_prediction")

        res = _time_steps(step, list(unet.parameters()), args.steps, device, autocast)
        return {**res, "unet": "sd15", "images_per_second": round(b / res["seconds_per_step"], 3)}
    if name == "evolve_eval":
        out = {}
        for preset in ("sd15", "snapfusion"):
            unet = _unet(args.size, preset, r, cross).to(device).eval()
            z = torch.randn(2 * b, 4, unet.config.sample_size, unet.config.sample_size, device=device)

            def call(unet=unet, z=z):
                with torch.no_grad():
                    return unet(z, torch.full((2 * b,), 500, device=device), torch.cat([cond, uncond])).sample

            out[preset] = _time_steps(call, [], args.steps, device, autocast)
            del unet
        return {"seconds_per_guided_unet_call": {k: v["seconds_per_step"] for k, v in out.items()},
                "peak_memory_gb": max(v["peak_memory_gb"] for v in out.values()), "per_unet": out}
    if name in ("distill_sd16", "distill_eff16", "distilled"):
        t_preset, s_preset, t_steps, s_steps = {"distill_sd16": ("sd15", "sd15", 32, 16),
                                                "distill_eff16": ("snapfusion", "snapfusion", 32, 16),
                                                "distilled": ("sd15", "snapfusion", 16, 8)}[name]  # fmt: skip
        teacher = (c["unet"] if t_preset == "sd15" else _unet(args.size, t_preset, r, cross)).to(device).eval()
        teacher.requires_grad_(False)
        student = _unet(args.size, s_preset, r, cross).to(device).train()
        student.enable_gradient_checkpointing()
        grid, _ = step_grids(sched.config, t_steps, s_steps)
        grid = grid + [-1]
        g = torch.Generator().manual_seed(0)

        def step():
            x0 = latents()
            k = torch.randint(0, s_steps, (b,), generator=g)
            w = torch.rand(b, 1, 1, 1, device=device) * 12 + 2  # the CFG-aware loss (its costlier branch)
            return distillation_loss(student, teacher, x0, torch.randn_like(x0), cond, uncond, k, w, grid,
                                     t_steps // s_steps, ac, "v_prediction", 0.2)[0]  # fmt: skip

        res = _time_steps(step, list(student.parameters()), args.steps, device, autocast)
        return {**res, "teacher": f"{t_preset} {t_steps} steps", "student": f"{s_preset} {s_steps} steps",
                "loss": "CFG-aware (guided teacher and student)",
                "images_per_second": round(b / res["seconds_per_step"], 3)}  # fmt: skip
    if name == "decoder":
        from training.decoder import make_student_decoder

        decoder = make_student_decoder(vae, Namespace(architecture="pruned", width_ratio=0.5, norm_groups=None,
                                                      seed=0)).to(device).train()  # fmt: skip
        f = 2 ** (len(vae.config.block_out_channels) - 1)  # VAE downsampling factor
        z = torch.randn(b, 4, r // f, r // f, device=device)  # (B, 4, R/f, R/f)

        def step():
            with torch.no_grad():
                ref = vae.decode(z).sample  # (B, 3, R, R): the original decoder's image
            return F.mse_loss(decoder(z).float(), ref.float())

        res = _time_steps(step, list(decoder.parameters()), args.steps, device, autocast)
        return {**res, "decoder": "50%-pruned SD VAE decoder",
                "images_per_second": round(b / res["seconds_per_step"], 3)}
    raise ValueError(f"unknown stage {name!r}")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.estimate:
        print(json.dumps(estimate(args.batch_size, args.resolution), indent=2))
        return 0
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        fail(f"--stages: {unknown[0]!r} is not a stage; choose from {', '.join(STAGES)}.")
    if args.steps < 1 or args.batch_size < 1 or args.resolution % 8 or args.resolution < 64:
        fail("--steps and --batch-size must be >= 1 and --resolution a multiple of 8, >= 64.")
    if args.device == "cuda" and not torch.cuda.is_available():
        fail("no CUDA GPU here: this check measures the full-size stages on a GPU (512x512, bf16). On a CPU the "
             "recorded numbers come from the CPU proof (python -m training.recipe --preset sd15-proof) and "
             "docs/gpu_plan.md; --device cpu runs this script on the CPU.")  # fmt: skip
    if os.path.exists(args.out) and not args.overwrite:
        fail(f"{args.out} exists; pass --overwrite to replace it.")
    device = torch.device(args.device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[args.dtype]
    autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()

    from pipelines.latency import host_description
    from training.common import StageError

    result = {"format": "snapfusion-gpu-check/1", "host": host_description(), "device": str(device),
              "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "threads": torch.get_num_threads(), "autocast": args.dtype,
              "resolution": args.resolution, "batch_size": args.batch_size, "steps": args.steps, "size": args.size,
              "optimizer": "AdamW (fp32 master weights), gradient checkpointing", "stages": {}}  # fmt: skip
    for name in stages:
        print(f"[gpu_check] {name} ...", flush=True)
        try:
            result["stages"][name] = run_stage(name, args, device, autocast)
        except StageError as e:  # would not fit: record what it needs and go on (the plan needs every stage)
            result["stages"][name] = {"error": str(e)}
        except torch.OutOfMemoryError as e:
            result["stages"][name] = {"error": f"out of memory: {str(e).splitlines()[0][:200]}"}
        if device.type == "cuda":
            torch.cuda.empty_cache()
        print(f"[gpu_check] {name}: {json.dumps(result['stages'][name])}", flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
