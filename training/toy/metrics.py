"""The toy world's quality metrics, judged by the probe (``training/toy/probe.py``) in place of CLIP and Inception.

- **text alignment** (CLIP-score stand-in): the fraction of prompted attributes the probe finds in the generated
  image. Prompted attributes of a one-object prompt: count, background, shape, color, size, position; of a
  two-object prompt: count, background, relation and each object's shape, color and size (positions are implied
  by the relation). Both sides are compared in canonical form (objects left-to-right / top-to-bottom).
- **FID** on the probe's ``feature_dim`` (64) penultimate features: the Frechet distance of two feature sets.
"""

from __future__ import annotations

import numpy as np
import torch

from .world import Labels

ATTRIBUTE_KINDS = ("count", "background", "relation", "shape", "color", "size", "position")


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
