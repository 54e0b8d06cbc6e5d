"""training/guidance_distill.py and the one-pass student's step distillation (training/distill.py): losses fall on
a fixed batch, the stages run, resume, and refuse bad input."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file
from training_helpers import fit, fixed_batch, save_teacher

from pipelines.guidance import add_guidance_embedding
from pipelines.loading import load_pipeline
from pipelines.tiny import tiny_components
from training.common import StageError
from training.distill import distillation_loss, step_grids, trailing_grid
from training.guidance_distill import guidance_loss


@pytest.fixture(scope="module")
def saved_teacher(tmp_path_factory):
    return save_teacher(tmp_path_factory.mktemp("teacher"))


def _common(out, steps=4):
    return ["--resolution", "32", "--output", str(out), "--max-steps", str(steps), "--batch-size", "2",
            "--checkpoint-every", "2", "--log-with", "none"]  # fmt: skip


def test_guidance_loss_falls_by_half_on_a_fixed_batch():
    torch.manual_seed(0)
    comps, x0, noise, cond = fixed_batch()
    teacher = comps["unet"].eval().requires_grad_(False)
    student = add_guidance_embedding(tiny_components(0)["unet"], 8).train()  # starts as the conditional teacher
    sched = comps["scheduler"]
    uncond = cond[-1:].expand_as(cond)
    t = torch.tensor(trailing_grid(sched.config, 4))
    w = torch.tensor([1.0, 3.0, 5.0, 8.0]).view(-1, 1, 1, 1)
    first, last = fit(lambda: guidance_loss(student, teacher, x0, noise, cond, uncond, t, w, sched.alphas_cumprod,
                                            "v_prediction", 0.0)[0], student.parameters(), 100, 2e-3)  # fmt: skip
    assert first > 0 and last < 0.5 * first, (first, last)


def test_guidance_loss_is_zero_at_w_1_for_the_initial_student():
    comps, x0, noise, cond = fixed_batch()
    teacher = comps["unet"].eval()
    student = add_guidance_embedding(teacher, 8)
    t = torch.tensor(trailing_grid(comps["scheduler"].config, 4))
    with torch.no_grad():
        loss = guidance_loss(student, teacher, x0, noise, cond, cond[-1:].expand_as(cond), t,
                             torch.ones(4, 1, 1, 1), comps["scheduler"].alphas_cumprod, "v_prediction", 0.0)[1]
    assert loss.item() < 1e-10  # w = 1 is the conditional model, which the zero-initialised student already is


@pytest.mark.slow
def test_one_pass_step_distillation_loss_falls_by_half():
    torch.manual_seed(0)
    comps, x0, noise, cond = fixed_batch()
    teacher = add_guidance_embedding(comps["unet"], 8).eval().requires_grad_(False)
    torch.nn.init.normal_(teacher.time_embedding.cond_proj.weight, std=0.02)  # a teacher whose w matters
    student = add_guidance_embedding(tiny_components(1)["unet"], 8).train()
    sched = comps["scheduler"]
    grid = step_grids(sched.config, 4, 2)[0] + [-1]
    w = torch.tensor([1.0, 2.0, 5.0, 8.0]).view(-1, 1, 1, 1)
    first, last = fit(lambda: distillation_loss(student, teacher, x0, noise, cond, cond, torch.tensor([0, 1, 0, 1]),
                                                w, grid, 2, sched.alphas_cumprod, "v_prediction", 0.2)[0],
                      student.parameters(), 200, 2e-3)  # fmt: skip
    assert last < 0.5 * first, (first, last)


def test_stages_run_resume_and_chain_to_a_one_pass_student(saved_teacher, tmp_path, capsys):
    from training import distill, guidance_distill

    out = tmp_path / "guided"
    argv = ["--teacher", str(saved_teacher), "--steps", "4", "--w-min", "1", "--w-max", "6",
            "--default-guidance", "2", "--embedding-dim", "8", *_common(out)]  # fmt: skip
    guidance_distill.main(guidance_distill.parse_args(argv))
    uninterrupted = load_file(out / "unet" / "diffusion_pytorch_model.safetensors")
    for name in ("unet", "stage_complete.json", "model_index.json"):
        shutil.rmtree(out / name) if (out / name).is_dir() else (out / name).unlink()
    capsys.readouterr()
    guidance_distill.main(guidance_distill.parse_args([*argv, "--resume", "latest"]))
    assert "at step 2" in capsys.readouterr().out
    resumed = load_file(out / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in resumed)

    pipe = load_pipeline(str(out), "cpu", "fp32")
    assert pipe.guidance_embedded and pipe.unet.config.time_cond_proj_dim == 8
    assert pipe.config.guidance_scale_range == [1.0, 6.0] and pipe.config.default_num_inference_steps == 4
    assert json.loads((out / "stage_complete.json").read_text())["student_grid"] == [999, 749, 499, 249]

    # step distillation of the one-pass student: 4 -> 2 single-pass steps
    two = tmp_path / "two"
    distill.main(distill.parse_args(["--teacher", str(out), "--student", str(out), "--teacher-steps", "4",
                                     "--student-steps", "2", "--cfg-prob", "1", "--w-min", "1", "--w-max", "6",
                                     "--default-guidance", "2", *_common(two, 2)]))  # fmt: skip
    pipe2 = load_pipeline(str(two), "cpu", "fp32")
    assert pipe2.guidance_embedded and pipe2.config.default_num_inference_steps == 2
    assert pipe2.config.guidance_scale_range == [1.0, 6.0]
    pipe2.set_progress_bar_config(disable=True)
    calls = []
    forward = pipe2.unet.forward
    pipe2.unet.forward = lambda s, *a, **k: (calls.append(s.shape[0]), forward(s, *a, **k))[1]
    pipe2("a red circle", output_type="np", generator=torch.Generator().manual_seed(0))
    assert calls == [1, 1]  # 2 steps, one pass each


def test_bad_input(saved_teacher, tmp_path):
    from training import distill, guidance_distill

    def gd(*extra, out="g"):
        return guidance_distill.main(guidance_distill.parse_args(
            ["--teacher", str(saved_teacher), *_common(tmp_path / out, 2), *extra]))  # fmt: skip

    with pytest.raises(StageError, match="--w-min < --w-max"):
        gd("--w-min", "5", "--w-max", "2")
    with pytest.raises(StageError, match="outside"):
        gd("--default-guidance", "12")
    gd("--steps", "4", "--embedding-dim", "8", out="guided")
    guided = tmp_path / "guided"
    with pytest.raises(StageError, match="already takes the guidance scale"):
        guidance_distill.main(guidance_distill.parse_args(["--teacher", str(guided), *_common(tmp_path / "x", 2)]))
    with pytest.raises(StageError, match="distilled for the 4-step grid"):
        distill.main(distill.parse_args(["--teacher", str(guided), "--student", str(guided), "--teacher-steps", "8",
                                         "--student-steps", "4", "--cfg-prob", "1", "--w-min", "1", "--w-max", "6",
                                         "--default-guidance", "2", *_common(tmp_path / "z", 2)]))  # fmt: skip
    with pytest.raises(StageError, match="--cfg-prob 1"):
        distill.main(distill.parse_args(["--teacher", str(guided), "--student", str(guided), "--teacher-steps", "4",
                                         "--student-steps", "2", "--w-min", "1", "--w-max", "6",
                                         "--default-guidance", "2", *_common(tmp_path / "z", 2)]))  # fmt: skip
    with pytest.raises(StageError, match="student does not"):
        distill.main(distill.parse_args(["--teacher", str(guided), "--student", str(saved_teacher),
                                         "--teacher-steps", "4", "--student-steps", "2",
                                         *_common(tmp_path / "z", 2)]))  # fmt: skip
    assert not any((tmp_path / n).exists() for n in ("g", "x", "z"))
