"""The bundle student exported to ExecuTorch and run by the reference runner, against the PyTorch pipeline.

    python -m benchmarks.export_executorch --model bundle/student --out out/et_bench

1. exports the model in fp32 with all components (text encoder, denoiser, per-step UNet, decoder), as the app's
   one-click export does, and, with ``--int8``, the weight-quantized option (the components the runner needs),
   timing each export;
2. for every sample-grid prompt (``training.ship_bundle.GRID_PROMPTS``) and seed, makes the runner's image
   (``export.run.generate``, ExecuTorch runtime) and the pipeline's (``SnapFusionPipeline``, PyTorch eager, fp32),
   PSNR between them (8-bit images, peak 255);
3. times both end to end in the same run, alternating (median over prompts), the runtime with ``--threads`` and
   torch with as many threads.

Writes ``OUT/export_executorch.json`` and prints a Markdown summary.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
import torch

from pipelines.latency import host_description
from pipelines.loading import load_pipeline
from pipelines.psnr import psnr


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="bundle/student")
    p.add_argument("--out", required=True, help="working folder (exports and the JSON); must not exist")
    p.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 per prompt")
    p.add_argument("--threads", type=int, default=1, help="threads of both runtimes")
    p.add_argument("--int8", action="store_true", help="also export and run the int8 option")
    p.add_argument("--prompts", type=int, default=8, help="how many of the 8 grid prompts")
    p.add_argument("--reuse", action="store_true", help="OUT may exist: variants already exported there are not "
                   "exported again (no export time for them)")  # fmt: skip
    return p.parse_args(argv)


def _image(pipe, prompt: str, seed: int) -> np.ndarray:
    out = pipe(prompt, generator=torch.Generator().manual_seed(seed), output_type="np")
    return (out.images[0] * 255).round().astype("uint8")


def main(args) -> dict:
    from export import ExportError, export_pipeline
    from export.executorch import host_cpu, runtime_threads, set_runtime_threads
    from export.run import Runner
    from training.ship_bundle import GRID_PROMPTS

    if os.path.exists(args.out) and not args.reuse:
        print(f"error: {args.out} exists; choose a new folder.", file=sys.stderr)
        raise SystemExit(2)
    torch.set_num_threads(args.threads)
    set_runtime_threads(args.threads)
    pipe = load_pipeline(args.model, device="cpu", dtype="fp32")
    pipe.set_progress_bar_config(disable=True)
    result = {"model": args.model, "host": host_description(), "cpu": host_cpu(), "threads": args.threads,
              "torch": torch.__version__, "exports": {}}  # fmt: skip

    # 1. the exports (what the app's one-click export runs: export_pipeline with every component)
    variants = {"fp32": "none", **({"int8": "int8"} if args.int8 else {})}
    for name, quantize in list(variants.items()):
        out = os.path.join(args.out, name)
        # fp32: every component (the app's one-click export); int8: what the runner needs
        components = ("text_encoder,denoiser,unet,vae_decoder" if name == "fp32" else
                      "text_encoder,denoiser,vae_decoder")  # fmt: skip
        t0 = time.perf_counter()
        if args.reuse and os.path.isfile(os.path.join(out, "manifest.json")):
            with open(os.path.join(out, "manifest.json")) as f:
                comps, seconds = json.load(f)["executorch"]["components"], None
        else:
            try:
                report = export_pipeline(pipe, out, format="executorch", quantize=quantize, components=components)
            except ExportError as e:  # recorded; the other variants go on
                result["exports"][name] = {"error": str(e)}
                del variants[name]
                print(f"{name}: {e}", file=sys.stderr, flush=True)
                continue
            seconds = time.perf_counter() - t0
            comps = report.executorch["components"]
        result["exports"][name] = {
            "export_s": None if seconds is None else round(seconds, 1), "dir": out,
            "components": {k: {"size_mb": c["size_mb"], "psnr_db": c["check"]["executorch"]["psnr_db"],
                               "ms": c["latency"]["measured"]["ms"], "conversion_s": c["conversion_s"]}
                           for k, c in comps.items()},
            "denoiser_to_unet_size": (round(comps["denoiser"]["size_mb"] / comps["unet"]["size_mb"], 3)
                                      if "unet" in comps else None),
            "label": comps["denoiser"]["latency"]["measured"]["label"],
        }  # fmt: skip
        print(f"{name}: {'reused' if seconds is None else f'exported in {seconds:.1f} s'}", file=sys.stderr)

    # 2-3. images and end-to-end times, alternating runner and pipeline
    prompts = GRID_PROMPTS[: args.prompts]
    for name in variants:
        runner = Runner(result["exports"][name]["dir"], threads=args.threads)
        runner(prompts[0], 0), _image(pipe, prompts[0], 0)  # warm-up
        rows, runner_s, pipe_s = [], [], []
        for prompt in prompts:
            for seed in range(args.seeds):
                t0 = time.perf_counter()
                got = runner(prompt, seed)
                runner_s.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                ref = _image(pipe, prompt, seed)
                pipe_s.append(time.perf_counter() - t0)
                rows.append({"prompt": prompt, "seed": seed, "psnr_db": round(psnr(ref.astype(np.float64),
                             got["image"].astype(np.float64), peak=255.0), 2)})  # fmt: skip
        e = result["exports"][name]
        e["images"] = rows
        e["min_psnr_db"] = min(r["psnr_db"] for r in rows)
        e["runner_load_ms"] = round(runner.load_ms, 1)  # loading the .pte files, once
        e["runner_s_median"] = round(statistics.median(runner_s), 4)
        e["pipeline_s_median"] = round(statistics.median(pipe_s), 4)
        e["ratio_runner_over_pipeline"] = round(e["runner_s_median"] / e["pipeline_s_median"], 3)
        e["runtime_threads"] = runtime_threads()
    with open(os.path.join(args.out, "export_executorch.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(to_markdown(result))
    return result


def to_markdown(result: dict) -> str:
    lines = [f"{result['model']} on {result['cpu']}, {result['threads']} thread(s) in both runtimes, torch "
             f"{result['torch']}", "",
             "| variant | export | denoiser / UNet size | min PSNR runner vs pipeline | runner (ExecuTorch) "
             "| pipeline (PyTorch) | ratio |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, e in result["exports"].items():
        if "error" in e:
            lines.append(f"| {name} | failed: {e['error']} | - | - | - | - | - |")
            continue
        ratio = e["denoiser_to_unet_size"]
        export_s = "reused" if e["export_s"] is None else f"{e['export_s']:.0f} s"
        lines.append(f"| {name} | {export_s} | {f'{ratio:.3f}x' if ratio else '-'} | "
                     f"{e.get('min_psnr_db', float('nan')):.1f} dB over {len(e.get('images', []))} images | "
                     f"{e.get('runner_s_median', 0) * 1000:.0f} ms | {e.get('pipeline_s_median', 0) * 1000:.0f} ms | "
                     f"{e.get('ratio_runner_over_pipeline', float('nan')):.2f}x |")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    main(parse_args())
