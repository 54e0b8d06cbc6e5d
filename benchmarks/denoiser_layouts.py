"""The ExecuTorch denoiser as a step graph (what ``python -m export`` writes) against the whole sampling loop as one
graph: export time, file size and the time of one image's sampling in the runtime, same run.

    python -m benchmarks.denoiser_layouts --model bundle/student --json docs/benchmarks/denoiser_layouts.json

Both graphs come from ``export.denoiser``: ``DenoiserStep`` (called in a plain loop with the step index) and
``UnrolledDenoiser`` (every step in one graph, the UNet's weights shared). fp32, XNNPACK delegate, the model's
recommended steps and guidance, its native size; both loops start from the same latents and text states and their
final latents are compared (PSNR). Not a section of ``run_all``: it lowers the model's UNet twice, once unrolled.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from datetime import datetime, timezone

import torch

from pipelines.latency import host_description
from pipelines.psnr import psnr

from . import common


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.denoiser_layouts", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="bundle/student", help="pipeline folder (or Hub id)")
    p.add_argument("--json", default=None, help="also write the result here (refused if it exists)")
    p.add_argument("--threads", type=int, default=1, help="threads of both runtimes")
    p.add_argument("--repeats", type=int, default=5, help="timed sampling loops per layout, after one warm-up")
    args = p.parse_args(argv)
    if args.json and os.path.exists(args.json):
        p.exit(2, f"error: --json {args.json} exists; choose a new path.\n")
    if args.threads < 1 or args.repeats < 1:
        p.exit(2, "error: --threads and --repeats must be >= 1.\n")
    return args


def compare(pipe, threads: int | None = 1, repeats: int = 5) -> dict:
    """Lower both layouts of ``pipe``'s denoiser, time them in the runtime and compare their final latents.
    ``threads=None`` keeps both runtimes' thread pools as they are (the ExecuTorch pool cannot be resized once a
    program has run in the process)."""
    from export.convert import text_length
    from export.denoiser import DenoiserStep, UnrolledDenoiser, denoiser_inputs, step_schedule
    from export.executorch import PteModule, lower, use_threads

    if threads is not None:
        use_threads(threads)
    steps = int(pipe.config.default_num_inference_steps)
    guidance = float(pipe.config.default_guidance_scale)
    step = DenoiserStep(pipe.unet.eval(), step_schedule(pipe.scheduler, steps)).eval()
    loop = UnrolledDenoiser(step).eval()
    size = pipe.unet.config.sample_size
    inputs = denoiser_inputs(pipe.unet, size, size, text_length(pipe), guidance)
    rest = [v for k, v in inputs.items() if k not in ("latents", "step_index")]  # text states (+ uncond), guidance
    out = {"steps": steps, "guidance_scale": guidance, "latent_size": size}
    layouts = {"step graph (shipped)": (step, tuple(inputs.values())),
               "unrolled loop": (loop, (inputs["latents"], *rest))}  # fmt: skip
    finals = {}
    for name, (module, args) in layouts.items():
        t0 = time.perf_counter()
        data = lower(module, args, None)
        export_s = time.perf_counter() - t0
        pte = PteModule(data)
        if module is step:
            def sample(pte=pte):
                latents = inputs["latents"]
                for i in range(steps):
                    latents = pte(latents, torch.tensor([i]), *rest)[0]
                return latents
        else:
            def sample(pte=pte, args=args):
                return pte(*args)[0]
        finals[name] = sample()  # warm-up, and the result compared below
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            sample()
            times.append((time.perf_counter() - t0) * 1000.0)
        out[name] = {"export_s": export_s, "pte_mb": len(data) / 2**20, "sampling_ms_median": statistics.median(times),
                     "sampling_ms_all": times, "runtime_calls_per_image": steps if module is step else 1}  # fmt: skip
    a, b = finals.values()
    out["final_latents_psnr_db"] = psnr(a.double(), b.double())
    s, u = out["step graph (shipped)"], out["unrolled loop"]
    out["unrolled_over_step"] = {"export_s": u["export_s"] / s["export_s"], "pte_mb": u["pte_mb"] / s["pte_mb"],
                                 "sampling_ms": u["sampling_ms_median"] / s["sampling_ms_median"]}  # fmt: skip
    return out


def main(argv=None) -> dict:
    args = parse_args(argv)
    from pipelines.loading import load_pipeline

    pipe = load_pipeline(args.model, device="cpu", dtype="fp32")
    result = {"benchmark": "denoiser_layouts", "model": args.model,
              "command": "python -m benchmarks.denoiser_layouts " + " ".join(sys.argv[1:] if argv is None else argv),
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "host": host_description(),
              "threads": args.threads, **compare(pipe, args.threads, args.repeats)}  # fmt: skip
    return common.emit_result(result, args.json)


if __name__ == "__main__":
    main()
