"""Copy a recipe's models into the shipped bundle folder as fp16 safetensors, plus sample grids.

    python -m training.ship_bundle --recipe runs/mini --out bundle [--student-guidance 4] [--overwrite]
    python -m training.ship_bundle --recipe runs/v3 --models student --out bundle --overwrite  # re-ship one model
    python -m training.ship_bundle --recipe runs/v8 --models onepass --out bundle  # the one-pass student

Models: the teacher, the SnapFusion student and the one-pass student (``MODELS``: bundle folder -> default recipe
stage). The grids use the same prompts and seeds for every model (``bundle/samples_<name>.png``).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import PIL.Image
import torch

from .common import StageError, run_cli
from .models import load_stage_pipeline

MODELS = {"teacher": "teacher", "student": "student", "onepass": "onepass4"}  # bundle folder -> recipe stage

GRID_PROMPTS = [  # toy-world captions (every attribute named, as in training)
    "a big red circle in the center on a gray background",
    "a small blue square on the left, black background",
    "a big yellow triangle at the top on a white background",
    "a big green diamond left of a small purple circle, gray background",
    "a small orange cross above a big blue ring, black background",
    "brown background with a big cyan square in the bottom right",
    "a big red triangle below a small yellow circle, white background",
    "a small pink ring in the top left on a gray background",
]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", required=True, help="recipe output folder (with teacher/ and student/)")
    p.add_argument("--out", default="bundle")
    for name, stage in MODELS.items():
        p.add_argument(f"--{name}-stage", default=stage, help=f"the recipe stage shipped as {name}/")
        p.add_argument(f"--{name}-guidance", type=float, default=None,
                       help="recommended guidance scale to record (from evaluate)")  # fmt: skip
    p.add_argument("--models", default="teacher,student", help=f"which models to ship (comma-separated, of "
                   f"{', '.join(MODELS)}); the others in --out are left as they are")  # fmt: skip
    p.add_argument("--seeds", type=int, default=2, help="grid rows (seeds 0..N-1)")
    p.add_argument("--overwrite", action="store_true")
    return p.parse_args(argv)


def sample_grid(pipe, prompts, seeds: int) -> PIL.Image.Image:
    """Rows = seeds, columns = prompts, each image at 2x nearest-neighbour scale."""
    rows = []
    for seed in range(seeds):
        out = pipe(prompts, generator=torch.Generator().manual_seed(seed))
        rows.append(out.images)
    w, h = rows[0][0].size
    grid = PIL.Image.new("RGB", (2 * w * len(prompts), 2 * h * seeds))
    for r, images in enumerate(rows):
        for c, im in enumerate(images):
            grid.paste(im.resize((2 * w, 2 * h), PIL.Image.NEAREST), (2 * w * c, 2 * h * r))
    return grid


def main(args):
    recipe, out = Path(args.recipe), Path(args.out)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if not models or set(models) - set(MODELS):
        raise StageError(f"--models must name some of {', '.join(MODELS)}; got {args.models!r}.")
    for name in models:
        stage, guidance = getattr(args, f"{name}_stage"), getattr(args, f"{name}_guidance")
        src = recipe / stage
        if not (src / "stage_complete.json").exists():
            raise StageError(f"{src} is not a completed stage.")
        dst = out / name
        if dst.exists() and not args.overwrite:
            raise StageError(f"{dst} exists; pass --overwrite to replace it.")
        pipe = load_stage_pipeline(str(src), name)
        if guidance is not None:
            pipe.register_to_config(default_guidance_scale=float(guidance))
        tmp = out / f".{name}.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        pipe.to(dtype=torch.float16).save_pretrained(tmp, safe_serialization=True)
        if dst.exists():
            shutil.rmtree(dst)
        tmp.rename(dst)
        fp32 = load_stage_pipeline(str(dst), name)  # the shipped weights, upcast as the app loads them on CPU
        sample_grid(fp32, GRID_PROMPTS, args.seeds).save(out / f"samples_{name}.png")
        print(f"shipped {dst} and {out / f'samples_{name}.png'}")


if __name__ == "__main__":
    run_cli(main, parse_args)
