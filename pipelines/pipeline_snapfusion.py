"""SnapFusionPipeline: text-to-image sampling with per-component timings.

The same pipeline runs SD-v1.5 (stock ``UNet2DConditionModel``, 50 steps) and SnapFusion (efficient UNet,
step-distilled, compressed decoder, 8 steps), so both sides of a comparison are timed by the same code.

It is a drop-in for diffusers' ``StableDiffusionPipeline`` (the contract of diffusers' ``PipelineTesterMixin``):
one generator per image, ``prompt_embeds`` / ``negative_prompt_embeds``, optional components set to ``None``,
``components``, and the properties that ``callback_on_step_end`` callbacks read and write (``guidance_scale``,
``num_timesteps``, ``do_classifier_free_guidance``, ``cross_attention_kwargs``, ``interrupt``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import PIL.Image
import torch

from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from diffusers.schedulers import KarrasDiffusionSchedulers
from diffusers.utils import BaseOutput, logging
from diffusers.utils.torch_utils import randn_tensor

from .guidance import guidance_scale_embedding, is_guidance_embedded
from .timing import Timer

logger = logging.get_logger(__name__)

OUTPUT_TYPES = ("pil", "np", "pt", "latent")


@dataclass
class SnapFusionPipelineOutput(BaseOutput):
    """``images``: list of PIL images or an array; ``timings``: measured milliseconds per component."""

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    nsfw_content_detected: list[bool] | None = None
    timings: dict[str, Any] = field(default_factory=dict)


class _OptionalComponents:
    """``SnapFusionPipeline._optional_components``, which depends on who asks.

    The class (diffusers' ``from_pretrained`` / ``save_pretrained`` bookkeeping) gets every component a saved folder
    may lack, so a decoder-only pipeline (``vae=None``, a ``vae_decoder``) saves and loads. A pipeline gets the
    components it can generate without right now, which is what diffusers' ``test_save_load_optional_components``
    sets to ``None`` before it calls: the safety checker and its feature extractor, and whichever of ``vae`` /
    ``vae_decoder`` is not the one that decodes (``vae_decoder`` when there is one, else ``vae``)."""

    ALL = ("vae", "vae_decoder", "safety_checker", "feature_extractor")

    def __get__(self, pipe, owner) -> list[str]:
        if pipe is None:
            return list(self.ALL)
        spare = "vae" if getattr(pipe, "vae_decoder", None) is not None else "vae_decoder"
        return [spare, "safety_checker", "feature_extractor"]


class SnapFusionPipeline(DiffusionPipeline):
    """Text-to-image pipeline for a stock SD-1.x UNet or an ``EfficientUNet2DConditionModel``.

    Components: ``vae`` (``AutoencoderKL``; may be None when ``vae_decoder`` is given), ``text_encoder``
    (``CLIPTextModel``), ``tokenizer`` (``CLIPTokenizer``), ``unet``, ``scheduler``; optional ``vae_decoder``
    (``CompressedVAEDecoder``, used for decoding instead of ``vae``), ``safety_checker`` and
    ``feature_extractor`` (loaded from stock SD folders and applied when present).

    ``default_num_inference_steps`` / ``default_guidance_scale`` are the model's recommended values (config, not
    components: like diffusers' ``requires_safety_checker`` they are not in ``pipe.components``).

    A guidance-embedded UNet (``time_cond_proj_dim`` in its config, e.g. the one-pass student of
    ``training.guidance_distill``) runs one UNet pass per step with ``guidance_scale`` fed to the network, as
    diffusers' LCM pipeline does: no unconditional batch, so a negative prompt has nothing to act on and is
    refused. ``guidance_scale_range`` (config) is the range of scales it was trained on; others are refused.
    """

    model_cpu_offload_seq = "text_encoder->unet->vae"
    _optional_components = _OptionalComponents()
    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds"]

    def __init__(
        self,
        vae,
        text_encoder,
        tokenizer,
        unet,
        scheduler: KarrasDiffusionSchedulers,
        vae_decoder=None,
        safety_checker=None,
        feature_extractor=None,
        default_num_inference_steps: int = 50,
        default_guidance_scale: float = 7.5,
        requires_safety_checker: bool = False,
        guidance_scale_range: tuple[float, float] | list[float] | None = None,
    ):
        super().__init__()
        self.register_modules(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
            vae_decoder=vae_decoder, safety_checker=safety_checker, feature_extractor=feature_extractor,
        )  # fmt: skip
        self.register_to_config(
            default_num_inference_steps=default_num_inference_steps,
            default_guidance_scale=default_guidance_scale,
            requires_safety_checker=requires_safety_checker,
            guidance_scale_range=None if guidance_scale_range is None else [float(v) for v in guidance_scale_range],
        )
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)
        self._warned_truncation = False
        self._interrupt = False
        self._guidance_scale = float(default_guidance_scale)
        self._cross_attention_kwargs = None
        self._num_timesteps = 0

    # ------------------------------------------------------------------ helpers

    @property
    def decoder(self):
        """The module that decodes latents: ``vae_decoder`` when there is one, else ``vae`` (None without both)."""
        return self.vae_decoder if getattr(self, "vae_decoder", None) is not None else getattr(self, "vae", None)

    @property
    def vae_scale_factor(self) -> int:
        """Image pixels per latent pixel of the decoder in use (8 when there is none, as diffusers assumes)."""
        decoder = self.decoder
        if decoder is None:
            return 8
        return getattr(decoder, "vae_scale_factor", None) or 2 ** (
            len(decoder.config.block_out_channels) - 1
        )  # AutoencoderKL has no such property

    @property
    def unet_downsample_factor(self) -> int:
        return 2 ** (len(self.unet.config.block_out_channels) - 1)

    @property
    def size_multiple(self) -> int:
        """Height and width must be multiples of this (VAE factor x UNet downsampling)."""
        return self.vae_scale_factor * self.unet_downsample_factor

    # diffusers' callback properties: a ``callback_on_step_end`` may read them, or set ``pipe._guidance_scale``
    # (e.g. to 0.0 to stop classifier-free guidance from that step on) and ``pipe._interrupt``.
    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        return self._guidance_scale > 1.0 and not self.guidance_embedded

    @property
    def guidance_embedded(self) -> bool:
        """True for a UNet that takes the guidance scale as an input: one UNet pass per step, no CFG batch."""
        return is_guidance_embedded(self.unet)

    @property
    def cross_attention_kwargs(self) -> dict | None:
        return self._cross_attention_kwargs

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    @property
    def interrupt(self) -> bool:
        """True once a step callback set ``pipe._interrupt = True`` (diffusers' way to stop the running call after
        its current step; the app's Cancel does it)."""
        return self._interrupt

    def _check_embeds(self, name: str, embeds, batch: int | None) -> None:
        if not isinstance(embeds, torch.Tensor) or embeds.ndim != 3:
            got = tuple(embeds.shape) if isinstance(embeds, torch.Tensor) else type(embeds).__name__
            raise ValueError(f"`{name}` must be a (batch, tokens, features) tensor; got {got}.")
        dim = getattr(getattr(self.unet, "config", None), "cross_attention_dim", None)
        if dim is not None and embeds.shape[-1] != dim:
            raise ValueError(f"`{name}` has {embeds.shape[-1]} features per token; the UNet expects {dim}.")
        if batch is not None and embeds.shape[0] != batch:
            raise ValueError(f"`{name}` has batch {embeds.shape[0]} but the prompts are {batch}; they must match.")

    def check_inputs(self, prompt, negative_prompt, num_inference_steps, guidance_scale, height, width,
                     num_images_per_prompt, output_type, prompt_embeds=None, negative_prompt_embeds=None,
                     callback_on_step_end_tensor_inputs=None, generator=None):  # fmt: skip
        if prompt is not None and prompt_embeds is not None:
            raise ValueError("Pass `prompt` or `prompt_embeds`, not both.")
        if prompt is None and prompt_embeds is None:
            raise ValueError("Pass `prompt` (a string or a list of strings) or `prompt_embeds`.")
        if negative_prompt is not None and negative_prompt_embeds is not None:
            raise ValueError("Pass `negative_prompt` or `negative_prompt_embeds`, not both.")
        batch = None
        if prompt is not None:
            is_list_of_str = isinstance(prompt, list) and all(isinstance(p, str) for p in prompt)
            if not (isinstance(prompt, str) or is_list_of_str):
                raise ValueError(f"`prompt` must be a string or a list of strings; got {type(prompt).__name__}.")
            batch = 1 if isinstance(prompt, str) else len(prompt)
        else:
            self._check_embeds("prompt_embeds", prompt_embeds, None)
            batch = prompt_embeds.shape[0]
        if negative_prompt_embeds is not None:
            self._check_embeds("negative_prompt_embeds", negative_prompt_embeds, batch)
            if prompt_embeds is not None and prompt_embeds.shape != negative_prompt_embeds.shape:
                raise ValueError(
                    f"`prompt_embeds` {tuple(prompt_embeds.shape)} and `negative_prompt_embeds` "
                    f"{tuple(negative_prompt_embeds.shape)} must have the same shape."
                )
        if negative_prompt is not None and not isinstance(negative_prompt, (str, list)):
            raise ValueError(
                f"`negative_prompt` must be a string, a list of strings or None; got {negative_prompt!r}."
            )
        if isinstance(negative_prompt, list) and len(negative_prompt) != batch:
            raise ValueError(
                f"`negative_prompt` has {len(negative_prompt)} entries but `prompt` has {batch}; they must match."
            )
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, (int, np.integer)):
            raise ValueError(f"`num_inference_steps` must be an integer >= 1; got {num_inference_steps!r}.")
        if num_inference_steps < 1:
            raise ValueError(f"`num_inference_steps` must be >= 1; got {num_inference_steps}.")
        max_steps = self.scheduler.config.num_train_timesteps
        if num_inference_steps > max_steps:
            raise ValueError(
                f"`num_inference_steps` must be <= {max_steps} (training timesteps); got {num_inference_steps}."
            )
        try:
            g = float(guidance_scale)
        except (TypeError, ValueError):
            raise ValueError(f"`guidance_scale` must be a finite number; got {guidance_scale!r}.") from None
        if not math.isfinite(g):
            raise ValueError(f"`guidance_scale` must be a finite number; got {guidance_scale!r}.")
        if self.guidance_embedded:
            lo_hi = getattr(self.config, "guidance_scale_range", None)
            if lo_hi is not None and not lo_hi[0] <= g <= lo_hi[1]:
                raise ValueError(f"`guidance_scale` {g:g} is outside the range this guidance-embedded model was "
                                 f"trained on, [{lo_hi[0]:g}, {lo_hi[1]:g}].")  # fmt: skip
            negatives = [negative_prompt] if isinstance(negative_prompt, str) else negative_prompt or []
            if any(n.strip() for n in negatives if isinstance(n, str)) or negative_prompt_embeds is not None:
                raise ValueError("`negative_prompt` has no effect on this model: it takes the guidance scale as an "
                                 "input and runs one UNet pass per step, with no unconditional branch. Leave it "
                                 "empty.")  # fmt: skip
        m = self.size_multiple
        for name, v in (("height", height), ("width", width)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < m or v % m:
                raise ValueError(
                    f"`{name}` must be a positive multiple of {m} (VAE factor {self.vae_scale_factor} x UNet "
                    f"downsampling {self.unet_downsample_factor}); got {v!r}."
                )
        if not isinstance(num_images_per_prompt, (int, np.integer)) or num_images_per_prompt < 1:
            raise ValueError(f"`num_images_per_prompt` must be an integer >= 1; got {num_images_per_prompt!r}.")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"`output_type` must be one of 'pil', 'np', 'pt', 'latent'; got {output_type!r}.")
        if output_type != "latent" and self.decoder is None:
            raise ValueError("This pipeline has no `vae` and no `vae_decoder`: only output_type='latent' works.")
        if output_type != "latent" and self.safety_checker is not None and self.feature_extractor is None:
            raise ValueError("This pipeline has a `safety_checker` but no `feature_extractor`; set both or neither.")
        bad = [k for k in callback_on_step_end_tensor_inputs or () if k not in self._callback_tensor_inputs]
        if bad:
            raise ValueError(
                f"`callback_on_step_end_tensor_inputs` may name {self._callback_tensor_inputs}; got {bad}."
            )
        if isinstance(generator, list):
            if not all(isinstance(g, torch.Generator) for g in generator):
                raise ValueError("`generator` must be a torch.Generator or a list of them (one per image).")
            if len(generator) != batch * num_images_per_prompt:
                raise ValueError(
                    f"`generator` is a list of {len(generator)} generators but {batch * num_images_per_prompt} "
                    "images are asked for (prompts x num_images_per_prompt); pass one generator per image."
                )

    def _tokenize(self, texts: list[str]) -> torch.Tensor:
        max_len = self.tokenizer.model_max_length
        ids = self.tokenizer(texts, padding="max_length", max_length=max_len, truncation=True, return_tensors="pt")
        if not self._warned_truncation:
            untruncated = self.tokenizer(texts, padding="longest", return_tensors="pt", verbose=False).input_ids
            if untruncated.shape[-1] > max_len:
                self._warned_truncation = True
                logger.warning(
                    f"A prompt is longer than the tokenizer's limit of {max_len} tokens and was truncated "
                    "(this warning is shown once)."
                )
        return ids.input_ids

    def encode_prompt(
        self,
        prompt: str | list[str] | None,
        device,
        num_images_per_prompt: int,
        do_classifier_free_guidance: bool,
        negative_prompt: str | list[str] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(prompt_embeds, negative_prompt_embeds)``, each (B * num_images_per_prompt, L, D), as diffusers'
        ``StableDiffusionPipeline.encode_prompt``; the negative ones only with classifier-free guidance.

        Texts that need encoding go through the text encoder in one batch, negatives first."""
        texts = [prompt] if isinstance(prompt, str) else prompt
        batch = len(texts) if texts is not None else prompt_embeds.shape[0]
        negatives = []
        if do_classifier_free_guidance and negative_prompt_embeds is None:
            if negative_prompt is None:
                negatives = [""] * batch
            else:
                negatives = [negative_prompt] * batch if isinstance(negative_prompt, str) else list(negative_prompt)
        to_encode = negatives + (list(texts) if prompt_embeds is None else [])
        if to_encode:
            if self.text_encoder is None or self.tokenizer is None:
                raise ValueError(
                    "This pipeline has no text encoder: pass `prompt_embeds` (and `negative_prompt_embeds` with "
                    "guidance_scale > 1) instead of text."
                )
            encoded = self.text_encoder(self._tokenize(to_encode).to(device))[0]  # (N, L, D)
            if negatives:
                negative_prompt_embeds, encoded = encoded[:batch], encoded[batch:]
            if prompt_embeds is None:
                prompt_embeds = encoded
        if self.unet is not None:
            dtype = self.unet.dtype
        elif self.text_encoder is not None:
            dtype = self.text_encoder.dtype
        else:
            dtype = prompt_embeds.dtype
        prompt_embeds = prompt_embeds.to(device=device, dtype=dtype).repeat_interleave(num_images_per_prompt, dim=0)
        if do_classifier_free_guidance:
            negative_prompt_embeds = negative_prompt_embeds.to(device=device, dtype=dtype)
            negative_prompt_embeds = negative_prompt_embeds.repeat_interleave(num_images_per_prompt, dim=0)
        return prompt_embeds, negative_prompt_embeds

    def prepare_latents(self, batch_size: int, num_channels_latents: int, height: int, width: int, dtype, device,
                        generator, latents=None) -> torch.Tensor:  # fmt: skip
        """(B, C, H/f, W/f) initial latents in ``dtype`` on ``device``, scaled by the scheduler's ``init_noise_sigma``
        (diffusers' signature).

        The noise is drawn in float32 on the generator's device (the CPU without one) and then moved, so a seed
        gives the same image on every device; a list holds one generator per image (``randn_tensor``)."""
        shape = (batch_size, num_channels_latents, height // self.vae_scale_factor, width // self.vae_scale_factor)
        if latents is None:
            first = generator[0] if isinstance(generator, list) else generator
            rand_device = first.device if isinstance(first, torch.Generator) else torch.device("cpu")
            latents = randn_tensor(shape, generator=generator, device=rand_device, dtype=torch.float32)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"`latents` has shape {tuple(latents.shape)}; expected {shape}.")
        return latents.to(device=device, dtype=dtype) * self.scheduler.init_noise_sigma

    def run_safety_checker(self, image: torch.Tensor, device, dtype):
        if self.safety_checker is None:
            return image, None
        pil = self.image_processor.postprocess(image, output_type="pil")
        inputs = self.feature_extractor(pil, return_tensors="pt").to(device)
        image, has_nsfw = self.safety_checker(images=image, clip_input=inputs.pixel_values.to(dtype))
        return image, has_nsfw

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) latents -> (B, 3, H, W) images in [-1, 1]."""
        decoder = self.decoder
        scale = decoder.config.scaling_factor
        return decoder.decode(latents.to(decoder.dtype) / scale, return_dict=False)[0]

    # ------------------------------------------------------------------ sampling

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_images_per_prompt: int = 1,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable[[Any, int, torch.Tensor, dict], dict] | PipelineCallback | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",),
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
    ):
        """Generate images; ``num_inference_steps`` / ``guidance_scale`` default to the model's recommended
        values (``default_num_inference_steps`` / ``default_guidance_scale`` in ``model_index.json``).

        ``generator``: one, or a list with one per image (``len(prompts) * num_images_per_prompt``).
        ``callback_on_step_end(pipe, i, t, tensors)`` runs after each step with the tensors named in
        ``callback_on_step_end_tensor_inputs`` (from ``_callback_tensor_inputs``) and may return replacements;
        ``pipe._interrupt = True`` in it stops the run after the current step."""
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        if num_inference_steps is None:
            num_inference_steps = self.config.default_num_inference_steps
        guidance_scale = self.config.default_guidance_scale if guidance_scale is None else guidance_scale
        sample_size = self.unet.config.sample_size * self.vae_scale_factor
        height = sample_size if height is None else height
        width = sample_size if width is None else width

        # 0. check inputs
        self.check_inputs(prompt, negative_prompt, num_inference_steps, guidance_scale, height, width,
                          num_images_per_prompt, output_type, prompt_embeds, negative_prompt_embeds,
                          callback_on_step_end_tensor_inputs, generator)  # fmt: skip
        self._guidance_scale = float(guidance_scale)
        self._cross_attention_kwargs = cross_attention_kwargs
        self._interrupt = False
        batch = prompt_embeds.shape[0] if prompt is None else 1 if isinstance(prompt, str) else len(prompt)
        do_cfg = self.do_classifier_free_guidance
        device = self._execution_device
        timings: dict[str, Any] = {"steps": int(num_inference_steps), "cfg": do_cfg, "device": str(device)}
        t_total = time.perf_counter()

        # 1. encode prompt: (B, L, D) each; with guidance one (2B, L, D) batch, unconditional first
        with Timer(device) as t:
            prompt_embeds, negative_prompt_embeds = self.encode_prompt(
                prompt, device, num_images_per_prompt, do_cfg, negative_prompt, prompt_embeds, negative_prompt_embeds
            )
        timings["text_encoder_ms"] = t.ms
        if do_cfg:
            prompt_embeds = torch.cat([negative_prompt_embeds, prompt_embeds])

        # 2. prepare timesteps
        self.scheduler.set_timesteps(int(num_inference_steps), device=device)
        timesteps = self.scheduler.timesteps

        # 3. prepare latents (B, C, H/f, W/f)
        latents = self.prepare_latents(batch * num_images_per_prompt, self.unet.config.in_channels, height, width,
                                       self.unet.dtype, device, generator, latents)  # fmt: skip

        # 4. denoising loop
        unet_kwargs = {} if cross_attention_kwargs is None else {"cross_attention_kwargs": cross_attention_kwargs}
        embedded = self.guidance_embedded
        timings["guidance_embedded"] = embedded
        step_ms = []
        self._num_timesteps = len(timesteps)
        with self.progress_bar(total=len(timesteps)) as progress_bar:
            for i, t_step in enumerate(timesteps):
                if self.interrupt:
                    break
                with Timer(device) as t:
                    cfg_now = self.do_classifier_free_guidance  # a callback may have changed the guidance scale
                    model_in = torch.cat([latents] * 2) if cfg_now else latents
                    model_in = self.scheduler.scale_model_input(model_in, t_step)
                    if embedded:  # one pass, the guidance scale as an input (a callback may have changed it)
                        unet_kwargs["timestep_cond"] = guidance_scale_embedding(
                            self.guidance_scale, self.unet.config.time_cond_proj_dim, batch=latents.shape[0]
                        ).to(device=device, dtype=latents.dtype)
                    noise_pred = self.unet(model_in, t_step, encoder_hidden_states=prompt_embeds, return_dict=False,
                                           **unet_kwargs)[0]  # fmt: skip
                    if cfg_now:
                        noise_uncond, noise_text = noise_pred.chunk(2)
                        noise_pred = noise_uncond + self.guidance_scale * (noise_text - noise_uncond)
                    latents = self.scheduler.step(noise_pred, t_step, latents, return_dict=False)[0]
                step_ms.append(t.ms)
                if callback_on_step_end is not None:
                    tensors = {"latents": latents, "prompt_embeds": prompt_embeds,
                               "negative_prompt_embeds": negative_prompt_embeds}  # fmt: skip
                    cb_kwargs = {k: tensors[k] for k in callback_on_step_end_tensor_inputs}
                    cb_out = callback_on_step_end(self, i, t_step, cb_kwargs) or {}
                    latents = cb_out.pop("latents", latents)
                    prompt_embeds = cb_out.pop("prompt_embeds", prompt_embeds)
                    negative_prompt_embeds = cb_out.pop("negative_prompt_embeds", negative_prompt_embeds)
                progress_bar.update()
        timings["unet_ms_per_step"] = step_ms
        timings["unet_ms_total"] = float(sum(step_ms))
        timings["unet_ms_mean"] = float(np.mean(step_ms)) if step_ms else 0.0
        timings["steps_run"] = len(step_ms)
        timings["interrupted"] = bool(self._interrupt)

        # 5. decode
        has_nsfw = None
        if output_type == "latent":
            image = latents
            timings["decoder_ms"] = 0.0
        else:
            with Timer(device) as t:
                image = self.decode_latents(latents)
            timings["decoder_ms"] = t.ms
            image, has_nsfw = self.run_safety_checker(image, device, prompt_embeds.dtype)

        # 6. post-process
        if output_type != "latent":
            do_denormalize = [True] * image.shape[0] if has_nsfw is None else [not n for n in has_nsfw]
            image = self.image_processor.postprocess(image, output_type=output_type, do_denormalize=do_denormalize)
        timings["total_ms"] = (time.perf_counter() - t_total) * 1000.0
        self.maybe_free_model_hooks()

        if not return_dict:
            return (image, has_nsfw, timings)
        return SnapFusionPipelineOutput(images=image, nsfw_content_detected=has_nsfw, timings=timings)


def format_timings(timings: dict[str, Any]) -> str:
    """One readable line per component, e.g. for the CLI and the app."""
    n = timings.get("steps_run", 0)
    lines = [
        f"text encoder: {timings['text_encoder_ms']:.1f} ms",
        f"UNet: {timings['unet_ms_mean']:.1f} ms/step x {n} steps = {timings['unet_ms_total']:.1f} ms"
        + (" (CFG, batch 2)" if timings.get("cfg") else "")
        + (" (one pass, guidance as input)" if timings.get("guidance_embedded") else ""),
        f"decoder: {timings['decoder_ms']:.1f} ms",
        f"total: {timings['total_ms']:.1f} ms on {timings.get('device', '?')}",
    ]
    return "\n".join(lines)


__all__ = ["SnapFusionPipeline", "SnapFusionPipelineOutput", "format_timings"]
