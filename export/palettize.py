"""Post-training weight palettization (k-means look-up tables) of a converted Core ML model.

Each weight tensor with more than ``WEIGHT_THRESHOLD`` elements is replaced by a 2^nbits-entry look-up table and
nbits-wide indices (Core ML op ``constexpr_lut_to_dense``, iOS16+). The table is found by 1-D k-means over the
tensor's values (Lloyd's algorithm, exact on the sorted unique values with their counts), the same objective as
coremltools' ``OpPalettizerConfig(mode="kmeans")``. We pass it as ``mode="custom"`` because coremltools' built-in
k-means needs scikit-learn, which this project does not depend on.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

WEIGHT_THRESHOLD = 2048  # coremltools' default: smaller tensors (norms, biases) stay in float


def _lloyd(x, cw, cwx, c, max_iter):
    """Lloyd's iterations on sorted values ``x`` (prefix sums ``cw`` of weights, ``cwx`` of weight * value)."""
    for _ in range(max_iter):
        cuts = np.searchsorted(x, (c[1:] + c[:-1]) / 2, side="right")  # cluster j holds x[start_j:end_j]
        start = np.concatenate([[0], cuts])
        end = np.concatenate([cuts, [len(x)]])
        mass = cw[end] - cw[start]
        new = np.sort(np.where(mass > 0, (cwx[end] - cwx[start]) / np.maximum(mass, 1e-300), c))
        if np.array_equal(new, c):
            break
        c = new
    return c


def _panter_dite_init(x, w, k, bins=4096):
    """Centroids at quantiles of density^(1/3), the asymptotically MSE-optimal point density (Panter & Dite)."""
    hist, edges = np.histogram(x, bins=bins, weights=w)
    d = np.cbrt(hist)
    cum = np.concatenate([[0.0], np.cumsum(d)])
    t = (np.arange(k) + 0.5) / k * cum[-1]
    i = np.clip(np.searchsorted(cum, t) - 1, 0, bins - 1)
    frac = (t - cum[i]) / np.maximum(d[i], 1e-300)
    return np.sort(edges[i] + frac * (edges[i + 1] - edges[i]))


def kmeans_1d(values: np.ndarray, weights: np.ndarray, k: int, max_iter: int = 300) -> np.ndarray:
    """Weighted 1-D k-means on sorted distinct ``values`` with multiplicities ``weights``; returns k sorted centroids.

    Lloyd's algorithm with prefix sums (a step costs O(k log n)), run from two starts, a uniform grid over the
    value range and the Panter-Dite allocation; the lower squared error wins. Lloyd steps never increase the
    error, so the result is never worse than uniform (linear) quantization with the same number of levels.
    """
    x = values.astype(np.float64)
    w = weights.astype(np.float64)
    cw = np.concatenate([[0.0], np.cumsum(w)])
    cwx = np.concatenate([[0.0], np.cumsum(w * x)])
    best, best_err = None, np.inf
    for init in (np.linspace(x[0], x[-1], k), _panter_dite_init(x, w, k)):
        c = _lloyd(x, cw, cwx, init, max_iter)
        labels = np.searchsorted((c[1:] + c[:-1]) / 2, x)
        err = float(np.sum(w * (x - c[labels]) ** 2))
        if err < best_err:
            best, best_err = c, err
    return best


def _distinct(flat: np.ndarray):
    """Sorted distinct values, their counts, and a function mapping per-distinct-value labels to per-element labels.

    float16 tensors (the usual case: palettization runs after the fp16 conversion) are counted by bit pattern with
    ``bincount`` in O(n), about 50x faster than ``np.unique``'s sort on a 15M-element convolution weight.
    """
    if flat.dtype == np.float16:
        bits = flat.view(np.uint16)
        counts = np.bincount(bits, minlength=1 << 16)
        patterns = np.nonzero(counts)[0]
        values = patterns.astype(np.uint16).view(np.float16)
        order = np.argsort(values, kind="stable")
        patterns, values = patterns[order], values[order]

        def inverse(labels):
            table = np.zeros(1 << 16, dtype=np.int64)
            table[patterns] = labels
            return table[bits]

        return values, counts[patterns], inverse
    values, inv, counts = np.unique(flat, return_inverse=True, return_counts=True)
    inv = inv.reshape(-1)
    return values, counts, lambda labels: np.asarray(labels)[inv]


def kmeans_lut(nbits: int) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """A coremltools ``lut_function``: weight -> (LUT of 2^nbits entries in the weight's dtype, uint8 indices)."""
    k = 1 << nbits

    def lut_function(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        values, counts, inverse = _distinct(weight.reshape(-1))
        lut = np.zeros(k, dtype=weight.dtype)
        if len(values) <= k:  # already representable exactly
            lut[: len(values)] = values
            return lut, inverse(np.arange(len(values))).astype(np.uint8)
        centroids = kmeans_1d(values, counts, k)
        labels = np.searchsorted((centroids[1:] + centroids[:-1]) / 2, values.astype(np.float64))  # nearest centroid
        lut[:] = centroids.astype(weight.dtype)
        return lut, inverse(labels).astype(np.uint8)

    return lut_function


def palettize(mlmodel, nbits: int):
    """Return ``mlmodel`` with every weight tensor above ``WEIGHT_THRESHOLD`` elements palettized to ``nbits``."""
    import coremltools.optimize.coreml as cto

    op_config = cto.OpPalettizerConfig(mode="custom", lut_function=kmeans_lut(nbits),
                                       weight_threshold=WEIGHT_THRESHOLD)  # fmt: skip
    return cto.palettize_weights(mlmodel, cto.OptimizationConfig(global_config=op_config))
