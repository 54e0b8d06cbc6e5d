"""training/toy/caption_objective.py (train_teacher --text-objective toy): the pre-trained text encoder reads
captions and stays frozen during diffusion training."""

import json

import numpy as np
import torch
from training_helpers import run


def test_text_encoder_pretraining_reads_captions_then_stays_frozen(tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "t"
    r = run("training.train_teacher", "--model-preset", "smoke", "--output", str(out), "--max-steps", "2",
             "--vae-steps", "2", "--text-steps", "150", "--text-batch-size", "64", "--batch-size", "2",
             "--log-with", "none")  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    metrics = json.loads((out / "text_stage" / "metrics.json").read_text())
    # 150 steps are enough for the easy attributes; chance is 1/2 (count) and 1/4 (background)
    assert metrics["per_attribute"]["count"] > 0.95 and metrics["per_attribute"]["background"] > 0.9, metrics
    vae = json.loads((out / "vae_stage" / "metrics.json").read_text())
    assert np.isfinite(vae["psnr_db"]) and vae["posterior_std"] > 0
    pre = load_file(out / "text_stage" / "model.safetensors")
    final = load_file(out / "text_encoder" / "model.safetensors")
    assert all(torch.equal(pre[k], final[k]) for k in pre)  # frozen during diffusion training, like SD-v1.5's
