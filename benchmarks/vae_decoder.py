"""VAE decoder at 512 x 512: SD-v1.5's decoder vs the 50%-pruned decoder (paper Sec. 5), random weights.

The SD decoder is ``AutoencoderKL.decode`` with SD-v1.5's config (block_out_channels (128, 256, 512, 512),
layers_per_block 2, 4 latent channels, 32 norm groups); the pruned one is
``CompressedVAEDecoder.from_vae(vae, 0.5)``. Both decode one (1, 4, 64, 64) latent, interleaved (A, B, A, B, ...),
median of ``--repeats`` after ``--warmup`` rounds.

    python -m benchmarks.vae_decoder [--quick] [--repeats 5] [--warmup 1] [--width-ratio 0.5] [--device cuda]
        [--out-dir docs] [--overwrite]
"""

from __future__ import annotations

import torch

from pipelines import CompressedVAEDecoder
from pipelines.profiling import count_decoder_macs, count_decoder_params

from . import common

NAME = "vae_decoder"
TARGET_SPEEDUP = 3.0  # issue 7: pruned decoder >= 3x faster
PAPER = {"speedup": 3.2, "iphone_ms": (369, 116), "params_m": (50, 13)}  # paper Sec. 5 / Table 1


def parse_args(argv=None):
    p = common.parser(NAME, __doc__.split("\n\n")[0])
    p.add_argument(
        "--latent",
        type=common.positive_int,
        default=None,
        help="latent height = width (default 64, i.e. 512x512 images; 16 with --quick)",
    )
    p.add_argument("--width-ratio", type=float, default=0.5, help="channels kept by the pruned decoder")
    p.add_argument("--warmup", type=common.nonneg_int, default=1, help="interleaved warm-up rounds")
    p.add_argument("--repeats", type=common.positive_int, default=5, help="interleaved timed rounds (median)")
    return common.parse(p, argv)


def run(args) -> dict:
    device, dtype = common.pick_device(args)
    latent = args.latent or (16 if args.quick else 64)
    res = common.header(NAME, args, device, dtype)
    res.update(
        latent=[latent, latent],
        image=[8 * latent, 8 * latent],
        batch=1,
        warmup=args.warmup,
        repeats=args.repeats,
        width_ratio=args.width_ratio,
        weights="random (seeded)",
    )

    # 1. decoders: SD-v1.5's (post_quant_conv + decoder of the AutoencoderKL) and the pruned copy
    vae = common.sd_vae(args.quick, args.seed)
    try:
        pruned = CompressedVAEDecoder.from_vae(vae, args.width_ratio).eval()
    except ValueError as e:
        common.fail(str(e))
    decoders = {
        "sd15": ("SD-v1.5 decoder", vae, count_decoder_params(vae)),
        "pruned": (f"pruned decoder ({args.width_ratio:g} width)", pruned, count_decoder_params(pruned)),
    }
    res["decoders"] = {}
    for key, (label, model, params) in decoders.items():
        macs = count_decoder_macs(model, latent, latent)
        res["decoders"][key] = {
            "label": label,
            "params": params,
            "macs": macs,
            "gmacs": macs / 1e9,
            "block_out_channels": list(model.config.block_out_channels),
        }
        print(f"{label}: {params:,} params, {macs / 1e9:.1f} GMACs")

    # 2. latency, interleaved
    z = torch.randn(1, 4, latent, latent, generator=torch.Generator().manual_seed(args.seed))  # (1, 4, h, w)
    z = z.to(device, dtype)
    fns = {}
    for key, (_, model, _) in decoders.items():
        model.to(device=device, dtype=dtype)
        fns[key] = lambda m=model: m.decode(z, return_dict=False)[0]  # (1, 3, 8h, 8w)
    samples = common.interleaved(fns, device, args.warmup, args.repeats)
    for key in decoders:
        res["decoders"][key]["latency"] = common.summary(samples[key])
    res.update(compare(res["decoders"]["sd15"], res["decoders"]["pruned"]))
    res["paper"] = {
        "speedup": PAPER["speedup"],
        "iphone14pro_ms": list(PAPER["iphone_ms"]),
        "params_millions": list(PAPER["params_m"]),
    }
    return res


def compare(sd: dict, pruned: dict) -> dict:
    """The pruned decoder against SD-v1.5's: speed-up of the median latencies, parameter and MAC ratios, and the
    verdict on the >= 3x target."""
    speedup = sd["latency"]["median_ms"] / pruned["latency"]["median_ms"]
    return {
        "speedup": speedup,
        "params_ratio": pruned["params"] / sd["params"],
        "macs_ratio": pruned["macs"] / sd["macs"],
        "target": {"speedup_min": TARGET_SPEEDUP, "met": speedup >= TARGET_SPEEDUP},
    }


def target_text(res: dict) -> str:
    s, where = res["speedup"], f"{res['device']} {res['dtype']}"
    paper = (
        f"Paper: {PAPER['params_m'][0]}M -> {PAPER['params_m'][1]}M parameters and {PAPER['speedup']}x faster "
        f"(Sec. 5; {PAPER['iphone_ms'][0]} -> {PAPER['iphone_ms'][1]} ms on an iPhone 14 Pro, Table 1)."
    )
    if s >= TARGET_SPEEDUP:
        return f"**Target met:** the pruned decoder is {s:.2f}x faster ({where}; target >= 3x). {paper}"
    why = (
        f"Likely reason (not measured separately): halving every layer's channels cuts the counted MACs to "
        f"{res['macs_ratio']:.3f}x (1 / MAC ratio = {1 / res['macs_ratio']:.2f}x), but the uncounted element-wise "
        f"work (GroupNorm, SiLU, residual adds, up-sampling of full-resolution feature maps) only halves."
    )
    short = f"{TARGET_SPEEDUP - s:.2f} short of the >= 3x target ({100 * (1 - s / TARGET_SPEEDUP):.0f}% short)"
    return f"**Target missed:** {s:.2f}x faster on {where}, {short}. {why} {paper}"


def plot(res: dict, path: str) -> None:
    plt = common.pyplot()
    decs = res["decoders"]
    labels = [d["label"] for d in decs.values()]
    panels = [
        ("parameters (M)", [d["params"] / 1e6 for d in decs.values()]),
        ("GMACs", [d["macs"] / 1e9 for d in decs.values()]),
        ("median ms", [d["latency"]["median_ms"] for d in decs.values()]),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.4), dpi=110)
    for ax, (title, values) in zip(axes, panels):
        ax.bar(range(len(values)), values, color=["tab:blue", "tab:orange"])
        ax.set_xticks(range(len(values)), labels, fontsize=8)
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    where = f"{res['image'][0]}x{res['image'][1]} image, {res['device']} {res['dtype']}"
    common.save_figure(fig, path, f"VAE decoder, {where}: {res['speedup']:.2f}x faster")


def markdown(res: dict, out: common.Outputs) -> str:
    h, w = res["image"]
    rows = []
    for d in res["decoders"].values():
        lat = d["latency"]
        rows.append(
            [
                d["label"],
                "(" + ", ".join(map(str, d["block_out_channels"])) + ")",
                common.fmt_int(d["params"]),
                common.fmt_gmacs(d["macs"]),
                common.fmt_ms(lat["median_ms"]),
                common.fmt_ms(lat["min_ms"]),
            ]
        )
    rows.append(
        [
            "**pruned / SD**",
            "",
            common.fmt_ratio(res["params_ratio"]),
            common.fmt_ratio(res["macs_ratio"]),
            f"{common.fmt_ratio(1 / res['speedup'])} ({res['speedup']:.2f}x faster)",
            "",
        ]
    )
    lines = [
        f"## VAE decoder ({h}x{w} image from a {res['latent'][0]}x{res['latent'][1]} latent)",
        "",
        common.machine_paragraph(res),
        "",
        f"Random weights; median of {res['repeats']} interleaved runs after {res['warmup']} warm-up round(s). "
        f"Parameters are those decoding uses (post_quant_conv + decoder; the encoder is not counted).",
        "",
        common.md_table(["decoder", "channels", "params", "GMACs", "median ms", "min ms"], rows),
        "",
        target_text(res),
        "",
        f"![VAE decoder]({out.png_link('bars')})",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    """Time the two decoders; write vae_decoder.json, .md and _bars.png under <out-dir>/benchmarks/."""
    return common.run_section(NAME, argv, parse_args, run, markdown, plot)


if __name__ == "__main__":
    raise SystemExit(main())
