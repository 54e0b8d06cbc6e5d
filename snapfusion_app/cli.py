"""Command line: ``python -m snapfusion_app generate --model PATH_OR_ID --prompt "..." --out image.png``."""

from __future__ import annotations

import argparse
import os
import sys

from .loading import DEFAULT_STUDENT, ModelLoadError, load_pipeline

MAX_SEED = 2**32


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m snapfusion_app", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="generate one image and print the timing breakdown")
    g.add_argument(
        "--model", default=DEFAULT_STUDENT, help="local diffusers folder or Hub id (default: the bundle's student)"
    )
    g.add_argument("--prompt", required=True)
    g.add_argument("--negative-prompt", default=None)
    g.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's recommended)")
    g.add_argument("--guidance", type=float, default=None, help="CFG scale (default: the model's recommended)")
    g.add_argument("--seed", type=int, default=0, help=f"random seed in [0, {MAX_SEED})")
    g.add_argument("--height", type=int, default=None)
    g.add_argument("--width", type=int, default=None)
    g.add_argument("--device", default=None, help="cuda, mps or cpu (default: best available)")
    g.add_argument("--dtype", default=None, help="fp32, fp16 or bf16 (default: fp16 on GPU, fp32 on CPU)")
    g.add_argument("--out", default="image.png", help="output PNG path")
    g.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    return parser.parse_args(argv)


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def main(argv=None) -> int:
    args = parse_args(argv)
    if not 0 <= args.seed < MAX_SEED:
        fail(f"--seed must be in [0, {MAX_SEED}); got {args.seed}.")
    if os.path.exists(args.out) and not args.overwrite:
        fail(f"{args.out} exists; pass --overwrite to replace it.")
    if not args.out.lower().endswith(".png"):
        fail(f"--out must end in .png; got {args.out}.")
    import torch
    import transformers

    import diffusers
    from pipelines import format_timings

    for lib in (diffusers, transformers):  # the CLI prints its own lines only: no load bars or notices
        lib.utils.logging.set_verbosity_error()
        lib.utils.logging.disable_progress_bar()

    try:
        pipe = load_pipeline(args.model, device=args.device, dtype=args.dtype)
        result = pipe(
            args.prompt, negative_prompt=args.negative_prompt, num_inference_steps=args.steps,
            guidance_scale=args.guidance, height=args.height, width=args.width,
            generator=torch.Generator("cpu").manual_seed(args.seed),
        )  # fmt: skip
    except ModelLoadError as e:
        fail(str(e))
    except ValueError as e:
        fail(str(e))
    out_dir = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)
    result.images[0].save(args.out)
    print(f"model: {args.model}")
    print(format_timings(result.timings))
    print(f"saved {args.out}")
    return 0
