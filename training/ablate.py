"""Robust vs plain training under the removal of each single block (paper Fig. 5 at toy scale).

For every model given, and for every removable block of its UNet, remove that one block and measure the toy-world
text alignment and FID (``training/toy/metrics.py``, same probe, same prompts, same starting noise) against
the intact model. A robust-trained UNet (``training.robust``) should lose far less than a plainly trained one.

    python -m training.ablate --model plain=runs/mini/teacher_v --model robust=runs/mini/robust \\
        --steps 10 --guidance 5 --num-images 128 --out runs/mini/ablation_removal

Writes ``<out>/removal.json``, ``<out>/removal.md`` (a table) and ``<out>/removal.png`` (alignment and FID per
removed block, one bar series per model).
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
import torch

from .common import StageError, fail
from .models import load_stage_pipeline
from .toy.evaluation import generate
from .toy.metrics import alignment_scores, fid_from_features
from .toy.probe import DEFAULT_PROBE, load_probe
from .toy.world import IMAGE_SIZE, ToyWorld, parse_caption, to_tensor

FORMAT = "snapfusion-toy-removal/1"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.ablate", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", required=True, metavar="LABEL=DIR",
                   help="a SnapFusionPipeline folder with an efficient UNet, labelled (repeat for each model)")
    p.add_argument("--steps", type=int, default=10, help="denoising steps per image")
    p.add_argument("--guidance", type=float, default=5.0, help="CFG scale")
    p.add_argument("--num-images", type=int, default=128, help="K: images per configuration (> probe feature dim)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0, help="toy-world and noise seed")
    p.add_argument("--blocks", default=None, help="comma-separated block ids to remove, e.g. 'down0.1:CA,mid.0:RB' "
                   "(default: every removable block)")
    p.add_argument("--probe", default=DEFAULT_PROBE)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    return p.parse_args(argv)  # fmt: skip


def parse_models(items: list[str]) -> list[tuple[str, str]]:
    models = []
    for item in items:
        label, sep, path = item.partition("=")
        if not sep or not label or not path:
            raise ValueError(f"--model must be LABEL=DIR (e.g. robust=runs/mini/robust); got {item!r}.")
        if not os.path.isfile(os.path.join(path, "model_index.json")):
            raise ValueError(f"--model {label}={path}: not a pipeline folder (no model_index.json).")
        models.append((label, path))
    if len({label for label, _ in models}) != len(models):
        raise ValueError("--model labels must be unique.")
    return models


@torch.no_grad()
def removal_sweep(pipe, probe, steps: int, guidance: float, num_images: int, batch_size: int = 64, seed: int = 0,
                  blocks: list[str] | None = None, log=print) -> dict:  # fmt: skip
    """Metrics of the intact UNet and of the UNet without each single removable block (others untouched);
    ``blocks`` limits the sweep to those block ids."""
    from pipelines import EfficientUNet2DConditionModel

    unet = pipe.unet
    if not isinstance(unet, EfficientUNet2DConditionModel):
        raise ValueError(f"the UNet is a {type(unet).__name__}; block removal needs an EfficientUNet2DConditionModel.")
    removable = unet.removable_blocks()
    if blocks is not None:
        names = {str(b): b for b in removable}
        unknown = [b for b in blocks if b not in names]
        if unknown:
            raise ValueError(f"block(s) {', '.join(unknown)} are not removable blocks of this UNet; removable: "
                             f"{', '.join(names)}.")  # fmt: skip
        removable = [names[b] for b in blocks]
    k = int(num_images)
    if k < probe.config.feature_dim + 1:
        raise ValueError(f"num_images must be >= feature_dim + 1 = {probe.config.feature_dim + 1}; got {k}.")
    world = ToyWorld(seed)
    set_a, set_b = world.heldout(0, k), world.heldout(k, k)
    feats_a = probe.features(to_tensor([s.image for s in set_a]))
    prompts = [s.caption for s in set_b]
    labels = [parse_caption(p) for p in prompts]
    f = pipe.vae_scale_factor
    shape = (k, unet.config.in_channels, IMAGE_SIZE // f, IMAGE_SIZE // f)
    latents = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed), dtype=torch.float32)

    def score(name: str) -> dict:
        images, seconds = generate(pipe, prompts, latents, steps, guidance, batch_size)
        row = {"removed": name, "alignment": alignment_scores(labels, probe.predict_flat(images))["overall"],
               "fid": fid_from_features(probe.features(images), feats_a)}  # fmt: skip
        log(f"  {name:>14}: alignment {row['alignment']:.4f}  FID {row['fid']:.2f}  "
            f"({seconds:.0f} s generating)")  # fmt: skip
        return row

    rows = [score("none")]
    for block in removable:
        pipe.unet = unet.remove_blocks([block])
        try:
            rows.append(score(str(block)))
        finally:
            pipe.unet = unet
    return {"steps": int(steps), "guidance": float(guidance), "num_images": k, "seed": int(seed), "rows": rows}


def plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = results["models"]
    blocks = [r["removed"] for r in models[0]["rows"]]
    x = np.arange(len(blocks))
    width = 0.8 / len(models)
    fig, axes = plt.subplots(2, 1, figsize=(max(8, 0.45 * len(blocks)), 7), sharex=True)
    for i, m in enumerate(models):
        by = {r["removed"]: r for r in m["rows"]}
        for ax, key in zip(axes, ("alignment", "fid")):
            ax.bar(x + (i - (len(models) - 1) / 2) * width, [by[b][key] if b in by else np.nan for b in blocks],
                   width, label=m["label"])  # fmt: skip
    axes[0].set_ylabel("text alignment (higher is better)")
    axes[1].set_ylabel("FID on probe features (lower is better)")
    axes[1].set_xticks(x, blocks, rotation=70, fontsize=8)
    axes[0].legend()
    axes[0].set_title(f"Removing one block at a time ({results['steps']} steps, guidance {results['guidance']:g}, "
                      f"K={results['num_images']}; 'none' = intact)")  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(results: dict) -> str:
    models = results["models"]
    head = "| removed block | " + " | ".join(f"{m['label']} alignment | {m['label']} FID" for m in models) + " |"
    lines = [head, "|" + "---|" * (1 + 2 * len(models))]
    by = [{r["removed"]: r for r in m["rows"]} for m in models]
    for name in [r["removed"] for r in models[0]["rows"]]:
        cells = []
        for b in by:
            r = b.get(name)
            cells += [f"{r['alignment']:.3f}", f"{r['fid']:.1f}"] if r else ["-", "-"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    summary = []
    for m in models:
        base, rest = m["rows"][0], m["rows"][1:]
        mean_drop = float(np.mean([base["alignment"] - r["alignment"] for r in rest])) if rest else 0.0
        worst = max(rest, key=lambda r: base["alignment"] - r["alignment"]) if rest else base
        summary.append(f"- **{m['label']}** (`{m['model']}`): intact alignment {base['alignment']:.3f}; mean drop "
                       f"over {len(rest)} single-block removals {mean_drop:.3f}; worst {worst['removed']} "
                       f"({worst['alignment']:.3f}).")  # fmt: skip
    return "\n".join(summary + [""] + lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        models = parse_models(args.model)
    except ValueError as e:
        fail(str(e))
    for name in ("steps", "num_images", "batch_size"):
        if getattr(args, name) < 1:
            fail(f"--{name.replace('_', '-')} must be >= 1; got {getattr(args, name)}.")
    blocks = [b.strip() for b in args.blocks.split(",") if b.strip()] if args.blocks is not None else None
    if blocks is not None and not blocks:
        fail("--blocks is empty; give block ids like 'mid.0:RB' or leave it out to remove every removable block.")
    paths = [os.path.join(args.out, n) for n in ("removal.json", "removal.md", "removal.png")]
    existing = [p for p in paths if os.path.exists(p)]
    if existing and not args.overwrite:
        fail(f"{existing[0]} exists; pass --overwrite to replace it.")
    try:
        probe = load_probe(args.probe, "cpu")
    except ValueError as e:
        fail(str(e))
    from pipelines.latency import host_description

    out = {"format": FORMAT, "machine": host_description(), "models": []}
    for label, path in models:
        try:
            pipe = load_stage_pipeline(path, f"--model {label}=")
        except StageError as e:
            fail(str(e))
        print(f"{label} ({path}):")
        try:
            res = removal_sweep(pipe, probe, args.steps, args.guidance, args.num_images, args.batch_size, args.seed,
                                blocks)
        except ValueError as e:
            fail(f"{label}: {e}")
        out.update({k: res[k] for k in ("steps", "guidance", "num_images", "seed")})
        out["models"].append({"label": label, "model": path, "rows": res["rows"]})
    os.makedirs(args.out, exist_ok=True)
    with open(paths[0], "w") as f:
        json.dump(out, f, indent=2)
    with open(paths[1], "w") as f:
        f.write(markdown(out))
    plot(out, paths[2])
    print(f"saved {', '.join(paths)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
