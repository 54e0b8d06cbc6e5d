"""Evaluate a pipeline over guidance scales and plot FID against text alignment (paper Fig. 4).

In the toy world (the default, ``--data toy``) the measurement is the toy world's (``training/toy/evaluation.py``:
text alignment and FID judged by the probe, ``training/toy/metrics.py``). On real captions (``--data coco:PATH`` or
``--data folder:PATH``) it is the paper's: FID with Inception features and CLIP score, from local weights
(``training/real_eval.py``; resumable, and split over processes under ``accelerate launch``). This module is the
command line, the curve, and joining runs.

    python -m training.evaluate --model bundle/student --steps 8 --guidance 1.5,2.5,4,6,7.5 --num-images 2000 \\
        [--batch-size 64] [--seed 0] [--out runs/eval/student] [--overwrite]
    python -m training.evaluate --overlay runs/eval/teacher/results.json runs/eval/student/results.json \\
        --out runs/eval/teacher_vs_student.png
    python -m training.evaluate --merge runs/eval/student.json runs/eval/student_low.json --out runs/eval/all.json

    python -m training.evaluate --model runs/sd15/student --data coco:/data/coco2014 --num-images 30000 \\
        --guidance 1.5,2.5,4,4.5,6,7.5 --inception-weights /models/inception --clip-model /models/clip --out DIR

``--out`` is a folder (``results.json`` + ``curve.png``) or a ``.json`` path (the PNG is written beside it); a
real-data run also caches its images under ``<folder>/images/``.
"""

from __future__ import annotations

import argparse
import json
import math
import os

from pipelines.devices import pick_device

from .common import StageError, fail
from .models import load_stage_pipeline
from .toy.evaluation import DEFAULT_NUM_IMAGES, evaluate_pipeline
from .toy.probe import DEFAULT_PROBE, load_probe

FORMAT = "snapfusion-toy-eval/1"
DEFAULT_GUIDANCE = "1.5,2.5,4,6,7.5"


def parse_guidance(text: str) -> list[float]:
    """``"1.5,2.5,4"`` -> [1.5, 2.5, 4.0]; each scale a finite number >= 1 (1 = no classifier-free guidance)."""
    entries = [e.strip() for e in str(text).split(",")]
    if not text or not str(text).strip() or not all(entries):
        raise ValueError(f"--guidance must be a comma-separated list of numbers such as '1.5,4,7.5'; got {text!r}.")
    out = []
    for e in entries:
        try:
            g = float(e)
        except ValueError:
            raise ValueError(f"--guidance entry {e!r} is not a number; give numbers such as '1.5,4,7.5'.") from None
        if not math.isfinite(g) or g < 1:
            raise ValueError(f"--guidance entry {e!r} must be a finite number >= 1 (1 = no guidance).")
        out.append(g)
    return out


# ---------------------------------------------------------------------------------------------- plotting


X_LABELS = {"alignment": "text alignment (probe: fraction of prompted attributes present; dotted: chance)",
            "clip_score": "CLIP score (dotted: real images with their captions)"}  # fmt: skip


def plot_curves(results: list[dict], path: str, title: str | None = None) -> str:
    """FID (y) vs text alignment or CLIP score (x, the results' ``x_metric``), one curve per results dict (points
    labelled by guidance scale), each model's true-vs-true floor (toy) dashed and its chance level (toy) or real
    images' CLIP score dotted in the same color. ``results`` are dicts as written by this module."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not results:
        raise ValueError("plot_curves needs at least one results dict.")
    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=120)
    for i, res in enumerate(results):
        if "results" not in res or not res["results"]:
            raise ValueError(f"Results dict {i} has no 'results' rows (is it a training.evaluate JSON?).")
        rows = sorted(res["results"], key=lambda r: r["guidance"])
        label = res.get("label") or "{} ({} steps)".format(
            os.path.basename(os.path.normpath(str(res.get("model", f"model {i}")))), rows[0]["steps"]
        )
        x_metric = res.get("x_metric", "alignment")
        x = [r[x_metric] for r in rows]
        y = [r["fid"] for r in rows]
        (line,) = ax.plot(x, y, "o-", label=label)
        for r in rows:
            ax.annotate(f"{r['guidance']:g}", (r[x_metric], r["fid"]), textcoords="offset points", xytext=(4, 4),
                        fontsize=7, color=line.get_color())  # fmt: skip
        floor = res.get("floor_fid", rows[0].get("floor_fid"))
        if floor is not None:
            ax.axhline(floor, ls="--", lw=0.8, color=line.get_color())
        for key in ("alignment_unrelated_renders", "real_clip_score"):  # chance level / real images' score
            if key in res:
                ax.axvline(res[key], ls=":", lw=0.8, color=line.get_color())
    real = results[0].get("x_metric") == "clip_score"
    ax.set_xlabel(X_LABELS[results[0].get("x_metric", "alignment")])
    ax.set_ylabel("FID (Inception features)" if real else "FID on probe features (dashed: true-vs-true floor)")
    ax.set_title(title or ("FID vs CLIP score over guidance scales" if real
                           else "Toy world: FID vs text alignment over guidance scales"))  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------- CLI


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="SnapFusionPipeline folder (e.g. bundle/student)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's recommended)")
    p.add_argument(
        "--guidance", default=DEFAULT_GUIDANCE, help=f"comma-separated CFG scales (default {DEFAULT_GUIDANCE})"
    )
    p.add_argument("--num-images", type=int, default=DEFAULT_NUM_IMAGES, help="K: images per guidance for FID")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0, help="toy-world / caption-sampling and noise seed")
    p.add_argument("--probe", default=DEFAULT_PROBE, help="probe folder (default: bundle/probe)")
    r = p.add_argument_group("real data (training/real_eval.py)")
    r.add_argument("--data", default="toy", help="toy (default) | coco:PATH (COCO 2014 captions JSON + val2014/) | "
                   "folder:PATH (images + .txt captions or metadata.jsonl)")  # fmt: skip
    r.add_argument("--inception-weights", default=None, help="folder (or file) of torch-fidelity's Inception-v3 "
                   "weights, weights-inception-2015-12-05-6726825d.pth")  # fmt: skip
    r.add_argument("--clip-model", default=None, help="local transformers CLIP folder for the CLIP score")
    r.add_argument("--fid-feature", type=int, default=2048, help="Inception feature size for FID: 64|192|768|2048")
    r.add_argument("--resolution", type=int, default=None, help="generated (and real) image size (default: the "
                   "model's native size)")  # fmt: skip
    p.add_argument("--device", default=None, help="cuda, mps or cpu (default: cuda if available)")
    p.add_argument("--label", default=None, help="curve label (default: '<model folder name> (<steps> steps)')")
    p.add_argument("--out", default=None, help="folder or .json path (default: runs/eval/<model name>)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument(
        "--overlay", nargs="+", metavar="JSON", help="only plot these results JSONs on one figure (--out PNG)"
    )
    p.add_argument("--merge", nargs="+", metavar="JSON", help="only join runs of one model with the same settings "
                   "at different guidance scales into one results JSON (--out .json)")  # fmt: skip
    return p.parse_args(argv)


def output_paths(out: str) -> tuple[str, str]:
    """``--out`` -> (json path, png path)."""
    if out.lower().endswith(".json"):
        return out, out[: -len(".json")] + ".png"
    return os.path.join(out, "results.json"), os.path.join(out, "curve.png")


MERGE_KEYS = ("format", "model", "probe", "steps", "num_images", "seed", "floor_fid", "machine", "device")


def merge_results(runs: list[dict]) -> dict:
    """Join evaluations of one model made with the same settings (steps, K, seed, probe, machine) at different
    guidance scales: the first run's fields, every run's rows sorted by guidance. Nothing is recomputed."""
    if len(runs) < 2:
        raise ValueError(f"--merge needs at least 2 results JSONs; got {len(runs)}.")
    first = runs[0]
    for i, run in enumerate(runs[1:], start=2):
        for key in MERGE_KEYS:
            if run.get(key) != first.get(key):
                raise ValueError(f"run {i} has {key}={run.get(key)!r} but run 1 has {first.get(key)!r}; only runs "
                                 f"with the same {', '.join(MERGE_KEYS)} can be merged.")  # fmt: skip
    rows = [row for run in runs for row in run["results"]]
    scales = [row["guidance"] for row in rows]
    repeated = sorted({g for g in scales if scales.count(g) > 1})
    if repeated:
        raise ValueError(f"guidance {', '.join(f'{g:g}' for g in repeated)} appears in more than one run.")
    return {**first, "results": sorted(rows, key=lambda r: r["guidance"])}


def _write_results(res: dict, json_path: str, png_path: str) -> int:
    os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
    with open(json_path, "w") as f:
        json.dump(res, f, indent=2)
    plot_curves([res], png_path)
    print(f"saved {json_path} and {png_path}")
    return 0


def _read_results(paths: list[str]) -> list[dict]:
    results = []
    for path in paths:
        try:
            with open(path) as f:
                results.append(json.load(f))
        except (OSError, json.JSONDecodeError) as e:
            fail(f"cannot read results JSON {path}: {e}")
    return results


def _merge(args) -> int:
    if not args.out or not args.out.lower().endswith(".json"):
        fail(f"--merge needs --out ending in .json; got {args.out!r}.")
    json_path, png_path = output_paths(args.out)
    existing = [p for p in (json_path, png_path) if os.path.exists(p)]
    if existing and not args.overwrite:
        fail(f"{existing[0]} exists; pass --overwrite to replace it.")
    try:
        res = merge_results(_read_results(args.merge))
    except (ValueError, KeyError, TypeError) as e:
        fail(f"cannot merge {' '.join(args.merge)}: {e}")
    if args.label:
        res["label"] = args.label
    return _write_results(res, json_path, png_path)


def _overlay(args) -> int:
    if not args.out or not args.out.lower().endswith(".png"):
        fail(f"--overlay needs --out ending in .png; got {args.out!r}.")
    if os.path.exists(args.out) and not args.overwrite:
        fail(f"{args.out} exists; pass --overwrite to replace it.")
    results = _read_results(args.overlay)
    try:
        plot_curves(results, args.out)
    except (ValueError, KeyError) as e:
        fail(f"not a training.evaluate results JSON: {e}")
    print(f"saved {args.out}")
    return 0


def _evaluate_real(args, guidances, json_path: str, png_path: str) -> int:
    from .real_eval import evaluate_real

    if args.resolution is not None and args.resolution < 8:
        fail(f"--resolution must be >= 8; got {args.resolution}.")
    try:
        res = evaluate_real(args, guidances, json_path)
    except StageError as e:
        fail(str(e))
    return 0 if res is None else _write_results(res, json_path, png_path)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.overlay and args.merge:
        fail("--overlay and --merge are separate commands; pass one of them.")
    if args.overlay:
        return _overlay(args)
    if args.merge:
        return _merge(args)
    if not args.model:
        fail("--model is required (a SnapFusionPipeline folder).")

    # 1. validate what can be checked before loading anything
    try:
        guidances = parse_guidance(args.guidance)
    except ValueError as e:
        fail(str(e))
    if args.steps is not None and args.steps < 1:
        fail(f"--steps must be >= 1; got {args.steps}.")
    if args.batch_size < 1:
        fail(f"--batch-size must be >= 1; got {args.batch_size}.")
    if args.seed < 0:
        fail(f"--seed must be >= 0; got {args.seed}.")
    out = args.out or os.path.join("runs", "eval", os.path.basename(os.path.normpath(args.model)))
    json_path, png_path = output_paths(out)
    existing = [p for p in (json_path, png_path) if os.path.exists(p)]
    if existing and not args.overwrite:
        fail(f"{existing[0]} exists; pass --overwrite to replace it.")
    if not os.path.isdir(args.model):
        fail(f"--model {args.model!r} is not a folder (expected a SnapFusionPipeline saved with save_pretrained).")
    if args.data != "toy":
        return _evaluate_real(args, guidances, json_path, png_path)

    # 2. probe and pipeline
    try:
        device = str(pick_device(args.device, "fp32")[0])
        probe = load_probe(args.probe, device)
    except ValueError as e:
        fail(str(e))
    if args.num_images < probe.config.feature_dim + 1:
        need = probe.config.feature_dim + 1
        fail(f"--num-images must be >= feature_dim + 1 = {need} for FID; got {args.num_images}.")
    try:
        # float32 also for the fp16 bundle: these models are small, and fp16 matmuls are slow or missing on CPU
        pipe = load_stage_pipeline(args.model, "--model").to(device)
    except StageError as e:
        fail(str(e))
    steps = args.steps if args.steps is not None else int(pipe.config.default_num_inference_steps)

    # 3. sweep
    from pipelines.latency import host_description

    try:
        res = evaluate_pipeline(pipe, probe, steps, guidances, args.num_images, args.batch_size, args.seed)
    except ValueError as e:
        fail(str(e))
    res = {"format": FORMAT, "model": os.path.abspath(args.model),
           "label": args.label or f"{os.path.basename(os.path.normpath(args.model))} ({steps} steps)",
           "probe": os.path.abspath(args.probe),
           "machine": host_description(), "device": device, **res}  # fmt: skip

    # 4. write JSON + curve
    return _write_results(res, json_path, png_path)


if __name__ == "__main__":
    raise SystemExit(main())
