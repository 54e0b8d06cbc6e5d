"""The self-contained denoiser: one sampling step of the pipeline (UNet, guidance, scheduler update) as one graph.

    Denoiser  latents (1, C, h, w), step_index (1,) int64, text_states (1, L, D),
              [uncond_states (1, L, D), CFG models only], guidance_scale (1,)  -> next_latents (1, C, h, w)

Device code calls it in a plain loop, ``for i in range(N): latents = denoiser(latents, [i], ...)``, starting from
Gaussian noise times ``init_noise_sigma``; no scheduler math is left to it. The step's timestep and its update
coefficients are buffers of the graph, read at ``step_index``: the schedule is fixed at export time (the model's
recommended step count). Every supported scheduler step is linear in the current latents and the model output,

    model_in = c_in[i] * latents
    out      = unet(model_in, t[i], ...)                    # CFG: uncond + w * (text - uncond), batch 2
    next     = c_sample[i] * latents + c_model[i] * out     # DDIM eta=0 (v- or epsilon-prediction), Euler, ...

and the coefficients are read off the pipeline's own scheduler (``step_schedule``), so the denoiser computes exactly
what ``SnapFusionPipeline``'s loop does. A guidance-embedded UNet (``pipelines.guidance``) runs one pass per step
with ``guidance_scale`` fed to the network, and takes no unconditional states.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from pipelines.guidance import guidance_scale_embedding, is_guidance_embedded

from .errors import ExportError

LINEARITY_TOLERANCE = 1e-4  # relative error of the linear form against the scheduler's own step, on random inputs


def _fresh(scheduler, steps: int):
    s = copy.deepcopy(scheduler)
    s.set_timesteps(steps, device="cpu")
    return s


def step_schedule(scheduler, steps: int) -> dict:
    """The schedule of ``steps`` sampling steps as per-step tensors: ``timesteps``, ``c_in``, ``c_sample``,
    ``c_model`` (each (steps,) float32) and ``init_noise_sigma``. Raises ``ExportError`` for a scheduler whose step
    is not a linear, stateless function of (latents, model output), e.g. multistep solvers or clipping."""
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ExportError(f"the denoiser needs a positive step count; got {steps!r}.")
    name = type(scheduler).__name__
    timesteps = _fresh(scheduler, steps).timesteps.clone()
    gen = torch.Generator().manual_seed(0)
    shape = (1, 4, 2, 2)
    c_in, c_sample, c_model = [], [], []
    for i, t in enumerate(timesteps):
        ones, zeros = torch.ones(shape), torch.zeros(shape)
        x, m = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)

        def step(out, sample, t=t, i=i, history=None):
            s = _fresh(scheduler, steps)
            for t_prev in s.timesteps[:i]:  # stateful schedulers (Euler's step index) see the steps before
                prev = torch.zeros(shape) if history is None else torch.randn(shape, generator=history)
                s.scale_model_input(prev, t_prev)
                s.step(prev, t_prev, prev, return_dict=False)
            s.scale_model_input(sample, t)
            return s.step(out, t, sample, return_dict=False)[0]

        try:
            s = _fresh(scheduler, steps)
            for t_prev in s.timesteps[:i]:
                s.step(torch.zeros(shape), t_prev, torch.zeros(shape), return_dict=False)
            ci = s.scale_model_input(ones.clone(), t)
            a, b = step(zeros, ones), step(ones, zeros)
            expected = step(m, x)
            with_history = step(m, x, history=torch.Generator().manual_seed(1))
        except Exception as e:  # a scheduler that needs more than (model output, t, sample)
            raise ExportError(f"the denoiser cannot bake {name}'s step: {type(e).__name__}: {e}") from None
        if not torch.allclose(expected, with_history, rtol=LINEARITY_TOLERANCE, atol=1e-6):
            raise ExportError(f"the denoiser cannot bake {name}: its step depends on earlier steps' outputs (a "
                              "multistep solver); use a one-step scheduler such as DDIMScheduler.")  # fmt: skip
        for what, v in (("scale_model_input", ci), ("step", a), ("step", b)):
            if not torch.allclose(v, v.flatten()[0].expand_as(v)):
                raise ExportError(f"the denoiser cannot bake {name}: its {what} is not one scale per step.")
        a, b, ci = float(a.flatten()[0]), float(b.flatten()[0]), float(ci.flatten()[0])
        err = (a * x + b * m - expected).abs().max() / expected.abs().max().clamp_min(1e-12)
        if err > LINEARITY_TOLERANCE:
            raise ExportError(
                f"the denoiser cannot bake {name}: its step is not linear in (latents, model output) (relative "
                f"error {float(err):.2g}); use a one-step scheduler such as DDIMScheduler (eta 0, no clipping)."
            )
        c_in.append(ci), c_sample.append(a), c_model.append(b)
    return {
        "timesteps": timesteps.to(torch.float32),
        "c_in": torch.tensor(c_in, dtype=torch.float32),
        "c_sample": torch.tensor(c_sample, dtype=torch.float32),
        "c_model": torch.tensor(c_model, dtype=torch.float32),
        "init_noise_sigma": float(_fresh(scheduler, steps).init_noise_sigma),
    }


class DenoiserStep(nn.Module):
    """One sampling step, the schedule baked in; see the module docstring for inputs and outputs."""

    output_names = ("next_latents",)

    def __init__(self, unet: nn.Module, schedule: dict):
        super().__init__()
        self.unet = unet
        self.embedded = is_guidance_embedded(unet)
        self.guidance_dim = unet.config.time_cond_proj_dim if self.embedded else None
        for k in ("timesteps", "c_in", "c_sample", "c_model"):
            self.register_buffer(k, schedule[k].clone(), persistent=False)
        self.steps = int(schedule["timesteps"].shape[0])
        self.input_names = ("latents", "step_index", "text_states", "guidance_scale") if self.embedded else (
            "latents", "step_index", "text_states", "uncond_states", "guidance_scale")  # fmt: skip

    def forward(self, latents, step_index, text_states, *rest):
        # latents (1, C, h, w); step_index (1,) int64; text_states / uncond_states (1, L, D); guidance_scale (1,)
        t = self.timesteps.index_select(0, step_index)  # (1,)
        c_in = self.c_in.index_select(0, step_index).view(1, 1, 1, 1)
        c_sample = self.c_sample.index_select(0, step_index).view(1, 1, 1, 1)
        c_model = self.c_model.index_select(0, step_index).view(1, 1, 1, 1)
        model_in = latents * c_in
        if self.embedded:
            (guidance_scale,) = rest
            cond = guidance_scale_embedding(guidance_scale, self.guidance_dim)  # (1, dim)
            out = self.unet(model_in, t, encoder_hidden_states=text_states, timestep_cond=cond, return_dict=False)[0]
        else:
            uncond_states, guidance_scale = rest
            both = self.unet(torch.cat([model_in, model_in]), t.expand(2),
                             encoder_hidden_states=torch.cat([uncond_states, text_states]), return_dict=False)[0]
            out_uncond, out_text = both.chunk(2)
            out = out_uncond + guidance_scale.view(1, 1, 1, 1) * (out_text - out_uncond)
        return latents * c_sample + out * c_model


class UnrolledDenoiser(nn.Module):
    """The whole sampling loop as one graph: ``DenoiserStep`` called for every step index in turn (one UNet, its
    weights shared across the unrolled steps). Inputs: ``DenoiserStep``'s without ``step_index``; output: the final
    latents. The layout the export does not ship (docs/export.md: ``benchmarks.denoiser_layouts`` measures both)."""

    def __init__(self, step: DenoiserStep):
        super().__init__()
        self.step = step
        self.input_names = tuple(n for n in step.input_names if n != "step_index")
        self.output_names = ("final_latents",)
        self.register_buffer("indices", torch.arange(step.steps).view(-1, 1), persistent=False)  # (steps, 1)

    def forward(self, latents, text_states, *rest):
        for i in range(self.step.steps):
            latents = self.step(latents, self.indices[i], text_states, *rest)
        return latents


def denoiser_inputs(unet: nn.Module, latent_height: int, latent_width: int, text_length: int,
                    guidance_scale: float, seed: int = 0) -> dict[str, torch.Tensor]:  # fmt: skip
    """Example inputs of ``DenoiserStep(unet, ...)`` in input order (step 0, random text states)."""
    gen = torch.Generator().manual_seed(seed)
    d = unet.config.cross_attention_dim
    inputs = {
        "latents": torch.randn(1, unet.config.in_channels, latent_height, latent_width, generator=gen),
        "step_index": torch.zeros(1, dtype=torch.int64),
        "text_states": torch.randn(1, text_length, d, generator=gen),
    }
    if not is_guidance_embedded(unet):
        inputs["uncond_states"] = torch.randn(1, text_length, d, generator=gen)
    inputs["guidance_scale"] = torch.tensor([float(guidance_scale)])
    return inputs


def describe(schedule: dict, scheduler, embedded: bool, guidance_scale_range=None) -> dict:
    """The manifest entry of the denoiser: what it computes and how to call it (``guidance_scale_range``: the scales
    a guidance-embedded model was trained on, refused outside as the pipeline does)."""
    prediction = scheduler.config.get("prediction_type", "epsilon")
    return {
        "computes": (
            "one sampling step of the pipeline: next_latents = c_sample[i] * latents + c_model[i] * out, with "
            + ("out = unet(c_in[i] * latents, t[i], text_states, guidance embedding of guidance_scale) (one pass, "
               "guidance-embedded UNet)" if embedded else
               "out = uncond + guidance_scale * (text - uncond) from one batch-2 UNet pass on (uncond_states, "
               "text_states) (classifier-free guidance; guidance_scale 1 gives the text-only output)")
            + f"; the UNet predicts {prediction}, the coefficients are {type(scheduler).__name__}'s update"
        ),
        "call": (
            f"latents = init_noise_sigma * randn(1, C, h, w); for i in 0..{len(schedule['timesteps']) - 1}: "
            "latents = Denoiser(latents, [i], text_states"
            + ("" if embedded else ", uncond_states (the text encoder's states of the empty prompt)")
            + ", [guidance_scale]); then VAEDecoder(latents / scaling_factor)"
        ),
        "num_inference_steps": len(schedule["timesteps"]),
        "init_noise_sigma": schedule["init_noise_sigma"],
        "guidance_embedded": embedded,
        "guidance_scale_range": None if guidance_scale_range is None else [float(v) for v in guidance_scale_range],
        "timesteps": [float(v) for v in schedule["timesteps"]],
        "coefficients": {k: [float(v) for v in schedule[k]] for k in ("c_in", "c_sample", "c_model")},
    }


__all__ = ["DenoiserStep", "denoiser_inputs", "describe", "step_schedule"]
