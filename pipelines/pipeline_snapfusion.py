"""SnapFusionPipeline: text-to-image sampling with per-component timings.

The same pipeline runs SD-v1.5 (stock ``UNet2DConditionModel``, 50 steps) and SnapFusion (efficient UNet,
step-distilled, compressed decoder, 8 steps), so both sides of a comparison are timed by the same code.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import PIL.Image
import torch

from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from diffusers.schedulers import KarrasDiffusionSchedulers
from diffusers.utils import BaseOutput, logging

from .timing import Timer

logger = logging.get_logger(__name__)


@dataclass
class SnapFusionPipelineOutput(BaseOutput):
    """``images``: list of PIL images or an array; ``timings``: measured milliseconds per component."""

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    nsfw_content_detected: list[bool] | None = None
    timings: dict[str, Any] = field(default_factory=dict)


class SnapFusionPipeline(DiffusionPipeline):
    """Text-to-image pipeline for a stock SD-1.x UNet or an ``EfficientUNet2DConditionModel``.

    Components: ``vae`` (``AutoencoderKL``; may be None when ``vae_decoder`` is given), ``text_encoder``
    (``CLIPTextModel``), ``tokenizer`` (``CLIPTokenizer``), ``unet``, ``scheduler``; optional ``vae_decoder``
    (``CompressedVAEDecoder``, used for decoding instead of ``vae``), ``safety_checker`` and
    ``feature_extractor`` (loaded from stock SD folders and applied when present).
    """

    model_cpu_offload_seq = "text_encoder->unet->vae"
    _optional_components = ["vae", "vae_decoder", "safety_checker", "feature_extractor"]
    _callback_tensor_inputs = ["latents", "prompt_embeds"]

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
    ):
        super().__init__()
        if vae is None and vae_decoder is None:
            raise ValueError("SnapFusionPipeline needs a `vae` or a `vae_decoder` to decode latents.")
        self.register_modules(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
            vae_decoder=vae_decoder, safety_checker=safety_checker, feature_extractor=feature_extractor,
        )  # fmt: skip
        self.register_to_config(
            default_num_inference_steps=default_num_inference_steps,
            default_guidance_scale=default_guidance_scale,
            requires_safety_checker=requires_safety_checker,
        )
        decoder = vae_decoder if vae_decoder is not None else vae
        self.vae_scale_factor = getattr(decoder, "vae_scale_factor", None) or 2 ** (
            len(decoder.config.block_out_channels) - 1
        )  # AutoencoderKL has no such property
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)
        self._warned_truncation = False
        self._interrupt = False

    # ------------------------------------------------------------------ helpers

    @property
    def unet_downsample_factor(self) -> int:
        return 2 ** (len(self.unet.config.block_out_channels) - 1)

    @property
    def size_multiple(self) -> int:
        """Height and width must be multiples of this (VAE factor x UNet downsampling)."""
        return self.vae_scale_factor * self.unet_downsample_factor

    def interrupt(self) -> None:
        """Stop the running ``__call__`` after its current step (used by the app's cancel button)."""
        self._interrupt = True

    def check_inputs(self, prompt, negative_prompt, num_inference_steps, guidance_scale, height, width,
                     num_images_per_prompt, output_type):  # fmt: skip
        is_list_of_str = isinstance(prompt, list) and all(isinstance(p, str) for p in prompt)
        if not (isinstance(prompt, str) or is_list_of_str):
            raise ValueError(f"`prompt` must be a string or a list of strings; got {type(prompt).__name__}.")
        if negative_prompt is not None and not isinstance(negative_prompt, (str, list)):
            raise ValueError(
                f"`negative_prompt` must be a string, a list of strings or None; got {negative_prompt!r}."
            )
        if isinstance(prompt, list) and isinstance(negative_prompt, list) and len(prompt) != len(negative_prompt):
            raise ValueError(
                f"`negative_prompt` has {len(negative_prompt)} entries but `prompt` has {len(prompt)}; "
                "they must match."
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
        m = self.size_multiple
        for name, v in (("height", height), ("width", width)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < m or v % m:
                raise ValueError(
                    f"`{name}` must be a positive multiple of {m} (VAE factor {self.vae_scale_factor} x UNet "
                    f"downsampling {self.unet_downsample_factor}); got {v!r}."
                )
        if not isinstance(num_images_per_prompt, (int, np.integer)) or num_images_per_prompt < 1:
            raise ValueError(f"`num_images_per_prompt` must be an integer >= 1; got {num_images_per_prompt!r}.")
        if output_type not in ("pil", "np", "pt", "latent"):
            raise ValueError(f"`output_type` must be one of 'pil', 'np', 'pt', 'latent'; got {output_type!r}.")

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

    def encode_prompt(self, prompt: list[str], device, num_images_per_prompt: int, do_cfg: bool,
                      negative_prompt: list[str] | None) -> torch.Tensor:  # fmt: skip
        """(2B or B, L, D) text features: unconditional first when classifier-free guidance is on."""
        texts = list(prompt)
        if do_cfg:
            texts = (negative_prompt or [""] * len(prompt)) + texts
        ids = self._tokenize(texts).to(device)
        embeds = self.text_encoder(ids)[0].to(dtype=self.unet.dtype)
        return embeds.repeat_interleave(num_images_per_prompt, dim=0)

    def run_safety_checker(self, image: torch.Tensor, device, dtype):
        if self.safety_checker is None or self.feature_extractor is None:
            return image, None
        pil = self.image_processor.postprocess(image, output_type="pil")
        inputs = self.feature_extractor(pil, return_tensors="pt").to(device)
        image, has_nsfw = self.safety_checker(images=image, clip_input=inputs.pixel_values.to(dtype))
        return image, has_nsfw

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) latents -> (B, 3, H, W) images in [-1, 1]."""
        decoder = self.vae_decoder if self.vae_decoder is not None else self.vae
        scale = decoder.config.scaling_factor
        return decoder.decode(latents / scale, return_dict=False)[0]

    # ------------------------------------------------------------------ sampling

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] = "",
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
        callback_on_step_end: Callable[[Any, int, torch.Tensor, dict], dict] | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",),
    ):
        """Generate images; ``num_inference_steps`` / ``guidance_scale`` default to the model's recommended
        values (``default_num_inference_steps`` / ``default_guidance_scale`` in ``model_index.json``)."""
        if num_inference_steps is None:
            num_inference_steps = self.config.default_num_inference_steps
        guidance_scale = self.config.default_guidance_scale if guidance_scale is None else guidance_scale
        sample_size = self.unet.config.sample_size * self.vae_scale_factor
        height = sample_size if height is None else height
        width = sample_size if width is None else width
        self.check_inputs(prompt, negative_prompt, num_inference_steps, guidance_scale, height, width,
                          num_images_per_prompt, output_type)  # fmt: skip
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        negatives = None
        if negative_prompt is not None:
            negatives = [negative_prompt] * len(prompts) if isinstance(negative_prompt, str) else list(negative_prompt)
        guidance_scale = float(guidance_scale)
        do_cfg = guidance_scale > 1.0
        device = self._execution_device
        self._interrupt = False
        timings: dict[str, Any] = {"steps": int(num_inference_steps), "cfg": do_cfg, "device": str(device)}
        t_total = time.perf_counter()

        # 1. encode prompt
        with Timer(device) as t:
            prompt_embeds = self.encode_prompt(prompts, device, num_images_per_prompt, do_cfg, negatives)
        timings["text_encoder_ms"] = t.ms

        # 2. prepare timesteps
        self.scheduler.set_timesteps(int(num_inference_steps), device=device)
        timesteps = self.scheduler.timesteps

        # 3. prepare latents (B, C, H/f, W/f), drawn on the CPU generator's device for reproducibility
        batch = len(prompts) * num_images_per_prompt
        shape = (batch, self.unet.config.in_channels, height // self.vae_scale_factor, width // self.vae_scale_factor)
        if latents is None:
            gen_device = generator.device if isinstance(generator, torch.Generator) else torch.device("cpu")
            latents = torch.randn(shape, generator=generator, device=gen_device, dtype=torch.float32)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"`latents` has shape {tuple(latents.shape)}; expected {shape}.")
        latents = latents.to(device=device, dtype=self.unet.dtype) * self.scheduler.init_noise_sigma

        # 4. denoising loop
        step_ms = []
        self._num_timesteps = len(timesteps)
        with self.progress_bar(total=len(timesteps)) as progress_bar:
            for i, t_step in enumerate(timesteps):
                if self._interrupt:
                    break
                with Timer(device) as t:
                    model_in = torch.cat([latents] * 2) if do_cfg else latents
                    model_in = self.scheduler.scale_model_input(model_in, t_step)
                    out = self.unet(model_in, t_step, encoder_hidden_states=prompt_embeds, return_dict=False)[0]
                    if do_cfg:
                        out_uncond, out_text = out.chunk(2)
                        out = out_uncond + guidance_scale * (out_text - out_uncond)
                    latents = self.scheduler.step(out, t_step, latents, return_dict=False)[0]
                step_ms.append(t.ms)
                if callback_on_step_end is not None:
                    local = {"latents": latents, "prompt_embeds": prompt_embeds}
                    cb_kwargs = {k: local[k] for k in callback_on_step_end_tensor_inputs}
                    cb_out = callback_on_step_end(self, i, t_step, cb_kwargs) or {}
                    latents = cb_out.pop("latents", latents)
                progress_bar.update()
        timings["unet_ms_per_step"] = step_ms
        timings["unet_ms_total"] = float(sum(step_ms))
        timings["unet_ms_mean"] = float(np.mean(step_ms)) if step_ms else 0.0
        timings["steps_run"] = len(step_ms)
        timings["interrupted"] = self._interrupt

        # 5. decode
        has_nsfw = None
        if output_type == "latent":
            image = latents
            timings["decoder_ms"] = 0.0
        else:
            with Timer(device) as t:
                decoder = self.vae_decoder if self.vae_decoder is not None else self.vae
                image = self.decode_latents(latents.to(decoder.dtype))
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
        + (" (CFG, batch 2)" if timings.get("cfg") else ""),
        f"decoder: {timings['decoder_ms']:.1f} ms",
        f"total: {timings['total_ms']:.1f} ms on {timings.get('device', '?')}",
    ]
    return "\n".join(lines)


__all__ = ["SnapFusionPipeline", "SnapFusionPipelineOutput", "format_timings"]
