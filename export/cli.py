"""Command line: ``python -m export --model PATH_OR_ID --out DIR [options]`` (see docs/export.md).

Bad input prints one line, ``error: ...``, on stderr and exits with code 2; nothing is written.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from .errors import ExportError
from .options import (
    ATTENTION_VARIANTS, COMPONENTS, FORMATS, PALETTIZE_BITS, PRECISIONS, check_options, check_out_dir, parse_format,
)  # fmt: skip


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of argparse's usage block
        fail(f"{message} (see `python -m export --help`)")


def parse_args(argv=None) -> argparse.Namespace:
    p = _Parser(prog="python -m export", description="Export a SnapFusion / SD-1.x pipeline to Core ML packages "
                "(apple's Swift StableDiffusion package, plain MLModel calls) and / or ExecuTorch .pte files "
                "(XNNPACK; iOS and Android); run an export with `python -m export.run OUT --prompt P`.")  # fmt: skip
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="local diffusers pipeline folder or Hugging Face Hub id")
    src.add_argument("--preset", help="full-size model with random weights instead of --model: snapfusion or sd15 "
                     "(for conversion time / package size measurements)")  # fmt: skip
    p.add_argument("--components", default=",".join(COMPONENTS), help=f"comma list of {', '.join(COMPONENTS)}")
    p.add_argument("--format", default="coreml", help=f"what to write: {', '.join(FORMATS)}")
    p.add_argument("--precision", default="fp16", help=f"Core ML compute precision: {' or '.join(PRECISIONS)} "
                   "(ExecuTorch files compute in fp32)")  # fmt: skip
    p.add_argument("--quantize", default="none", help=f"none; Core ML k-means palettization bits "
                   f"{', '.join(PALETTIZE_BITS)}; or int8 (ExecuTorch: int8 weights, dynamic int8 activations)")
    p.add_argument("--attention", default="original", help=f"UNet attention: {' or '.join(ATTENTION_VARIANTS)}")
    p.add_argument("--height", default=None, help="image height in pixels (default: the UNet's sample size)")
    p.add_argument("--width", default=None, help="image width in pixels (default: the UNet's sample size)")
    p.add_argument("--out", required=True, help="output folder (must not exist or be empty, unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace a previous export in --out (and its zip)")
    p.add_argument("--latency-table", default=None, help="pipelines.latency table (JSON): estimated UNet latency")
    p.add_argument("--zip", action="store_true", help="also write OUT.zip for download")
    return p.parse_args(argv)


def fail(message: str) -> None:
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
    raise SystemExit(2)


def _int_or_none(name: str, value):
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        fail(f"--{name} must be an integer number of pixels; got {value!r}.")


def _exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)  # unwinds like Ctrl-C, so the export removes its temporary folder


def main(argv=None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    height, width = _int_or_none("height", args.height), _int_or_none("width", args.width)
    try:
        # cheap checks first: a typo fails in a second, before the model loads
        components, _ = check_options(args.components, args.precision, args.quantize, args.attention, args.format)
        if "executorch" in parse_format(args.format):
            from .executorch import require_executorch

            require_executorch()
        check_out_dir(args.out, args.overwrite)
        if args.zip and os.path.exists(os.path.abspath(args.out).rstrip(os.sep) + ".zip") and not args.overwrite:
            raise ExportError(f"{os.path.abspath(args.out)}.zip exists; pass --overwrite to replace it.")
        if args.latency_table is not None and not os.path.isfile(args.latency_table):
            raise ExportError(f"--latency-table {args.latency_table} is not a file.")

        from .bundle import zip_export
        from .exporter import export_pipeline
        from .loading import load_pipeline_for_export, preset_pipeline

        pipe = preset_pipeline(args.preset) if args.preset else load_pipeline_for_export(args.model, components)

        def progress(fraction: float, message: str) -> None:
            print(f"[{fraction * 100:5.1f}%] {message}", file=sys.stderr, flush=True)

        report = export_pipeline(
            pipe, args.out, components=components, precision=args.precision, quantize=args.quantize,
            attention=args.attention, height=height, width=width, overwrite=args.overwrite,
            latency_table=args.latency_table, progress=progress, format=args.format,
        )  # fmt: skip
        print(report.to_markdown())
        if args.zip:
            print(f"zip: {zip_export(report.out_dir, overwrite=args.overwrite)}")
    except ExportError as e:
        fail(str(e))
    return 0
