"""End-to-end time to a 512 x 512 image: SD-v1.5-sized 50 steps with CFG vs SnapFusion-sized 8 steps with CFG and
the one-pass SnapFusion-sized student at 4 steps.

Both pipelines are ``SnapFusionPipeline``s built in-process with random weights and the same code path, so the
breakdown comes from ``output.timings`` (text encoder, every UNet step, decoder, total):

- SD-v1.5-sized: CLIP ViT-L/14 text model config (768 hidden, 12 layers, 12 heads, 3072 MLP, 77 positions,
  49,408 vocab), the ``sd15`` UNet preset, SD-v1.5's VAE decoder, DDIM, 50 steps;
- SnapFusion-sized: the same text encoder, the ``snapfusion`` UNet preset, the 50%-pruned decoder, 8 steps;
- one pass per step: the same, with a guidance embedding (``time_cond_proj_dim`` 256, ``pipelines/guidance.py``), so
  each step is one batch-1 UNet pass with the guidance scale as an input; 4 steps.

By default both loops run in full and the totals are **measured**. ``--sd-measured-steps K`` runs only K SD-v1.5
steps and reports its 50-step total **composed from measured components** (text encoder + 50 x median step +
decoder), labelled as such. Also the bundle's teacher (50 steps) vs student (8 steps) and, when ``<bundle>/onepass``
exists, the one-pass student (its recommended steps), at the bundle's image size, full loops, measured.

Memory format (``--memory-format``): ``auto`` (default) probes each 512px pipeline's UNet and decoder in both
layouts, contiguous (NCHW) and ``torch.channels_last`` (NHWC, what oneDNN's CPU convolutions prefer), with one-step
calls (one round to warm each layout up, one timed), and runs each component in the faster layout, so every
pipeline, the SD-v1.5 baseline included, is timed at its best; the probe's milliseconds and choices are in the JSON.
``contiguous`` or ``channels_last`` put every pipeline in that layout. The bundle's models stay contiguous.

    python -m benchmarks.end_to_end [--quick] [--sd-measured-steps K] [--repeats 1] [--bundle bundle]
        [--bundle-repeats 3] [--memory-format auto] [--device cuda] [--out-dir docs] [--overwrite]
"""

from __future__ import annotations

import copy
import os
import statistics
import tempfile

import torch
from transformers import CLIPTextConfig, CLIPTextModel

from pipelines import CompressedVAEDecoder, SnapFusionPipeline
from pipelines.guidance import add_guidance_embedding
from pipelines.loading import ModelLoadError, load_pipeline
from pipelines.profiling import count_decoder_macs, count_decoder_params, count_macs, count_params
from pipelines.schedulers import ddim_scheduler
from pipelines.tokenizer import build_clip_tokenizer

from . import common

NAME = "end_to_end"
PROMPT = "a photo of an astronaut riding a horse on mars"
TARGET_SPEEDUP = 10.0  # issue 7: SnapFusion 8 steps >= 10x faster than SD-v1.5 50 steps, end to end
TARGET_ONEPASS = 25.0  # issue 21: one pass per step, 4 steps, >= 25x faster than SD-v1.5 50 steps with CFG
TARGET_BUNDLE_ONEPASS = 30.0  # issue 21: the bundle's one-pass student >= 30x faster than its 50-step teacher
GUIDANCE_EMBEDDING_DIM = 256
MEMORY_FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
# CLIP ViT-L/14 text model (SD-v1.5's text encoder); --quick narrows it.
CLIP_L14 = dict(
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    projection_dim=768,
)
QUICK_CLIP = dict(
    CLIP_L14,
    hidden_size=common.QUICK_UNET["cross_attention_dim"],
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
)
PAPER = {"unet_a100_ms": (2560, 209.6), "iphone_total_s": (85, 1.84)}  # Table 5 (A100 TensorRT), Table 1 (iPhone)


def parse_args(argv=None):
    p = common.parser(NAME, __doc__.split("\n\n")[0])
    p.add_argument(
        "--size", type=common.positive_int, default=None, help="image height = width (default 512; 128 with --quick)"
    )
    p.add_argument("--sd-steps", type=common.positive_int, default=50, help="SD-v1.5 steps (default 50)")
    p.add_argument("--sf-steps", type=common.positive_int, default=8, help="SnapFusion steps (default 8)")
    p.add_argument("--onepass-steps", type=common.positive_int, default=4,
                   help="steps of the one-pass (guidance-embedded) SnapFusion-sized UNet (default 4)")  # fmt: skip
    common.add_sd_measured_steps(p)
    p.add_argument("--guidance", type=float, default=7.5, help="CFG scale for every run (> 1: batch 2 per step)")
    p.add_argument("--warmup", type=common.nonneg_int, default=1, help="1-step warm-up calls per pipeline")
    p.add_argument("--repeats", type=common.positive_int, default=1, help="timed calls per pipeline (median)")
    p.add_argument("--bundle", default="bundle", help="folder with teacher/ and student/ (default: bundle)")
    p.add_argument(
        "--bundle-size",
        type=common.positive_int,
        default=None,
        help="image size for the bundle run (default: each model's own sample size)",
    )
    p.add_argument("--teacher-steps", type=common.positive_int, default=50)
    p.add_argument("--student-steps", type=common.positive_int, default=8)
    p.add_argument("--bundle-repeats", type=common.positive_int, default=3, help="timed calls per bundle model")
    p.add_argument("--memory-format", choices=["auto", *MEMORY_FORMATS], default="auto",
                   help="layout of the 512px pipelines' UNets and decoders: auto = the faster of the two per "
                   "component, probed in this run (default)")  # fmt: skip
    return common.parse(p, argv)


def set_memory_format(pipe: SnapFusionPipeline, unet: str, decoder: str) -> None:
    """Put ``pipe``'s UNet and the decoder it uses in the named layouts (``MEMORY_FORMATS``)."""
    pipe.unet.to(memory_format=MEMORY_FORMATS[unet])
    pipe.decoder.to(memory_format=MEMORY_FORMATS[decoder])


def probe_memory_format(pipe: SnapFusionPipeline, size: int, guidance: float, seed: int) -> dict:
    """One-step calls of ``pipe`` in each layout, a warm-up round then a timed one; the UNet and the decoder each
    take the layout with the smaller time (``unet_ms_per_step``, ``decoder_ms``). Leaves ``pipe`` in that layout."""
    ms = {}
    for timed in (False, True):
        for fmt in MEMORY_FORMATS:
            set_memory_format(pipe, fmt, fmt)
            t = pipe(PROMPT, num_inference_steps=1, guidance_scale=guidance, height=size, width=size,
                     output_type="np", generator=torch.Generator().manual_seed(seed)).timings  # fmt: skip
            if timed:
                ms[fmt] = {"unet_ms": t["unet_ms_per_step"][0], "decoder_ms": t["decoder_ms"]}
    chosen = {part: min(MEMORY_FORMATS, key=lambda f: ms[f][f"{part}_ms"]) for part in ("unet", "decoder")}
    set_memory_format(pipe, chosen["unet"], chosen["decoder"])
    return {"probe_ms": ms, **chosen}


def build_pipelines(args, tok_dir: str) -> dict[str, tuple[str, SnapFusionPipeline]]:
    tokenizer = build_clip_tokenizer(PROMPT.split(), tok_dir, model_max_length=77)
    vocab = tokenizer.get_vocab()
    ids = dict(
        bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"]
    )
    torch.manual_seed(args.seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(**(QUICK_CLIP if args.quick else CLIP_L14), **ids)).eval()
    vae = common.sd_vae(args.quick, args.seed)
    pruned = CompressedVAEDecoder.from_vae(vae, 0.5).eval()

    def pipeline(unet: str, steps: int, guidance_embedded: bool = False, **decoder) -> SnapFusionPipeline:
        net = common.preset_unet(unet, args.quick, args.seed)
        if guidance_embedded:
            net = add_guidance_embedding(net, GUIDANCE_EMBEDDING_DIM)
        return SnapFusionPipeline(
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=net,
            scheduler=ddim_scheduler(spacing="leading"),  # SD-v1.5's shipped schedule; a step costs the same
            default_num_inference_steps=steps,
            default_guidance_scale=args.guidance,
            **decoder,
        )

    return {
        "sd15": ("SD-v1.5-sized (sd15 UNet, SD decoder)", pipeline("sd15", args.sd_steps, vae=vae)),
        "snapfusion": (
            "SnapFusion-sized (snapfusion UNet, pruned decoder)",
            pipeline("snapfusion", args.sf_steps, vae=None, vae_decoder=pruned),
        ),
        "onepass": (
            "SnapFusion-sized, one pass per step (guidance as input, pruned decoder)",
            pipeline("snapfusion", args.onepass_steps, guidance_embedded=True, vae=None,
                     vae_decoder=copy.deepcopy(pruned)),  # its own copy: --memory-format sets each pipeline's
        ),
    }


def timed_calls(
    pipes: dict, steps: dict, size: int | None, guidance: float | dict, warmup: int, repeats: int, seed: int
) -> dict[str, list[dict]]:
    """``output.timings`` of ``repeats`` calls per pipeline, interleaved, after ``warmup`` 1-step calls each.
    ``guidance``: one scale for all, or one per pipeline key."""

    def timings(key: str, num_steps: int) -> dict:
        generator = torch.Generator().manual_seed(seed)
        return pipes[key][1](
            PROMPT,
            num_inference_steps=num_steps,
            guidance_scale=guidance[key] if isinstance(guidance, dict) else guidance,
            height=size,
            width=size,
            output_type="np",
            generator=generator,
        ).timings

    for r in range(warmup):
        for key in pipes:
            print(f"  warm-up {r + 1}/{warmup} {key}: {timings(key, 1)['total_ms']:,.0f} ms")
    runs: dict[str, list[dict]] = {key: [] for key in pipes}
    for r in range(repeats):
        for key in pipes:
            runs[key].append(timings(key, steps[key]))
            t = runs[key][-1]
            print(f"  run {r + 1}/{repeats} {key}: {t['steps_run']} steps, {t['total_ms']:,.0f} ms")
    return runs


def summarise(runs: list[dict], steps: int) -> dict:
    """Median components over calls; the total is measured when the loop ran ``steps`` steps, else composed."""
    med = lambda key: statistics.median(t[key] for t in runs)  # noqa: E731
    step_ms = statistics.median(ms for t in runs for ms in t["unet_ms_per_step"])
    full = all(t["steps_run"] == steps for t in runs)
    composed = med("text_encoder_ms") + steps * step_ms + med("decoder_ms")
    out = {
        "steps": steps,
        "steps_run": runs[0]["steps_run"],
        "cfg": runs[0]["cfg"],
        "guidance_embedded": runs[0].get("guidance_embedded", False),
        "device": runs[0]["device"],
        "text_encoder_ms": med("text_encoder_ms"),
        "unet_ms_per_step_median": step_ms,
        "unet_ms_total": steps * step_ms if not full else med("unet_ms_total"),
        "decoder_ms": med("decoder_ms"),
        "composed_total_ms": composed,
        "total_ms": med("total_ms") if full else composed,
        "total_kind": "measured (full loop)" if full else "composed from measured components",
        "calls": [dict(t) for t in runs],
    }
    return out


def bundle_section(args, device) -> dict:
    teacher, student, onepass = (os.path.join(args.bundle, n) for n in ("teacher", "student", "onepass"))
    missing = [p for p in (teacher, student) if not os.path.isfile(os.path.join(p, "model_index.json"))]
    steps = {"teacher": args.teacher_steps, "student": args.student_steps}
    if missing:
        return {
            "skipped": True,
            "steps": steps,
            "reason": f"{' and '.join(missing)} not found (no trained bundle yet).",
        }
    try:
        pipes = {
            "teacher": (teacher, load_pipeline(teacher, device=device.type, dtype=args.dtype)),
            "student": (student, load_pipeline(student, device=device.type, dtype=args.dtype)),
        }
        if os.path.isfile(os.path.join(onepass, "model_index.json")):
            pipes["onepass"] = (onepass, load_pipeline(onepass, device=device.type, dtype=args.dtype))
            steps["onepass"] = pipes["onepass"][1].config.default_num_inference_steps
    except ModelLoadError as e:
        return {"skipped": True, "steps": steps, "reason": f"could not load the bundle: {e}"}
    guidance = {key: pipe.config.default_guidance_scale for key, (_, pipe) in pipes.items()}
    runs = timed_calls(pipes, steps, args.bundle_size, guidance, args.warmup, args.bundle_repeats, args.seed)
    out = {"skipped": False, "steps": steps, "repeats": args.bundle_repeats, "models": {}}
    for key, (path, pipe) in pipes.items():
        entry = summarise(runs[key], steps[key])
        size = args.bundle_size or pipe.unet.config.sample_size * pipe.vae_scale_factor
        decoder = pipe.decoder
        entry.update(
            path=path,
            image=[size, size],
            unet_params=count_params(pipe.unet),
            unet_class=type(pipe.unet).__name__,
            decoder_params=count_decoder_params(decoder),
        )
        out["models"][key] = entry
    out["speedup"] = out["models"]["teacher"]["total_ms"] / out["models"]["student"]["total_ms"]
    if "onepass" in out["models"]:
        s = out["models"]["teacher"]["total_ms"] / out["models"]["onepass"]["total_ms"]
        out["onepass_speedup"] = s
        out["onepass_target"] = {"speedup_min": TARGET_BUNDLE_ONEPASS, "met": s >= TARGET_BUNDLE_ONEPASS}
    return out


def run(args) -> dict:
    device, dtype = common.pick_device(args)
    size = args.size or (128 if args.quick else 512)
    if size % 64:
        common.fail(f"--size must be a multiple of 64 (VAE factor 8 x UNet downsampling 8); got {size}.")
    if args.sd_measured_steps is not None and args.sd_measured_steps >= args.sd_steps:
        common.fail(
            f"--sd-measured-steps ({args.sd_measured_steps}) must be below --sd-steps ({args.sd_steps}); "
            f"leave it out to run the full loop."
        )
    if args.guidance <= 1.0:
        common.fail(f"--guidance must be > 1 (this benchmark times steps with CFG, batch 2); got {args.guidance}.")
    res = common.header(NAME, args, device, dtype)
    res.update(
        image=[size, size],
        prompt=PROMPT,
        guidance=args.guidance,
        warmup=args.warmup,
        repeats=args.repeats,
        weights="random (seeded)",
    )

    # 1. pipelines with random weights (the text encoder is shared)
    with tempfile.TemporaryDirectory(prefix="bench_tok_") as tok_dir:
        pipes = build_pipelines(args, tok_dir)
        res["memory_format"] = {"mode": args.memory_format}
        for key, (_, pipe) in pipes.items():
            pipe.to(device=device, dtype=dtype)
            pipe.set_progress_bar_config(disable=True)
            if args.memory_format == "auto":
                print(f"  memory-format probe {key} ...", flush=True)
                res["memory_format"][key] = probe_memory_format(pipe, size, args.guidance, args.seed)
            else:
                set_memory_format(pipe, args.memory_format, args.memory_format)
                res["memory_format"][key] = {"unet": args.memory_format, "decoder": args.memory_format}
        latent = size // 8
        res["pipelines"] = {}
        for key, (label, pipe) in pipes.items():
            decoder = pipe.decoder
            res["pipelines"][key] = {
                "label": label,
                "text_encoder_params": count_params(pipe.text_encoder),
                "unet_params": count_params(pipe.unet),
                "unet_macs_per_step": count_macs(pipe.unet, latent, latent),
                "decoder_params": count_decoder_params(decoder),
                "decoder_macs": count_decoder_macs(decoder, latent, latent),
            }

        # 2. timed calls (the SD-v1.5 loop may be cut to K steps: then its total is composed, and labelled so)
        steps_run = {"sd15": args.sd_measured_steps or args.sd_steps, "snapfusion": args.sf_steps,
                     "onepass": args.onepass_steps}  # fmt: skip
        runs = timed_calls(pipes, steps_run, size, args.guidance, args.warmup, args.repeats, args.seed)
    for key, steps in (("sd15", args.sd_steps), ("snapfusion", args.sf_steps), ("onepass", args.onepass_steps)):
        res["pipelines"][key].update(summarise(runs[key], steps))
    res.update(compare(res["pipelines"]["sd15"], res["pipelines"]["snapfusion"]))
    res["onepass"] = compare(res["pipelines"]["sd15"], res["pipelines"]["onepass"], TARGET_ONEPASS)
    res["paper"] = {
        "unet_part_a100_tensorrt_ms": list(PAPER["unet_a100_ms"]),
        "unet_part_a100_speedup": 2560 / 209.6,
        "iphone14pro_total_s": list(PAPER["iphone_total_s"]),
    }

    # 3. the bundle's teacher vs student (trained mini models), full loops
    res["bundle"] = bundle_section(args, device)
    return res


def compare(sd: dict, sf: dict, target: float = TARGET_SPEEDUP) -> dict:
    """SnapFusion against SD-v1.5 from their ``summarise``d entries: speed-ups (totals, composed totals, UNet parts),
    the per-step ratio, and the verdict on the >= ``target``x target (10x for the 8-step student)."""
    speedup = sd["total_ms"] / sf["total_ms"]
    return {
        "speedup": speedup,
        "speedup_composed": sd["composed_total_ms"] / sf["composed_total_ms"],
        "unet_part_speedup": sd["unet_ms_total"] / sf["unet_ms_total"],
        "step_ratio": sf["unet_ms_per_step_median"] / sd["unet_ms_per_step_median"],
        "target": {"speedup_min": target, "met": speedup >= target},
    }


def target_text(res: dict) -> str:
    s, where = res["speedup"], f"{res['device']} {res['dtype']}"
    sd, sf = res["pipelines"]["sd15"], res["pipelines"]["snapfusion"]
    paper = (
        f"Paper: the UNet part alone is {2560 / 209.6:.1f}x faster on an A100 with TensorRT (Table 5: "
        f"50 x 51.2 = 2,560 ms vs 8 x 26.2 = 209.6 ms); on an iPhone 14 Pro the whole pipeline takes ~85 s vs "
        f"1.84 s (Table 1)."
    )
    if s >= TARGET_SPEEDUP:
        return (
            f"**Target met:** SnapFusion {sf['steps']} steps is {s:.1f}x faster end to end ({where}; "
            f"target >= 10x). {paper}"
        )
    fewer = sd["steps"] / sf["steps"]
    max_step_ratio = fewer / TARGET_SPEEDUP  # speed-up ~= fewer steps / per-step ratio, when the UNet is the total
    share = lambda p: 100 * p["unet_ms_total"] / p["total_ms"]  # noqa: E731
    return (
        f"**Target missed:** {s:.1f}x end to end on {where}, {TARGET_SPEEDUP - s:.1f} short of >= 10x "
        f"({100 * (1 - s / TARGET_SPEEDUP):.0f}% short). Why: the UNet is {share(sd):.0f}% (SD-v1.5) and "
        f"{share(sf):.0f}% (SnapFusion) of the totals, so the speed-up is about {sd['steps']}/{sf['steps']} = "
        f"{fewer:.2f}x fewer steps divided by the per-step ratio; 10x would need a SnapFusion step of at most "
        f"{max_step_ratio:.3f}x an SD-v1.5 step, and here it is {res['step_ratio']:.3f}x (see the UNet section). "
        f"{paper}"
    )


def plot(res: dict, path: str) -> None:
    plt = common.pyplot()
    pipes = res["pipelines"]
    labels = [f"{p['label']}\n{p['steps']} steps ({p['total_kind'].split(' (')[0]})" for p in pipes.values()]
    parts = [
        ("text encoder", "text_encoder_ms", "tab:gray"),
        ("UNet (all steps)", "unet_ms_total", "tab:blue"),
        ("decoder", "decoder_ms", "tab:orange"),
    ]
    fig, ax = plt.subplots(figsize=(8, 3.2), dpi=110)
    left = [0.0] * len(pipes)
    for name, key, color in parts:
        widths = [p[key] / 1000 for p in pipes.values()]
        ax.barh(range(len(pipes)), widths, left=left, color=color, label=name)
        left = [a + b for a, b in zip(left, widths)]
    ax.set_yticks(range(len(pipes)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("seconds to one image")
    ax.set_title(
        f"{res['image'][0]}x{res['image'][1]}, CFG {res['guidance']:g}, {res['device']} {res['dtype']}: "
        f"{res['speedup']:.1f}x faster",
        fontsize=10,
    )
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    common.save_figure(fig, path)


def _component_rows(entries: dict) -> list[list]:
    rows = []
    for p in entries.values():
        rows.append(
            [
                p["label"],
                p["steps"],
                "yes" if p["cfg"] else "no: one pass, guidance as input" if p.get("guidance_embedded") else "no",
                common.fmt_ms(p["text_encoder_ms"]),
                common.fmt_ms(p["unet_ms_per_step_median"]),
                common.fmt_ms(p["unet_ms_total"]),
                common.fmt_ms(p["decoder_ms"]),
                common.fmt_ms(p["total_ms"]),
                p["total_kind"],
            ]
        )
    return rows


def memory_text(res: dict) -> str:
    """The layouts the 512px pipelines ran in (runs before ``--memory-format`` were contiguous)."""
    mf = res.get("memory_format")
    if mf is None:
        return " Memory format: contiguous (NCHW) throughout."
    parts = []
    for key, p in res["pipelines"].items():
        m = mf[key]
        probe = m.get("probe_ms")
        ms = "" if probe is None else " (one-step probe, UNet / decoder ms: " + "; ".join(
            f"{f} {common.fmt_ms(v['unet_ms'])} / {common.fmt_ms(v['decoder_ms'])}" for f, v in probe.items()) + ")"
        parts.append(f"{p['label'].split(' (')[0]}: UNet {m['unet']}, decoder {m['decoder']}{ms}")
    how = ("each component in the faster layout of a probe in this run (`--memory-format auto`)"
           if mf["mode"] == "auto" else f"`--memory-format {mf['mode']}`")  # fmt: skip
    return f" Memory format, {how}: " + "; ".join(parts) + "."


def markdown(res: dict, out: common.Outputs) -> str:
    h, w = res["image"]
    pipes = res["pipelines"]
    sd = pipes["sd15"]
    heads = [
        "pipeline",
        "steps",
        "CFG",
        "text encoder ms",
        "UNet ms / step (median)",
        "UNet ms (all steps)",
        "decoder ms",
        "total ms",
        "total is",
    ]
    how = (
        "Both loops ran in full; totals are measured by the pipeline (`output.timings`, wall clock, including "
        "scheduler and post-processing)."
        if sd["total_kind"].startswith("measured")
        else f"SD-v1.5's loop ran {sd['steps_run']} of {sd['steps']} steps: its total is **composed from measured "
        f"components** (text encoder + {sd['steps']} x median step + decoder, each measured in the pipeline), "
        f"not measured as one run."
    )
    lines = [
        f"## End to end: time to one {h}x{w} image with CFG",
        "",
        common.machine_paragraph(res),
        "",
        f'Random weights, prompt "{res["prompt"]}", guidance {res["guidance"]:g} (batch 2 per step), '
        f"warm-up: {res['warmup']} one-step call(s) per pipeline; median of {res['repeats']} timed call(s). {how}"
        + memory_text(res),
        "",
        common.md_table(heads, _component_rows(pipes)),
        "",
        f"**Speed-up: {res['speedup']:.1f}x end to end** ({res['speedup_composed']:.1f}x composed vs composed), "
        f"**{res['unet_part_speedup']:.1f}x for the UNet part** (per-step ratio {res['step_ratio']:.3f}).",
        "",
        target_text(res),
        "",
    ]
    if "onepass" in res:
        o, op = res["onepass"], pipes["onepass"]
        verdict = ("**Target met**" if o["target"]["met"] else
                   f"**Target missed** by {o['target']['speedup_min'] - o['speedup']:.1f}x")  # fmt: skip
        lines += [
            f"**One pass per step, {op['steps']} steps: {o['speedup']:.1f}x faster end to end than SD-v1.5 "
            f"{sd['steps']} steps with CFG** ({o['unet_part_speedup']:.1f}x for the UNet part; per-step ratio "
            f"{o['step_ratio']:.3f}, batch 1 against batch 2). {verdict} (>= {o['target']['speedup_min']:g}x, "
            "issue 21). Random weights: the guidance embedding adds one linear layer; the speed comes from "
            "running one UNet pass per step and fewer steps.",
            "",
        ]
    counts = [  # (column, formatter, key)
        ("text encoder params", common.fmt_int, "text_encoder_params"),
        ("UNet params", common.fmt_int, "unet_params"),
        ("UNet GMACs / step", common.fmt_gmacs, "unet_macs_per_step"),
        ("decoder params", common.fmt_int, "decoder_params"),
        ("decoder GMACs", common.fmt_gmacs, "decoder_macs"),
    ]
    rows = [[p["label"]] + [fmt(p[key]) for _, fmt, key in counts] for p in pipes.values()]
    lines += [
        common.md_table(["pipeline"] + [column for column, _, _ in counts], rows),
        "",
        f"![End to end]({out.png_link('breakdown')})",
        "",
    ]

    b = res["bundle"]
    lines += [
        f"### The bundle: teacher {b['steps']['teacher']} steps vs student {b['steps']['student']} steps "
        f"(trained mini models)",
        "",
    ]
    if b["skipped"]:
        lines += [
            f"Skipped: {b['reason']} Re-run this benchmark once the training recipe has written the bundle "
            f"(or point `--bundle` at a folder with teacher/ and student/).",
            "",
        ]
    else:
        m = b["models"]
        for key in m:
            m[key]["label"] = f"{key} ({m[key]['path']}, {m[key]['unet_class']}, {m[key]['image'][0]}px)"
        lines += [
            f"Real trained weights, full loops, measured; median of {b['repeats']} call(s) each.",
            "",
            common.md_table(heads, _component_rows(m)),
            "",
            f"**Student vs teacher: {b['speedup']:.1f}x faster end to end.**",
        ]
        if "onepass_speedup" in b:
            t = b["onepass_target"]
            lines += [
                "",
                f"**One-pass student ({b['steps']['onepass']} steps) vs teacher: {b['onepass_speedup']:.1f}x faster "
                f"end to end**: target >= {t['speedup_min']:g}x "
                + ("met." if t["met"] else f"**missed** by {t['speedup_min'] - b['onepass_speedup']:.1f}x."),
            ]
    return "\n".join(lines)


def main(argv=None) -> int:
    """Time both pipelines (and the bundle's); write end_to_end.json, .md and _breakdown.png."""
    return common.run_section(NAME, argv, parse_args, run, markdown, plot)


if __name__ == "__main__":
    raise SystemExit(main())
