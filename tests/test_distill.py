"""training/distill.py: the distillation math (Sec. 4), learning on a fixed batch, bad input."""

import pytest
import torch
from training_helpers import fit, fixed_batch, save_teacher

from pipelines.schedulers import ddim_scheduler
from pipelines.tiny import tiny_components, tiny_pipeline
from training.common import StageError
from training.distill import alpha_sigma, ddim_step, distill_target, distillation_loss, step_grids, to_v


@pytest.fixture(scope="module")
def saved_teacher(tmp_path_factory):
    return save_teacher(tmp_path_factory.mktemp("teacher"))


def test_distillation_target_matches_two_ddim_steps():
    torch.manual_seed(0)
    sched = ddim_scheduler("v_prediction")
    ac = sched.alphas_cumprod.double()
    teacher, student = step_grids(sched.config, 16, 8)
    assert teacher[::2] == student and len(student) == 8
    grid = teacher + [-1]
    for k in (0, 3, 7):  # 7: the last step ends on the clean sample (alpha 1, sigma 0)
        t, t1, t2 = (torch.tensor([grid[2 * k + j]]) for j in range(3))
        a, s = alpha_sigma(ac, t)
        a1, s1 = alpha_sigma(ac, t1)
        a2, s2 = alpha_sigma(ac, t2)
        z_t = torch.randn(1, 4, 8, 8, dtype=torch.float64)
        v1, v2 = torch.randn_like(z_t), torch.randn_like(z_t)  # any teacher outputs
        z_tpp = ddim_step(ddim_step(z_t, v1, a, s, a1, s1), v2, a1, s1, a2, s2)
        x_target = distill_target(z_t, z_tpp, a, s, a2, s2)
        # closed form of Sec. 4, written out
        closed = (z_tpp - (s2 / s) * z_t) / (a2 - (s2 / s) * a)
        assert (x_target - closed).abs().max() < 1e-5
        # one DDIM step from z_t with x0 = x_target lands on z_t''
        eps = (z_t - a * x_target) / s
        assert (a2 * x_target + s2 * eps - z_tpp).abs().max() < 1e-5


def test_to_v_and_grids_validation():
    z, eps, x0 = torch.randn(3, 1, 4, 4).unbind(0)
    a, s = torch.tensor(0.6), torch.tensor(0.8)
    zt = a * x0 + s * eps
    assert torch.allclose(to_v(eps, zt, a, s, "epsilon"), a * eps - s * x0, atol=1e-5)
    with pytest.raises(StageError, match="must divide"):
        step_grids(ddim_scheduler().config, 16, 6)
    with pytest.raises(StageError, match="must divide"):
        step_grids(ddim_scheduler().config, 8, 8)


@pytest.mark.slow
@pytest.mark.parametrize("cfg", [False, True])
def test_distillation_loss_falls_by_half(cfg):
    torch.manual_seed(0)
    comps, x0, noise, cond = fixed_batch()
    teacher = comps["unet"].eval().requires_grad_(False)
    student = tiny_components(1)["unet"].train()  # another architecture seed, trained from scratch
    sched = comps["scheduler"]
    grid = step_grids(sched.config, 4, 2)[0] + [-1]
    uncond = cond[-1:].expand_as(cond)
    k = torch.tensor([0, 1, 0, 1])
    w = torch.tensor([2.0, 5.0, 9.0, 14.0]).view(-1, 1, 1, 1) if cfg else None
    first, last = fit(
        lambda: distillation_loss(student, teacher, x0, noise, cond, uncond, k, w, grid, 2, sched.alphas_cumprod,
                                  "epsilon", 0.2)[0],
        student.parameters(), 200, 2e-3)  # fmt: skip
    assert last < 0.5 * first, (first, last)


def test_distill_bad_input(saved_teacher, tmp_path):
    from training import distill

    with pytest.raises(StageError, match="must divide"):
        distill.main(distill.parse_args(["--teacher", str(saved_teacher), "--output", str(tmp_path / "a"),
                                         "--teacher-steps", "16", "--student-steps", "5"]))  # fmt: skip
    other = tiny_pipeline(0)
    other.unet = tiny_components(0)["unet"].__class__.from_preset(
        "snapfusion", block_out_channels=(8, 16, 16, 16), norm_num_groups=4, cross_attention_dim=24,
        num_attention_heads=2, sample_size=16)  # fmt: skip
    other.register_modules(unet=other.unet)
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(StageError, match="cross_attention_dim"):
        distill.main(distill.parse_args(["--teacher", str(saved_teacher), "--student", str(tmp_path / "other"),
                                         "--output", str(tmp_path / "b")]))  # fmt: skip
    with pytest.raises(StageError, match="neither an existing folder"):
        distill.main(distill.parse_args(["--teacher", str(tmp_path / "nothing"), "--output", str(tmp_path / "c")]))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
