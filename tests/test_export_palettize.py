"""export/palettize.py: 1-D k-means look-up tables for weight palettization."""

import numpy as np

from export.palettize import kmeans_1d, kmeans_lut


def test_kmeans_palettization():
    rng = np.random.default_rng(0)
    clustered = np.concatenate([rng.normal(m, 0.01, 500) for m in (-1.0, 0.0, 2.0, 5.0)]).astype(np.float32)
    lut, idx = kmeans_lut(2)(clustered)
    assert lut.dtype == np.float32 and idx.dtype == np.uint8 and idx.shape == (2000,)
    assert np.allclose(np.sort(lut), [-1.0, 0.0, 2.0, 5.0], atol=0.01)
    assert np.array_equal(np.bincount(idx), [500] * 4)
    w = rng.laplace(0, 1, 20000).astype(np.float16)
    values, counts = np.unique(w, return_counts=True)
    x = values.astype(np.float64)
    for bits in (8, 6, 4):
        c = kmeans_1d(values, counts, 1 << bits)

        def err(cent):
            return np.sum(counts * (x - cent[np.searchsorted((cent[1:] + cent[:-1]) / 2, x)]) ** 2)

        ratio = err(c) / err(np.linspace(x[0], x[-1], 1 << bits))
        assert ratio < (1.0 if bits == 8 else 0.5), bits  # never worse than uniform levels, far better at 6/4 bits
    few = np.array([0.5, -0.5, 0.5, 0.25], dtype=np.float16)  # fewer distinct values than entries: exact
    lut, idx = kmeans_lut(4)(few)
    assert np.array_equal(lut[idx], few)
