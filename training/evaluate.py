"""Toy-world quality metrics and the FID-vs-alignment curve (paper Fig. 4 at toy scale).

MS-COCO FID and CLIP score cannot be computed here (no data, no weights), so a model is measured in the toy
world (``training/toy_world.py``) with the probe (``training/probe.py``) in place of CLIP and Inception:

- **text alignment** (CLIP-score stand-in): the fraction of prompted attributes the probe finds in the generated
  image. Prompted attributes of a one-object prompt: count, background, shape, color, size, position; of a
  two-object prompt: count, background, relation and each object's shape, color and size (positions are implied
  by the relation). Both sides are compared in canonical form (objects left-to-right / top-to-bottom).
- **FID** on the probe's ``feature_dim`` (64) penultimate features, generated vs true renders (set A:
  ``ToyWorld(seed).heldout(0, K)``). The prompts are the captions of set B (``heldout(K, K)``), so the **floor**
  FID(true renders of B, A) is what a perfect generator of those prompts would score.
- Alignment is also measured on the 32 fixed ``validation_prompts()`` (generated in addition to the K images).
- Scales for reading the numbers: ``alignment_true_renders`` (B's prompts judged on B's true renders, ~1.0),
  ``alignment_unrelated_renders`` (judged on unrelated true renders A: the chance level, ~0.3) and
  ``reference_feature_trace`` (total variance of the reference features; FID is in the same squared units).

Every image has its own fixed starting noise (drawn once from ``--seed``), shared across guidance scales, so the
points of a curve differ only by guidance.

    python -m training.evaluate --model bundle/student --steps 8 --guidance 1.5,2.5,4,6,7.5 --num-images 2000 \\
        [--batch-size 64] [--seed 0] [--out runs/eval/student] [--overwrite]
    python -m training.evaluate --overlay runs/eval/teacher/results.json runs/eval/student/results.json \\
        --out runs/eval/teacher_vs_student.png
    python -m training.evaluate --merge runs/eval/student.json runs/eval/student_low.json --out runs/eval/all.json

``--out`` is a folder (``results.json`` + ``curve.png``) or a ``.json`` path (the PNG is written beside it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import numpy as np
import torch

from pipelines.devices import pick_device
from pipelines.timing import Timer

from .common import StageError, fail
from .models import load_stage_pipeline
from .probe import DEFAULT_PROBE, Probe, load_probe
from .toy_world import IMAGE_SIZE, Labels, ToyWorld, parse_caption, to_tensor, validation_prompts

FORMAT = "snapfusion-toy-eval/1"
DEFAULT_GUIDANCE = "1.5,2.5,4,6,7.5"
DEFAULT_NUM_IMAGES = 2000
ATTRIBUTE_KINDS = ("count", "background", "relation", "shape", "color", "size", "position")


# ---------------------------------------------------------------------------------------------- metrics


def fid_from_features(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to (N, D) and (M, D) features:
    ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2), in float64 (no scipy needed)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"Features must be (N, D) and (M, D) with the same D; got {a.shape} and {b.shape}.")
    d = a.shape[1]
    for name, x in (("first", a), ("second", b)):
        if len(x) < d + 1:
            raise ValueError(
                f"FID needs at least feature_dim + 1 = {d + 1} samples per set; the {name} set has {len(x)}."
            )
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(s_a)
    sqrt_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T  # S_a^1/2
    m = sqrt_a @ s_b @ sqrt_a  # symmetric PSD; Tr((S_a S_b)^1/2) = sum of sqrt of its eigenvalues
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * tr_sqrt)


def prompted_items(labels: Labels) -> dict[str, str]:
    """The attributes a prompt asks for, ``{attribute name: canonical value}`` (see the module docstring)."""
    flat = labels.flat()
    if labels.count == 2:
        return {k: v for k, v in flat.items() if not k.endswith("_position")}
    if labels.count == 1:
        return {k: v for k, v in flat.items() if not k.startswith("obj2_") and k != "relation"}
    return {k: v for k, v in flat.items() if v != "none"}


def _kind(name: str) -> str:
    return name.split("_", 1)[1] if name.startswith("obj") else name


def alignment_scores(prompt_labels: list[Labels], predictions: list[dict[str, str]]) -> dict:
    """Fraction of prompted attributes found by the probe: ``overall``, ``per_attribute`` (by kind) and
    ``per_prompt`` (one fraction per prompt). ``predictions`` are ``Probe.predict_flat`` outputs."""
    if len(prompt_labels) != len(predictions):
        raise ValueError(f"{len(prompt_labels)} prompts but {len(predictions)} predictions.")
    hits = {k: 0 for k in ATTRIBUTE_KINDS}
    total = {k: 0 for k in ATTRIBUTE_KINDS}
    per_prompt = []
    for labels, pred in zip(prompt_labels, predictions):
        items = prompted_items(labels)
        ok = [pred[name] == value for name, value in items.items()]
        for (name, _), good in zip(items.items(), ok):
            total[_kind(name)] += 1
            hits[_kind(name)] += int(good)
        per_prompt.append(float(np.mean(ok)) if ok else float("nan"))
    n = sum(total.values())
    return {
        "overall": sum(hits.values()) / n if n else float("nan"),
        "per_attribute": {k: hits[k] / total[k] for k in ATTRIBUTE_KINDS if total[k]},
        "per_prompt": per_prompt,
    }


# ---------------------------------------------------------------------------------------------- checks


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


def check_settings(pipe, probe: Probe, steps: int, guidances: list[float], num_images: int, batch_size: int) -> None:
    """Raise ValueError for settings the evaluation cannot use (before any image is generated)."""
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    if size != IMAGE_SIZE:
        raise ValueError(
            f"The toy-world metrics need {IMAGE_SIZE}x{IMAGE_SIZE} images; this model makes {size}x{size} "
            f"(unet sample_size {pipe.unet.config.sample_size} x VAE factor {pipe.vae_scale_factor})."
        )
    if IMAGE_SIZE % pipe.size_multiple:
        raise ValueError(f"{IMAGE_SIZE} px is not a multiple of the model's size multiple {pipe.size_multiple}.")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1; got {steps!r}.")
    if not guidances:
        raise ValueError("The guidance list is empty; give at least one scale, e.g. [1.5, 4, 7.5].")
    for g in guidances:
        if isinstance(g, bool) or not isinstance(g, (int, float)) or not math.isfinite(g) or g < 1:
            raise ValueError(f"Guidance scale {g!r} must be a finite number >= 1 (1 = no guidance).")
    d = probe.config.feature_dim
    if isinstance(num_images, bool) or not isinstance(num_images, (int, np.integer)) or num_images < d + 1:
        raise ValueError(
            f"num_images must be >= feature_dim + 1 = {d + 1} for FID on {d}-d probe features; got {num_images!r}."
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1; got {batch_size!r}.")


# ---------------------------------------------------------------------------------------------- generation


@torch.no_grad()
def generate(pipe, prompts: list[str], latents: torch.Tensor, steps: int, guidance: float,
             batch_size: int) -> tuple[torch.Tensor, float]:  # fmt: skip
    """Batched generation from fixed starting noise: (N, 3, 64, 64) float images in [0, 1] (CPU) and the
    measured wall-clock seconds of the pipeline calls."""
    images, seconds = [], 0.0
    for i in range(0, len(prompts), batch_size):
        with Timer(pipe.device) as t:
            out = pipe(prompt=prompts[i : i + batch_size], num_inference_steps=steps, guidance_scale=guidance,
                       latents=latents[i : i + batch_size], output_type="pt")  # fmt: skip
            img = out.images.float().cpu()  # (B, 3, H, W)
        seconds += t.ms / 1000
        images.append(img)
    return torch.cat(images), seconds


def evaluate_pipeline(pipe, probe: Probe, steps: int, guidances: list[float], num_images: int = DEFAULT_NUM_IMAGES,
                      batch_size: int = 64, seed: int = 0, log=print) -> dict:  # fmt: skip
    """Run the sweep; returns the results dict written as JSON (without the file-level fields)."""
    check_settings(pipe, probe, steps, guidances, num_images, batch_size)
    k = int(num_images)

    # 1. reference sets of true renders: A (FID reference) and B (prompts; floor = FID(B, A))
    world = ToyWorld(seed)
    set_a, set_b = world.heldout(0, k), world.heldout(k, k)
    images_a, images_b = to_tensor([s.image for s in set_a]), to_tensor([s.image for s in set_b])
    feats_a = probe.features(images_a)
    floor = fid_from_features(probe.features(images_b), feats_a)
    # alignment scale: B's prompts judged on B's true renders (ceiling) and on unrelated true renders A (chance)
    labels_b = [parse_caption(s.caption) for s in set_b]
    ceiling = alignment_scores(labels_b, probe.predict_flat(images_b))["overall"]
    chance = alignment_scores(labels_b, probe.predict_flat(images_a))["overall"]
    log(f"floor FID (true vs true, K={k}): {floor:.3f}; alignment of true renders {ceiling:.4f}, "
        f"of unrelated renders {chance:.4f}")  # fmt: skip

    # 2. prompts: B's captions (FID + alignment), then the fixed validation prompts (alignment)
    val = validation_prompts()
    prompts = [s.caption for s in set_b] + [p for p, _ in val]
    labels = [parse_caption(p) for p in prompts]

    # 3. fixed starting noise per image (N, C, h, w), shared by every guidance scale
    f = pipe.vae_scale_factor
    shape = (len(prompts), pipe.unet.config.in_channels, IMAGE_SIZE // f, IMAGE_SIZE // f)
    latents = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed), dtype=torch.float32)

    # 4. sweep guidance (after one untimed warm-up call, so first-call overheads do not count as generation time)
    generate(pipe, prompts[:batch_size], latents[:batch_size], 1, max(guidances), batch_size)
    rows = []
    for g in guidances:
        images, seconds = generate(pipe, prompts, latents, steps, g, batch_size)
        pred = probe.predict_flat(images)
        fid = fid_from_features(probe.features(images[:k]), feats_a)
        every = alignment_scores(labels, pred)
        dist = alignment_scores(labels[:k], pred[:k])
        fixed = alignment_scores(labels[k:], pred[k:])
        rows.append({
            "guidance": float(g), "alignment": every["overall"], "alignment_per_attribute": every["per_attribute"],
            "alignment_heldout_prompts": dist["overall"], "alignment_validation_prompts": fixed["overall"],
            "fid": fid, "floor_fid": floor, "seconds_per_image": seconds / len(prompts), "num_images": k,
            "num_generated": len(prompts), "steps": int(steps),
            "validation": [{"prompt": p, "alignment": a} for (p, _), a in zip(val, fixed["per_prompt"])],
        })  # fmt: skip
        log(f"guidance {g:g}: alignment {every['overall']:.4f}  FID {fid:.3f} (floor {floor:.3f})  "
            f"{seconds / len(prompts) * 1000:.1f} ms/image")  # fmt: skip
    return {"steps": int(steps), "num_images": k, "batch_size": int(batch_size), "seed": int(seed), "floor_fid": floor,
            "alignment_true_renders": ceiling, "alignment_unrelated_renders": chance,
            "reference_feature_trace": float(np.trace(np.cov(feats_a.double().numpy(), rowvar=False))),
            "timing": f"measured: wall clock of the batched pipeline calls (batch {batch_size}) / images generated",
            "results": rows}  # fmt: skip


# ---------------------------------------------------------------------------------------------- plotting


def plot_curves(results: list[dict], path: str, title: str | None = None) -> str:
    """FID (y) vs text alignment (x), one curve per results dict (points labelled by guidance scale), each
    model's true-vs-true floor dashed in the same color. ``results`` are dicts as written by this module."""
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
        x = [r["alignment"] for r in rows]
        y = [r["fid"] for r in rows]
        (line,) = ax.plot(x, y, "o-", label=label)
        for r in rows:
            ax.annotate(f"{r['guidance']:g}", (r["alignment"], r["fid"]), textcoords="offset points", xytext=(4, 4),
                        fontsize=7, color=line.get_color())  # fmt: skip
        ax.axhline(res.get("floor_fid", rows[0]["floor_fid"]), ls="--", lw=0.8, color=line.get_color())
        if "alignment_unrelated_renders" in res:  # chance level of the alignment score
            ax.axvline(res["alignment_unrelated_renders"], ls=":", lw=0.8, color=line.get_color())
    ax.set_xlabel("text alignment (probe: fraction of prompted attributes present; dotted: chance)")
    ax.set_ylabel("FID on probe features (dashed: true-vs-true floor)")
    ax.set_title(title or "Toy world: FID vs text alignment over guidance scales")
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
    p.add_argument("--seed", type=int, default=0, help="toy-world and noise seed")
    p.add_argument("--probe", default=DEFAULT_PROBE, help="probe folder (default: bundle/probe)")
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


__all__ = ["alignment_scores", "evaluate_pipeline", "fid_from_features", "merge_results", "parse_guidance",
           "plot_curves", "prompted_items"]  # fmt: skip

if __name__ == "__main__":
    raise SystemExit(main())
