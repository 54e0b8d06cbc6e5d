"""The compressed VAE decoder (paper Sec. 5): SD's decoder with a fraction of its channels kept."""

from __future__ import annotations

import torch
from torch import nn

from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import Decoder, DecoderOutput
from diffusers.models.modeling_utils import ModelMixin


class CompressedVAEDecoder(ModelMixin, ConfigMixin):
    """Decoder-only VAE: ``post_quant_conv`` + diffusers ``Decoder``, with its own channel widths.

    ``decode(latents)`` matches ``AutoencoderKL.decode`` (latents already divided by ``scaling_factor``).
    """

    @register_to_config
    def __init__(
        self,
        latent_channels: int = 4,
        out_channels: int = 3,
        block_out_channels: tuple[int, ...] = (64, 128, 256, 256),
        layers_per_block: int = 2,
        norm_num_groups: int = 16,
        act_fn: str = "silu",
        scaling_factor: float = 0.18215,
        use_post_quant_conv: bool = True,
        mid_block_add_attention: bool = True,
    ):
        super().__init__()
        self.post_quant_conv = nn.Conv2d(latent_channels, latent_channels, 1) if use_post_quant_conv else None
        self.decoder = Decoder(
            in_channels=latent_channels,
            out_channels=out_channels,
            up_block_types=("UpDecoderBlock2D",) * len(block_out_channels),
            block_out_channels=tuple(block_out_channels),
            layers_per_block=layers_per_block,
            norm_num_groups=norm_num_groups,
            act_fn=act_fn,
            mid_block_add_attention=mid_block_add_attention,
        )

    @classmethod
    def from_vae(cls, vae, width_ratio: float = 0.5, norm_num_groups: int | None = None) -> "CompressedVAEDecoder":
        """Prune ``vae``'s decoder uniformly to ``width_ratio`` of its channels (the first channels of every
        layer are kept, so residual sums stay aligned); the pruned weights initialise the new decoder.

        ``norm_num_groups`` (default: the VAE's) sets the GroupNorm groups of the pruned decoder, so that widths
        the VAE's group count does not divide (e.g. 0.75 of 16 channels with 8 groups) can be kept."""
        if not 0.0 < width_ratio <= 1.0:
            raise ValueError(f"width_ratio must be in (0, 1]; got {width_ratio}.")
        cfg = vae.config
        groups = cfg.norm_num_groups if norm_num_groups is None else int(norm_num_groups)
        if groups < 1:
            raise ValueError(f"norm_num_groups must be >= 1; got {norm_num_groups}.")
        widths = []
        for c in cfg.block_out_channels:
            w = int(round(c * width_ratio))
            if w < 1 or w % groups:
                raise ValueError(
                    f"width_ratio {width_ratio} gives {w} channels from {c}, "
                    f"not a multiple of norm_num_groups={groups}; pick another width_ratio or norm_num_groups."
                )
            widths.append(w)
        new = cls(
            latent_channels=cfg.latent_channels, out_channels=cfg.out_channels, block_out_channels=tuple(widths),
            layers_per_block=cfg.layers_per_block, norm_num_groups=groups, act_fn=cfg.act_fn,
            scaling_factor=cfg.scaling_factor, use_post_quant_conv=vae.post_quant_conv is not None,
            mid_block_add_attention=getattr(cfg, "mid_block_add_attention", True),
        )  # fmt: skip
        src = dict(vae.decoder.state_dict())
        if vae.post_quant_conv is not None:
            src.update({f"post_quant_conv.{k}": v for k, v in vae.post_quant_conv.state_dict().items()})
        state = {}
        for name, target in new.state_dict().items():
            key = name[len("decoder."):] if name.startswith("decoder.") else name
            value = src[key]
            state[name] = value[tuple(slice(0, s) for s in target.shape)].clone()
        new.load_state_dict(state)
        if vae.device.type != "cpu" or vae.dtype != torch.float32:
            new = new.to(device=vae.device, dtype=vae.dtype)
        return new

    def decode(self, z: torch.Tensor, return_dict: bool = True, generator=None):
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        dec = self.decoder(z)
        if not return_dict:
            return (dec,)
        return DecoderOutput(sample=dec)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.decode(z).sample
