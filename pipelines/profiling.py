"""Model profiling: parameters, multiply-accumulates (MACs) and the per-stage breakdown of paper Table 3 / Fig. 2.

MACs are counted with forward hooks during one forward pass of a *meta-device copy* of the model (same config,
no weights, no arithmetic), so the shapes are the real ones and counting a full-size SD-v1.5 UNet takes about a
second and no memory (toy models below 20M parameters on the CPU simply run one real forward). One
multiply-accumulate = one multiply + one add (FLOPs ~= 2 x MACs). Counted exactly:

- ``nn.Conv2d``: ``out.numel() * in_channels / groups * kh * kw`` (every output element is a dot product);
- ``nn.Linear``: ``out.numel() * in_features``;
- attention (diffusers ``Attention``, self- and cross-): the two matmuls ``Q K^T`` and ``softmax(.) V``:
  ``B * Lq * Lk * inner_qk + B * Lq * Lk * inner_v`` (heads x head dim = inner dim; ``Lk`` = 77 text tokens
  for cross-attention, ``Lk = Lq = H * W`` for self-attention).

Check: SD-v1.5's UNet at 64 x 64 latents, batch 1, counts 401.6 GMACs, of which 63.0 G are attention matmuls;
without them 338.6 G, in line with the 339 G that BK-SDM (arXiv 2305.15798) reports for SD-v1.4's UNet.

Not counted (element-wise or negligible next to the above): bias adds, normalisation (GroupNorm/LayerNorm),
activations, the softmax itself, attention scaling, residual adds, skip concatenation, nearest-neighbour
up-sampling and the sinusoidal timestep projection.
"""

from __future__ import annotations

import re
from collections import OrderedDict

import torch
from torch import nn

from diffusers.models.attention_processor import Attention

from .latency import _shape_forward  # per-module signatures, the same walk LatencyTable.estimate uses
from .unet_efficient import PAPER_STAGES, EfficientUNet2DConditionModel, stage_level

OTHER = "Other"  # conv_in, time embedding, conv_norm_out, conv_out: not part of any paper stage


def count_params(module: nn.Module) -> int:
    """Number of parameters (shared parameters counted once)."""
    return sum(p.numel() for p in module.parameters())


def count_decoder_params(decoder_or_vae: nn.Module) -> int:
    """Parameters that ``decode(latents)`` uses: an ``AutoencoderKL``'s post-quant conv and decoder (not its
    encoder), or all of a decoder-only module (``CompressedVAEDecoder``, ``PixelShuffleVAEDecoder``)."""
    if not hasattr(decoder_or_vae, "decode"):
        kind = type(decoder_or_vae).__name__
        raise ValueError(f"Expected an AutoencoderKL or a compressed VAE decoder; got {kind}.")
    if not hasattr(decoder_or_vae, "encoder"):
        return count_params(decoder_or_vae)
    pqc = getattr(decoder_or_vae, "post_quant_conv", None)
    return count_params(decoder_or_vae.decoder) + (count_params(pqc) if pqc is not None else 0)


# --------------------------------------------------------------------------------------------- MAC counting


def _module_macs(module: nn.Module, args, kwargs, output) -> int:
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return output.numel() * (module.in_channels // module.groups) * kh * kw
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    if isinstance(module, Attention):
        hidden = args[0] if args else kwargs["hidden_states"]
        context = kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)
        b = hidden.shape[0]
        lq = hidden.shape[2] * hidden.shape[3] if hidden.ndim == 4 else hidden.shape[1]  # (B, C, H, W) or (B, L, C)
        lk = lq if context is None else context.shape[1]
        # Q K^T: (B, heads, Lq, d) x (B, heads, d, Lk); A V: (B, heads, Lq, Lk) x (B, heads, Lk, d_v)
        return b * lq * lk * (module.to_q.out_features + module.to_v.out_features)
    return 0


def _meta_copy(model: nn.Module) -> nn.Module:
    """Same architecture on the meta device (no weights); models without a diffusers config are used as they are."""
    if not hasattr(type(model), "from_config") or not hasattr(model, "config"):
        return model
    with torch.device("meta"):
        copy = type(model).from_config(model.config)
    if isinstance(model, EfficientUNet2DConditionModel):
        copy.skip_blocks = model.skip_blocks  # blocks replaced by identity do not run, so they cost nothing
    return copy.eval()


def _macs_by_module(model: nn.Module, run, meta: bool | None = None) -> list[tuple[str, int]]:
    """(module name, MACs) for every counted call during ``run(model, device)``, in call order.

    ``meta=None``: small CPU models (< 20M params) run as they are, in eval mode (a real forward of a toy model
    takes milliseconds, a meta forward about a second of Python overhead); larger ones on a meta copy."""
    device = next(model.parameters()).device
    if meta is None:
        meta = device.type != "cpu" or count_params(model) >= 20_000_000
    was_training = model.training
    if meta:
        model = _meta_copy(model)
        device = next(model.parameters()).device
    else:
        model.eval()
    records: list[tuple[str, int]] = []
    hooks = []
    for name, mod in model.named_modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear, Attention)):

            def hook(m, args, kwargs, output, name=name):
                records.append((name, _module_macs(m, args, kwargs, output)))

            hooks.append(mod.register_forward_hook(hook, with_kwargs=True))
    threads = torch.get_num_threads()
    try:
        if not meta:
            torch.set_num_threads(1)  # only shapes matter; one thread avoids spin-waits on a busy CPU
        with torch.no_grad():
            run(model, device)
    finally:
        for h in hooks:
            h.remove()
        if not meta:
            torch.set_num_threads(threads)
            model.train(was_training)
    return records


def count_forward_macs(module: nn.Module, *args, **kwargs) -> int:
    """MACs of ``module(*args, **kwargs)`` run as it is (real weights, real inputs, no meta copy)."""
    params = next(module.parameters(), None)
    if params is None:
        raise ValueError(f"{type(module).__name__} has no parameters, so it has no counted layers.")
    return sum(m for _, m in _macs_by_module(module, lambda model, device: model(*args, **kwargs), meta=False))


def _check_latent(unet, height: int, width: int, batch: int, context_len: int) -> None:
    f = 2 ** (_num_stages(unet) - 1)
    for name, v in (("height", height), ("width", width)):
        if isinstance(v, bool) or not isinstance(v, int) or v < f or v % f:
            raise ValueError(f"Latent {name} must be a positive multiple of {f} (the UNet downsamples); got {v!r}.")
    for name, v in (("batch", batch), ("context_len", context_len)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an integer >= 1; got {v!r}.")


def _unet_records(unet, height, width, batch, context_len):
    _check_latent(unet, height, width, batch, context_len)
    cfg = unet.config

    def run(model, device):
        dtype = next(model.parameters()).dtype
        sample = torch.zeros(batch, cfg.in_channels, height, width, device=device, dtype=dtype)  # (B, 4, h, w)
        context = torch.zeros(batch, context_len, cfg.cross_attention_dim, device=device, dtype=dtype)  # (B, L, D)
        extra = {}
        if getattr(cfg, "time_cond_proj_dim", None):  # a guidance-embedded UNet: its w embedding (cond_proj) counts
            extra["timestep_cond"] = torch.zeros(batch, cfg.time_cond_proj_dim, device=device, dtype=dtype)
        model(sample, torch.tensor(500, device=device), encoder_hidden_states=context, **extra)

    return _macs_by_module(unet, run)


def count_macs(unet, height: int, width: int, batch: int = 2, context_len: int = 77) -> int:
    """MACs of one UNet forward at latent size ``height`` x ``width`` (64 x 64 for 512 x 512 images).

    ``batch=2`` is one denoising step with classifier-free guidance. Works for ``EfficientUNet2DConditionModel``
    and diffusers ``UNet2DConditionModel``; see the module docstring for what is counted."""
    return sum(m for _, m in _unet_records(unet, height, width, batch, context_len))


def count_decoder_macs(decoder_or_vae, latent_height: int, latent_width: int, batch: int = 1) -> int:
    """MACs of ``decode(latents)`` (post-quant conv + decoder) of an ``AutoencoderKL`` or ``CompressedVAEDecoder``
    for latents of size ``latent_height`` x ``latent_width`` (64 x 64 for a 512 x 512 image)."""
    if not hasattr(decoder_or_vae, "decode"):
        raise ValueError(f"Expected an AutoencoderKL or CompressedVAEDecoder; got {type(decoder_or_vae).__name__}.")
    for name, v in (("latent_height", latent_height), ("latent_width", latent_width), ("batch", batch)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an integer >= 1; got {v!r}.")
    channels = decoder_or_vae.config.latent_channels

    def run(model, device):
        dtype = next(model.parameters()).dtype
        model.decode(torch.zeros(batch, channels, latent_height, latent_width, device=device, dtype=dtype))

    return sum(m for _, m in _macs_by_module(decoder_or_vae, run))


# --------------------------------------------------------------------------------------------- per-stage views

_EFFICIENT_PREFIX = re.compile(r"^(down_stages|downsamplers|mid_stage|up_stages|upsamplers)(?:\.(\d+))?(?:\.|$)")
_STOCK_PREFIX = re.compile(r"^(down_blocks|mid_block|up_blocks)(?:\.(\d+))?(?:\.|$)")
_STAGE_OF_PREFIX = {"down_stages": "down", "downsamplers": "down", "down_blocks": "down",
                    "up_stages": "up", "upsamplers": "up", "up_blocks": "up"}  # fmt: skip


def _num_stages(unet) -> int:
    channels = getattr(getattr(unet, "config", None), "block_out_channels", None)
    if channels is None or not hasattr(unet, "forward"):
        raise ValueError(
            "Expected an EfficientUNet2DConditionModel or a diffusers UNet2DConditionModel; "
            f"got {type(unet).__name__}."
        )
    return len(channels)


def stage_names(unet) -> list[str]:
    """Stage names in execution order: paper Table 3 names for 4-level UNets, diffusers names otherwise."""
    n = _num_stages(unet)
    raw = [f"down{i}" for i in range(n)] + ["mid"] + [f"up{j}" for j in range(n)]
    names = [PAPER_STAGES[s] if n == 4 else s for s in raw]
    return list(OrderedDict.fromkeys(names))


def _diffusers_stage(unet, module_name: str) -> str | None:
    """Diffusers stage ("down0" .. "mid" .. "up3") of a parameter/module name; None outside the stages.

    A down-sampler belongs to the down stage it ends and an up-sampler to the up stage it ends (diffusers'
    grouping, so a converted stock UNet and the original agree)."""
    pattern = _EFFICIENT_PREFIX if isinstance(unet, EfficientUNet2DConditionModel) else _STOCK_PREFIX
    m = pattern.match(module_name)
    if m is None:
        return None
    if m.group(1) in ("mid_stage", "mid_block"):
        return "mid"
    return f"{_STAGE_OF_PREFIX[m.group(1)]}{m.group(2)}"


def _paper_stage(unet, module_name: str) -> str:
    stage = _diffusers_stage(unet, module_name)
    if stage is None:
        return OTHER
    return PAPER_STAGES[stage] if _num_stages(unet) == 4 else stage


def per_stage_macs(unet, height: int, width: int, batch: int = 2, context_len: int = 77) -> dict[str, int]:
    """MACs of one UNet forward per paper stage (Down-1 .. Up-3, then "Other"); the values sum to ``count_macs``."""
    out = {name: 0 for name in stage_names(unet)}
    out[OTHER] = 0
    for name, macs in _unet_records(unet, height, width, batch, context_len):
        out[_paper_stage(unet, name)] += macs
    return out


def _stock_block_counts(unet) -> dict[str, dict[str, int]]:
    """CA/RB counts per diffusers stage of a stock ``UNet2DConditionModel`` (one Transformer2DModel = one CA)."""
    counts = {}
    blocks = [(f"down{i}", b) for i, b in enumerate(unet.down_blocks)] + [("mid", unet.mid_block)]
    blocks += [(f"up{j}", b) for j, b in enumerate(unet.up_blocks)]
    for stage, block in blocks:
        attentions = getattr(block, "attentions", None) or []
        counts[stage] = {"CA": len(attentions), "RB": len(block.resnets)}
    return counts


def architecture_table(unet) -> list[dict]:
    """One row per paper stage, then "Other": ``{"stage", "resolution", "channels", "CA", "RB", "params"}``.

    ``resolution`` is relative to the image height ``H`` assuming SD's VAE factor 8 (paper Table 3 notation).
    Down-/up-samplers count in the stage they end; "Other" holds conv_in, the time embedding and the output
    head, so the params column sums to ``count_params(unet)``. Works for the efficient UNet (via
    ``unet.architecture()``) and for a stock ``UNet2DConditionModel`` (counted from its blocks)."""
    is_stock = all(hasattr(unet, a) for a in ("down_blocks", "mid_block", "up_blocks", "config"))
    if not isinstance(unet, EfficientUNet2DConditionModel) and not is_stock:
        raise ValueError(
            f"architecture_table needs an EfficientUNet2DConditionModel or a diffusers UNet2DConditionModel; "
            f"got {type(unet).__name__}."
        )
    n = _num_stages(unet)
    names = stage_names(unet)
    if isinstance(unet, EfficientUNet2DConditionModel):
        arch = unet.architecture()
    else:
        arch = {name: {"CA": 0, "RB": 0} for name in names}
        for stage, c in _stock_block_counts(unet).items():
            key = PAPER_STAGES[stage] if n == 4 else stage
            arch[key]["CA"] += c["CA"]
            arch[key]["RB"] += c["RB"]
    params = {name: 0 for name in names}
    params[OTHER] = 0
    for pname, p in unet.named_parameters():
        params[_paper_stage(unet, pname)] += p.numel()
    # the level of a paper stage: that of its first diffusers stage (Mid = the lowest resolution)
    levels = {}
    for stage in [f"down{i}" for i in range(n)] + ["mid"] + [f"up{j}" for j in range(n)]:
        levels.setdefault(PAPER_STAGES[stage] if n == 4 else stage, stage_level(stage, n))
    rows = []
    for name in names:
        level = levels[name]
        rows.append({
            "stage": name, "resolution": f"H/{8 * 2**level}", "channels": int(unet.config.block_out_channels[level]),
            "CA": int(arch[name]["CA"]), "RB": int(arch[name]["RB"]), "params": int(params[name]),
        })  # fmt: skip
    rows.append({"stage": OTHER, "resolution": "-", "channels": None, "CA": 0, "RB": 0, "params": int(params[OTHER])})
    return rows


def per_stage_latency(table, unet: EfficientUNet2DConditionModel, height: int, width: int) -> dict[str, float]:
    """Milliseconds per paper stage (and "Other") of a ``LatencyTable`` measured on ``unet``.

    Blocks are grouped by their stage; down-/up-samplers by the stage they end (as in ``per_stage_macs``);
    conv_in, the time embedding and the output head go to "Other". The sum is the table's estimate of the
    whole forward, which is a sum of isolated per-module timings, not a measured whole-model time."""
    n = _num_stages(unet)
    out = {name: 0.0 for name in stage_names(unet)}
    out[OTHER] = 0.0
    lacking = table.missing(unet, height, width)
    if lacking:
        raise ValueError(f"Latency table lacks {len(lacking)} signatures of this UNet, e.g. {lacking[0]}.")
    for key, bid in _shape_forward(unet, height, width, table.batch):
        ms = table.entries[key]
        if bid is not None:
            stage = bid.stage
        else:
            _, kind, shape = key.split(":")  # "fixed:<module>:<input shape>"
            stage = None
            if kind in ("downsamplers", "upsamplers"):
                size = int(shape.split("x")[2])  # input (B, C, H, W) -> H
                level = (height // size).bit_length() - 1
                stage = f"down{level}" if kind == "downsamplers" else f"up{n - 1 - level}"
        out[OTHER if stage is None else (PAPER_STAGES[stage] if n == 4 else stage)] += ms
    return out


__all__ = [
    "OTHER",
    "architecture_table",
    "count_decoder_macs",
    "count_forward_macs",
    "count_macs",
    "count_params",
    "per_stage_latency",
    "per_stage_macs",
    "stage_names",
]
