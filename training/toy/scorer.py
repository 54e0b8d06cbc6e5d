"""``evolve --scorer toy``: the architecture search's quality measure in the toy world."""

from __future__ import annotations

import torch

from .metrics import alignment_scores
from .probe import load_probe
from .world import ToyWorld, parse_caption, validation_prompts


class ToyScorer:
    """Probe-judged text alignment on the toy world's validation prompts (+ held-out captions)."""

    def __init__(self, num_images: int, seed: int):
        self.probe = load_probe()
        prompts = [p for p, _ in validation_prompts()]
        world = ToyWorld(seed + 1000)
        while len(prompts) < num_images:
            prompts.append(world.sample(len(prompts)).caption)
        self.prompts = prompts[:num_images]
        self.labels = [parse_caption(p) for p in self.prompts]
        self.name = "toy alignment"

    def __call__(self, images: torch.Tensor) -> float:  # (N, 3, H, W) in [0, 1]
        return float(alignment_scores(self.labels, self.probe.predict_flat(images))["overall"])
