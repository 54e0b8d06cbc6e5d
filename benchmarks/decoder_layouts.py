"""Pixel-shuffle decoder layouts against a VAE's decoder: latency per latent, params and MACs, random weights.

The tool behind the mini bundle's choice of decoder (bundle/README.md): for a VAE folder (e.g. the teacher's,
``bundle/teacher/vae``) and candidate ``PixelShuffleVAEDecoder`` layouts, it times one latent of the VAE's
latent size through each decoder, interleaved (A, B, C, A, B, C, ...), median of ``--repeats`` after
``--warmup`` rounds, and prints a markdown table of the speed-ups against the VAE's decoder. Latency does not
depend on the weights, so the decoders are untrained (seeded); the VAE keeps its own weights.

``PixelShuffleVAEDecoder``'s ResNet blocks run ``plain_resnet_forward``, which skips per-call work of diffusers'
general ``ResnetBlock2D.forward``. So that this does not flatter the ratio, the VAE's decoder is also timed with
its own ResNet blocks run the same way (row ``vae:plain_blocks``, same outputs), and each layout's speed-up is
given against both.

A layout is ``BLOCK:CHANNELS:LAYERS``, e.g. ``resnet:64,16:2,2`` (``BLOCK``: ``resnet`` or ``residual_conv``;
``CHANNELS`` per stage from the latent resolution up; ``LAYERS``, one number or one per stage).

    python -m benchmarks.decoder_layouts --vae bundle/teacher/vae --latent 16 \
        --layouts resnet:64,16:2,2 resnet:48,16:2,2 resnet:64,16:2,1 residual_conv:64,16:2,2 [--repeats 100]
        [--norm-groups 8] [--out runs/decoder_layouts.json]

Not a section of docs/benchmarks.md: its numbers belong to the model they were run for.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from pipelines import PixelShuffleVAEDecoder
from pipelines.devices import DTYPES
from pipelines.profiling import count_decoder_macs, count_decoder_params
from pipelines.vae_compressed import with_plain_resnet_blocks
from training.decoder import pixel_shuffle_layout

from . import common

NAME = "decoder_layouts"


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog=f"python -m benchmarks.{NAME}", description=__doc__.split("\n\n")[0])
    p.add_argument("--vae", required=True, help="AutoencoderKL folder (config.json + weights) to compare against")
    p.add_argument("--latent", type=common.positive_int, default=None,
                   help="latent height = width (default: the VAE's sample_size / its scale factor)")  # fmt: skip
    p.add_argument("--layouts", nargs="+", required=True, help="BLOCK:CHANNELS:LAYERS, e.g. resnet:64,16:2,2")
    p.add_argument("--norm-groups", type=common.positive_int, default=8, help="GroupNorm groups (resnet blocks)")
    p.add_argument("--warmup", type=common.nonneg_int, default=1, help="interleaved warm-up rounds")
    p.add_argument("--repeats", type=common.positive_int, default=100, help="interleaved timed rounds (median)")
    p.add_argument("--device", default=None, choices=["cpu", "cuda", "mps"], help="default: cuda, else mps, else cpu")
    p.add_argument("--dtype", default=None, choices=sorted(DTYPES), help="default: fp16 on cuda/mps, fp32 "
                   "on cpu")  # fmt: skip
    p.add_argument("--threads", type=common.positive_int, default=None, help="torch intra-op threads")
    p.add_argument("--seed", type=int, default=0, help="seed of the untrained decoders' weights")
    p.add_argument("--out", default=None, help="also write the results as JSON to this file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    return common.parse(p, argv)


def parse_layout(text: str) -> tuple[str, list[int], list[int]]:
    """'resnet:64,16:2,2' -> ('resnet', [64, 16], [2, 2]); one LAYERS number applies to every stage."""
    parts = text.split(":")
    if len(parts) != 3:
        raise ValueError(f"layout {text!r} must be BLOCK:CHANNELS:LAYERS, e.g. resnet:64,16:2,2.")
    channels, layers = pixel_shuffle_layout(parts[1], parts[2], f"layout {text!r}: CHANNELS", "LAYERS")
    return parts[0], channels, layers


def run(args) -> dict:
    from diffusers import AutoencoderKL

    device, dtype = common.pick_device(args)
    if not (Path(args.vae) / "config.json").is_file():
        common.fail(f"--vae {args.vae} is not a diffusers AutoencoderKL folder (no config.json).")
    if args.out and Path(args.out).exists() and not args.overwrite:
        common.fail(f"--out {args.out} exists; pass --overwrite to replace it.")
    vae = AutoencoderKL.from_pretrained(args.vae).to(device, dtype).eval()
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    latent = args.latent or vae.config.sample_size // factor
    decoders = {"vae": vae, "vae:plain_blocks": with_plain_resnet_blocks(vae)}
    for text in args.layouts:
        try:
            block, ch, ly = parse_layout(text)
            torch.manual_seed(args.seed)
            decoders[text] = PixelShuffleVAEDecoder.from_vae(vae, ch, tuple(ly), args.norm_groups, block)
            decoders[text].to(device, dtype).eval()
        except ValueError as e:
            common.fail(str(e))
    z = torch.randn(1, vae.config.latent_channels, latent, latent, generator=torch.Generator().manual_seed(0))
    z = z.to(device, dtype)
    fns = {k: (lambda m=m: m.decode(z).sample) for k, m in decoders.items()}
    samples = common.interleaved(fns, device, args.warmup, args.repeats, log=lambda *_: None)
    base = common.summary(samples["vae"])["median_ms"]
    plain = common.summary(samples["vae:plain_blocks"])["median_ms"]
    rows = {}
    for k, m in decoders.items():
        s = common.summary(samples[k])
        rows[k] = {"median_ms": s["median_ms"], "min_ms": s["min_ms"], "speedup": base / s["median_ms"],
                   "speedup_vs_plain_blocks": plain / s["median_ms"], "params": count_decoder_params(m),
                   "macs": count_decoder_macs(m, latent, latent)}  # fmt: skip
    res = common.header(NAME, args, device, dtype)
    res.update(vae=args.vae, latent=[latent, latent], image=[factor * latent] * 2, batch=1, warmup=args.warmup,
               repeats=args.repeats, decoders=rows)  # fmt: skip
    return res


def markdown(res: dict) -> str:
    h, w = res["image"]
    lines = [
        f"Decoders for a {res['latent'][0]}x{res['latent'][1]} latent ({h}x{w} image), batch 1, {res['device']} "
        f"{res['dtype']}, {res['machine']}, {res['date']}; median of {res['repeats']} "
        "interleaved rounds.",
        "",
        "| decoder | median ms | min ms | speed-up vs the VAE's | vs the VAE's, plain blocks | params | MMACs |",
        "|---|---|---|---|---|---|---|",
    ]
    names = {"vae": f"the VAE's ({res['vae']})", "vae:plain_blocks": "the VAE's, plain blocks (same outputs)"}
    for k, r in res["decoders"].items():
        lines.append(f"| {names.get(k, f'`{k}`')} | {r['median_ms']:.3f} | {r['min_ms']:.3f} | {r['speedup']:.2f}x | "
                     f"{r['speedup_vs_plain_blocks']:.2f}x | {r['params']:,} | {r['macs'] / 1e6:.1f} |")  # fmt: skip
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = parse_args(argv)
    common.setup(args)
    res = run(args)
    print(markdown(res))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
