"""Named model presets for training from scratch (DiT-style registry) and loading stage outputs."""

from __future__ import annotations

import tempfile

import torch
from transformers import CLIPTextConfig, CLIPTextModel

from diffusers import AutoencoderKL
from pipelines import EfficientUNet2DConditionModel, SnapFusionPipeline
from pipelines.loading import ModelLoadError, load_pipeline
from pipelines.schedulers import ddim_scheduler
from pipelines.tokenizer import build_clip_tokenizer

from .common import StageError

# From-scratch presets: "smoke" runs the whole recipe in seconds; "mini" is the shipped bundle's size.
# SD-v1.5 scale is not built from scratch here: pass --pretrained with a real SD-v1.5 diffusers folder.
MODEL_PRESETS = {
    "smoke": dict(
        unet=dict(block_out_channels=(16, 32, 32, 32), num_attention_heads=2, norm_num_groups=8),
        vae=dict(block_out_channels=(16, 32, 32), norm_num_groups=8, layers_per_block=1),
        text=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2),
        max_length=32,
    ),
    "mini": dict(
        unet=dict(block_out_channels=(32, 64, 64, 64), num_attention_heads=4, norm_num_groups=8),
        vae=dict(block_out_channels=(16, 32, 32), norm_num_groups=8, layers_per_block=1),
        text=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4),
        max_length=24,
    ),
}


def build_from_scratch(preset: str, resolution: int, vocabulary: list[str], prediction_type: str, seed: int = 0):
    """Tokenizer, text encoder, VAE and an SD-1.x-topology efficient UNet, randomly initialised."""
    if preset not in MODEL_PRESETS:
        raise StageError(f"--model-preset {preset!r} is unknown; choose one of {sorted(MODEL_PRESETS)}.")
    p = MODEL_PRESETS[preset]
    torch.manual_seed(seed)
    tokenizer = build_clip_tokenizer(vocabulary, tempfile.mkdtemp(prefix="tok_"), p["max_length"])
    vocab = len(tokenizer.get_vocab())
    text_encoder = CLIPTextModel(
        CLIPTextConfig(vocab_size=vocab, max_position_embeddings=p["max_length"], bos_token_id=vocab - 2,
                       eos_token_id=vocab - 1, pad_token_id=vocab - 1, projection_dim=p["text"]["hidden_size"],
                       **p["text"])  # fmt: skip
    )
    vae_cfg = p["vae"]
    n = len(vae_cfg["block_out_channels"])
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=resolution,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n, **vae_cfg,
    )  # fmt: skip
    factor = 2 ** (n - 1)
    unet = EfficientUNet2DConditionModel.from_preset(
        "sd15", sample_size=resolution // factor, cross_attention_dim=p["text"]["hidden_size"], **p["unet"]
    )
    return dict(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, unet=unet,
                scheduler=ddim_scheduler(prediction_type))  # fmt: skip


def load_stage_pipeline(path: str, what: str = "model") -> SnapFusionPipeline:
    """A stage's input pipeline on the CPU in fp32 (also from a folder of fp16 weights, e.g. the shipped bundle),
    through ``pipelines.loading.load_pipeline``; a folder that cannot be loaded is a ``StageError`` naming ``what``."""
    try:
        return load_pipeline(str(path), device="cpu", dtype="fp32")
    except ModelLoadError as e:
        raise StageError(f"{what} {path}: {e}") from None
