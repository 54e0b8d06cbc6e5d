"""training/evolve.py: latency-target errors, scorers by name, robust training from the robust stage's parser."""

import pytest
from training_helpers import save_teacher

from training.common import StageError


@pytest.fixture(scope="module")
def saved_teacher(tmp_path_factory):
    return save_teacher(tmp_path_factory.mktemp("teacher"))


def test_evolve_latency_target_errors(saved_teacher, tmp_path):
    from training import evolve

    for ratio_args, match in ((["--target-ms", "1e9"], "already met"), (["--target-ms", "1e-6"], "unreachable")):
        with pytest.raises(StageError, match=match):
            evolve.main(evolve.parse_args(["--model", str(saved_teacher), "--output", str(tmp_path / "e"),
                                           "--latency-repeats", "1", *ratio_args]))  # fmt: skip
    assert not (tmp_path / "e").exists()


def test_evolve_robust_training_takes_the_robust_parsers_arguments(monkeypatch, tmp_path):
    from pipelines.tiny import tiny_pipeline
    from training import evolve, robust

    seen = {}

    def fake_train_denoiser(args, stage, block_keep_prob, components):
        seen.update(args=args, stage=stage, keep=block_keep_prob)
        tiny_pipeline(0).save_pretrained(args.output)

    monkeypatch.setattr(robust, "train_denoiser", fake_train_denoiser)
    args = evolve.parse_args(["--model", "m", "--output", "o", "--target-ratio", "0.5", "--robust-steps", "7",
                              "--robust-batch-size", "3", "--robust-lr", "2e-5", "--robust-keep-prob", "0.8",
                              "--seed", "4"])  # fmt: skip
    pipe = evolve._robust_train(tiny_pipeline(0), args, tmp_path / "iter-1")
    r = seen["args"]
    assert seen["stage"] == "evolve_robust" and seen["keep"] == r.block_keep_prob == 0.8
    assert (r.max_steps, r.batch_size, r.lr, r.seed) == (7, 3, 2e-5, 4)
    assert r.train_text_encoder is False and r.overwrite and r.log_with == "none" and r.checkpoints_total_limit == 1
    defaults = robust.parse_args(["--output", "x"])  # every other option: the robust stage's own default
    for name in ("weight_decay", "warmup_steps", "lr_schedule", "max_grad_norm", "ema_decay", "caption_dropout",
                 "snr_gamma", "prediction_type", "mixed_precision", "gradient_accumulation_steps"):  # fmt: skip
        assert getattr(r, name) == getattr(defaults, name), name
    assert pipe.unet.config.block_out_channels == [8, 16, 16, 16]  # the snapshot saved in the folder, reloaded


def test_evolve_scorers_by_name(monkeypatch):
    from training import evolve

    args = evolve.parse_args(["--model", "m", "--output", "o", "--target-ratio", "0.5", "--eval-images", "40"])
    scorer = evolve.make_scorer(args)  # the default: the toy world's scorer, looked up by name
    assert scorer.name == "toy alignment" and len(scorer.prompts) == 40
    with pytest.raises(StageError, match="--clip-model"):
        evolve.make_scorer(evolve.parse_args(["--model", "m", "--output", "o", "--scorer", "clip"]))
    with pytest.raises(SystemExit):
        evolve.parse_args(["--model", "m", "--output", "o", "--scorer", "fid"])
