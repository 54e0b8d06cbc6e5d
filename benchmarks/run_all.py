"""Run every benchmark (each in its own process, one after another) and assemble ``<out>/benchmarks.md``.

    python -m benchmarks.run_all                    # full size: ~12-16 min (estimate) on a quiet 2-core CPU, plus
                                                    # ~10 min for export_executorch (the bundle student's export)
    python -m benchmarks.run_all --quick            # toy widths, a smoke test (~3 min)
    python -m benchmarks.run_all --only unet_step,vae_decoder --repeats 3 --overwrite

Options that limit the run: ``--repeats`` (UNet and decoder timed rounds), ``--stage-repeats`` (per-block table),
``--no-stages``, ``--e2e-repeats``, ``--sd-measured-steps K`` (compose SD-v1.5's 50-step total from K measured
steps instead of running all 50), ``--bundle-repeats``. A section that fails is reported and the others still run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from pipelines.devices import DTYPES

from . import common, report
from .common import Outputs


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.run_all", description=__doc__.split("\n\n")[0])
    p.add_argument("--out-dir", default=common.DEFAULT_OUT)
    p.add_argument("--quick", action="store_true", help="toy widths and small latents (smoke test)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--only", default=None, help=f"comma-separated sections out of {','.join(common.SECTIONS)}")
    p.add_argument("--skip", default=None, help="comma-separated sections to leave out")
    p.add_argument("--device", default=None, choices=["cpu", "cuda", "mps"])
    p.add_argument("--dtype", default=None, choices=sorted(DTYPES))
    p.add_argument("--threads", type=common.positive_int, default=None)
    p.add_argument("--repeats", type=common.positive_int, default=None, help="UNet / decoder timed rounds (5)")
    p.add_argument("--warmup", type=common.nonneg_int, default=None, help="warm-up rounds / calls (1)")
    p.add_argument("--stage-repeats", type=common.positive_int, default=None, help="per-block table runs (2)")
    p.add_argument("--no-stages", action="store_true", help="skip the per-stage UNet latency breakdown")
    p.add_argument(
        "--extra-unet", action="append", default=[], metavar="PATH", help="evolved UNet config (repeatable)"
    )
    p.add_argument("--extra-at-sd-width", action="store_true", help="build --extra-unet layouts at SD-v1.5 widths")
    p.add_argument("--e2e-repeats", type=common.positive_int, default=None, help="end-to-end timed calls (1)")
    common.add_sd_measured_steps(p)
    p.add_argument("--bundle", default=None, help="folder with teacher/, student/, eval/ (default: bundle)")
    p.add_argument("--bundle-repeats", type=common.positive_int, default=None)
    return p.parse_args(argv)


def sections(args) -> list[str]:
    def names(text):
        chosen = [s.strip() for s in text.split(",") if s.strip()]
        bad = [s for s in chosen if s not in common.SECTIONS]
        if bad:
            common.fail(f"unknown section(s) {', '.join(bad)}; choose from {', '.join(common.SECTIONS)}.")
        return chosen

    chosen = names(args.only) if args.only else list(common.SECTIONS)
    skip = set(names(args.skip)) if args.skip else set()
    return [s for s in chosen if s not in skip]


def command(name: str, args) -> list[str]:
    cmd = [sys.executable, "-m", f"benchmarks.{name}", "--out-dir", args.out_dir, "--overwrite"]
    if args.quick:
        cmd.append("--quick")
    for flag, value in (("--device", args.device), ("--dtype", args.dtype), ("--threads", args.threads)):
        if value is not None:
            cmd += [flag, str(value)]
    per_section = {
        "unet_step": [("--repeats", args.repeats), ("--warmup", args.warmup), ("--stage-repeats", args.stage_repeats)]
        + [("--extra-unet", p) for p in args.extra_unet],
        "vae_decoder": [("--repeats", args.repeats), ("--warmup", args.warmup)],
        "end_to_end": [
            ("--repeats", args.e2e_repeats),
            ("--warmup", args.warmup),
            ("--sd-measured-steps", args.sd_measured_steps),
            ("--bundle", args.bundle),
            ("--bundle-repeats", args.bundle_repeats),
        ],
        "quality": [("--bundle", args.bundle)],
        "export_sizes": [("--bundle", args.bundle)],
        "export_executorch": [("--bundle", args.bundle)],
    }
    for flag, value in per_section[name]:
        if value is not None:
            cmd += [flag, str(value)]
    if name == "unet_step" and args.no_stages:
        cmd.append("--no-stages")
    if name == "unet_step" and args.extra_at_sd_width:
        cmd.append("--extra-at-sd-width")
    return cmd


def main(argv=None) -> int:
    args = parse_args(argv)
    chosen = sections(args)
    # refuse before any work if an output would be replaced without --overwrite
    existing = [p for name in chosen for p in Outputs(args.out_dir, name).all() if os.path.exists(p)]
    md = os.path.join(args.out_dir, "benchmarks.md")
    existing += [md] if os.path.exists(md) else []
    if existing and not args.overwrite:
        common.fail(f"{len(existing)} output(s) exist, e.g. {existing[0]}; pass --overwrite to replace them.")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository, for `-m benchmarks.*`
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    failed, took = [], {}
    t_all = time.perf_counter()
    for name in chosen:
        cmd = command(name, args)
        print(f"\n=== {name}: {' '.join(cmd[1:])}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call(cmd, env=env)
        took[name] = time.perf_counter() - t0
        print(f"=== {name}: exit {rc} after {took[name] / 60:.1f} min", flush=True)
        if rc != 0:
            failed.append(f"{name} (exit {rc})")
    path = report.assemble(args.out_dir)
    print(
        f"\nwrote {path}; took {(time.perf_counter() - t_all) / 60:.1f} min in all "
        f"({', '.join(f'{k} {v / 60:.1f}' for k, v in took.items())})"
    )
    if failed:
        print(f"error: failed sections: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
