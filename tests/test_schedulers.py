"""pipelines/schedulers.py: SD-v1.5's noise schedule in SnapFusion's (trailing) and SD-v1.5's (leading) DDIM."""

import pytest
import torch

from diffusers import DDIMScheduler

from pipelines.schedulers import ddim_scheduler, sd15_scheduler_config, snapfusion_scheduler_config

# stable-diffusion-v1-5/stable-diffusion-v1-5, scheduler/scheduler_config.json, as shipped (a PNDMScheduler; diffusers
# of that time spaced timesteps "leading").
SD15_SHIPPED = {
    "_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "beta_start": 0.00085, "num_train_timesteps": 1000, "set_alpha_to_one": False,
    "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None, "clip_sample": False,
}  # fmt: skip


def _timesteps(scheduler, n):
    scheduler.set_timesteps(n)
    return scheduler.timesteps.tolist()


def test_trailing_grid_starts_at_999_and_nests():
    """Step distillation needs it: the 8-step student's steps are every other step of its 16-step teacher."""
    s = ddim_scheduler()
    t8, t16 = _timesteps(s, 8), _timesteps(s, 16)
    assert t8[0] == 999 and t16[0] == 999
    assert t8 == [999, 874, 749, 624, 499, 374, 249, 124]
    assert set(t8) <= set(t16) and t16[::2] == t8
    t4 = _timesteps(s, 4)
    assert set(t4) <= set(t8)


def test_leading_config_equals_sd15_shipped_values():
    config = sd15_scheduler_config()
    shared = {k: v for k, v in SD15_SHIPPED.items() if not k.startswith("_") and k != "skip_prk_steps"}
    assert {k: config[k] for k in shared if k in config} == {k: v for k, v in shared.items() if k in config}
    assert set(shared) - set(config) == {"trained_betas"}  # None in the file: the same as not given
    assert config["timestep_spacing"] == "leading" and config["prediction_type"] == "epsilon"
    shipped = DDIMScheduler.from_config(SD15_SHIPPED)
    ours = ddim_scheduler(spacing="leading")
    assert _timesteps(ours, 50) == _timesteps(shipped, 50)
    assert _timesteps(ours, 50)[0] == 981  # SD-v1.5's 50 DDIM steps start at 981
    assert torch.equal(ours.alphas_cumprod, shipped.alphas_cumprod) and ours.final_alpha_cumprod == 1 - 0.00085


def test_both_share_the_training_schedule():
    a, b = ddim_scheduler(spacing="trailing"), ddim_scheduler(spacing="leading")
    assert torch.equal(a.alphas_cumprod, b.alphas_cumprod)
    assert snapfusion_scheduler_config()["steps_offset"] == 0 and snapfusion_scheduler_config()["set_alpha_to_one"]
    assert a.final_alpha_cumprod == 1.0


def test_prediction_type_is_passed_through():
    assert ddim_scheduler("v_prediction").config.prediction_type == "v_prediction"
    assert sd15_scheduler_config("v_prediction")["prediction_type"] == "v_prediction"


@pytest.mark.parametrize("kwargs, match", [(dict(prediction_type="sample"), "prediction type 'sample'"),
                                           (dict(spacing="linspace"), "spacing 'linspace'")])  # fmt: skip
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ddim_scheduler(**kwargs)
