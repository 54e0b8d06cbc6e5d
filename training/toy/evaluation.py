"""The toy-world evaluation of a pipeline: text alignment and FID over a sweep of guidance scales (paper Fig. 4 at
toy scale; ``python -m training.evaluate`` is its command line).

MS-COCO FID and CLIP score cannot be computed here (no data, no weights), so a model is measured in the toy world
with the probe in place of CLIP and Inception (metrics: ``training/toy/metrics.py``):

- **FID**: generated vs true renders (set A: ``ToyWorld(seed).heldout(0, K)``). The prompts are the captions of
  set B (``heldout(K, K)``), so the **floor** FID(true renders of B, A) is what a perfect generator of those
  prompts would score.
- Alignment is also measured on the 32 fixed ``validation_prompts()`` (generated in addition to the K images).
- Scales for reading the numbers: ``alignment_true_renders`` (B's prompts judged on B's true renders, ~1.0),
  ``alignment_unrelated_renders`` (judged on unrelated true renders A: the chance level, ~0.3) and
  ``reference_feature_trace`` (total variance of the reference features; FID is in the same squared units).

Every image has its own fixed starting noise (drawn once from ``seed``), shared across guidance scales, so the
points of a curve differ only by guidance. The toy world's images are 64x64: other sizes are refused.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from pipelines.timing import Timer

from .metrics import alignment_scores, fid_from_features
from .probe import Probe
from .world import IMAGE_SIZE, ToyWorld, parse_caption, to_tensor, validation_prompts

DEFAULT_NUM_IMAGES = 2000


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
