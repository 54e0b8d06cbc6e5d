"""Neural-Engine-friendly attention (apple/ml-stable-diffusion's SPLIT_EINSUM) as a diffusers attention processor.

Apple's ANE-optimised transformers keep activations in a (B, C, 1, S) layout and compute attention one head at a
time with ``einsum``, so that no (B, heads, S, S) tensor with a reshaped head axis is ever formed
(https://machinelearning.apple.com/research/neural-engine-transformers). ``SplitEinsumAttnProcessor`` computes the
same math as diffusers' ``AttnProcessor2_0``, softmax(q k^T * scale) v per head, with exactly that per-head einsum
core. The projections stay ``nn.Linear`` (apple additionally rewrites them as 1x1 convolutions and its layer norms
for the (B, C, 1, S) layout; we do not), so this is the attention part of SPLIT_EINSUM, not the whole rewrite.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from diffusers.models.attention_processor import Attention

from .options import ATTENTION_VARIANTS


def split_einsum_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
                           scale: float) -> torch.Tensor:  # fmt: skip
    """Per-head einsum attention in apple's (B, C, 1, S) layout.

    q: (B, C, 1, Sq); k, v: (B, C, 1, Sk), C = heads * d. Returns (B, C, 1, Sq).
    """
    dim_head = q.shape[1] // heads
    k = k.transpose(1, 3)  # (B, Sk, 1, C)
    out = []
    for h in range(heads):
        sl = slice(h * dim_head, (h + 1) * dim_head)
        qh, kh, vh = q[:, sl], k[..., sl], v[:, sl]  # (B, d, 1, Sq), (B, Sk, 1, d), (B, d, 1, Sk)
        w = torch.einsum("bchq,bkhc->bkhq", qh, kh) * scale  # (B, Sk, 1, Sq): scores q.k / sqrt(d)
        w = w.softmax(dim=1)  # normalise over the keys
        out.append(torch.einsum("bkhq,bchk->bchq", w, vh))  # (B, d, 1, Sq)
    return torch.cat(out, dim=1)  # (B, C, 1, Sq)


class SplitEinsumAttnProcessor:
    """Drop-in processor for diffusers ``Attention``: same inputs, outputs and math as ``AttnProcessor2_0``."""

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        if attention_mask is not None:
            raise ValueError("split_einsum attention does not support attention masks (SD UNets use none).")
        if attn.norm_q is not None or attn.norm_k is not None:
            raise ValueError("split_einsum attention does not support q/k normalisation (not used by SD-1.x).")
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)  # (B, S, C)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)  # (B, Sq, C)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)  # (B, Sk, C)
        value = attn.to_v(encoder_hidden_states)  # (B, Sk, C)

        # (B, S, C) -> (B, C, 1, S), the layout the per-head einsums work in
        q, k, v = (t.transpose(1, 2).unsqueeze(2) for t in (query, key, value))
        out = split_einsum_attention(q, k, v, attn.heads, attn.scale)  # (B, C, 1, Sq)
        hidden_states = out.squeeze(2).transpose(1, 2).to(query.dtype)  # (B, Sq, C)

        hidden_states = attn.to_out[0](hidden_states)  # linear
        hidden_states = attn.to_out[1](hidden_states)  # dropout
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


@contextlib.contextmanager
def attention_variant(module: nn.Module, variant: str):
    """Within the block every diffusers ``Attention`` in ``module`` uses ``variant``; processors are restored after."""
    if variant not in ATTENTION_VARIANTS:
        raise ValueError(f"attention must be one of {', '.join(ATTENTION_VARIANTS)}; got {variant!r}.")
    saved = [(m, m.processor) for m in module.modules() if isinstance(m, Attention)]
    try:
        if variant == "split_einsum":
            for m, _ in saved:
                m.set_processor(SplitEinsumAttnProcessor())
        yield module
    finally:
        for m, proc in saved:
            m.set_processor(proc)
