"""export/denoiser.py: the step graph against the pipeline's own step-by-step loop, and the schedulers it refuses."""

import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler

from export import ExportError
from export.denoiser import DenoiserStep, denoiser_inputs, describe, step_schedule
from pipelines.schedulers import snapfusion_scheduler_config
from pipelines.tiny import tiny_pipeline


def _pipeline_latents(pipe, prompt, seed, steps, guidance):
    return pipe(prompt, num_inference_steps=steps, guidance_scale=guidance, output_type="latent",
                generator=torch.Generator().manual_seed(seed)).images  # fmt: skip


def _denoiser_latents(pipe, prompt, seed, steps, guidance):
    schedule = step_schedule(pipe.scheduler, steps)
    den = DenoiserStep(pipe.unet, schedule).eval()
    f = pipe.vae_scale_factor
    size = pipe.unet.config.sample_size
    latents = torch.randn(1, 4, size, size, generator=torch.Generator().manual_seed(seed))
    latents = latents * schedule["init_noise_sigma"]
    ids = pipe._tokenize([prompt, ""])
    with torch.no_grad():
        states = pipe.text_encoder(ids)[0]
        extra = [] if den.embedded else [states[1:]]
        for i in range(steps):
            latents = den(latents, torch.tensor([i]), states[:1], *extra, torch.tensor([guidance]))
    assert f * size == 32
    return latents


@pytest.mark.parametrize("kwargs, guidance", [
    ({"prediction_type": "v_prediction"}, 2.5),  # the bundle student's kind: v-prediction, trailing DDIM, CFG
    ({"prediction_type": "epsilon"}, 7.5),
    ({"prediction_type": "v_prediction", "time_cond_proj_dim": 8}, 3.0),  # guidance-embedded: one pass per step
])  # fmt: skip
def test_denoiser_loop_equals_the_pipeline_loop(kwargs, guidance):
    pipe = tiny_pipeline(0, **kwargs)
    ref = _pipeline_latents(pipe, "a big red circle", 3, 4, guidance)
    got = _denoiser_latents(pipe, "a big red circle", 3, 4, guidance)
    assert got.shape == ref.shape
    assert torch.allclose(got, ref, atol=1e-4, rtol=1e-4), (got - ref).abs().max()
    # and it can fail: another guidance scale gives other latents
    other = _denoiser_latents(pipe, "a big red circle", 3, 4, guidance + 2.0)
    assert (other - ref).abs().max() > 1e-3


def test_schedule_is_the_trailing_ddim_grid_and_describes_itself():
    pipe = tiny_pipeline(0, prediction_type="v_prediction")
    s = step_schedule(pipe.scheduler, 8)
    assert s["timesteps"].tolist() == [999, 874, 749, 624, 499, 374, 249, 124]
    assert s["c_in"].tolist() == [1.0] * 8 and s["init_noise_sigma"] == 1.0
    d = describe(s, pipe.scheduler, embedded=False)
    assert d["num_inference_steps"] == 8 and "v_prediction" in d["computes"] and "uncond_states" in d["call"]
    inputs = denoiser_inputs(pipe.unet, 16, 16, 16, 2.5)
    assert list(inputs) == ["latents", "step_index", "text_states", "uncond_states", "guidance_scale"]
    assert DenoiserStep(pipe.unet, s).input_names == tuple(inputs)


def test_euler_is_baked_too():
    sched = EulerDiscreteScheduler(**{k: v for k, v in snapfusion_scheduler_config("epsilon").items()
                                      if k not in ("clip_sample", "set_alpha_to_one")})  # fmt: skip
    s = step_schedule(sched, 4)
    assert s["init_noise_sigma"] > 1.0 and s["c_in"][0] < 1.0  # Euler scales its input


@pytest.mark.parametrize("scheduler, message", [
    (DPMSolverMultistepScheduler(**{k: v for k, v in snapfusion_scheduler_config("epsilon").items()
                                    if k not in ("clip_sample", "set_alpha_to_one")}), "multistep"),
    (DDIMScheduler(**dict(snapfusion_scheduler_config("epsilon"), clip_sample=True)), "not linear"),
])  # fmt: skip
def test_refuses_schedulers_it_cannot_bake(scheduler, message):
    with pytest.raises(ExportError, match=message):
        step_schedule(scheduler, 4)
    with pytest.raises(ExportError, match="positive step count"):
        step_schedule(scheduler, 0)
