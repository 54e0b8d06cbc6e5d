"""training/model_card.py: the decoder report, the decoder's wording, quality targets, quoted stage lines."""

from types import SimpleNamespace

import numpy as np
import pytest


def test_model_card_decoder_report_measures_fresh_latents():
    from pipelines.tiny import tiny_pipeline
    from training.common import StageError
    from training.model_card import decoder_report

    teacher = tiny_pipeline(0)
    student = tiny_pipeline(0, compressed_decoder=True)
    d = decoder_report(student, teacher, num_latents=2, steps=1, repeats=1)
    assert set(d["psnr_db"]) == {"teacher_latents", "student_latents"}
    assert all(np.isfinite(v) for v in d["psnr_db"].values())
    assert d["full_ms"] > 0 and d["compressed_ms"] > 0 and d["params_compressed"] < d["params_full"]
    assert d["full_plain_ms"] > 0 and d["speedup_vs_plain"] == pytest.approx(d["full_plain_ms"] / d["compressed_ms"])
    assert d["psnr_db"]["teacher_latents"] < 100  # the untrained pruned decoder is not the full one
    with pytest.raises(StageError, match="compressed decoder"):
        decoder_report(teacher, teacher, num_latents=2, steps=1, repeats=1)


def test_model_card_names_the_decoder_pruning():
    from pipelines import CompressedVAEDecoder, PixelShuffleVAEDecoder
    from pipelines.tiny import tiny_pipeline
    from training.model_card import decoder_phrase

    pipe = tiny_pipeline(0, compressed_decoder=True)
    assert decoder_phrase(pipe) == "50%-pruned VAE decoder (50% of its channels kept)"
    pipe.vae_decoder = CompressedVAEDecoder.from_vae(pipe.vae, 0.75, norm_num_groups=2)
    assert decoder_phrase(pipe) == "25%-pruned VAE decoder (75% of its channels kept)"
    assert decoder_phrase(tiny_pipeline(0)) == "the full VAE decoder"
    ps = decoder_phrase(tiny_pipeline(0, compressed_decoder="pixel_shuffle"))
    assert ps == ("pixel-shuffle VAE decoder (2 stage(s) from the latent resolution up: 16 ch x 1 ResNet, "
                  "8 ch x 1 ResNet; no attention; trained from scratch)")  # fmt: skip
    rc = tiny_pipeline(0, compressed_decoder="pixel_shuffle")
    rc.vae_decoder = PixelShuffleVAEDecoder(block_out_channels=(16, 8), layers_per_block=1, upscale_factor=2,
                                            block_type="residual_conv")  # fmt: skip
    assert decoder_phrase(rc).endswith("8 ch x 1 ResNet; no attention; no normalization (residual conv blocks); "
                                       "trained from scratch)")  # fmt: skip


def test_model_card_quality_targets_use_each_models_best_guidance():
    from training.model_card import quality_targets

    def ev(rows, k=2000):
        return {"num_images": k, "seed": 0, "floor_fid": 37.4, "steps": 8,
                "results": [{"guidance": g, "alignment": a, "fid": f} for g, a, f in rows]}  # fmt: skip

    teacher = ev([(2.0, 0.895, 240.0), (3.5, 0.897, 257.0)])  # lowest FID at 2, best alignment at 3.5
    rows = quality_targets(ev([(2.5, 0.90, 260.0), (4.0, 0.88, 380.0)]), teacher)
    assert "260.0 at 2.5 = 1.083x | 240.0 at 2 | met" in rows[2]
    assert "0.8770 | 0.9000 at 2.5 | 0.8970 at 3.5 | met" in rows[3]
    rows = quality_targets(ev([(2.5, 0.87, 270.0)]), teacher)  # 1.125x: judged against 240, not 257
    assert rows[2].endswith("| **missed** |") and rows[3].endswith("| **missed** |")
    with pytest.raises(ValueError, match="num_images"):
        quality_targets(ev([(2.5, 0.9, 250.0)], k=256), teacher)


def test_model_card_quotes_stages_missing_from_the_recipe():
    from training.model_card import card_stage_lines

    card = "\n".join([
        "## Training", "", "Reproduce: `x`.", "",
        "- **teacher** (`training.train_teacher`, 10 s on this CPU): lr=1",
        "  - text encoder pre-trained on toy captions, then frozen: 1.0000",
        "- **student** (`training.decoder`, 5 s on this CPU): lr=2",
        "", "## Next",
    ])  # fmt: skip
    stages = card_stage_lines(card)
    assert list(stages) == ["teacher", "student"]
    assert stages["teacher"][1].startswith("  - text encoder") and len(stages["student"]) == 1


def test_model_card_of_the_one_pass_student_measures_its_speed_up(tmp_path):
    from pipelines.tiny import tiny_pipeline
    from training.model_card import main, parse_args, passes

    onepass = tiny_pipeline(0, compressed_decoder=True, time_cond_proj_dim=8)
    onepass.register_to_config(guidance_scale_range=[1.0, 4.0], default_num_inference_steps=2,
                               default_guidance_scale=2.5)  # fmt: skip
    teacher = tiny_pipeline(0)
    teacher.register_to_config(default_num_inference_steps=4)
    onepass.save_pretrained(tmp_path / "onepass")
    teacher.save_pretrained(tmp_path / "teacher")
    assert passes(onepass) == 1 and passes(teacher) == 2
    main(parse_args(["--model", str(tmp_path / "onepass"), "--role", "onepass", "--teacher", str(tmp_path / "teacher"),
                     "--repeats", "1"]))  # fmt: skip
    card = (tmp_path / "onepass" / "README.md").read_text()
    assert "one-pass student" in card and "trained for guidance in [1, 4]" in card  # latents at 2.5, not 5
    assert "one UNet pass per step, batch 1" in card and "CFG batch 2" not in card
    assert "(2 UNet evaluations per image against 8)" in card and "x faster** end to end" in card


def test_model_card_times_the_model_and_its_teacher_interleaved():
    import torch

    from training.model_card import seconds_per_image

    calls = []

    class Pipe:
        device = torch.device("cpu")

        def __init__(self, name):
            self.name = name

        def __call__(self, prompt, generator):
            calls.append(self.name)
            keys = ("text_encoder_ms", "unet_ms_mean", "unet_ms_total", "decoder_ms", "total_ms")
            return SimpleNamespace(timings=dict.fromkeys(keys, 1.0))

    res = seconds_per_image({"model": Pipe("model"), "teacher": Pipe("teacher")}, repeats=3)
    assert calls == ["model", "teacher"] * 4  # one warm-up round, then 3 interleaved rounds
    assert set(res) == {"model", "teacher"} and res["model"]["repeats"] == 3 and res["model"]["seconds"] > 0
    assert res["teacher"]["timings_ms"]["total_ms"] == 1.0
