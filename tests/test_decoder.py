"""training/decoder.py: decoder distillation learns, the guidance list, the pixel-shuffle stage end to end."""

import json

import numpy as np
import pytest
import torch
from training_helpers import fit, run, save_teacher

from pipelines.tiny import tiny_components
from training.common import StageError


@pytest.fixture(scope="module")
def saved_teacher(tmp_path_factory):
    return save_teacher(tmp_path_factory.mktemp("teacher"))


def test_decoder_distillation_loss_falls_by_half():
    from pipelines import CompressedVAEDecoder

    torch.manual_seed(0)
    vae = tiny_components(0)["vae"].eval()
    student = CompressedVAEDecoder.from_vae(vae, 0.5).train()
    z = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = vae.decode(z).sample
    first, last = fit(lambda: torch.nn.functional.mse_loss(student(z), ref), student.parameters(), 150, 2e-3)
    assert last < 0.5 * first, (first, last)


def test_decoder_stage_guidance_list():
    from training.decoder import parse_guidance_list

    assert parse_guidance_list("5") == [5.0] and parse_guidance_list(7.5) == [7.5]
    assert parse_guidance_list("1.5, 2,8") == [1.5, 2.0, 8.0]
    for bad in ("", "two", "0.5,2", "nan"):
        with pytest.raises(StageError, match="--gen-guidance"):
            parse_guidance_list(bad)


@pytest.mark.slow
def test_decoder_stage_pixel_shuffle(saved_teacher, tmp_path):
    from pipelines import PixelShuffleVAEDecoder
    from training.models import load_stage_pipeline

    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle\na blue square\n")
    out = tmp_path / "ps"
    common = ["--teacher", str(saved_teacher), "--prompts", str(prompts), "--architecture", "pixel_shuffle",
              "--norm-groups", "4", "--gen-steps", "1", "--pool-size", "4", "--heldout", "2", "--batch-size", "2",
              "--log-with", "none"]  # fmt: skip
    r = run("training.decoder", *common, "--channels", "16,8", "--layers", "1", "--max-steps", "3",
             "--output", str(out))  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    pipe = load_stage_pipeline(str(out))
    dec = pipe.vae_decoder
    assert isinstance(dec, PixelShuffleVAEDecoder) and dec.config.block_out_channels == [16, 8]
    assert dec.stage_layers == (1, 1) and dec.vae_scale_factor == pipe.vae_scale_factor == 2
    done = json.loads((out / "stage_complete.json").read_text())
    assert done["steps"] == 3 and np.isfinite(done["psnr_db_heldout"])
    image = pipe("a red circle", num_inference_steps=1, output_type="np").images
    assert image.shape == (1, 32, 32, 3)
    # decoding the pool once (--cache-targets) trains the same decoder as decoding every step
    r = run("training.decoder", *common, "--channels", "16,8", "--layers", "1", "--max-steps", "3", "--cache-targets",
             "--output", str(tmp_path / "cached"))  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    cached = load_stage_pipeline(str(tmp_path / "cached")).vae_decoder.state_dict()
    assert all(torch.allclose(v, cached[k], atol=1e-5) for k, v in dec.state_dict().items())
    # --block-type residual_conv: the same layout without normalization
    r = run("training.decoder", *common, "--channels", "16,8", "--layers", "1", "--max-steps", "1", "--block-type",
             "residual_conv", "--output", str(tmp_path / "rc"))  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    rc = load_stage_pipeline(str(tmp_path / "rc")).vae_decoder
    assert rc.config.block_type == "residual_conv" and rc.norm_out is None and rc.stage_layers == (1, 1)
    for bad, msg in ((["--channels", "16,x"], "--channels must be an integer"),
                     (["--channels", "16,8", "--layers", "1,1,1"], "one per stage of --channels (2)"),
                     (["--channels", "16,6"], "multiples of norm_num_groups=4")):  # fmt: skip
        r = run("training.decoder", *common, *bad, "--max-steps", "1", "--output", str(tmp_path / "bad"))
        assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / "bad").exists()
