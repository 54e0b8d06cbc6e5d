"""The guidance-scale input of a guidance-embedded UNet (one UNet pass per step, no CFG batch).

A UNet with ``time_cond_proj_dim`` set (diffusers' convention, as in LCM-distilled SD-1.5 UNets) adds
``cond_proj(timestep_cond)`` to its timestep embedding; ``timestep_cond`` is the sinusoidal embedding of
``guidance_scale - 1`` (Imagen's CFG formulation, the one ``StableDiffusionPipeline`` uses), computed exactly as
diffusers' ``LatentConsistencyModelPipeline.get_guidance_scale_embedding``.
"""

from __future__ import annotations

import math

import torch


def guidance_scale_embedding(guidance_scale: torch.Tensor | float, embedding_dim: int, batch: int | None = None,
                             dtype: torch.dtype = torch.float32) -> torch.Tensor:  # fmt: skip
    """(B, embedding_dim) embedding of ``guidance_scale`` (a float, or one scale per sample as a (B,) tensor).

    The embedded value is ``guidance_scale - 1``, scaled by 1000, as sin/cos features (VDM's embedding)."""
    w = torch.as_tensor(guidance_scale, dtype=torch.float32)
    if w.ndim == 0:
        w = w.repeat(1 if batch is None else batch)
    elif w.ndim != 1:
        raise ValueError(f"guidance_scale must be a number or a 1-D tensor; got shape {tuple(w.shape)}.")
    w = (w - 1.0) * 1000.0
    half = embedding_dim // 2
    freqs = torch.exp(torch.arange(half, dtype=dtype, device=w.device) * -(math.log(10000.0) / (half - 1)))
    emb = w.to(dtype)[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=1)
    if embedding_dim % 2 == 1:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb


def is_guidance_embedded(unet) -> bool:
    """True when ``unet`` takes the guidance scale as an input (``time_cond_proj_dim`` in its config)."""
    return getattr(unet.config, "time_cond_proj_dim", None) is not None


def add_guidance_embedding(unet, time_cond_proj_dim: int = 256):
    """A copy of ``unet`` (``EfficientUNet2DConditionModel`` or diffusers' ``UNet2DConditionModel``) with a
    guidance embedding of ``time_cond_proj_dim`` features, initialised to zero: the new UNet computes exactly
    what ``unet`` did, whatever the guidance input, until it is trained (the start of guidance distillation)."""
    if is_guidance_embedded(unet):
        raise ValueError(f"this UNet already has a guidance embedding (time_cond_proj_dim="
                         f"{unet.config.time_cond_proj_dim}).")  # fmt: skip
    if time_cond_proj_dim < 2:
        raise ValueError(f"time_cond_proj_dim must be >= 2; got {time_cond_proj_dim}.")
    # without diffusers' "_use_default_values" (a loaded config lists time_cond_proj_dim there and from_config
    # would then drop the value given here)
    config = {k: v for k, v in unet.config.items() if k != "_use_default_values"}
    new = type(unet).from_config({**config, "time_cond_proj_dim": int(time_cond_proj_dim)})
    missing, unexpected = new.load_state_dict(unet.state_dict(), strict=False)
    if unexpected or set(missing) != {"time_embedding.cond_proj.weight"}:
        raise RuntimeError(f"unexpected weights adding the guidance embedding: missing {missing}, extra {unexpected}")
    torch.nn.init.zeros_(new.time_embedding.cond_proj.weight)
    if unet.device != torch.device("cpu") or unet.dtype != torch.float32:
        new = new.to(device=unet.device, dtype=unet.dtype)
    return new


__all__ = ["add_guidance_embedding", "guidance_scale_embedding", "is_guidance_embedded"]
