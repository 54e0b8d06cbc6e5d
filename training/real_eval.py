"""The paper's own metrics on real captions: FID and CLIP score per guidance scale (paper Fig. 4, MS-COCO 2014).

The command line is ``training.evaluate`` with ``--data coco:PATH`` or ``--data folder:PATH`` (``training/coco.py``):

    python -m training.evaluate --model runs/sd15/student --data coco:/data/coco2014 --num-images 30000 \\
        --guidance 1.5,2.5,4,4.5,6,7.5 --inception-weights /models/inception --clip-model /models/clip-vit-large \\
        --out runs/eval/student_coco
    accelerate launch --multi_gpu --num_processes 8 -m training.evaluate ...   # the same, split over 8 processes

FID: Inception-v3 pool features (``--fid-feature``, 2048 by default) through torchmetrics' ``FrechetInceptionDistance``
with torch-fidelity's TF-ported Inception network and its TF-compatible resize to 299, from a local weights file
(``--inception-weights``: torch-fidelity's ``weights-inception-2015-12-05-6726825d.pth`` or its folder). The real
side is the K evaluated images, center-cropped to the generated resolution. CLIP score: mean over images of
max(cos(image embedding, caption embedding), 0) with a local ``transformers`` CLIP folder (``--clip-model``), the
0-1 scale the paper plots (torchmetrics' ``CLIPScore`` is 100x this).

Every generated image is saved under ``<out>/images/g<scale>/`` as a PNG named by its caption's index, drawn from
noise seeded with ``--seed + index``, so an interrupted run continues where it stopped and any split of the work over
processes makes the same images. Processes take every n-th caption; the main process computes the metrics.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import sys
import time
import types
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from .common import StageError

FORMAT = "snapfusion-real-eval/1"
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's release file name
FID_FEATURES = (64, 192, 768, 2048)


# ---------------------------------------------------------------------------------------------- feature extractors


def inception_weights(path: str | None) -> str:
    """``--inception-weights`` (the file, or a folder holding it) -> the weights file; one-line error otherwise."""
    expected = f"a folder holding {INCEPTION_FILE} (torch-fidelity's Inception-v3 FID weights)"
    if not path:
        raise StageError(f"FID needs local Inception weights: pass --inception-weights, {expected}.")
    p = Path(path)
    if p.is_dir():
        p = p / INCEPTION_FILE
    if not p.is_file():
        raise StageError(f"--inception-weights: {p} does not exist; expected {expected}.")
    return str(p)


def clip_folder(path: str | None) -> str:
    """``--clip-model``: a local transformers CLIP folder (config.json, weights, tokenizer); else a one-line error."""
    expected = "a local transformers CLIP folder (config.json, model weights, tokenizer and preprocessor files)"
    if not path:
        raise StageError(f"CLIP score needs a local CLIP model: pass --clip-model, {expected}.")
    if not (Path(path) / "config.json").is_file():
        raise StageError(f"--clip-model: {path} has no config.json; expected {expected}.")
    return str(path)


def _import_torch_fidelity_inception() -> None:
    """Make ``torch_fidelity.feature_extractor_inceptionv3`` importable (torchmetrics imports it) also where
    torchvision is missing: torch-fidelity's package ``__init__`` imports its CLIP, VGG and DINOv2 extractors, which
    need torchvision; the Inception extractor does not. Then torch-fidelity is installed with ``--no-deps``."""
    if importlib.util.find_spec("torch_fidelity") is None:
        raise StageError("FID needs torch-fidelity's Inception network: pip install --no-deps torch-fidelity==0.4.0 "
                         "(torchmetrics' FID uses it; --no-deps keeps torchvision out).")  # fmt: skip
    try:
        importlib.import_module("torch_fidelity")
        return
    except Exception:  # torchvision missing or built for another torch: load the package without its __init__
        for name in [m for m in sys.modules if m == "torch_fidelity" or m.startswith("torch_fidelity.")]:
            del sys.modules[name]
    spec = importlib.util.find_spec("torch_fidelity")
    package = types.ModuleType("torch_fidelity")
    package.__path__ = list(spec.submodule_search_locations)
    package.__spec__ = spec
    sys.modules["torch_fidelity"] = package
    importlib.import_module("torch_fidelity.feature_extractor_inceptionv3")


def make_fid(weights_path: str, feature: int = 2048):
    """torchmetrics' ``FrechetInceptionDistance`` on torch-fidelity's Inception from ``weights_path``, with its
    TF-compatible resize (``antialias=False``); real features kept across ``reset()``, no cross-process sync."""
    if feature not in FID_FEATURES:
        raise StageError(f"--fid-feature must be one of {FID_FEATURES}; got {feature}.")
    _import_torch_fidelity_inception()
    from torchmetrics.image.fid import FrechetInceptionDistance

    try:
        return FrechetInceptionDistance(feature=feature, feature_extractor_weights_path=weights_path,
                                        reset_real_features=False, normalize=False, antialias=False,
                                        sync_on_compute=False)  # fmt: skip
    except (RuntimeError, OSError, KeyError, ValueError) as e:  # a file of another network or format
        raise StageError(f"--inception-weights {weights_path} is not torch-fidelity's Inception-v3 state dict "
                         f"({type(e).__name__}: {str(e).splitlines()[0][:200]}).") from None  # fmt: skip


class ClipScorer:
    """Per-image CLIP score max(cos(image, caption), 0) with a local transformers CLIP folder (captions truncated to
    the model's context)."""

    def __init__(self, path: str, device: str = "cpu"):
        from transformers import CLIPModel, CLIPProcessor

        self.model = CLIPModel.from_pretrained(clip_folder(path)).eval().to(device)
        self.processor = CLIPProcessor.from_pretrained(path)
        self.device = device

    @torch.no_grad()
    def __call__(self, images: list[PIL.Image.Image], captions: list[str]) -> torch.Tensor:
        inputs = self.processor(text=list(captions), images=images, return_tensors="pt", padding=True,
                                truncation=True).to(self.device)  # fmt: skip
        img = self.model.get_image_features(pixel_values=inputs["pixel_values"])
        txt = self.model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        img, txt = (torch.nn.functional.normalize(_embeds(e).float(), dim=-1) for e in (img, txt))
        return (img * txt).sum(-1).clamp(min=0).cpu()  # (N,)


def _embeds(out) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out.pooler_output  # transformers 5 may return an output object


# ---------------------------------------------------------------------------------------------- images


def load_real(path, resolution: int) -> torch.Tensor:
    """A real image as the generated ones are: short side resized to ``resolution``, center crop; (3, R, R) uint8."""
    from .data import to_tensor

    with PIL.Image.open(path) as im:
        x = to_tensor(im, resolution)  # (3, R, R) in [-1, 1]
    return ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def load_png(path) -> torch.Tensor:
    with PIL.Image.open(path) as im:
        return torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1).contiguous()  # (3, H, W) uint8


def image_path(folder: Path, guidance: float, index: int) -> Path:
    return folder / f"g{guidance:g}" / f"{index:06d}.png"


def cache_settings(args, pairs, steps: int, resolution: int) -> dict:
    """What the cached images depend on: a cache made with other settings is not reused."""
    captions = hashlib.sha256("\n".join(c for _, c in pairs).encode()).hexdigest()[:16]
    return {"model": os.path.abspath(args.model), "data": args.data, "num_images": len(pairs), "steps": steps,
            "resolution": resolution, "seed": args.seed, "captions_sha256": captions}  # fmt: skip


@torch.no_grad()
def generate(pipe, pairs, guidance: float, steps: int, resolution: int, seed: int, folder: Path, batch_size: int,
             rank: int = 0, world: int = 1) -> tuple[int, float]:  # fmt: skip
    """Make this process's share (every ``world``-th caption from ``rank``) of the missing images at ``guidance``;
    returns (images made, seconds)."""
    todo = [i for i in range(rank, len(pairs), world) if not image_path(folder, guidance, i).exists()]
    image_path(folder, guidance, 0).parent.mkdir(parents=True, exist_ok=True)
    device = pipe.device
    t0 = time.perf_counter()
    for start in range(0, len(todo), batch_size):
        idx = todo[start : start + batch_size]
        gens = [torch.Generator(device.type).manual_seed(seed + i) for i in idx]
        out = pipe([pairs[i][1] for i in idx], num_inference_steps=steps, guidance_scale=guidance, generator=gens,
                   height=resolution, width=resolution, output_type="np")  # fmt: skip
        for i, img in zip(idx, out.images):
            path = image_path(folder, guidance, i)
            tmp = path.with_suffix(".tmp.png")
            PIL.Image.fromarray((np.clip(img, 0, 1) * 255).round().astype(np.uint8)).save(tmp)
            tmp.replace(path)  # a killed run leaves no half-written PNG under the final name
    return len(todo), time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------- the sweep


def _batches(items, size):
    for i in range(0, len(items), size):
        yield items[i : i + size]


def compute_metrics(pairs, guidances, folder: Path, resolution: int, fid, clip: ClipScorer, batch_size: int):
    """FID and CLIP score of the cached images at each guidance scale; CLIP score of the real images."""
    real_clip = []
    for chunk in _batches(pairs, batch_size):
        real = [load_real(p, resolution) for p, _ in chunk]
        fid.update(torch.stack(real), real=True)
        real_clip.append(clip([_pil(x) for x in real], [c for _, c in chunk]))
    rows = []
    for g in guidances:
        fid.reset()  # fake features only: reset_real_features=False
        scores = []
        for start in range(0, len(pairs), batch_size):
            idx = range(start, min(start + batch_size, len(pairs)))
            fake = [load_png(image_path(folder, g, i)) for i in idx]
            fid.update(torch.stack(fake), real=False)
            scores.append(clip([_pil(x) for x in fake], [pairs[i][1] for i in idx]))
        rows.append({"guidance": g, "fid": float(fid.compute()), "clip_score": float(torch.cat(scores).mean()),
                     "num_images": len(pairs)})  # fmt: skip
    return rows, float(torch.cat(real_clip).mean())


def _pil(x: torch.Tensor) -> PIL.Image.Image:
    return PIL.Image.fromarray(x.permute(1, 2, 0).numpy())


def evaluate_real(args, guidances: list[float], json_path: str) -> dict | None:
    """The real-data sweep of ``training.evaluate``: check inputs, generate (this process's share, cached), then on
    the main process the metrics; returns the results dict there, None on the other processes."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    from pipelines.latency import host_description

    from .coco import load_eval_set
    from .models import load_stage_pipeline

    # 1. inputs that can be checked before anything is loaded or generated
    weights = inception_weights(args.inception_weights)
    clip_path = clip_folder(args.clip_model)
    if args.fid_feature not in FID_FEATURES:
        raise StageError(f"--fid-feature must be one of {FID_FEATURES}; got {args.fid_feature}.")
    pairs = load_eval_set(args.data, args.num_images, args.seed)
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))  # as the Accelerator reads it
    pipe = load_stage_pipeline(args.model, "--model").to(state.device)
    pipe.set_progress_bar_config(disable=True)
    native = pipe.unet.config.sample_size * pipe.vae_scale_factor
    resolution = args.resolution or native
    if resolution % pipe.size_multiple:
        raise StageError(f"--resolution {resolution} must be a multiple of {pipe.size_multiple} for this model.")
    steps = args.steps if args.steps is not None else int(pipe.config.default_num_inference_steps)

    # 2. the image cache: reused when made with the same settings (an interrupted run continues)
    out = Path(json_path).parent
    folder = out / "images"
    settings = cache_settings(args, pairs, steps, resolution)
    settings_file = folder / "settings.json"
    if state.is_main_process:
        if settings_file.exists() and json.loads(settings_file.read_text()) != settings:
            if not args.overwrite:
                raise StageError(f"{folder} caches images made with other settings ({settings_file}); pass "
                                 "--overwrite to replace them or pick another --out.")  # fmt: skip
            import shutil

            shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)
        settings_file.write_text(json.dumps(settings, indent=2))
    state.wait_for_everyone()

    # 3. this process's share of the images at every guidance scale
    timing = {}
    for g in guidances:
        made, seconds = generate(pipe, pairs, g, steps, resolution, args.seed, folder, args.batch_size,
                                 state.process_index, state.num_processes)  # fmt: skip
        timing[g] = seconds / made if made else None
        print(f"[evaluate] guidance {g:g}: {made} images made by process {state.process_index} "
              f"({len(pairs) - made} cached or another process's)", flush=True)  # fmt: skip
    state.wait_for_everyone()
    if not state.is_main_process:
        return None
    missing = [image_path(folder, g, i) for g in guidances for i in range(len(pairs))]
    missing = [p for p in missing if not p.exists()]
    if missing:
        raise StageError(f"{len(missing)} generated image(s) are missing after generation, e.g. {missing[0]}.")

    # 4. metrics on the main process
    del pipe
    clip = ClipScorer(clip_path, str(state.device))
    rows, real_clip = compute_metrics(pairs, guidances, folder, resolution, make_fid(weights, args.fid_feature),
                                      clip, args.batch_size)  # fmt: skip
    for row in rows:
        row.update(steps=steps, seconds_per_image=timing[row["guidance"]])
    name = os.path.basename(os.path.normpath(args.model))
    return {"format": FORMAT, "model": os.path.abspath(args.model), "label": args.label or f"{name} ({steps} steps)",
            "data": args.data, "num_images": len(pairs), "steps": steps, "resolution": resolution, "seed": args.seed,
            "fid_feature": args.fid_feature, "inception_weights": os.path.abspath(weights),
            "clip_model": os.path.abspath(clip_path), "real_clip_score": real_clip, "x_metric": "clip_score",
            "processes": state.num_processes, "machine": host_description(), "device": str(state.device),
            "results": rows}  # fmt: skip
