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

# From-scratch presets: "smoke" runs the whole recipe in seconds; "mini" is the shipped bundle's size; "sd15" and
# "snapfusion" are SD-v1.5's shapes (CLIP ViT-L/14 text encoder, 768-wide states, 77 tokens, 49,408-entry embedding;
# SD's VAE; the sd15 or paper-Table-3 UNet) with random weights: the stand-ins of the full-size proof
# (training/configs/sd15-proof.json). A real run starts from SD-v1.5 itself: --pretrained with its diffusers folder.
_SD15_TEXT = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12)
_SD15_VAE = dict(block_out_channels=(128, 256, 512, 512), norm_num_groups=32, layers_per_block=2)
MODEL_PRESETS = {
    "sd15": dict(unet=dict(), unet_preset="sd15", vae=_SD15_VAE, text=_SD15_TEXT, max_length=77, vocab_size=49408),
    "snapfusion": dict(unet=dict(), unet_preset="snapfusion", vae=_SD15_VAE, text=_SD15_TEXT, max_length=77,
                       vocab_size=49408),  # fmt: skip
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
        CLIPTextConfig(vocab_size=max(vocab, p.get("vocab_size", 0)), max_position_embeddings=p["max_length"],
                       bos_token_id=vocab - 2,
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
    unet = EfficientUNet2DConditionModel.from_preset(p.get("unet_preset", "sd15"), sample_size=resolution // factor,
                                                     cross_attention_dim=p["text"]["hidden_size"], **p["unet"])
    return dict(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, unet=unet,
                scheduler=ddim_scheduler(prediction_type))  # fmt: skip


def load_stage_pipeline(path: str, what: str = "model") -> SnapFusionPipeline:
    """A stage's input pipeline on the CPU in fp32 (also from a folder of fp16 weights, e.g. the shipped bundle),
    through ``pipelines.loading.load_pipeline``; a folder that cannot be loaded is a ``StageError`` naming ``what``."""
    try:
        return load_pipeline(str(path), device="cpu", dtype="fp32")
    except ModelLoadError as e:
        raise StageError(f"{what} {path}: {e}") from None
