"""Export: the bundle student exported to ExecuTorch and run by the reference runner, against the PyTorch pipeline.

    python -m benchmarks.export_executorch [--bundle bundle] [--model DIR] [--int8] [--prompts N] [--seeds N]
        [--threads N] [--work-dir DIR [--reuse]] [--out-dir docs] [--overwrite] [--quick]

1. exports the model (default ``<bundle>/student``) in fp32 with all components (text encoder, denoiser, per-step
   UNet, decoder), as the app's one-click export does, and, with ``--int8``, the weight-quantized option (the
   components the runner needs), timing each export;
2. for every sample-grid prompt (``training.ship_bundle.GRID_PROMPTS``) and seed, makes the runner's image
   (``export.run.Runner``, ExecuTorch runtime) and the pipeline's (``SnapFusionPipeline``, PyTorch eager, fp32, CPU),
   PSNR between them (8-bit images, peak 255);
3. times both end to end in the same run, alternating (median over prompts), the runtime with as many threads as
   torch (``--threads``). Both run on the CPU in fp32 (XNNPACK is a CPU backend): ``--device`` / ``--dtype`` do not
   apply.

``--quick``: a tiny seeded pipeline (``pipelines.tiny``; its UNet cut to one cross-attention block, since lowering
to XNNPACK takes time in proportion to the graph's size), saved to a temporary folder and loaded from there, fp32
only (the runner's components), one prompt and seed: a smoke test of the script, not a measurement of a real model.

The exports go to a temporary folder removed at the end, unless ``--work-dir`` keeps them (a new folder; with
``--reuse``, a folder whose exports are read back instead of made again, with no export time). Skipped, with a
note, when the export library or the ExecuTorch runtime is not installed, or the model folder does not exist.
Writes ``<out-dir>/benchmarks/export_executorch.json`` and ``.md``.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

from pipelines.loading import load_pipeline
from pipelines.psnr import psnr

from . import common

NAME = "export_executorch"
ALL_COMPONENTS = "text_encoder,denoiser,unet,vae_decoder"  # the app's one-click export
RUNNER_COMPONENTS = "text_encoder,denoiser,vae_decoder"  # what the reference runner needs
def parse_args(argv=None):
    p = common.parser(NAME, __doc__.split("\n\n")[0])
    p.add_argument("--bundle", default="bundle", help="default model: <bundle>/student")
    p.add_argument("--model", default=None, help="model folder or Hub id (default: <bundle>/student)")
    p.add_argument("--work-dir", "--out", dest="work_dir", default=None, metavar="DIR",
                   help="keep the exports in DIR, a new folder (default: a temporary folder, removed)")  # fmt: skip
    p.add_argument("--reuse", action="store_true", help="--work-dir may exist: variants already exported there are "
                   "read back, not exported again (no export time for them)")  # fmt: skip
    p.add_argument("--seeds", type=common.positive_int, default=1, help="seeds SEED..SEED+N-1 per prompt (1)")
    p.add_argument("--prompts", type=common.positive_int, default=8, help="how many of the 8 grid prompts (8)")
    p.add_argument("--int8", action="store_true", help="also export and run the int8 option (not with --quick)")
    args = common.parse(p, argv)
    if args.reuse and not args.work_dir:
        common.fail("--reuse reads the exports of --work-dir DIR; pass --work-dir.")
    if args.work_dir and os.path.exists(args.work_dir) and not args.reuse:
        common.fail(f"{args.work_dir} exists; choose a new --work-dir (or pass --reuse to read its exports).")
    if args.quick:
        args.prompts, args.seeds, args.int8 = 1, 1, False
    return args


def quick_model(folder: str, seed: int) -> str:
    """A tiny v-prediction pipeline with a compressed decoder (like the student), its UNet cut to one cross-attention
    block, saved to ``folder``; returns the folder."""
    from pipelines.tiny import one_attention_block, tiny_pipeline

    pipe = tiny_pipeline(seed, compressed_decoder=True, prediction_type="v_prediction")
    pipe.unet = one_attention_block(pipe.unet)
    pipe.register_to_config(default_num_inference_steps=4)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def _image(pipe, prompt: str, seed: int) -> np.ndarray:
    out = pipe(prompt, generator=torch.Generator().manual_seed(seed), output_type="np")
    return (out.images[0] * 255).round().astype("uint8")


def _unavailable() -> str | None:
    """Why this section cannot run here (the export library or the ExecuTorch runtime missing), or None."""
    try:
        from export.executorch import INSTALL_HINT, executorch_available
    except ImportError as e:
        return f"the export library is not available (`import export` fails: {e})."
    return None if executorch_available() else f"the ExecuTorch runtime is not installed: {INSTALL_HINT}"


def run(args) -> dict:
    res = common.header(NAME, args, torch.device("cpu"), torch.float32)  # XNNPACK is a CPU backend; both on CPU
    threads = torch.get_num_threads()
    res.update(model=args.model or os.path.join(args.bundle, "student"), exports={})
    why = _unavailable()
    if why is None and not args.quick and not os.path.isdir(res["model"]):
        why = f"no model folder {res['model']} (train the bundle first, or pass --model)."
    if why is not None:
        res.update(skipped=True, reason=why)
        return res

    from export import ExportError, export_pipeline
    from export.executorch import host_cpu, runtime_threads, set_runtime_threads
    from export.run import Runner
    from training.ship_bundle import GRID_PROMPTS

    set_runtime_threads(threads)
    res.update(cpu=host_cpu(), threads=threads)
    work = args.work_dir or tempfile.mkdtemp(prefix="export_executorch_")
    try:
        if args.quick:
            res["model"] = "tiny pipeline (pipelines.tiny, UNet cut to one cross-attention block)"
            path = quick_model(os.path.join(work, "tiny"), args.seed)
        else:
            path = res["model"]
        pipe = load_pipeline(path, device="cpu", dtype="fp32")
        pipe.set_progress_bar_config(disable=True)
        variants = export_variants(pipe, args, work, res["exports"], export_pipeline, ExportError)

        # 2-3. images and end-to-end times, alternating runner and pipeline
        prompts = GRID_PROMPTS[: args.prompts]
        seeds = range(args.seed, args.seed + args.seeds)
        for name in variants:
            runner = Runner(res["exports"][name]["dir"], threads=threads)
            runner(prompts[0], seeds[0]), _image(pipe, prompts[0], seeds[0])  # warm-up
            rows, runner_s, pipe_s = [], [], []
            for prompt in prompts:
                for seed in seeds:
                    t0 = time.perf_counter()
                    got = runner(prompt, seed)
                    runner_s.append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    ref = _image(pipe, prompt, seed)
                    pipe_s.append(time.perf_counter() - t0)
                    rows.append({"prompt": prompt, "seed": seed, "psnr_db": round(psnr(ref.astype(np.float64),
                                 got["image"].astype(np.float64), peak=255.0), 2)})  # fmt: skip
            e = res["exports"][name]
            e["images"] = rows
            e["min_psnr_db"] = min(r["psnr_db"] for r in rows)
            e["runner_load_ms"] = round(runner.load_ms, 1)  # loading the .pte files, once
            e["runner_s_median"] = round(statistics.median(runner_s), 4)
            e["pipeline_s_median"] = round(statistics.median(pipe_s), 4)
            e["ratio_runner_over_pipeline"] = round(e["runner_s_median"] / e["pipeline_s_median"], 3)
            e["runtime_threads"] = runtime_threads()
            if not args.work_dir:
                e["dir"] = None  # a temporary folder, gone after the run
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    res["skipped"] = False
    return res


def export_variants(pipe, args, work: str, exports: dict, export_pipeline, export_error) -> list[str]:
    """1. the exports (``export_pipeline`` with every component for fp32, as the app's one-click export; what the
    runner needs for int8 and under ``--quick``), each recorded in ``exports[name]``; returns those that exported."""
    variants = {"fp32": "none", **({"int8": "int8"} if args.int8 else {})}
    for name, quantize in list(variants.items()):
        out = os.path.join(work, name)
        t0 = time.perf_counter()
        if args.reuse and os.path.isfile(os.path.join(out, "manifest.json")):
            with open(os.path.join(out, "manifest.json")) as f:
                comps, seconds = json.load(f)["executorch"]["components"], None
        else:
            components = ALL_COMPONENTS if name == "fp32" and not args.quick else RUNNER_COMPONENTS
            try:
                report = export_pipeline(pipe, out, format="executorch", quantize=quantize, components=components)
            except export_error as e:  # recorded; the other variants go on
                exports[name] = {"error": str(e)}
                del variants[name]
                print(f"{name}: {e}", file=sys.stderr, flush=True)
                continue
            seconds = time.perf_counter() - t0
            comps = report.executorch["components"]
        exports[name] = {
            "export_s": None if seconds is None else round(seconds, 1), "dir": out,
            "components": {k: {"size_mb": c["size_mb"], "psnr_db": c["check"]["executorch"]["psnr_db"],
                               "ms": c["latency"]["measured"]["ms"], "conversion_s": c["conversion_s"]}
                           for k, c in comps.items()},
            "denoiser_to_unet_size": (round(comps["denoiser"]["size_mb"] / comps["unet"]["size_mb"], 3)
                                      if "unet" in comps else None),
            "label": comps["denoiser"]["latency"]["measured"]["label"],
        }  # fmt: skip
        print(f"{name}: {'reused' if seconds is None else f'exported in {seconds:.1f} s'}", file=sys.stderr)
    return list(variants)


def to_markdown(result: dict) -> str:
    """The summary table of a result (this section's JSON)."""
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


def markdown(res: dict, out: common.Outputs | None = None) -> str:
    """The section: machine paragraph, then the summary table."""
    lines = ["## Export: the bundle student in the ExecuTorch runtime", "", common.machine_paragraph(res), ""]
    if res.get("skipped"):
        lines += [f"Skipped: {res['reason']}", ""]
        return "\n".join(lines)
    lines += [
        "The runner (`export.run`: only the export folder, the ExecuTorch runtime with the XNNPACK delegate) vs "
        "`SnapFusionPipeline` (PyTorch eager, fp32) for the same prompts and seeds: PSNR of the 8-bit images, end to "
        "end time per image (median, alternating, same run). Export time: `export_pipeline(format=\"executorch\")` "
        + ("with the runner's components." if res.get("mode") == "quick" else
           "with every component for fp32 (what the app's button runs), the runner's components for int8."),
        "",
        to_markdown(res),
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    """Export, run and time; write export_executorch.json and .md under <out-dir>/benchmarks/."""
    return common.run_section(NAME, argv, parse_args, run, markdown)


if __name__ == "__main__":
    raise SystemExit(main())
