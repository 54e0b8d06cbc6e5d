"""The full-size SnapFusion-preset UNet at 512x512 as an ExecuTorch file (.pte, XNNPACK delegate, fp32): conversion
time, peak memory, file size, and the per-step latency in the ExecuTorch runtime against PyTorch eager, same run.

    python -m benchmarks.export_fullsize --out /tmp/fullsize_pte --json docs/benchmarks/export_fullsize.json

Random weights (``export.loading.preset_pipeline``): latency and size do not depend on their values. One CFG step
(batch 2, 64x64 latents, 77 text tokens), the UNet component of ``python -m export --preset snapfusion --format
executorch --components unet --height 512 --width 512``. Not a section of ``run_all``: the lowering alone takes
tens of minutes on a 2-core CPU. Peak memory is the process's maximum resident set (``getrusage``), building the
model included.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from datetime import datetime, timezone

import torch

from pipelines.latency import host_description
from pipelines.timing import time_ms

from . import common


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.export_fullsize", description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="snapfusion", help="snapfusion or sd15 (export.loading.PRESETS)")
    p.add_argument("--out", required=True, help="export folder to write (must not exist)")
    p.add_argument("--json", default=None, help="also write the result here (refused if it exists)")
    p.add_argument("--threads", type=int, default=2, help="threads of both runtimes")
    p.add_argument("--repeats", type=int, default=3, help="timed eager UNet calls after one warm-up")
    args = p.parse_args(argv)
    for path, flag in ((args.out, "--out"), (args.json, "--json")):
        if path and os.path.exists(path):
            p.exit(2, f"error: {flag} {path} exists; choose a new path.\n")
    if args.threads < 1 or args.repeats < 1:
        p.exit(2, "error: --threads and --repeats must be >= 1.\n")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    from export import export_pipeline
    from export.executorch import executorch_version, use_threads
    from export.loading import preset_pipeline

    use_threads(args.threads)
    pipe = preset_pipeline(args.preset)
    t0 = time.perf_counter()
    report = export_pipeline(pipe, args.out, components="unet", format="executorch", height=512, width=512)
    export_s = time.perf_counter() - t0
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    unet = report.executorch["components"]["unet"]

    # PyTorch eager, the same UNet on the same input shapes (the .pte's inputs), same threads
    shapes = {i["name"]: i["shape"] for i in unet["inputs"]}
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(shapes["sample"], generator=g)
    timestep = torch.full(shapes["timestep"], 999.0)
    text = torch.randn(shapes["encoder_hidden_states"], generator=g)
    if text.dim() == 4:  # (B, D, 1, L), apple's layout of the text states -> diffusers' (B, L, D)
        text = text.squeeze(2).transpose(1, 2)
    with torch.no_grad():
        def step():
            return pipe.unet(sample, timestep, encoder_hidden_states=text).sample

        step()  # warm-up
        eager_ms = [time_ms(step) for _ in range(args.repeats)]
    runtime_ms = unet["latency"]["measured"]["ms"]
    result = {
        "benchmark": "export_fullsize",
        "command": "python -m benchmarks.export_fullsize " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": host_description(),
        "threads": args.threads,
        "executorch": executorch_version(),
        "preset": args.preset,
        "unet_params": sum(p.numel() for p in pipe.unet.parameters()),
        "inputs": unet["inputs"],
        "export_s": export_s,
        "conversion_s": unet["conversion_s"],
        "peak_rss_gb": peak_gb,
        "pte_mb": unet["size_mb"],
        "psnr_db": unet["check"]["executorch"]["psnr_db"],
        "runtime_ms_per_step": runtime_ms,
        "runtime_label": unet["latency"]["measured"]["label"],
        "eager_ms_per_step": statistics.median(eager_ms),
        "eager_ms_all": eager_ms,
        "runtime_over_eager": runtime_ms / statistics.median(eager_ms),
    }
    return common.emit_result(result, args.json)


if __name__ == "__main__":
    main()
