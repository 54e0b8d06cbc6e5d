"""export/convert.py: the numeric check (apple's PSNR, hard threshold) and the host timing's run budget."""

import numpy as np
import pytest

from export import ExportError, convert
from pipelines.tiny import tiny_pipeline


def test_numeric_check_uses_apples_psnr():
    ref = np.array([1.0, -2.0, 0.5])
    noisy = ref + np.array([0.02, -0.02, 0.02])  # RMSE 0.02, peak max|ref| = 2: 40.0 dB (with peak 1: 34.0 dB)
    check = convert._check("unet", "what", [ref, ref], [ref, noisy], ("a", "b"), 35.0)
    assert check["per_output_psnr_db"]["b"] == 40.0 and check["psnr_db"] == 40.0 and check["passed"] is True
    assert check["per_output_psnr_db"]["a"] > 150
    with pytest.raises(ExportError, match=r"unet: numeric check failed \(what\): PSNR 40.0 dB is below the 41 dB"):
        convert._check("unet", "what", [ref], [noisy], ("b",), 41.0)
    with pytest.raises(ExportError, match=r"unet: output b has shape \(2,\); the reference's is \(3,\)"):
        convert._check("unet", "what", [ref], [ref[:2]], ("b",), 35.0)


def test_median_ms_keeps_to_its_run_budget(monkeypatch):
    durations, calls = [], []

    def known_time_ms(fn):  # runs the call, reports a known duration
        fn()
        return durations.pop(0)

    monkeypatch.setattr(convert, "time_ms", known_time_ms)
    durations[:] = [5.0, 1.0, 3.0, 100.0, 7.0]
    assert convert.median_ms(lambda: calls.append(1), warmup=2, budget_s=0.0) == (3.0, 3)  # no budget: 3 runs
    assert len(calls) == 2 + 3  # the warm-up calls run untimed
    durations[:] = [5.0, 1.0, 3.0, 100.0, 7.0]
    assert convert.median_ms(lambda: None, warmup=0, max_runs=4, budget_s=60.0) == (4.0, 4)  # up to max_runs


def test_text_length_and_decoder_of():
    pipe = tiny_pipeline(0, compressed_decoder=True)
    assert convert.text_length(pipe) == 16  # the tiny tokenizer's length, within the encoder's positions
    assert convert.decoder_of(pipe) is pipe.vae_decoder
    pipe.vae_decoder = None
    assert convert.decoder_of(pipe) is pipe.vae
