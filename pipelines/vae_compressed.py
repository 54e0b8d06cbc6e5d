"""Compressed VAE decoders: SD's decoder with a fraction of its channels kept (paper Sec. 5), and a decoder with far
fewer layers for small images, where per-layer cost, not width, sets the time."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import Decoder, DecoderOutput
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.resnet import ResnetBlock2D


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

    @property
    def vae_scale_factor(self) -> int:
        """Image size / latent size."""
        return 2 ** (len(self.config.block_out_channels) - 1)

    def decode(self, z: torch.Tensor, return_dict: bool = True, generator=None):
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        dec = self.decoder(z)
        if not return_dict:
            return (dec,)
        return DecoderOutput(sample=dec)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.decode(z).sample


def plain_resnet_forward(block: ResnetBlock2D, x: torch.Tensor) -> torch.Tensor:
    """``block(x, None)`` for a diffusers ``ResnetBlock2D`` without a time embedding, resampling, output scale or
    dropout, as decoders build them: the same arithmetic, in the same order, without the branches, the dropout
    call and the division by ``output_scale_factor = 1`` that its general ``forward`` runs every call. At batch 1
    on a CPU those cost about a tenth of a small decoder's time (``python -m benchmarks.decoder_layouts``)."""
    if (block.upsample is not None or block.downsample is not None or block.time_emb_proj is not None
            or block.output_scale_factor != 1 or (block.training and block.dropout.p)):  # fmt: skip
        raise ValueError("plain_resnet_forward takes ResnetBlock2Ds without time embedding, up/downsampling, "
                         "output scale or dropout.")  # fmt: skip
    h = block.conv1(block.nonlinearity(block.norm1(x)))
    h = block.conv2(block.nonlinearity(block.norm2(h)))
    return (x if block.conv_shortcut is None else block.conv_shortcut(x)) + h


def with_plain_resnet_blocks(vae):
    """A copy of ``vae`` (e.g. an ``AutoencoderKL``) whose decoder runs its ``ResnetBlock2D``s with
    ``plain_resnet_forward``: the same outputs. Benchmarks time it beside the stock VAE so that the pixel-shuffle
    decoder's plain blocks do not flatter its speed-up."""
    vae = copy.deepcopy(vae)
    for m in vae.decoder.modules():
        if type(m) is ResnetBlock2D:
            m.forward = lambda x, temb=None, m=m: plain_resnet_forward(m, x)
    return vae


class PlainResnetBlock2D(ResnetBlock2D):
    """diffusers' ``ResnetBlock2D`` (same modules and weights, so same checkpoints) with ``plain_resnet_forward``
    as its forward; ``PixelShuffleVAEDecoder`` builds its blocks so that it applies."""

    def forward(self, input_tensor: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        return plain_resnet_forward(self, input_tensor)


class ResidualConvBlock(nn.Module):
    """``x + conv2(silu(conv1(x)))``: a ResNet block without normalization (EDSR's), same channels in and out.

    ``forward(x, temb)`` takes (and ignores) ``temb`` to be called as diffusers' ``ResnetBlock2D`` is."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        return x + self.conv2(F.silu(self.conv1(x)))


class PixelShuffleVAEDecoder(ModelMixin, ConfigMixin):
    """A structurally compressed decoder: ResNet blocks at low resolution, pixel-shuffle (depth-to-space)
    upsampling, and no attention. Trained from scratch by data distillation against a VAE decoder.

    At small image sizes SD's decoder is bound by per-layer cost, not by its channel widths, so channel pruning
    (``CompressedVAEDecoder``) buys little time; this decoder runs far fewer layers, and most of them at the
    latent resolution. Stage ``i`` runs ``layers_per_block[i]`` ResNet blocks with ``block_out_channels[i]``
    channels at ``2**i`` times the latent resolution (stage 0 at the latent resolution). Between stages a 3x3 conv
    and a 2x pixel shuffle upsample; a final 3x3 conv and pixel shuffle by ``upscale_factor / 2**(stages - 1)``
    give the image. ``decode(latents)`` matches ``AutoencoderKL.decode`` (latents already divided by
    ``scaling_factor``).

    ``block_type``: ``"resnet"``, diffusers' ``ResnetBlock2D`` (GroupNorm, SiLU, conv, twice; run by
    ``plain_resnet_forward``) and a GroupNorm before the last conv; or ``"residual_conv"``,
    ``x + conv(silu(conv(x)))`` with no normalization, as in EDSR's super-resolution blocks (Lim et al., 2017). At 64x64 the norms take about 30% of the decoder's time
    (``python -m benchmarks.decoder_layouts``).
    """

    @register_to_config
    def __init__(
        self,
        latent_channels: int = 4,
        out_channels: int = 3,
        block_out_channels: tuple[int, ...] = (64,),
        layers_per_block: int | tuple[int, ...] = 2,
        upscale_factor: int = 8,
        norm_num_groups: int = 8,
        scaling_factor: float = 0.18215,
        block_type: str = "resnet",
    ):
        super().__init__()
        if block_type not in ("resnet", "residual_conv"):
            raise ValueError(f"block_type must be 'resnet' or 'residual_conv'; got {block_type!r}.")
        channels = tuple(int(c) for c in block_out_channels)
        if not channels:
            raise ValueError("block_out_channels needs at least one stage; got an empty list.")
        layers = (layers_per_block,) * len(channels) if isinstance(layers_per_block, int) else tuple(layers_per_block)
        if len(layers) != len(channels) or any(n < 0 for n in layers):
            raise ValueError(
                f"layers_per_block must be an int >= 0 or one int >= 0 per stage ({len(channels)}); got "
                f"{layers_per_block!r}."
            )
        if any(c < 1 for c in channels):
            raise ValueError(f"block_out_channels must all be >= 1; got {list(channels)}.")
        bad = [c for c in channels if block_type == "resnet" and c % norm_num_groups]
        if bad:
            raise ValueError(f"block_out_channels {list(channels)} must be multiples of norm_num_groups="
                             f"{norm_num_groups}; {bad} are not (block_type 'resnet' uses GroupNorm).")  # fmt: skip
        last = upscale_factor // 2 ** (len(channels) - 1)
        if upscale_factor < 1 or upscale_factor & (upscale_factor - 1) or last < 1:
            raise ValueError(
                f"upscale_factor must be a power of 2 >= 2**(stages - 1) = {2 ** (len(channels) - 1)}; "
                f"got {upscale_factor}."
            )
        self.conv_in = nn.Conv2d(latent_channels, channels[0], 3, padding=1)
        self.upsamplers = nn.ModuleList(
            nn.Conv2d(channels[i], 4 * channels[i + 1], 3, padding=1) for i in range(len(channels) - 1)
        )  # conv to 4x the next stage's channels, then a 2x pixel shuffle

        def block(c):
            if block_type == "residual_conv":
                return ResidualConvBlock(c)
            return PlainResnetBlock2D(in_channels=c, out_channels=c, temb_channels=None, groups=norm_num_groups,
                                      eps=1e-6)  # fmt: skip

        self.stages = nn.ModuleList(nn.ModuleList(block(c) for _ in range(n)) for c, n in zip(channels, layers))
        self.norm_out = nn.GroupNorm(norm_num_groups, channels[-1], eps=1e-6) if block_type == "resnet" else None
        self.conv_out = nn.Conv2d(channels[-1], out_channels * last * last, 3, padding=1)
        self.last_shuffle = last
        self.stage_layers = layers  # ResNet blocks per stage

    @classmethod
    def from_vae(
        cls,
        vae,
        block_out_channels,
        layers_per_block: int | tuple[int, ...] = 2,
        norm_num_groups: int | None = None,
        block_type: str = "resnet",
    ) -> "PixelShuffleVAEDecoder":
        """A fresh (untrained) decoder for ``vae``'s latents: its latent and image channels, its scale factor
        (``2**(len(block_out_channels) - 1)``), its ``scaling_factor`` and, by default, its GroupNorm groups."""
        cfg = vae.config
        return cls(
            latent_channels=cfg.latent_channels, out_channels=cfg.out_channels,
            block_out_channels=tuple(block_out_channels), layers_per_block=layers_per_block,
            upscale_factor=2 ** (len(cfg.block_out_channels) - 1),
            norm_num_groups=cfg.norm_num_groups if norm_num_groups is None else norm_num_groups,
            scaling_factor=cfg.scaling_factor, block_type=block_type,
        )  # fmt: skip

    @property
    def vae_scale_factor(self) -> int:
        """Image size / latent size."""
        return self.config.upscale_factor

    def decode(self, z: torch.Tensor, return_dict: bool = True, generator=None):
        h = self.conv_in(z)  # (B, C0, h, w)
        for i, blocks in enumerate(self.stages):
            if i:
                h = F.pixel_shuffle(self.upsamplers[i - 1](h), 2)  # (B, Ci, 2**i h, 2**i w)
            for block in blocks:
                h = block(h, None)
        if self.norm_out is not None:
            h = self.norm_out(h)
        h = self.conv_out(F.silu(h))
        dec = F.pixel_shuffle(h, self.last_shuffle)  # (B, 3, H, W)
        if not return_dict:
            return (dec,)
        return DecoderOutput(sample=dec)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.decode(z).sample
