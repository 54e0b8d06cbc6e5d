"""Command line: ``python -m snapfusion_app generate --model PATH_OR_ID --prompt "..." --out image.png``.

Fast to say no: ``--help`` and a bad flag import nothing heavy (torch, diffusers load only to generate); every
refusal is one line ``error: ...`` naming the flag, exit code 2.
"""

from __future__ import annotations

import argparse
import os
import re
import sys

from .inputs import MAX_SEED, STEPS_MIN, check_int, check_seed, dropped_text, is_number, token_limit
from .loading import DEFAULT_STUDENT

# The pipeline's argument names (as its ValueErrors write them, in backticks) and the flags that set them.
FLAGS = {"num_inference_steps": "--steps", "guidance_scale": "--guidance", "negative_prompt": "--negative-prompt",
         "prompt": "--prompt", "height": "--height", "width": "--width"}  # fmt: skip


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m snapfusion_app", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="generate one image and print the timing breakdown")
    g.add_argument(
        "--model", default=DEFAULT_STUDENT,
        help="local diffusers folder or Hub id (default: the bundle's student; bundle/onepass: the one-pass student)",
    )  # fmt: skip
    g.add_argument("--prompt", required=True)
    g.add_argument("--negative-prompt", default=None,
                   help="not for a one-pass model (guidance as a UNet input: no unconditional branch)")  # fmt: skip
    g.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's recommended)")
    g.add_argument("--guidance", type=float, default=None,
                   help="guidance scale: CFG, or the UNet's input for a one-pass model, within the range it was "
                        "trained on (default: the model's recommended)")  # fmt: skip
    g.add_argument("--seed", type=int, default=0, help=f"random seed in [0, {MAX_SEED})")
    g.add_argument("--height", type=int, default=None)
    g.add_argument("--width", type=int, default=None)
    g.add_argument("--device", default=None, help="cuda, mps or cpu (default: best available)")
    g.add_argument("--dtype", default=None, help="fp32, fp16 or bf16 (default: fp16 on GPU, fp32 on CPU)")
    g.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (env SNAPFUSION_NUM_THREADS; default: the idle cores this process "
                        "may use, at least 1)")  # fmt: skip
    g.add_argument("--out", default="image.png", help="output PNG path")
    g.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    return parser.parse_args(argv)


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def flag_names(message: str) -> str:
    """A library message with its argument names (`num_inference_steps`) replaced by this CLI's flags (--steps)."""
    return re.sub(r"`(\w+)`", lambda m: FLAGS.get(m.group(1), m.group(0)), message)


def check_args(args: argparse.Namespace) -> None:
    """Everything that can be checked before loading a model (the model's own limits are checked by the pipeline)."""
    check_seed(args.seed, "--seed")
    if args.steps is not None:
        check_int(args.steps, "--steps", STEPS_MIN, 10**6)
    if args.guidance is not None and not is_number(args.guidance):
        raise ValueError(f"--guidance must be a finite number; got {args.guidance}.")
    for flag, value in (("--height", args.height), ("--width", args.width)):
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be a positive number of pixels; got {value}.")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1; got {args.threads}.")
    if not args.out.lower().endswith(".png"):
        raise ValueError(f"--out must end in .png; got {args.out}.")
    if os.path.exists(args.out) and not args.overwrite:
        raise ValueError(f"{args.out} exists; pass --overwrite to replace it.")


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        check_args(args)
    except ValueError as e:
        fail(str(e))

    import torch  # the heavy imports, only once the flags are known to be good

    from pipelines.devices import parse_dtype, pick_device, set_num_threads

    try:
        pick_device(args.device)
    except ValueError as e:
        fail(f"--device: {e}")
    if args.dtype is not None:
        try:
            parse_dtype(args.dtype)
        except ValueError as e:
            fail(f"--dtype: {e}")
    threads = set_num_threads(args.threads)

    import diffusers
    import transformers

    from pipelines import format_timings
    from pipelines.loading import ModelLoadError, load_pipeline

    for lib in (diffusers, transformers):  # the CLI prints its own lines only: no load bars or notices
        lib.utils.logging.set_verbosity_error()
        lib.utils.logging.disable_progress_bar()
    try:
        pipe = load_pipeline(args.model, device=args.device, dtype=args.dtype)
    except ModelLoadError as e:
        fail(f"--model: {e}")
    try:
        result = pipe(
            args.prompt, negative_prompt=args.negative_prompt, num_inference_steps=args.steps,
            guidance_scale=args.guidance, height=args.height, width=args.width,
            generator=torch.Generator("cpu").manual_seed(args.seed),
        )  # fmt: skip
    except ValueError as e:
        fail(flag_names(str(e)))
    out_dir = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)
    result.images[0].save(args.out)
    print(f"model: {args.model}")
    print(format_timings(result.timings))
    print(f"torch threads: {threads}")
    for flag, text in (("--prompt", args.prompt), ("--negative-prompt", args.negative_prompt)):
        dropped = dropped_text(pipe.tokenizer, text) if text else None
        if dropped:
            print(f"note: {flag} truncated: the text encoder reads {token_limit(pipe.tokenizer)} tokens; "
                  f"{dropped[0]} tokens were ignored: {dropped[1]!r}")  # fmt: skip
    print(f"saved {args.out}")
    return 0
