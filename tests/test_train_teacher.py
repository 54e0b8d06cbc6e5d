"""training/train_teacher.py: the denoising loss learns, bad input, resume and no clobbering, DDP."""

import json
import subprocess
import sys

import pytest
import torch
from training_helpers import ENV, ROOT, fit, fixed_batch, run, save_teacher


@pytest.fixture(scope="module")
def saved_teacher(tmp_path_factory):
    return save_teacher(tmp_path_factory.mktemp("teacher"))


@pytest.mark.slow
@pytest.mark.parametrize("prediction_type, keep", [("epsilon", 1.0), ("v_prediction", 1.0), ("epsilon", 0.8)])
def test_denoiser_and_robust_losses_fall_by_half(prediction_type, keep):
    from training.train_teacher import denoising_loss

    torch.manual_seed(0)
    comps, x0, noise, cond = fixed_batch()
    unet = comps["unet"].train()
    unet.set_block_keep_prob(keep)  # keep < 1: robust training (stochastic skipping)
    ac = comps["scheduler"].alphas_cumprod
    t = torch.tensor([50, 300, 600, 900])
    first, last = fit(lambda: denoising_loss(unet, x0, cond, noise, t, ac, prediction_type), unet.parameters(),
                       150, 2e-3)  # fmt: skip
    assert last < 0.5 * first, (first, last)


@pytest.mark.slow
def test_stage_cli_bad_input_exit_code(saved_teacher, tmp_path):
    r = run("training.train_teacher", "--pretrained", str(saved_teacher), "--data", f"folder:{tmp_path / 'none'}",
             "--output", str(tmp_path / "o"), "--max-steps", "1", "--log-with", "none")  # fmt: skip
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 2 and last.startswith("error:") and "does not exist" in last, r.stderr
    assert "Traceback" not in r.stderr
    r = run("training.train_teacher", "--data", "folder:x", "--output", str(tmp_path / "o1"), "--max-steps", "1")
    assert r.returncode == 2 and "own vocabulary" in r.stderr, r.stderr
    r = run("training.train_teacher", "--max-steps", "0", "--output", str(tmp_path / "o2"))
    assert r.returncode == 2 and "--max-steps" in r.stderr


@pytest.mark.slow
def test_teacher_resume_and_no_clobber(tmp_path):
    out = tmp_path / "t"
    args = ["--model-preset", "smoke", "--output", str(out), "--max-steps", "4", "--vae-steps", "2",
            "--text-steps", "2", "--batch-size", "2", "--checkpoint-every", "2", "--log-with", "none"]  # fmt: skip
    r = run("training.train_teacher", *args)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (out / "model_index.json").exists() and (out / "checkpoints" / "step-2").is_dir()
    # a finished stage is never overwritten without --overwrite
    before = (out / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    r = run("training.train_teacher", *args)
    assert r.returncode == 2 and "completed stage" in r.stderr
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() == before
    # the stage clock: every sub-stage and checkpoint records its kept time
    first = json.loads((out / "stage_complete.json").read_text())["seconds"]
    step2 = json.loads((out / "checkpoints" / "step-2" / "step.json").read_text())
    assert 0 < step2["elapsed_s"] < first and (out / "vae_stage" / "seconds.json").exists()
    # resume from the checkpoint continues at step 2 and adds to the time kept up to it; a corrupt checkpoint is a
    # clear error
    (out / "stage_complete.json").unlink()
    (out / "checkpoints" / "step-2" / "step.json").write_text(json.dumps({"step": 2, "elapsed_s": 1000.0}))
    r = run("training.train_teacher", *args, "--resume", "latest")
    assert r.returncode == 0 and "resumed from" in r.stdout + r.stderr, r.stderr[-2000:]
    assert 1000.0 < json.loads((out / "stage_complete.json").read_text())["seconds"] < 1000.0 + first + 300
    (out / "stage_complete.json").unlink()
    for f in (out / "checkpoints" / "step-2").glob("*.safetensors"):
        f.write_bytes(b"not a tensor file")
    r = run("training.train_teacher", *args, "--resume", "latest")
    assert r.returncode == 2 and "corrupt" in r.stderr, r.stderr[-2000:]


@pytest.mark.slow
def test_ddp_two_processes_end_with_identical_weights(tmp_path):
    out = tmp_path / "ddp"
    # accelerate 1.15 runs `--cpu` with one process; two CPU processes (gloo) need --multi_gpu + ACCELERATE_USE_CPU
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "training.train_teacher", "--model-preset",
           "smoke", "--output", str(out), "--max-steps", "3", "--vae-steps", "2", "--batch-size", "2",
           "--text-steps", "2", "--log-with", "none"]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=dict(ENV, ACCELERATE_USE_CPU="true"),
                       timeout=900)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    sums = [(out / "rank_checksums" / f"rank{i}.txt").read_text() for i in range(2)]
    assert sums[0] == sums[1]
