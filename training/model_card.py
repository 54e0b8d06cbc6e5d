"""Write a model card (README.md) for a trained pipeline folder from facts only.

Architecture and parameters come from the model, the training config from the recipe's stage folders, metrics
from ``training.evaluate`` JSON, and seconds per image from a measured run on this machine.

    python -m training.model_card --model bundle/student --role student --eval bundle/eval/student.json \
        --recipe runs/mini --stages teacher,teacher_v,robust,evolved,distilled,student
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

import torch

from pipelines import EfficientUNet2DConditionModel, PixelShuffleVAEDecoder
from pipelines.latency import host_description
from pipelines.profiling import count_decoder_params, count_params
from pipelines.psnr import psnr
from pipelines.timing import interleaved
from pipelines.vae_compressed import with_plain_resnet_blocks

from .common import StageError, run_cli
from .models import load_stage_pipeline


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--role", choices=["teacher", "student", "onepass"], required=True,
                   help="teacher, the SnapFusion student, or the one-pass (guidance-embedded) student")  # fmt: skip
    p.add_argument("--eval", default=None, help="evaluation JSON written by training.evaluate")
    p.add_argument("--recipe", default=None, help="the recipe output folder that trained this model")
    p.add_argument("--stages", default="", help="comma-separated stage folders (in --recipe) that made it")
    p.add_argument("--command", default="python -m training.recipe --preset mini --output runs/mini")
    p.add_argument("--repeats", type=int, default=5, help="timed generations per model for seconds per image")
    p.add_argument("--teacher", default=None, help="student roles: the teacher folder, to measure the compressed "
                   "decoder against its full decoder on fresh latents and the end-to-end speed-up in the same "
                   "run")  # fmt: skip
    p.add_argument("--teacher-eval", default=None, help="student role: the teacher's evaluation JSON (same K and "
                   "seed), to write the student's quality targets against the teacher's best FID and alignment")  # fmt: skip
    p.add_argument("--quote-missing", action="store_true", help="for a --stages entry whose folder is not in "
                   "--recipe (a model re-shipped with one stage retrained), quote that stage's line from the card "
                   "being replaced, marked as quoted")  # fmt: skip
    p.add_argument("--overwrite", action="store_true")
    return p.parse_args(argv)


def card_stage_lines(card: str) -> dict[str, list[str]]:
    """The Training section's stage bullets of a card (with their indented sub-lines), by stage name."""
    stages, current = {}, None
    for line in card.splitlines():
        m = re.match(r"- \*\*([\w.-]+)\*\* ", line)
        if m:
            current = m.group(1)
            stages[current] = [line]
        elif current and line.startswith("  "):
            stages[current].append(line)
        else:
            current = None
    return stages


def seconds_per_image(pipes: dict, repeats: int) -> dict[str, dict]:
    """Wall time of one 1-image generation per pipeline at its default steps and guidance (with CFG, or one pass
    per step for a guidance-embedded model): the pipelines interleaved (A, B, A, B, ...) after one warm-up round,
    median of ``repeats``, so a drift of the machine hits all alike. Per name: seconds, repeats and the
    breakdown of the last run."""
    prompt = "a big red circle in the center on a gray background"
    last = {}

    def generate(name, pipe):
        last[name] = pipe(prompt, generator=torch.Generator().manual_seed(0)).timings

    fns = {name: (lambda name=name, pipe=pipe: generate(name, pipe)) for name, pipe in pipes.items()}
    device = next(iter(pipes.values())).device
    samples = interleaved(fns, device, warmup=1, repeats=repeats, log=lambda *_: None)
    keys = ("text_encoder_ms", "unet_ms_mean", "unet_ms_total", "decoder_ms", "total_ms")
    return {name: {"seconds": statistics.median(samples[name]) / 1000, "repeats": repeats,
                   "timings_ms": {k: round(last[name][k], 2) for k in keys}} for name in pipes}  # fmt: skip


@torch.no_grad()
def decoder_report(student, teacher, num_latents: int = 64, steps: int = 20, guidance: float = 5.0,
                   repeats: int = 50) -> dict:  # fmt: skip
    """The compressed decoder (``student.vae_decoder``) against the teacher's full VAE decoder, on fresh latents.

    Latents: the teacher's (the paper's distillation source) and the student's own (what the app decodes), for
    held-out toy-world captions with noise seeds the decoder stage never used. PSNR of the decoded images (range
    [0, 1]) and decoder latency per latent (batch 1, interleaved, median of ``repeats`` after a warm-up).
    """
    from .toy.world import ToyWorld

    if student.vae_decoder is None:
        raise StageError("the student has no compressed decoder (vae_decoder) to report on.")
    prompts = [s.caption for s in ToyWorld(0).heldout(10**6, num_latents)]  # never seen by any stage
    full, small = teacher.vae, student.vae_decoder
    scale = teacher.vae.config.scaling_factor
    psnr_db = {}
    for name, pipe in (("teacher_latents", teacher), ("student_latents", student)):
        g = torch.Generator().manual_seed(12345)
        z = pipe(prompts, num_inference_steps=steps if name == "teacher_latents" else None, guidance_scale=guidance,
                 generator=g, output_type="latent").images / scale  # fmt: skip
        ref = ((full.decode(z).sample + 1) / 2).clamp(0, 1)
        out = ((small(z) + 1) / 2).clamp(0, 1)
        psnr_db[name] = psnr(ref, out, peak=1.0)
    z1 = z[:1]
    plain = with_plain_resnet_blocks(full)  # same outputs, so the compressed decoder's plain blocks do not flatter
    fns = {"full": lambda: full.decode(z1).sample, "full_plain": lambda: plain.decode(z1).sample,
           "compressed": lambda: small(z1)}  # fmt: skip
    times = interleaved(fns, full.device, warmup=1, repeats=repeats, log=lambda *_: None)
    ms = {k: statistics.median(v) for k, v in times.items()}
    return {"num_latents": num_latents, "steps": steps, "guidance": guidance, "psnr_db": psnr_db,
            "full_ms": ms["full"], "compressed_ms": ms["compressed"], "speedup": ms["full"] / ms["compressed"],
            "full_plain_ms": ms["full_plain"], "speedup_vs_plain": ms["full_plain"] / ms["compressed"],
            "params_full": count_decoder_params(full), "params_compressed": count_decoder_params(small),
            "repeats": repeats}  # fmt: skip


def passes(pipe) -> int:
    """UNet passes per step at the pipeline's recommended guidance: 2 with classifier-free guidance, else 1."""
    return 1 if pipe.guidance_embedded or pipe.config.default_guidance_scale <= 1 else 2


def quality_targets(student_eval: dict, teacher_eval: dict, fid_ratio: float = 1.1, alignment_gap: float = 0.02):
    """The bundle issue's student targets from two ``training.evaluate`` JSONs, each model at its best guidance:
    student FID <= ``fid_ratio`` x the teacher's lowest FID, student alignment >= the teacher's best - gap.
    Returns markdown table rows; both evaluations must share K, seed and the true-vs-true floor."""
    for key in ("num_images", "seed", "floor_fid"):
        if student_eval.get(key) != teacher_eval.get(key):
            raise ValueError(f"the student's and the teacher's evaluations differ in {key} "
                             f"({student_eval.get(key)!r} vs {teacher_eval.get(key)!r}); evaluate both alike.")  # fmt: skip
    if not student_eval["results"] or not teacher_eval["results"]:
        raise ValueError("an evaluation JSON has no results.")
    t_fid = min(teacher_eval["results"], key=lambda r: r["fid"])
    t_align = max(teacher_eval["results"], key=lambda r: r["alignment"])
    s_fid = min(student_eval["results"], key=lambda r: r["fid"])
    s_align = max(student_eval["results"], key=lambda r: r["alignment"])
    ratio = s_fid["fid"] / t_fid["fid"]
    floor = t_align["alignment"] - alignment_gap
    met = {True: "met", False: "**missed**"}
    return [
        "| target | student (best guidance) | teacher (best guidance) | |",
        "|---|---|---|---|",
        f"| FID <= {fid_ratio:g}x the teacher's lowest | {s_fid['fid']:.1f} at {s_fid['guidance']:g} = "
        f"{ratio:.3f}x | {t_fid['fid']:.1f} at {t_fid['guidance']:g} | {met[ratio <= fid_ratio]} |",
        f"| alignment >= the teacher's best - {alignment_gap:g} = {floor:.4f} | {s_align['alignment']:.4f} at "
        f"{s_align['guidance']:g} | {t_align['alignment']:.4f} at {t_align['guidance']:g} | "
        f"{met[s_align['alignment'] >= floor]} |",
    ]


def decoder_phrase(pipe) -> str:
    """'50%-pruned VAE decoder' style wording from the kept widths (compressed vs the pipeline's full VAE), or the
    pixel-shuffle decoder's stages."""
    if pipe.vae_decoder is None:
        return "the full VAE decoder"
    cfg = pipe.vae_decoder.config
    if isinstance(pipe.vae_decoder, PixelShuffleVAEDecoder):
        layout = zip(cfg.block_out_channels, pipe.vae_decoder.stage_layers)
        stages = ", ".join(f"{c} ch x {n} ResNet" for c, n in layout)
        norm = "; no normalization (residual conv blocks)" if cfg.get("block_type") == "residual_conv" else ""
        return (f"pixel-shuffle VAE decoder ({len(cfg.block_out_channels)} stage(s) from the latent resolution up: "
                f"{stages}; no attention{norm}; trained from scratch)")  # fmt: skip
    if pipe.vae is None:
        return "a compressed VAE decoder"
    kept = [a / b for a, b in zip(pipe.vae_decoder.config.block_out_channels, pipe.vae.config.block_out_channels)]
    if len(set(kept)) == 1:
        return f"{round(100 * (1 - kept[0]))}%-pruned VAE decoder ({round(100 * kept[0])}% of its channels kept)"
    widths = ", ".join(map(str, pipe.vae_decoder.config.block_out_channels))
    return f"channel-pruned VAE decoder (widths {widths})"


def main(args):
    out = Path(args.model) / "README.md"
    if out.exists() and not args.overwrite:
        raise StageError(f"{out} exists; pass --overwrite to replace it.")
    ev = json.loads(Path(args.eval).read_text()) if args.eval else None
    if args.teacher_eval:  # checked before the timed runs
        if args.role == "teacher" or not args.eval:
            raise StageError("--teacher-eval needs a student --role and the student's --eval.")
        teacher_ev = json.loads(Path(args.teacher_eval).read_text())
        try:
            target_rows = quality_targets(ev, teacher_ev)
        except ValueError as e:
            raise StageError(str(e)) from None
    previous = card_stage_lines(out.read_text()) if args.quote_missing and out.exists() else {}
    pipe = load_stage_pipeline(args.model, "--model")
    unet = pipe.unet
    if not isinstance(unet, EfficientUNet2DConditionModel):
        unet = EfficientUNet2DConditionModel.from_unet(unet)
    arch = unet.architecture()
    params = {
        "unet": count_params(pipe.unet), "text_encoder": count_params(pipe.text_encoder),
        "vae_decoder (used)": count_decoder_params(pipe.decoder),
    }  # fmt: skip
    teacher = load_stage_pipeline(args.teacher, "--teacher") if args.role != "teacher" and args.teacher else None
    timings = seconds_per_image({"model": pipe} | ({"teacher": teacher} if teacher else {}), args.repeats)
    timing = timings["model"]
    steps, guidance = pipe.config.default_num_inference_steps, pipe.config.default_guidance_scale
    size = unet.config.sample_size * pipe.vae_scale_factor
    lines = [
        f"# Mini SnapFusion {args.role}",
        "",
        ("A small text-to-image model with **SD-v1.5's UNet topology** (not SD-v1.5: narrow channels, its own VAE, "
         "text encoder and tokenizer), trained from scratch by this repo on the procedural toy world "
         "(64x64 coloured shapes)." if args.role == "teacher" else
         "The **SnapFusion student** of the mini teacher: evolved efficient UNet (latency-driven architecture "
         "search on this CPU), v-prediction, step-distilled with the CFG-aware loss, "
         f"{decoder_phrase(pipe)} trained by data distillation." if args.role == "student" else
         "The **one-pass student** of the mini teacher: the SnapFusion student given the guidance scale as a UNet "
         "input (guidance distillation, Meng et al., CVPR 2023; diffusers' `time_cond_proj_dim` embedding, "
         f"{pipe.unet.config.time_cond_proj_dim} features) and step-distilled to {steps} single-pass steps: one "
         "UNet pass per step, no classifier-free-guidance batch, so a negative prompt has no effect; "
         f"{decoder_phrase(pipe)} (the SnapFusion student's)."),
        "",
        f"- Sampling: {pipe.scheduler.__class__.__name__} ({pipe.scheduler.config.prediction_type}, "
        f"'{pipe.scheduler.config.timestep_spacing}' spacing), recommended {steps} steps at guidance {guidance}"
        + (f" (trained for guidance in [{pipe.config.guidance_scale_range[0]:g}, "
           f"{pipe.config.guidance_scale_range[1]:g}]; others are refused)." if pipe.guidance_embedded else "."),
        f"- Image size: {size}x{size}.",
        "",
        "## Architecture (paper Table 3 grouping)",
        "",
        "| stage | CA | RB |",
        "|---|---|---|",
        *[f"| {s} | {c['CA']} | {c['RB']} |" for s, c in arch.items()],
        "",
        "| component | parameters |",
        "|---|---|",
        *[f"| {k} | {v:,} |" for k, v in params.items()],
        "",
        "## Speed (measured)",
        "",
        f"{timing['seconds']:.3f} s per image (median of {timing['repeats']} after a warm-up round; 1 image, "
        f"{steps} steps, "
        + ("one UNet pass per step, batch 1" if pipe.guidance_embedded else "CFG batch 2")
        + f"), on {host_description()}. Breakdown of the last run (ms): "
        + ", ".join(f"{k} {v}" for k, v in timing["timings_ms"].items()) + ".",
        "",
    ]
    if teacher is not None:
        t_timing = timings["teacher"]
        t_steps = teacher.config.default_num_inference_steps
        lines += [
            "## Speed-up against the teacher (measured, same run)",
            "",
            f"The teacher ({args.teacher}) at its recommended {t_steps} steps with CFG: {t_timing['seconds']:.3f} s "
            f"per image, measured the same way, its runs interleaved with this model's: this model is "
            f"**{t_timing['seconds'] / timing['seconds']:.1f}x faster** end to end "
            f"({steps * passes(pipe)} UNet evaluations per image against {t_steps * passes(teacher)}).",
            "",
        ]
        # latents at guidance 5 (CFG models); a one-pass student only takes its trained range: its recommended scale
        d = decoder_report(pipe, teacher, guidance=guidance if pipe.guidance_embedded else 5.0)
        lines += [
            "## Compressed decoder (measured)",
            "",
            f"Against the teacher's full VAE decoder, on {d['num_latents']} fresh latents (held-out captions, noise "
            "seeds no training stage used): decoded-image PSNR "
            f"{d['psnr_db']['teacher_latents']:.2f} dB on the teacher's latents ({d['steps']} steps, guidance "
            f"{d['guidance']:g}) and {d['psnr_db']['student_latents']:.2f} dB on this student's own latents "
            f"(guidance {d['guidance']:g}: what the app decodes). Decoder time per latent (batch 1, interleaved, "
            f"median of {d['repeats']}): "
            f"{d['full_ms']:.2f} ms full ({d['params_full']:,} params) vs {d['compressed_ms']:.2f} ms compressed "
            f"({d['params_compressed']:,} params): {d['speedup']:.2f}x faster, on {host_description()}. With the "
            "full decoder's ResNet blocks run by `plain_resnet_forward` (`pipelines/vae_compressed.py`; same outputs, "
            "less per-call work; the pixel-shuffle decoder runs its own that way) it takes "
            f"{d['full_plain_ms']:.2f} ms: {d['speedup_vs_plain']:.2f}x.",
            "",
        ]
    if ev is not None:
        lines += [
            "## Quality (toy-world metrics, `training.evaluate`)",
            "",
            f"K = {ev['num_images']} images per guidance scale, {ev['steps']} steps, seed {ev['seed']}; "
            f"FID on the probe's features, true-vs-true floor {ev['floor_fid']:.3f}. "
            f"Command: `{ev.get('command', 'python -m training.evaluate')}`.",
            "",
            "| guidance | alignment | FID | s/image (batched) |",
            "|---|---|---|---|",
            *[f"| {r['guidance']:g} | {r['alignment']:.4f} | {r['fid']:.3f} | {r['seconds_per_image']:.3f} |"
              for r in ev["results"]],
            "",
        ]  # fmt: skip
    if args.teacher_eval:
        scales = ", ".join(format(r["guidance"], "g") for r in teacher_ev["results"])
        lines += [
            "## Against the teacher (quality targets)",
            "",
            f"Each model at its best evaluated guidance; the teacher's evaluation ({args.teacher_eval}): "
            f"{teacher_ev['steps']} steps, K = {teacher_ev['num_images']}, guidance {scales}.",
            "",
            *target_rows,
            "",
        ]
    if args.recipe:
        lines += ["## Training", "", f"Reproduce: `{args.command}`; bundle/README.md lists every step.", ""]
        recipe = Path(args.recipe)
        timings_file = recipe / "recipe_timings.json"
        timings = json.loads(timings_file.read_text()) if timings_file.exists() else {}
        for stage in [s for s in args.stages.split(",") if s]:
            cfg_file = recipe / stage / "training_config.json"
            if not cfg_file.exists():
                if stage in previous:
                    quoted = previous[stage]
                    if "(quoted from the previous card" not in quoted[0]:
                        quoted = [quoted[0] + f" (quoted from the previous card: no {stage}/ in {args.recipe})",
                                  *quoted[1:]]  # fmt: skip
                    lines += quoted
                continue
            cfg = json.loads(cfg_file.read_text())
            hidden = ("output", "overwrite", "resume")
            if cfg["args"].get("architecture") == "pixel_shuffle":  # the decoder stage's pruning-only option
                hidden += ("width_ratio",)
            elif cfg["args"].get("architecture") == "pruned":
                hidden += ("channels", "layers")
            shown = {k: v for k, v in cfg["args"].items() if v is not None and v is not False and k not in hidden}
            done = recipe / stage / "stage_complete.json"
            result = {k: v for k, v in json.loads(done.read_text()).items() if k != "stage"} if done.exists() else {}
            seconds = result.pop("seconds", None)  # the stage clock: kept time summed across resumes
            if seconds is not None:
                secs = f", {seconds:.0f} s on this CPU"
            else:
                secs = f", {timings[stage]:.0f} s on this CPU" if stage in timings else ""
                if secs and cfg["args"].get("resume"):  # an older run timed by the recipe: one process only
                    secs += " after resuming from a checkpoint (time before the interruption not counted)"
            if result:  # the stage's own result line, e.g. the decoder's PSNR
                secs += "; result: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                                 for k, v in result.items())  # fmt: skip
            module = cfg["stage"] if cfg["stage"] != "evolve_robust" else "robust"
            lines.append(f"- **{stage}** (`training.{module}`{secs}): "
                         + ", ".join(f"{k}={v}" for k, v in sorted(shown.items())))  # fmt: skip
            text = recipe / stage / "text_stage" / "metrics.json"
            if text.exists():  # train_teacher's text-encoder pre-training (from scratch only)
                m = json.loads(text.read_text())
                worst = min(m["per_attribute"], key=m["per_attribute"].get)
                lines.append(f"  - text encoder pre-trained on toy captions, then frozen: {m['all_attributes']:.4f} "
                             f"of {m['heldout_captions']} held-out captions read fully right (lowest attribute: "
                             f"{worst} {m['per_attribute'][worst]:.4f})")  # fmt: skip
        lines.append("")
    out.write_text("\n".join(lines))
    print(f"wrote {out}")


if __name__ == "__main__":
    run_cli(main, parse_args)
