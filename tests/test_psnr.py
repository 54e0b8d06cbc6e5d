"""pipelines/psnr.py: PSNR = 20 log10(peak / RMSE), peak given or max|reference| (apple's compute_psnr)."""

import math

import numpy as np
import pytest
import torch

from pipelines.psnr import psnr


def test_known_values_with_a_given_peak():
    ref = np.zeros((2, 3, 4, 4))
    assert psnr(ref, ref + 0.1, peak=1.0) == pytest.approx(20.0, abs=1e-6)  # RMSE 0.1 of peak 1
    assert psnr(ref, ref - 0.01, peak=1.0) == pytest.approx(40.0, abs=1e-5)
    assert psnr(ref, ref + 0.01, peak=2.0) == pytest.approx(46.0206, abs=1e-4)  # images in [-1, 1]: 40 + 20 log10 2
    # one error of 0.2 among four values: MSE 0.01, RMSE 0.1 -> 20 dB (the mean is over every element)
    assert psnr([0.0, 0.5, 0.5, 1.0], [0.2, 0.5, 0.5, 1.0], peak=1.0) == pytest.approx(20.0, abs=1e-6)


def test_default_peak_is_the_largest_reference_magnitude():
    """apple ml-stable-diffusion's compute_psnr: peak = max |reference| + 1e-5, for tensors without a fixed range."""
    ref = np.array([2.0, -4.0, 1.0, 0.5])
    assert psnr(ref, ref + 0.4) == pytest.approx(20.0, abs=1e-4)  # peak 4, RMSE 0.4
    assert psnr(ref * 10, ref * 10 + 0.4) == pytest.approx(40.0, abs=1e-4)  # peak 40
    assert psnr(ref, ref + 0.4) != pytest.approx(psnr(ref, ref + 0.4, peak=1.0))


def test_equal_inputs_are_finite_and_high():
    x = np.linspace(-1, 1, 64)
    value = psnr(x, x, peak=2.0)
    assert math.isfinite(value) and value > 150  # 20 log10(2 / 1e-10)


def test_tensors_and_arrays_agree():
    g = torch.Generator().manual_seed(0)
    ref = torch.rand(2, 3, 8, 8, generator=g)
    test = ref + 0.05 * torch.randn(2, 3, 8, 8, generator=g)
    from_tensors = psnr(ref, test, peak=1.0)
    assert from_tensors == pytest.approx(psnr(ref.numpy(), test.numpy(), peak=1.0), abs=1e-9)
    assert psnr(ref.half(), test.half(), peak=1.0) == pytest.approx(from_tensors, abs=0.05)
    assert 20 < from_tensors < 32  # noise of std 0.05 on [0, 1]: about 26 dB


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match=r"one shape; got \(2, 3\) and \(3, 2\)"):
        psnr(np.zeros((2, 3)), np.zeros((3, 2)))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_output_is_minus_infinity(bad):
    ref = np.zeros(4)
    test = np.array([0.0, bad, 0.0, 0.0])
    assert psnr(ref, test, peak=1.0) == -math.inf
    assert psnr(ref + 1, test) == -math.inf


@pytest.mark.parametrize("peak", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_peak_is_refused(peak):
    with pytest.raises(ValueError, match="peak must be a positive number"):
        psnr(np.zeros(3), np.ones(3), peak=peak)
