"""training/vae_finetune.py: only the decoder is trained; the encoder (the UNet's latent space) is untouched."""

import json

import numpy as np
import pytest
import torch
from training_helpers import run, save_teacher


@pytest.fixture(scope="module")
def saved_teacher(tmp_path_factory):
    return save_teacher(tmp_path_factory.mktemp("teacher"))


@pytest.mark.slow
def test_vae_finetune_trains_only_the_decoder(saved_teacher, tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "ft"
    r = run("training.vae_finetune", "--pretrained", str(saved_teacher), "--resolution", "32", "--max-steps", "3",
             "--batch-size", "2", "--eval-images", "4", "--log-with", "none", "--output", str(out))  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    before = load_file(saved_teacher / "vae" / "diffusion_pytorch_model.safetensors")
    after = load_file(out / "vae" / "diffusion_pytorch_model.safetensors")
    assert before.keys() == after.keys()
    # the encoder side (and so the UNet's latent space) is untouched; the decoder changed
    assert all(torch.equal(before[k], after[k]) for k in before if not k.startswith("decoder."))
    assert not all(torch.equal(before[k], after[k]) for k in before if k.startswith("decoder."))
    done = json.loads((out / "stage_complete.json").read_text())
    assert done["steps"] == 3 and np.isfinite(done["psnr_db_before"]) and np.isfinite(done["psnr_db_after"])
    r = run("training.vae_finetune", "--pretrained", str(tmp_path / "none"), "--output", str(tmp_path / "x"))
    assert r.returncode == 2 and "neither an existing folder" in r.stderr
