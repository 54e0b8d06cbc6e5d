"""Pipelines to export: a local diffusers folder or Hub id, or a full-size preset with random weights."""

from __future__ import annotations

import torch

from pipelines import CompressedVAEDecoder, EfficientUNet2DConditionModel, SnapFusionPipeline
from pipelines.loading import ModelLoadError, load_pipeline

from .errors import ExportError
from .options import COMPONENTS

# The folders each component is loaded from; the decoder comes from `vae_decoder` if present, else `vae`.
_REQUIRED = {"text_encoder": ("text_encoder", "tokenizer"), "unet": ("unet",), "denoiser": ("unet", "scheduler"),
             "vae_decoder": (("vae_decoder", "vae"),)}  # fmt: skip

# Full-size presets for size / conversion-time measurements: random weights, placeholder tokenizer vocabulary.
PRESETS = {
    # paper Table 3 UNet, half-width decoder (paper Sec. 5), 8 steps; CFG 4.5 = the 8-step model's best FID (Fig. 9)
    "snapfusion": {"decoder_channels": (64, 128, 256, 256), "steps": 8, "guidance": 4.5,
                   "prediction_type": "v_prediction"},
    # SD-v1.5: stock layout and decoder widths, 50 steps, CFG 7.5
    "sd15": {"decoder_channels": (128, 256, 512, 512), "steps": 50, "guidance": 7.5, "prediction_type": "epsilon"},
}


def load_pipeline_for_export(model: str, components=COMPONENTS) -> SnapFusionPipeline:
    """Load ``model`` (a local diffusers folder or a Hub id) on the CPU in float32 with ``pipelines.loading``, checking
    that the folders of ``components`` are there; every failure is an ``ExportError`` with a one-line message."""
    required = [need for name in components for need in _REQUIRED[name]]
    try:
        return load_pipeline(model, device="cpu", dtype="fp32", required=required)
    except ModelLoadError as e:
        raise ExportError(str(e)) from None


def preset_pipeline(name: str) -> SnapFusionPipeline:
    """A full-size pipeline with random weights: ``EfficientUNet2DConditionModel.from_preset(name)``, an SD-1.5-sized
    CLIP text encoder, a decoder of the preset's widths, SD's DDIM schedule. For measuring conversion time and package
    size only: its outputs are noise and its tokenizer vocabulary is a placeholder."""
    if name not in PRESETS:
        raise ExportError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}.")
    from transformers import CLIPTextConfig, CLIPTextModel

    from pipelines.schedulers import ddim_scheduler
    from pipelines.tiny import TINY_WORDS, tiny_tokenizer

    p = PRESETS[name]
    torch.manual_seed(0)
    unet = EfficientUNet2DConditionModel.from_preset(name).eval()
    tokenizer = tiny_tokenizer(model_max_length=77)
    vocab = len(tokenizer.get_vocab())
    # SD-1.5's text encoder (CLIP ViT-L/14 text tower) shape, with the placeholder vocabulary
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768, bos_token_id=vocab - 2,
        eos_token_id=vocab - 1, pad_token_id=vocab - 1,
    )).eval()  # fmt: skip
    decoder = CompressedVAEDecoder(block_out_channels=p["decoder_channels"], norm_num_groups=32).eval()
    pipe = SnapFusionPipeline(
        vae=None, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=ddim_scheduler(p["prediction_type"]), vae_decoder=decoder,
        default_num_inference_steps=p["steps"], default_guidance_scale=p["guidance"],
    )  # fmt: skip
    pipe.register_to_config(_name_or_path=f"preset:{name} (random weights; {len(TINY_WORDS)}-word placeholder vocab)")
    pipe.set_progress_bar_config(disable=True)
    return pipe
