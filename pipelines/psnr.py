"""PSNR, one definition for export checks, decoder distillation and model cards.

    PSNR = 20 * log10(peak / RMSE)   (dB; = 10 * log10(peak^2 / MSE))

``peak`` is the signal's range: pass it when it is known (``peak=1.0`` for images in [0, 1], ``2.0`` in [-1, 1]);
left out, it is max |reference| + 1e-5, as in apple's ml-stable-diffusion ``compute_psnr`` (for tensors with
no fixed range, such as UNet outputs). The RMSE is taken over every element of the inputs together, plus 1e-10
(apple's guard), so equal inputs give a large finite number rather than infinity.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def _as_array(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to(device="cpu", dtype=torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def psnr(reference, test, peak: float | None = None) -> float:
    """PSNR in dB of ``test`` against ``reference`` (tensors or arrays of one shape); ``-inf`` when ``test`` is not
    finite."""
    reference, test = _as_array(reference), _as_array(test)
    if reference.shape != test.shape:
        raise ValueError(f"PSNR needs two inputs of one shape; got {reference.shape} and {test.shape}.")
    if peak is None:
        peak = float(np.abs(reference).max()) + 1e-5
    elif not (peak > 0 and math.isfinite(peak)):
        raise ValueError(f"PSNR peak must be a positive number; got {peak!r}.")
    rmse = float(np.sqrt(np.mean((reference - test) ** 2)))
    if not math.isfinite(rmse):
        return float("-inf")
    return float(20.0 * math.log10(peak / (rmse + 1e-10)))
