"""Tiny seeded components built in-process (tests, smoke runs, benchmarks at toy size). No download."""

from __future__ import annotations

import tempfile

import torch
from transformers import CLIPTextConfig, CLIPTextModel

from diffusers import AutoencoderKL, UNet2DConditionModel

from .pipeline_snapfusion import SnapFusionPipeline
from .schedulers import ddim_scheduler
from .tokenizer import build_clip_tokenizer
from .unet_efficient import EfficientUNet2DConditionModel
from .vae_compressed import CompressedVAEDecoder, PixelShuffleVAEDecoder

TINY_WORDS = "a an the photo of red green blue small big circle square triangle on left right above below".split()


def tiny_tokenizer(model_max_length: int = 16):
    return build_clip_tokenizer(TINY_WORDS, tempfile.mkdtemp(prefix="tiny_tok_"), model_max_length)


def tiny_text_encoder(vocab_size: int, seed: int = 0, hidden_size: int = 32, max_positions: int = 16):
    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=max_positions, bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1, projection_dim=hidden_size,
    )  # fmt: skip
    return CLIPTextModel(config).eval()


def tiny_vae(seed: int = 0, channels=(8, 16), latent_channels: int = 4):
    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=channels, in_channels=3, out_channels=3, latent_channels=latent_channels,
        down_block_types=("DownEncoderBlock2D",) * len(channels), up_block_types=("UpDecoderBlock2D",) * len(channels),
        norm_num_groups=4, sample_size=32, layers_per_block=1,
    ).eval()  # fmt: skip


def tiny_stock_unet(seed: int = 0, channels=(8, 16, 16, 16), cross_attention_dim: int = 32, sample_size: int = 16,
                    time_cond_proj_dim: int | None = None):  # fmt: skip
    """diffusers ``UNet2DConditionModel`` with SD-1.x topology, tiny widths (a guidance embedding when
    ``time_cond_proj_dim`` is given, as LCM's UNets have)."""
    torch.manual_seed(seed)
    n = len(channels)
    return UNet2DConditionModel(
        sample_size=sample_size, block_out_channels=channels, layers_per_block=2, norm_num_groups=4,
        cross_attention_dim=cross_attention_dim, attention_head_dim=2,
        down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1), time_cond_proj_dim=time_cond_proj_dim,
    ).eval()  # fmt: skip


def tiny_efficient_unet(seed: int = 0, preset: str = "snapfusion", channels=(8, 16, 16, 16),
                        cross_attention_dim: int = 32, sample_size: int = 16,
                        time_cond_proj_dim: int | None = None):  # fmt: skip
    torch.manual_seed(seed)
    return EfficientUNet2DConditionModel.from_preset(
        preset, sample_size=sample_size, block_out_channels=channels, norm_num_groups=4,
        cross_attention_dim=cross_attention_dim, num_attention_heads=2, time_cond_proj_dim=time_cond_proj_dim,
    ).eval()  # fmt: skip


def tiny_components(seed: int = 0, unet: str = "efficient", compressed_decoder: bool | str = False,
                    prediction_type: str = "epsilon", time_cond_proj_dim: int | None = None) -> dict:  # fmt: skip
    """Components for ``SnapFusionPipeline(**components)``: 32x32 images, 16x16 latents.

    ``time_cond_proj_dim``: a guidance-embedded UNet (one pass per step; its guidance projection randomly
    initialised, so the guidance scale changes the output).

    ``compressed_decoder``: False (the VAE decodes), True or "pruned" (``CompressedVAEDecoder`` at 50% width) or
    "pixel_shuffle" (a fresh two-stage ``PixelShuffleVAEDecoder``)."""
    tokenizer = tiny_tokenizer()
    text_encoder = tiny_text_encoder(len(tokenizer.get_vocab()), seed)
    vae = tiny_vae(seed)
    if unet == "efficient":
        net = tiny_efficient_unet(seed, sample_size=16, time_cond_proj_dim=time_cond_proj_dim)
    elif unet == "stock":
        net = tiny_stock_unet(seed, sample_size=16, time_cond_proj_dim=time_cond_proj_dim)
    else:
        raise ValueError(f"unet must be 'efficient' or 'stock'; got {unet!r}.")
    if compressed_decoder not in (False, True, "pruned", "pixel_shuffle"):
        raise ValueError(
            f"compressed_decoder must be False, True, 'pruned' or 'pixel_shuffle'; got {compressed_decoder!r}."
        )
    vae_decoder = None
    if compressed_decoder == "pixel_shuffle":
        torch.manual_seed(seed)
        vae_decoder = PixelShuffleVAEDecoder.from_vae(vae, (16, 8), layers_per_block=1, norm_num_groups=4).eval()
    elif compressed_decoder:
        vae_decoder = CompressedVAEDecoder.from_vae(vae, 0.5)
    return dict(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=net,
                scheduler=ddim_scheduler(prediction_type), vae_decoder=vae_decoder)  # fmt: skip


def one_attention_block(unet: EfficientUNet2DConditionModel) -> EfficientUNet2DConditionModel:
    """``unet`` with every removable block removed but its first cross-attention one (and the blocks that change
    channels): the smallest graph that still has cross-attention, for export tests (lowering time grows with a
    graph's size, not its widths)."""
    removable = [b for b in unet.blocks() if unet.is_removable(b)]
    keep = next(b for b in removable if b.kind == "CA")
    return unet.remove_blocks([b for b in removable if b != keep])


def tiny_pipeline(seed: int = 0, **kwargs) -> SnapFusionPipeline:
    pipe = SnapFusionPipeline(**tiny_components(seed, **kwargs))
    pipe.set_progress_bar_config(disable=True)
    return pipe
