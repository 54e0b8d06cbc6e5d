"""The toy-world probe: a small CNN that reads every attribute of a scene (stand-in for CLIP and Inception).

``Probe`` predicts, from a 64x64 image, the canonical labels of ``training.toy.world`` (count, background,
relation, and per object slot shape / color / size / position; slot 1 is the left / top object). Its
penultimate layer (``feature_dim`` values, 64 by default) is the feature space of the toy FID in
``training.toy.evaluation``.

Train and ship it (224 s on the 2-core dev CPU when it was otherwise idle; bitwise reproducible with the same
thread count)::

    python -m training.toy.probe --output bundle/probe [--steps 1500] [--seed 0] [--overwrite]

writes ``config.json`` + ``diffusion_pytorch_model.safetensors`` (fp16) + ``metrics.json`` (accuracy per
attribute and overall on held-out true renders, ``ToyWorld(seed).heldout``).

Images in: a float tensor (N, 3, 64, 64) or (3, 64, 64) in [0, 1]; a uint8 tensor of that shape; a numpy array
(N, 64, 64, 3) / (64, 64, 3), uint8 or float in [0, 1] (the pipeline's ``output_type="np"``); a PIL image or a
list of PIL images.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from pipelines.timing import Timer

from ..common import fail
from .world import ATTRIBUTE_VALUES, HELDOUT_START, IMAGE_SIZE, Labels, ToyWorld, to_tensor

DEFAULT_PROBE = str(Path(__file__).resolve().parents[2] / "bundle" / "probe")
ACCURACY_TARGET = 0.98  # per attribute, on held-out true renders
_CHUNK = 512  # images per forward pass in predict / features


class Probe(ModelMixin, ConfigMixin):
    """Small CNN reading every toy-world attribute.

    Input (N, 3, 64, 64) in [0, 1], plus (``contrast_channel``) a 4th channel: each pixel's distance from the
    image's median border color, i.e. a color-independent foreground map (the border is background in every
    scene), so shape filters need not be learned once per color pair. Trunk: a stride-2 conv, then
    conv3x3 + BatchNorm + ReLU per entry of ``channels`` with 2x2 max-pooling between them -> (N, C, 8, 8).
    Readout: max over the whole map and over its left / right / top / bottom halves (where the objects of
    the canonical slots sit) plus a coarse 4x4 layout map -> MLP -> ``feature_dim`` features (the FID space)
    -> one linear head per attribute. ``attributes`` maps attribute names to class names (stored in the config,
    checked against the toy world when loading)."""

    @register_to_config
    def __init__(self, attributes: dict[str, list[str]] | None = None, channels: tuple[int, ...] = (16, 32, 48, 64),
                 hidden_dim: int = 128, feature_dim: int = 64, layout_channels: int = 8, contrast_channel: bool = True,
                 image_size: int = IMAGE_SIZE):  # fmt: skip
        super().__init__()
        attributes = {k: list(v) for k, v in (attributes or ATTRIBUTE_VALUES).items()}
        self.register_to_config(attributes=attributes)  # the config always lists the classes of every head

        def cbr(c_in, c_out, stride=1):
            return [nn.Conv2d(c_in, c_out, 3, stride, 1), nn.BatchNorm2d(c_out), nn.ReLU()]

        layers = cbr(3 + int(contrast_channel), channels[0], stride=2)
        for i, (c_in, c_out) in enumerate(itertools.pairwise(channels)):
            layers += cbr(c_in, c_out) + ([nn.MaxPool2d(2)] if i < len(channels) - 2 else [])
        self.trunk = nn.Sequential(*layers)
        self.layout = nn.Conv2d(channels[-1], layout_channels, 1)
        side = image_size // 2 ** (len(channels) - 1)  # trunk output side (8 at the defaults)
        n_in = 5 * channels[-1] + layout_channels * (min(side, 4) ** 2)
        self.embed = nn.Sequential(nn.Linear(n_in, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, feature_dim))
        self.heads = nn.ModuleDict({name: nn.Linear(feature_dim, len(v)) for name, v in attributes.items()})
        self.attributes = attributes

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(N, 3, 64, 64) in [0, 1] -> features (N, feature_dim), {attribute: logits (N, classes)}."""
        h = x * 2.0 - 1.0
        if self.config.contrast_channel:
            border = torch.cat([h[..., 0, :], h[..., -1, :], h[..., 1:-1, 0], h[..., 1:-1, -1]], dim=-1)  # (N, 3, P)
            bg = border.median(dim=-1).values[..., None, None]  # (N, 3, 1, 1)
            h = torch.cat([h, (h - bg).norm(dim=1, keepdim=True)], dim=1)  # (N, 4, 64, 64)
        m = self.trunk(h)  # (N, C, 8, 8)
        s = m.shape[-1] // 2
        pooled = [m.amax((2, 3)), m[..., :s].amax((2, 3)), m[..., s:].amax((2, 3)),
                  m[..., :s, :].amax((2, 3)), m[..., s:, :].amax((2, 3))]  # 5 x (N, C)  # fmt: skip
        lay = F.adaptive_avg_pool2d(self.layout(m), min(m.shape[-1], 4)).flatten(1)  # (N, L * 16)
        feats = self.embed(torch.cat(pooled + [lay], dim=1))  # (N, D), pre-activation: the FID features
        z = F.relu(feats)
        return feats, {name: self.heads[name](z) for name in self.attributes}

    # ------------------------------------------------------------------ convenience API

    def _batch(self, images) -> torch.Tensor:
        x = images_to_tensor(images, self.config.image_size)
        return x.to(device=self.device, dtype=self.dtype)

    @torch.no_grad()
    def features(self, images) -> torch.Tensor:
        """(N, feature_dim) float32 penultimate features (CPU)."""
        x = self._batch(images)
        return torch.cat([self(x[i : i + _CHUNK])[0].float().cpu() for i in range(0, len(x), _CHUNK)])

    @torch.no_grad()
    def predict_flat(self, images) -> list[dict[str, str]]:
        """Per image ``{attribute: predicted class name}`` over every attribute."""
        x = self._batch(images)
        out: list[dict[str, str]] = []
        for i in range(0, len(x), _CHUNK):
            _, logits = self(x[i : i + _CHUNK])
            idx = {name: lg.argmax(-1).tolist() for name, lg in logits.items()}
            for j in range(len(x[i : i + _CHUNK])):
                out.append({name: self.attributes[name][idx[name][j]] for name in self.attributes})
        return out

    def predict(self, images) -> list[Labels]:
        """Canonical ``Labels`` per image (objects ordered left-to-right / top-to-bottom)."""
        return [Labels.from_flat(flat) for flat in self.predict_flat(images)]


def images_to_tensor(images, image_size: int = IMAGE_SIZE) -> torch.Tensor:
    """Any accepted image input (see the module docstring) -> (N, 3, S, S) float32 tensor in [0, 1]."""
    if isinstance(images, PIL.Image.Image):
        images = [images]
    if isinstance(images, (list, tuple)):
        if not images or not all(isinstance(im, PIL.Image.Image) for im in images):
            raise ValueError("images as a list must be a non-empty list of PIL images.")
        x = to_tensor(images)
    elif isinstance(images, np.ndarray):
        arr = images[None] if images.ndim == 3 else images
        if arr.ndim != 4 or arr.shape[-1] != 3:
            raise ValueError(f"A numpy image batch must be (N, H, W, 3); got shape {images.shape}.")
        x = torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2)
        x = x.float().div(255.0) if arr.dtype == np.uint8 else x.float()
    elif isinstance(images, torch.Tensor):
        x = images[None] if images.ndim == 3 else images
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"An image tensor must be (N, 3, H, W); got shape {tuple(images.shape)}.")
        x = x.float().div(255.0) if x.dtype == torch.uint8 else x.float()
    else:
        raise ValueError(f"images must be a tensor, a numpy array or PIL image(s); got {type(images).__name__}.")  # noqa: TRY004
    if tuple(x.shape[-2:]) != (image_size, image_size):
        raise ValueError(f"The probe reads {image_size}x{image_size} images; got {x.shape[-2]}x{x.shape[-1]}.")
    if len(x) == 0:
        raise ValueError("images is empty.")
    lo, hi = float(x.min()), float(x.max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise ValueError(f"Float images must lie in [0, 1]; got values in [{lo:.3f}, {hi:.3f}] (denormalize first).")
    return x.clamp(0, 1)


def load_probe(path: str = DEFAULT_PROBE, device: str | torch.device = "cpu") -> Probe:
    """Load a trained probe (fp16 on disk) as float32 in eval mode; checks it matches the toy world's attributes."""
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise ValueError(f"No probe at {path!r} (config.json missing); train one with `python -m training.toy.probe`.")
    with open(os.path.join(path, "config.json")) as f:
        attributes = json.load(f).get("attributes")
    if attributes != {k: list(v) for k, v in ATTRIBUTE_VALUES.items()}:
        raise ValueError(
            f"The probe at {path!r} was trained for other attributes than training.toy.world defines; retrain it."
        )
    probe = Probe.from_pretrained(path, torch_dtype=torch.float32, use_safetensors=True)
    return probe.to(device).eval()


# ---------------------------------------------------------------------------------------------- training


def _targets(flats: list[dict[str, str]]) -> dict[str, torch.Tensor]:
    return {
        name: torch.tensor([list(values).index(f[name]) for f in flats]) for name, values in ATTRIBUTE_VALUES.items()
    }


def true_renders(world: ToyWorld, indices) -> tuple[torch.Tensor, list[dict[str, str]]]:
    """(N, 3, 64, 64) images and canonical flat labels of samples ``indices``."""
    samples = [world.sample(int(i)) for i in indices]
    return to_tensor([s.image for s in samples]), [s.labels.flat() for s in samples]


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mild corruptions so the probe also reads imperfect generated images: blur, brightness, noise. (N,3,H,W)."""
    n = len(x)

    def r(*shape):
        return torch.rand(*shape, generator=generator)

    blur = r(n) < 0.3
    if blur.any():  # 3x3 binomial blur mixed in with a random weight
        k = torch.tensor([1.0, 2.0, 1.0])
        k = (k[:, None] * k[None, :] / 16).expand(3, 1, 3, 3)
        blurred = F.conv2d(F.pad(x[blur], (1, 1, 1, 1), mode="replicate"), k, groups=3)
        w = r(int(blur.sum()), 1, 1, 1)
        x = x.clone()
        x[blur] = w * blurred + (1 - w) * x[blur]
    x = x * (0.95 + 0.1 * r(n, 1, 1, 1)) + 0.04 * (r(n, 1, 1, 1) - 0.5)
    x = x + 0.03 * r(n, 1, 1, 1) * torch.randn(x.shape, generator=generator)
    return x.clamp(0, 1)


@torch.no_grad()
def accuracy(probe: Probe, x: torch.Tensor, flats: list[dict[str, str]]) -> dict[str, float]:
    """Per-attribute accuracy, ``all_attributes`` (every attribute right) and ``overall`` (mean over attributes)."""
    probe.eval()
    pred = probe.predict_flat(x)
    acc = {name: float(np.mean([p[name] == f[name] for p, f in zip(pred, flats)])) for name in ATTRIBUTE_VALUES}
    acc_all = float(np.mean([all(p[n] == f[n] for n in ATTRIBUTE_VALUES) for p, f in zip(pred, flats)]))
    return {**acc, "overall": float(np.mean(list(acc.values()))), "all_attributes": acc_all}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.toy.probe", description="Train the toy-world probe.")
    p.add_argument("--output", default=DEFAULT_PROBE, help="output folder (default: bundle/probe)")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0, help="toy world and initialisation seed")
    p.add_argument("--eval-samples", type=int, default=2000, help="held-out true renders for the reported accuracy")
    p.add_argument("--overwrite", action="store_true", help="replace an existing probe in --output")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.steps < 1 or args.batch_size < 1 or args.eval_samples < 1:
        fail(f"--steps, --batch-size and --eval-samples must be >= 1; got {args.steps}, {args.batch_size}, "
             f"{args.eval_samples}.")
    if args.seed < 0:
        fail(f"--seed must be >= 0; got {args.seed}.")
    if os.path.exists(args.output) and os.listdir(args.output) and not args.overwrite:
        fail(f"{args.output} exists and is not empty; pass --overwrite to replace it.")

    # 1. model, optimiser, data (training indices [0, steps * batch) of ToyWorld(seed))
    torch.manual_seed(args.seed)
    world = ToyWorld(args.seed)
    probe = Probe()
    opt = torch.optim.AdamW(probe.parameters(), lr=args.lr, weight_decay=1e-4)
    warmup = min(50, args.steps)  # linear warm-up, then cosine decay to 0
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s / args.steps, 1.0)))
    )
    gen = torch.Generator().manual_seed(args.seed)
    print(f"probe: {sum(p.numel() for p in probe.parameters()):,} parameters, {args.steps} steps x {args.batch_size}")

    # 2. train on augmented true renders, cross-entropy summed over attributes
    probe.train()
    with Timer("cpu") as clock:
        t0 = time.perf_counter()  # for the progress lines
        for step in range(args.steps):
            x, flats = true_renders(world, range(step * args.batch_size, (step + 1) * args.batch_size))
            targets = _targets(flats)
            _, logits = probe(augment(x, gen))
            loss = sum(F.cross_entropy(logits[n], targets[n]) for n in ATTRIBUTE_VALUES)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if step % 100 == 0 or step == args.steps - 1:
                print(f"step {step:5d}  loss {loss.item():.4f}  {time.perf_counter() - t0:.0f}s", flush=True)
    train_s = clock.ms / 1000

    # 3. held-out accuracy (fp16 round trip, as shipped)
    probe = probe.half().float().eval()
    x, flats = true_renders(world, range(HELDOUT_START, HELDOUT_START + args.eval_samples))
    acc = accuracy(probe, x, flats)
    gen_eval = torch.Generator().manual_seed(args.seed + 1)
    acc_aug = accuracy(probe, augment(x, gen_eval), flats)
    worst = min(ATTRIBUTE_VALUES, key=lambda n: acc[n])
    passed = acc[worst] >= ACCURACY_TARGET

    # 4. save fp16 weights + config + metrics
    os.makedirs(args.output, exist_ok=True)
    probe.half().save_pretrained(args.output, safe_serialization=True)
    metrics = {
        "heldout_accuracy": acc, "heldout_accuracy_augmented": acc_aug, "target_per_attribute": ACCURACY_TARGET,
        "passed": passed, "eval_samples": args.eval_samples,
        "eval_indices": f"ToyWorld({args.seed}).heldout(0, {args.eval_samples})",
        "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
        "train_seconds": round(train_s, 1),
        "feature_dim": probe.config.feature_dim, "parameters": sum(p.numel() for p in probe.parameters()),
    }  # fmt: skip
    with open(os.path.join(args.output, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    for name in ATTRIBUTE_VALUES:
        print(f"  {name:15s} {acc[name]:.4f}  (augmented {acc_aug[name]:.4f})")
    print(f"overall {acc['overall']:.4f}, all attributes right {acc['all_attributes']:.4f}; saved {args.output}")
    if not passed:
        print(f"error: {worst} accuracy {acc[worst]:.4f} is below the target {ACCURACY_TARGET}.", file=sys.stderr)
        return 1
    return 0


__all__ = ["DEFAULT_PROBE", "Probe", "images_to_tensor", "load_probe", "true_renders"]

if __name__ == "__main__":
    raise SystemExit(main())
