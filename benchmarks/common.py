"""Shared pieces of the benchmark scripts: arguments, devices, timing, outputs, markdown."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import statistics
import sys
from typing import Callable

import torch

from pipelines import devices
from pipelines.devices import dtype_name
from pipelines.latency import host_description
from pipelines.timing import interleaved  # noqa: F401 (the benchmarks call common.interleaved; its home is pipelines.timing)

DEFAULT_OUT = "docs"
# Section order of docs/benchmarks.md; each name is a script benchmarks/<name>.py.
SECTIONS = ["unet_step", "vae_decoder", "end_to_end", "quality", "export_sizes", "export_executorch"]
# The plot each section draws: <out>/benchmarks/<section>_<plot>.png.
# the PNGs each section draws; a section with several gets them all as {key: path} in its plot function
PLOTS = {"unet_step": "stages", "vae_decoder": "bars", "end_to_end": "breakdown", "quality": ("curve", "steps")}
QUICK_NOTE = (
    "**Quick mode** (`--quick`): tiny widths and small latents, a smoke test of the script. "
    "These numbers say nothing about the real models."
)


# ---------------------------------------------------------------------------------------------- arguments


def int_at_least(low: int) -> Callable[[str], int]:
    """An argparse ``type``: the integer in the text, refused (one-line usage error) below ``low``."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
        if v < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {v}")
        return v

    return parse


positive_int = int_at_least(1)
nonneg_int = int_at_least(0)


def parser(name: str, description: str) -> argparse.ArgumentParser:
    """Argument parser with the options every benchmark script shares."""
    p = argparse.ArgumentParser(prog=f"python -m benchmarks.{name}", description=description)
    p.add_argument(
        "--out-dir",
        default=DEFAULT_OUT,
        help=f"docs folder: writes <out-dir>/benchmarks/{name}.json|.md|*.png (default: {DEFAULT_OUT})",
    )
    p.add_argument("--quick", action="store_true", help="tiny widths and small latents (smoke test, minutes -> s)")
    p.add_argument("--overwrite", action="store_true", help="replace this benchmark's existing outputs")
    p.add_argument("--device", default=None, choices=["cpu", "cuda", "mps"], help="default: cuda, else mps, else cpu")
    p.add_argument(
        "--dtype", default=None, choices=sorted(devices.DTYPES), help="default: fp16 on cuda/mps, fp32 on cpu"
    )
    p.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="torch intra-op threads (default: torch's choice, normally one per core)",
    )
    p.add_argument("--seed", type=int, default=0)
    return p


def add_sd_measured_steps(p: argparse.ArgumentParser) -> None:
    """``--sd-measured-steps K`` of ``end_to_end``, also accepted (and passed on) by ``run_all``."""
    p.add_argument(
        "--sd-measured-steps",
        type=positive_int,
        default=None,
        metavar="K",
        help="run only K SD-v1.5 steps and compose its total from measured components (default: run the full loop)",
    )


def parse_reader_args(name: str, description: str, argv, bundle_help: str, flag: str, metavar: str, files_help: str):
    """Arguments of a section that reads what other tools wrote (nothing timed): the shared ones, ``--bundle`` and
    a repeatable ``flag`` naming what to read instead of the bundle's default files."""
    p = parser(name, description)
    p.add_argument("--bundle", default="bundle", help=bundle_help)
    p.add_argument(flag, action="append", default=[], metavar=metavar, help=files_help)
    return parse(p, argv)


def setup(args) -> None:
    """Process-wide settings from the shared options: threads, quiet library logging."""
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # e.g. the fp32-modules notice on every .to()
    if args.threads:
        torch.set_num_threads(args.threads)


def parse(p: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """``p.parse_args(argv)``, remembering the arguments (for the command line the outputs record)."""
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


def fail(message: str) -> None:
    """One line on stderr, exit code 2 (bad input or an output that would be overwritten)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def pick_device(args) -> tuple[torch.device, torch.dtype]:
    """``pipelines.devices.pick_device`` for ``--device`` / ``--dtype``; a device this machine lacks exits 2."""
    try:
        return devices.pick_device(args.device, args.dtype)
    except ValueError as e:
        fail(str(e))


# ---------------------------------------------------------------------------------------------- models

# Narrow stand-ins for the UNet presets under --quick (same layouts, toy widths).
QUICK_UNET = dict(
    block_out_channels=(32, 64, 64, 64), norm_num_groups=8, cross_attention_dim=64, num_attention_heads=2
)

# SD-v1.5's AutoencoderKL config (its vae/config.json), built with random weights; --quick narrows it.
SD_VAE = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    layers_per_block=2,
    norm_num_groups=32,
    act_fn="silu",
    sample_size=512,
    scaling_factor=0.18215,
)
QUICK_VAE = dict(SD_VAE, block_out_channels=(16, 32, 32, 32), norm_num_groups=8, sample_size=128)


def sd_vae(quick: bool, seed: int):
    """SD-v1.5-sized ``AutoencoderKL`` with seeded random weights (toy widths with ``quick``)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(**(QUICK_VAE if quick else SD_VAE)).eval()


def preset_unet(name: str, quick: bool, seed: int):
    """``EfficientUNet2DConditionModel.from_preset(name)`` with seeded random weights (toy widths with ``quick``)."""
    from pipelines import EfficientUNet2DConditionModel

    torch.manual_seed(seed)
    return EfficientUNet2DConditionModel.from_preset(name, **(QUICK_UNET if quick else {})).eval()


# ---------------------------------------------------------------------------------------------- timing


def summary(samples: list[float]) -> dict:
    return {
        "median_ms": statistics.median(samples),
        "min_ms": min(samples),
        "max_ms": max(samples),
        "samples_ms": [round(s, 3) for s in samples],
    }


# ---------------------------------------------------------------------------------------------- outputs


class Outputs:
    """The files one benchmark writes: ``<out>/benchmarks/<name>.json``, ``.md`` and named PNGs."""

    def __init__(self, out_dir: str, name: str):
        self.dir = os.path.join(out_dir, "benchmarks")
        self.name = name
        self.json = os.path.join(self.dir, f"{name}.json")
        self.md = os.path.join(self.dir, f"{name}.md")
        plots = PLOTS.get(name, ())
        plots = [plots] if isinstance(plots, str) else list(plots)
        self.pngs = {p: os.path.join(self.dir, f"{name}_{p}.png") for p in plots}

    def all(self) -> list[str]:
        return [self.json, self.md, *self.pngs.values()]

    def check(self, overwrite: bool) -> None:
        """Refuse (exit 2) before any work if an output exists and ``overwrite`` is not set."""
        existing = [p for p in self.all() if os.path.exists(p)]
        if existing and not overwrite:
            fail(f"{', '.join(existing)} exist(s); pass --overwrite to replace.")
        os.makedirs(self.dir, exist_ok=True)
        for p in existing:  # so that a plot not drawn this time does not survive from an earlier run
            os.remove(p)

    def png_link(self, key: str) -> str:
        """Markdown image path relative to ``<out>/`` (where benchmarks.md lives)."""
        return f"benchmarks/{os.path.basename(self.pngs[key])}"

    def write(self, data: dict, markdown: str) -> None:
        with open(self.json, "w") as f:
            json.dump(data, f, indent=2)
        with open(self.md, "w") as f:
            f.write(markdown.rstrip() + "\n")
        print(f"wrote {self.json} and {self.md}")


def run_section(name: str, argv, parse_args, run, markdown, plot=None) -> int:
    """``main`` of a section script: parse ``argv``, refuse to replace outputs without ``--overwrite`` (before any
    work), ``res = run(args)``, draw ``plot(res, png)`` (``plot(res, {key: png})`` for a section with several PNGs)
    unless ``res["skipped"]``, write the JSON and markdown."""
    args = parse_args(argv)
    setup(args)
    out = Outputs(args.out_dir, name)
    out.check(args.overwrite)
    res = run(args)
    if plot is not None and not res.get("skipped"):
        plot(res, out.pngs[PLOTS[name]] if isinstance(PLOTS[name], str) else out.pngs)
    out.write(res, markdown(res, out))
    return 0


def header(name: str, args, device: torch.device | None = None, dtype: torch.dtype | None = None) -> dict:
    """Fields every benchmark JSON starts with: what ran, where, and how."""
    data = {
        "benchmark": name,
        "mode": "quick" if getattr(args, "quick", False) else "full",  # tools without --quick are full size
        "machine": host_description(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "command": " ".join(["python -m benchmarks." + name, *map(shlex.quote, args.argv)]),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    if device is not None:
        data["device"] = device.type
    if dtype is not None:
        data["dtype"] = dtype_name(dtype)
    return data


def machine_paragraph(data: dict) -> str:
    """The one-paragraph machine description every table carries."""
    if "device" in data:
        text = (
            f"*Machine:* {data['machine']}. Ran on **{data['device']}** in **{data['dtype']}**. "
            f"Measured {data['date']} with `{data['command']}`."
        )
    else:
        text = f"*Machine:* {data['machine']}. Written {data['date']} by `{data['command']}` (nothing timed here)."
    if data["mode"] == "quick" and "device" in data:
        text += "\n\n" + QUICK_NOTE
    return text


def md_table(headers: list[str], rows: list[list]) -> str:
    def cell(v) -> str:
        return "-" if v is None else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt_int(n: int | None) -> str | None:
    return None if n is None else f"{n:,}"


def fmt_ms(ms: float | None) -> str | None:
    if ms is None:
        return None
    return f"{ms:,.0f}" if ms >= 100 else f"{ms:.1f}" if ms >= 1 else f"{ms:.3f}"


def fmt_gmacs(macs: int | None) -> str | None:
    if macs is None:
        return None
    g = macs / 1e9
    return f"{g:,.1f}" if g >= 10 else f"{g:.3g}"


def fmt_ratio(x: float | None) -> str | None:
    return None if x is None else f"{x:.3f}x" if x < 1 else f"{x:.2f}x"


def pyplot():
    """matplotlib's pyplot on the Agg (file-only) backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str, title: str | None = None) -> None:
    """Lay out ``fig`` (under ``title``, if given), write it to ``path`` and free it."""
    if title is not None:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    pyplot().close(fig)


def emit_result(result: dict, path: str | None = None) -> dict:
    """A standalone benchmark's result (one not run by ``run_all``): printed as JSON, and written to ``path``."""
    text = json.dumps(result, indent=2)
    print(text)
    if path:
        with open(path, "w") as f:
            f.write(text + "\n")
    return result
