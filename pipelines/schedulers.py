"""The SD-1.x noise schedule, in the two DDIM configurations this repo uses.

Both share SD-v1.5's training schedule (1,000 steps, scaled-linear betas from 0.00085 to 0.012), so a model trained
with one samples with the other:

- ``sd15_scheduler_config``: what SD-v1.5 ships (``scheduler/scheduler_config.json``): "leading" spacing,
  ``steps_offset=1``, ``set_alpha_to_one=False``.
- ``snapfusion_scheduler_config``: "trailing" spacing (the last step starts at t = 999, and a 2N-step grid holds
  the N-step one, which step distillation needs), ``steps_offset=0``, ``set_alpha_to_one=True``.
"""

from __future__ import annotations

from diffusers import DDIMScheduler

PREDICTION_TYPES = ("epsilon", "v_prediction")
SD15_NOISE_SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def _check(prediction_type: str) -> None:
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction type {prediction_type!r} is not supported; use epsilon or v_prediction.")


def sd15_scheduler_config(prediction_type: str = "epsilon") -> dict:
    _check(prediction_type)
    return dict(SD15_NOISE_SCHEDULE, clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                timestep_spacing="leading", prediction_type=prediction_type)  # fmt: skip


def snapfusion_scheduler_config(prediction_type: str = "epsilon") -> dict:
    _check(prediction_type)
    return dict(SD15_NOISE_SCHEDULE, clip_sample=False, set_alpha_to_one=True, steps_offset=0,
                timestep_spacing="trailing", prediction_type=prediction_type)  # fmt: skip


def ddim_scheduler(prediction_type: str = "epsilon", spacing: str = "trailing") -> DDIMScheduler:
    """A ``DDIMScheduler`` with SD-v1.5's noise schedule: ``spacing="trailing"`` for SnapFusion's sampling and
    distillation, ``"leading"`` for SD-v1.5's shipped configuration."""
    configs = {"trailing": snapfusion_scheduler_config, "leading": sd15_scheduler_config}
    if spacing not in configs:
        raise ValueError(f"spacing {spacing!r} is not supported; use 'trailing' or 'leading'.")
    return DDIMScheduler(**configs[spacing](prediction_type))
