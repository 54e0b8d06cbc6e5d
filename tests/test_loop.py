"""training/loop.py: the one training loop: LR schedules, the NaN guard, EMA and checksums in every stage, resume."""

import argparse
import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file
from training_helpers import save_teacher, weights_hash

from training.common import StageError, add_common_args


@pytest.fixture(scope="module")
def saved_teacher(tmp_path_factory):
    return save_teacher(tmp_path_factory.mktemp("teacher"))


def test_lr_schedules_warm_up_then_hold_or_decay():
    from argparse import Namespace

    from training.loop import make_lr_scheduler

    def lrs(schedule):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        sched = make_lr_scheduler(opt, Namespace(warmup_steps=4, max_steps=12, lr_schedule=schedule))
        out = []
        for _ in range(12):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out

    const, cos = lrs("constant"), lrs("cosine")
    assert const[:4] == cos[:4] == [0.25, 0.5, 0.75, 1.0] and const[4:] == [1.0] * 8
    assert cos[4] == 1.0 and all(a > b for a, b in zip(cos[4:], cos[5:]))
    assert cos[-1] == pytest.approx(0.0381, abs=1e-3)


def _loop_args(tmp_path, *extra):
    parser = add_common_args(argparse.ArgumentParser())
    return parser.parse_args(["--output", str(tmp_path / "out"), "--log-with", "none", "--batch-size", "1", *extra])


def test_nan_loss_is_a_stage_error_naming_the_step(tmp_path):
    from training.loop import TrainLoop, make_optimizer, warm_up

    loop = TrainLoop(_loop_args(tmp_path, "--max-steps", "5"), "toy_stage")
    model = torch.nn.Linear(2, 1)
    model, _ = loop.prepare(model, make_optimizer(model.parameters(), loop.args))
    losses = iter([1.0, 0.5, float("nan")])
    with pytest.raises(StageError, match="toy_stage: the loss became nan at step 3"):
        loop.run(iter(lambda: None, 1), lambda _: model(torch.ones(1, 2)).sum() * 0 + next(losses))
    assert loop.step == 2  # the bad step was not taken
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(StageError, match="vae: the loss became -?inf at step 1"):
        warm_up(loop.accelerator, "vae", 3, opt, lambda: model(torch.ones(1, 2)).sum() * math.inf)


STAGE_RUNS = {  # every stage that takes --ema-decay, 2 steps on a tiny 32x32 pipeline
    "train_teacher": lambda t, p: ["--pretrained", t, "--resolution", "32"],
    "robust": lambda t, p: ["--pretrained", t, "--resolution", "32"],
    "distill": lambda t, p: ["--teacher", t, "--teacher-steps", "2", "--student-steps", "1", "--resolution", "32"],
    "vae_finetune": lambda t, p: ["--pretrained", t, "--resolution", "32", "--eval-images", "2"],
    "decoder": lambda t, p: ["--teacher", t, "--prompts", p, "--gen-steps", "1", "--pool-size", "2", "--heldout", "1"],
}
TRAINED = {"train_teacher": "unet", "robust": "unet", "distill": "unet", "vae_finetune": "vae",
           "decoder": "vae_decoder"}  # the folder of the trained model


def _run_stage(stage, saved_teacher, tmp_path, *extra):
    import importlib

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na blue square\n")
    out = tmp_path / stage
    module = importlib.import_module(f"training.{stage}")
    argv = STAGE_RUNS[stage](str(saved_teacher), str(prompts)) + [
        "--output", str(out), "--max-steps", "2", "--batch-size", "2", "--log-with", "none", *extra]  # fmt: skip
    module.main(module.parse_args(argv))
    return out


def _saved_weights(out, stage):
    folder = out / TRAINED[stage]
    weights = load_file(next(folder.glob("*.safetensors")))
    if stage == "vae_finetune":  # the trained module is the VAE's decoder
        weights = {k[len("decoder.") :]: v for k, v in weights.items() if k.startswith("decoder.")}
    return weights


@pytest.mark.parametrize("stage", list(STAGE_RUNS))
def test_every_stage_keeps_an_ema_and_writes_its_checksum(stage, saved_teacher, tmp_path):
    out = _run_stage(stage, saved_teacher, tmp_path, "--ema-decay", "0.9")
    assert json.loads((out / "stage_complete.json").read_text())["steps"] == 2
    checksum = (out / "rank_checksums" / "rank0.txt").read_text()  # of the trained (raw) weights
    # the saved model holds the EMA weights, not the raw ones the checksum was taken of
    assert len(checksum) == 64 and weights_hash(_saved_weights(out, stage)) != checksum


def test_checksum_is_of_the_trained_weights(saved_teacher, tmp_path):
    out = _run_stage("vae_finetune", saved_teacher, tmp_path)  # no EMA: the saved weights are the trained ones
    assert weights_hash(_saved_weights(out, "vae_finetune")) == (out / "rank_checksums" / "rank0.txt").read_text()


def test_resume_continues_at_the_checkpoint_with_the_uninterrupted_result(saved_teacher, tmp_path, capsys):
    from training import robust

    out = tmp_path / "robust"
    # caption dropout draws from the stage's own random stream, which a resume must restore too
    argv = ["--pretrained", str(saved_teacher), "--resolution", "32", "--output", str(out), "--max-steps", "4",
            "--batch-size", "2", "--checkpoint-every", "2", "--caption-dropout", "0.5",
            "--log-with", "none"]  # fmt: skip
    robust.main(robust.parse_args(argv))  # uninterrupted: 4 steps, a checkpoint at step 2
    uninterrupted = load_file(out / "unet" / "diffusion_pytorch_model.safetensors")
    # interrupted after the checkpoint: only step 2's state survives
    for name in ("unet", "stage_complete.json", "model_index.json"):
        shutil.rmtree(out / name) if (out / name).is_dir() else (out / name).unlink()
    capsys.readouterr()
    robust.main(robust.parse_args([*argv, "--resume", "latest"]))
    assert "at step 2" in capsys.readouterr().out
    assert json.loads((out / "stage_complete.json").read_text())["steps"] == 4
    resumed = load_file(out / "unet" / "diffusion_pytorch_model.safetensors")
    assert resumed.keys() == uninterrupted.keys()
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in resumed)
