"""SnapFusion demo app: a 50-step baseline (left) next to the SnapFusion 8-step student (right); the visitor may put
the one-pass student (guidance as a UNet input, one pass per step) on the right instead when it is loaded.

    python app.py                                   # the mini bundle (bundle/teacher, bundle/student), offline, CPU
    python app.py --teacher DIR_OR_HUB_ID --student DIR_OR_HUB_ID [--onepass DIR_OR_HUB_ID | --no-onepass]
                  [--device cuda] [--dtype fp16]

Environment (Hugging Face Spaces): SNAPFUSION_TEACHER, SNAPFUSION_STUDENT, SNAPFUSION_ONEPASS,
SNAPFUSION_NO_ONEPASS=1, SNAPFUSION_DEVICE, SNAPFUSION_DTYPE, SNAPFUSION_NUM_THREADS, SNAPFUSION_NO_WARMUP=1 (same as
the flags); GRADIO_SERVER_NAME / GRADIO_SERVER_PORT are read by gradio's launch().

How `demo` exists: `python app.py` loads both models, builds the app and launches it; a model that cannot be loaded
ends the start-up with one line on stderr and exit code 2. `import app` loads nothing: the module attribute `demo`
is built on first access (PEP 562 `__getattr__`), from the environment, which is what gradio's reload mode
(`gradio app.py`) and `from app import demo` use. Tests build their own with `create_demo(teacher, student)`.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading

import gradio as gr

from pipelines.devices import parse_dtype, pick_device, set_num_threads
from pipelines.loading import ModelLoadError, load_pipeline
from snapfusion_app import DEFAULT_STUDENT, DEFAULT_TEACHER
from snapfusion_app.loading import default_onepass
from snapfusion_app.ui import build_demo, launch_kwargs, model_display_name


def parse_args(argv=None) -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(prog="python app.py", description="SnapFusion demo: baseline vs 8-step student.")
    parser.add_argument("--teacher", default=env("SNAPFUSION_TEACHER", DEFAULT_TEACHER),
                        help="left side (baseline): local diffusers folder or Hub id (env SNAPFUSION_TEACHER)")
    parser.add_argument("--student", default=env("SNAPFUSION_STUDENT", DEFAULT_STUDENT),
                        help="right side (SnapFusion student): local folder or Hub id (env SNAPFUSION_STUDENT)")
    parser.add_argument("--onepass", default=env("SNAPFUSION_ONEPASS") or default_onepass(),
                        help="the one-pass student (a guidance-embedded UNet), a visitor's other choice for the right "
                             "side: local folder or Hub id (env SNAPFUSION_ONEPASS; default: bundle/onepass when it "
                             "exists)")
    parser.add_argument("--no-onepass", action="store_true", default=env("SNAPFUSION_NO_ONEPASS", "") == "1",
                        help="run without the one-pass student (env SNAPFUSION_NO_ONEPASS=1)")
    parser.add_argument("--device", default=env("SNAPFUSION_DEVICE"),
                        help="cuda, mps or cpu (env SNAPFUSION_DEVICE; default: best available)")
    parser.add_argument("--dtype", default=env("SNAPFUSION_DTYPE"),
                        help="fp32, fp16 or bf16 (env SNAPFUSION_DTYPE; default: fp16 on GPU, fp32 on CPU)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (env SNAPFUSION_NUM_THREADS; default: the idle cores, at least 1)")
    parser.add_argument("--no-warmup", action="store_true", default=env("SNAPFUSION_NO_WARMUP", "") == "1",
                        help="skip the 1-step warm-up call of each model (env SNAPFUSION_NO_WARMUP=1)")
    args = parser.parse_args(argv)
    if args.no_onepass:
        args.onepass = None
    return args  # fmt: skip


def create_demo(teacher: str, student: str, device: str | None = None, dtype: str | None = None,
                warmup: bool = True, onepass: str | None = None) -> gr.Blocks:  # fmt: skip
    """Load the models and build the app (``onepass``: the one-pass student, optional). A bad device or dtype is a
    ``ValueError`` naming ``--device`` / ``--dtype`` (and the devices this machine has); a model that cannot be
    loaded a ``ModelLoadError`` naming its flag, as is a ``--onepass`` model whose UNet does not take the guidance
    scale as an input."""
    try:
        pick_device(device)
    except ValueError as e:
        raise ValueError(f"--device: {e}") from None
    if dtype is not None:
        try:
            parse_dtype(dtype)
        except ValueError as e:
            raise ValueError(f"--dtype: {e}") from None
    pipes = {}
    for flag, model in (("--teacher", teacher), ("--student", student), ("--onepass", onepass)):
        if model is None:
            continue
        try:
            pipes[flag] = load_pipeline(model, device=device, dtype=dtype)
        except ModelLoadError as e:
            hint = " Start with --no-onepass to run without it." if flag == "--onepass" else ""
            raise ModelLoadError(f"{flag}: {e}{hint}") from None
    if onepass is not None and not pipes["--onepass"].guidance_embedded:
        raise ModelLoadError(f"--onepass: {onepass} is not a one-pass model: its UNet does not take the guidance "
                             "scale as an input (no time_cond_proj_dim in unet/config.json).")  # fmt: skip
    return build_demo(
        pipes["--teacher"], pipes["--student"], teacher_name=model_display_name(teacher),
        student_name=model_display_name(student), teacher_source=teacher, student_source=student, warmup=warmup,
        onepass=pipes.get("--onepass"), onepass_name=model_display_name(onepass) if onepass else "",
        onepass_source=onepass or "",
    )  # fmt: skip


def __getattr__(name: str):
    """``app.demo`` on first access: built from the environment (reload mode, ``from app import demo``)."""
    if name == "demo":
        args = parse_args([])
        set_num_threads(args.threads)
        demo = create_demo(args.teacher, args.student, args.device, args.dtype, warmup=not args.no_warmup,
                           onepass=args.onepass)  # fmt: skip
        globals()["demo"] = demo
        return demo
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        threads = set_num_threads(args.threads)
    except ValueError as e:
        print(f"error: --threads: {e}", file=sys.stderr)
        return 2
    print(f"torch threads: {threads}", flush=True)
    print(f"loading left (teacher): {args.teacher}\nloading right (student): {args.student}", flush=True)
    print(f"loading right, one-pass student: {args.onepass}" if args.onepass else
          "one-pass student: none (bundle/onepass does not exist, or --no-onepass)", flush=True)  # fmt: skip
    try:
        demo = create_demo(args.teacher, args.student, args.device, args.dtype, warmup=not args.no_warmup,
                           onepass=args.onepass)  # fmt: skip
    except ValueError as e:  # ModelLoadError (a bad --teacher / --student / --onepass), or e.g. an unknown --dtype
        print(f"error: {e}", file=sys.stderr)
        return 2
    globals()["demo"] = demo  # gradio's reload mode reads `demo` from this module
    demo.launch(**launch_kwargs())  # blocks until the server stops (returns at once in reload mode)
    return 0


if __name__ == "__main__":
    code = main()
    # In gradio's reload mode this file is re-run inside its watcher thread: exit only from the main thread.
    if code and threading.current_thread() is threading.main_thread():
        sys.exit(code)
