"""The efficient UNet: SD-1.x's text-conditioned UNet, described block by block.

Every stage (down, mid, up) is a list of tokens, so that blocks can differ in number per stage:

    "RB"        ResNet block (diffusers ``ResnetBlock2D``)
    "CA"        cross-attention transformer block (diffusers ``Transformer2DModel``)
    "SKIP"      (down stages only) push the current hidden state as a skip connection
    "RB+skipK"  (up stages only) ResNet block that first concatenates skip K of its resolution

Skips are numbered per resolution level in push order: skip 0 of level 0 is the ``conv_in`` output,
skip 0 of level l > 0 is the output of the down-sampler that enters level l, skip k >= 1 is the k-th
"SKIP" of down stage l. Binding each up block to a named skip keeps the wiring stable under block
surgery (removing or duplicating blocks never re-routes another block's skip).

Block surgery follows the paper's robust training (Sec. 3.2): a block may be skipped (identity) or removed
only if it maps its hidden input to an output of the same shape, i.e. every CA block and every RB whose
in- and out-channels agree. A skipped "RB+skipK" ignores its skip. Channel-changing RBs always run.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Iterable, NamedTuple

import torch
from torch import nn

from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.downsampling import Downsample2D
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from diffusers.models.upsampling import Upsample2D
from diffusers.utils import BaseOutput

_UP_RB = re.compile(r"^RB\+skip(\d+)$")

# Paper Table 3 groups diffusers' 4th down block, the mid block and the 1st up block into one "Mid" stage.
PAPER_STAGES = {
    "down0": "Down-1", "down1": "Down-2", "down2": "Down-3",
    "down3": "Mid", "mid": "Mid", "up0": "Mid",
    "up1": "Up-1", "up2": "Up-2", "up3": "Up-3",
}  # fmt: skip


def stage_level(stage: str, num_stages: int) -> int:
    """Resolution level of a stage ("down0".."mid".."up3"): 0 = full latent size, ``num_stages - 1`` = the smallest."""
    if stage == "mid":
        return num_stages - 1
    if stage.startswith("down"):
        return int(stage[4:])
    return num_stages - 1 - int(stage[2:])


class BlockId(NamedTuple):
    """Stable id of a block: stage name ("down0".."mid".."up3"), index among the stage's blocks, kind."""

    stage: str
    index: int
    kind: str  # "RB" or "CA"

    def __str__(self) -> str:
        return f"{self.stage}.{self.index}:{self.kind}"

    @classmethod
    def parse(cls, value: "BlockId | str | tuple") -> "BlockId":
        if isinstance(value, BlockId):
            return value
        if isinstance(value, tuple) and len(value) == 3:
            return cls(str(value[0]), int(value[1]), str(value[2]))
        m = re.fullmatch(r"(down\d+|mid|up\d+)\.(\d+):(RB|CA)", str(value))
        if m is None:
            raise ValueError(f"Block id {value!r} is malformed; expected 'stage.index:kind', e.g. 'up1.3:CA'.")
        return cls(m.group(1), int(m.group(2)), m.group(3))


def _copy_stage(sd: dict, stage_prefix: str, sampler_prefix: str, block, samplers) -> None:
    """Put a diffusers down/up block's weights into ``sd`` under our names: its resnets (each followed by its
    attention, if any) as ``<stage_prefix>.<b>``, its down-/up-sampler as ``<sampler_prefix>``."""
    mods = []
    for r, resnet in enumerate(block.resnets):
        mods.append(resnet)
        if getattr(block, "attentions", None) is not None:
            mods.append(block.attentions[r])
    for b, mod in enumerate(mods):
        for k, v in mod.state_dict().items():
            sd[f"{stage_prefix}.{b}.{k}"] = v
    if samplers is not None:
        for k, v in samplers[0].state_dict().items():
            sd[f"{sampler_prefix}.{k}"] = v


def _moved(model, device, dtype):
    """``model.to(device, dtype)`` only when needed (diffusers warns on every ``.to`` of a fp32 CPU model)."""
    if device != torch.device("cpu") or dtype != torch.float32:
        model = model.to(device=device, dtype=dtype)
    return model


@dataclass
class EfficientUNet2DConditionOutput(BaseOutput):
    sample: torch.Tensor


def sd_layout(layers_per_block: int = 2, num_stages: int = 4, attention_stages: int | None = None):
    """Block layout of diffusers' SD-1.x UNet (CrossAttnDown x3 + Down, MidCrossAttn, Up + CrossAttnUp x3)."""
    attention_stages = num_stages - 1 if attention_stages is None else attention_stages
    down, up = [], []
    for i in range(num_stages):
        unit = ["RB", "CA", "SKIP"] if i < attention_stages else ["RB", "SKIP"]
        down.append(unit * layers_per_block)
    for j in range(num_stages):
        level = num_stages - 1 - j
        has_ca = level < attention_stages
        stage = []
        for k in range(layers_per_block + 1):
            stage.append(f"RB+skip{layers_per_block - k}")
            if has_ca:
                stage.append("CA")
        up.append(stage)
    return down, ["RB", "CA", "RB"], up


def snapfusion_layout():
    """Our reading of paper Table 3 (see docs/architecture.md for the ambiguous rows)."""
    down = [
        ["RB", "SKIP", "RB", "SKIP"],  # Down-1: CA 2->0, RB 2->2
        ["RB", "CA", "SKIP", "RB", "CA", "SKIP"],  # Down-2: unchanged
        ["RB", "CA", "SKIP", "CA", "SKIP"],  # Down-3: CA 2->2, RB 2->1
        ["RB", "SKIP", "SKIP"],  # Mid (diffusers down_blocks[3]): RB 2->1
    ]
    mid = ["RB", "CA"]  # Mid (diffusers mid_block): RB 2->1, CA 1->1
    up = [
        ["RB+skip2", "RB+skip0"],  # Mid (diffusers up_blocks[0]): RB 3->2  => Mid RB 7->4
        ["RB+skip2", "CA", "CA", "CA", "RB+skip1", "CA", "CA", "CA"],  # Up-1: CA 3->6, RB 3->2
        ["RB+skip2", "CA", "RB+skip1", "CA", "RB+skip0", "CA"],  # Up-2: unchanged
        ["RB+skip2", "RB+skip1", "RB+skip0"],  # Up-3: CA 3->0, RB 3->3
    ]
    return down, mid, up


class EfficientUNet2DConditionModel(ModelMixin, ConfigMixin):
    """Text-conditioned UNet with a per-stage block layout; forward and output match ``UNet2DConditionModel``."""

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        sample_size: int = 64,
        in_channels: int = 4,
        out_channels: int = 4,
        block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280),
        down_layout: list[list[str]] | None = None,
        mid_layout: list[str] | None = None,
        up_layout: list[list[str]] | None = None,
        num_attention_heads: int | tuple[int, ...] = 8,
        transformer_layers_per_block: int = 1,
        cross_attention_dim: int = 768,
        norm_num_groups: int = 32,
        norm_eps: float = 1e-5,
        act_fn: str = "silu",
        flip_sin_to_cos: bool = True,
        freq_shift: int = 0,
        use_linear_projection: bool = False,
        upcast_attention: bool = False,
        dropout: float = 0.0,
        time_cond_proj_dim: int | None = None,
    ):
        super().__init__()
        n = len(block_out_channels)
        if down_layout is None and mid_layout is None and up_layout is None:
            down_layout, mid_layout, up_layout = sd_layout(num_stages=n)
        if down_layout is None or mid_layout is None or up_layout is None:
            raise ValueError("Give all of down_layout, mid_layout and up_layout, or none of them (SD-1.x layout).")
        if len(down_layout) != n or len(up_layout) != n:
            raise ValueError(
                f"down_layout and up_layout need one stage per entry of block_out_channels ({n}); "
                f"got {len(down_layout)} and {len(up_layout)}."
            )
        heads = (num_attention_heads,) * n if isinstance(num_attention_heads, int) else tuple(num_attention_heads)
        if len(heads) != n:
            raise ValueError(f"num_attention_heads has {len(heads)} entries; expected 1 or {n}.")
        self.gradient_checkpointing = False
        self.block_keep_prob = 1.0  # < 1 in training mode: stochastic block skipping (paper Eq. 5)
        self.skip_blocks: frozenset[BlockId] = frozenset()
        self._heads = heads

        c0 = block_out_channels[0]
        temb_dim = c0 * 4
        self.conv_in = nn.Conv2d(in_channels, c0, kernel_size=3, padding=1)
        self.time_proj = Timesteps(c0, flip_sin_to_cos, freq_shift)
        # time_cond_proj_dim (diffusers' name): a guidance-scale embedding added to the timestep's (LCM-style)
        self.time_embedding = TimestepEmbedding(c0, temb_dim, act_fn=act_fn, cond_proj_dim=time_cond_proj_dim)

        # Walk the layout once, tracking channels, to build blocks and the skip bookkeeping.
        self._block_info: dict[BlockId, dict] = {}  # id -> {"in": c_in (hidden), "out": c_out, "skip": k or None}
        skip_channels: list[list[int]] = [[c0]]
        cur = c0
        self.down_stages = nn.ModuleList()
        self.downsamplers = nn.ModuleList()
        for i, tokens in enumerate(down_layout):
            stage = nn.ModuleList()
            for tok in tokens:
                if tok == "SKIP":
                    skip_channels[i].append(cur)
                    continue
                cur = self._add_block(stage, f"down{i}", tok, cur, block_out_channels[i], heads[i], None, temb_dim)
            self.down_stages.append(stage)
            if i < n - 1:
                self.downsamplers.append(
                    Downsample2D(cur, use_conv=True, out_channels=cur, padding=1, name="op")
                )
                skip_channels.append([cur])
        self.mid_stage = nn.ModuleList()
        for tok in mid_layout:
            if tok not in ("RB", "CA"):
                raise ValueError(f"mid_layout token {tok!r} is not allowed; use 'RB' or 'CA'.")
            cur = self._add_block(self.mid_stage, "mid", tok, cur, block_out_channels[-1], heads[-1], None, temb_dim)
        self.up_stages = nn.ModuleList()
        self.upsamplers = nn.ModuleList()
        used: set[tuple[int, int]] = set()
        for j, tokens in enumerate(up_layout):
            level = n - 1 - j
            stage = nn.ModuleList()
            for tok in tokens:
                m = _UP_RB.match(tok)
                skip = None
                if m is not None:
                    skip = int(m.group(1))
                    if skip >= len(skip_channels[level]):
                        raise ValueError(
                            f"up{j} token {tok!r} names skip {skip}, but level {level} has only "
                            f"{len(skip_channels[level])} skips (0..{len(skip_channels[level]) - 1})."
                        )
                    if (level, skip) in used:
                        raise ValueError(f"up{j} token {tok!r}: skip {skip} of level {level} is consumed twice.")
                    used.add((level, skip))
                    tok = "RB"
                elif tok not in ("RB", "CA"):
                    raise ValueError(f"up_layout token {tok!r} is not allowed; use 'RB', 'CA' or 'RB+skipK'.")
                extra = skip_channels[level][skip] if skip is not None else 0
                cur = self._add_block(stage, f"up{j}", tok, cur, block_out_channels[level], heads[level], skip,
                                      temb_dim, extra)  # fmt: skip
            self.up_stages.append(stage)
            if j < n - 1:
                self.upsamplers.append(Upsample2D(cur, use_conv=True, out_channels=cur))
        self._skip_channels = skip_channels

        self.conv_norm_out = nn.GroupNorm(num_channels=cur, num_groups=norm_num_groups, eps=norm_eps)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(cur, out_channels, kernel_size=3, padding=1)

    def _add_block(self, stage, stage_name, tok, cur, width, heads, skip, temb_dim, skip_ch=0) -> int:
        cfg = self.config
        bid = BlockId(stage_name, len(stage), tok)
        if tok == "RB":
            stage.append(
                ResnetBlock2D(
                    in_channels=cur + skip_ch, out_channels=width, temb_channels=temb_dim, eps=cfg.norm_eps,
                    groups=cfg.norm_num_groups, dropout=cfg.dropout, non_linearity=cfg.act_fn,
                )
            )  # fmt: skip
            out = width
        elif tok == "CA":
            if cur % heads:
                raise ValueError(f"{bid}: {cur} channels are not divisible by {heads} attention heads.")
            stage.append(
                Transformer2DModel(
                    heads, cur // heads, in_channels=cur, num_layers=cfg.transformer_layers_per_block,
                    cross_attention_dim=cfg.cross_attention_dim, norm_num_groups=cfg.norm_num_groups,
                    use_linear_projection=cfg.use_linear_projection, upcast_attention=cfg.upcast_attention,
                )
            )  # fmt: skip
            out = cur
        else:
            raise ValueError(f"{stage_name} token {tok!r} is not allowed; use 'RB', 'CA' or 'SKIP'.")
        self._block_info[bid] = {"in": cur, "out": out, "skip": skip}
        return out

    # ------------------------------------------------------------------ presets and conversion

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "EfficientUNet2DConditionModel":
        """Full-size model with random weights: ``sd15`` (SD-v1.5) or ``snapfusion`` (paper Table 3).

        ``overrides`` replace config entries, e.g. ``block_out_channels=(32, 64, 64, 64)`` for a narrow model.
        """
        if name == "sd15":
            down, mid, up = sd_layout()
        elif name == "snapfusion":
            down, mid, up = snapfusion_layout()
        else:
            raise ValueError(f"Unknown preset {name!r}; choose 'sd15' or 'snapfusion'.")
        config = dict(down_layout=down, mid_layout=mid, up_layout=up)
        config.update(overrides)
        return cls(**config)

    @classmethod
    def from_unet(cls, unet) -> "EfficientUNet2DConditionModel":
        """Convert a diffusers ``UNet2DConditionModel`` with SD-1.x topology, weights included."""
        cfg = unet.config
        n = len(cfg.block_out_channels)
        expected_down = ("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",)
        expected_up = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1)
        problems = []
        if tuple(cfg.down_block_types) != expected_down:
            problems.append(f"down_block_types={tuple(cfg.down_block_types)} (expected {expected_down})")
        if tuple(cfg.up_block_types) != expected_up:
            problems.append(f"up_block_types={tuple(cfg.up_block_types)} (expected {expected_up})")
        if cfg.mid_block_type != "UNetMidBlock2DCrossAttn":
            problems.append(f"mid_block_type={cfg.mid_block_type!r}")
        for key in ("class_embed_type", "addition_embed_type", "encoder_hid_dim", "num_class_embeds"):
            if getattr(cfg, key, None) is not None:
                problems.append(f"{key}={getattr(cfg, key)!r}")
        tl = cfg.transformer_layers_per_block
        if not isinstance(tl, int) and len(set(tl)) != 1:
            problems.append(f"transformer_layers_per_block={tl}")
        if cfg.resnet_time_scale_shift != "default" or cfg.dual_cross_attention or cfg.only_cross_attention:
            problems.append("resnet_time_scale_shift/dual_cross_attention/only_cross_attention differ from SD-1.x")
        if problems:
            raise ValueError("from_unet supports SD-1.x topology only; this UNet has " + "; ".join(problems))
        lpb = cfg.layers_per_block if isinstance(cfg.layers_per_block, int) else cfg.layers_per_block[0]
        heads = cfg.num_attention_heads or cfg.attention_head_dim  # SD-1.x stores heads in attention_head_dim
        down, mid, up = sd_layout(layers_per_block=lpb, num_stages=n)
        model = cls(
            sample_size=cfg.sample_size, in_channels=cfg.in_channels, out_channels=cfg.out_channels,
            block_out_channels=tuple(cfg.block_out_channels), down_layout=down, mid_layout=mid, up_layout=up,
            num_attention_heads=heads if isinstance(heads, int) else tuple(heads),
            transformer_layers_per_block=tl if isinstance(tl, int) else tl[0],
            cross_attention_dim=cfg.cross_attention_dim, norm_num_groups=cfg.norm_num_groups,
            norm_eps=cfg.norm_eps, act_fn=cfg.act_fn, flip_sin_to_cos=cfg.flip_sin_to_cos,
            freq_shift=cfg.freq_shift, use_linear_projection=cfg.use_linear_projection,
            upcast_attention=cfg.upcast_attention, dropout=cfg.dropout,
            time_cond_proj_dim=getattr(cfg, "time_cond_proj_dim", None),
        )  # fmt: skip
        src = unet
        sd = {}
        for name in ("conv_in", "time_embedding", "conv_norm_out", "conv_out"):
            for k, v in getattr(src, name).state_dict().items():
                sd[f"{name}.{k}"] = v
        for i, block in enumerate(src.down_blocks):
            _copy_stage(sd, f"down_stages.{i}", f"downsamplers.{i}", block, block.downsamplers)
        mb = src.mid_block
        mid_mods = [mb.resnets[0]]
        for attn, resnet in zip(mb.attentions, mb.resnets[1:]):
            mid_mods += [attn, resnet]
        for b, mod in enumerate(mid_mods):
            for k, v in mod.state_dict().items():
                sd[f"mid_stage.{b}.{k}"] = v
        for j, block in enumerate(src.up_blocks):
            _copy_stage(sd, f"up_stages.{j}", f"upsamplers.{j}", block, block.upsamplers)
        model.load_state_dict(sd, strict=True)
        return _moved(model, unet.device, unet.dtype)

    # ------------------------------------------------------------------ blocks and surgery

    def _stages(self) -> list[tuple[str, nn.ModuleList]]:
        n = len(self.down_stages)
        return (
            [(f"down{i}", self.down_stages[i]) for i in range(n)]
            + [("mid", self.mid_stage)]
            + [(f"up{j}", self.up_stages[j]) for j in range(n)]
        )

    def blocks(self) -> list[BlockId]:
        """All blocks in execution order, with stable ids ``(stage, index, kind)``."""
        return list(self._block_info)

    def get_block(self, block_id) -> nn.Module:
        bid = self._check_id(block_id)
        return dict(self._stages())[bid.stage][bid.index]

    def is_removable(self, block_id) -> bool:
        """True if the block maps its hidden input to the same shape (so identity can stand in for it)."""
        info = self._block_info[self._check_id(block_id)]
        return info["in"] == info["out"]

    def removable_blocks(self) -> list[BlockId]:
        return [b for b in self._block_info if self.is_removable(b)]

    def _check_id(self, block_id) -> BlockId:
        bid = BlockId.parse(block_id)
        if bid not in self._block_info:
            raise ValueError(f"Block {bid} does not exist; blocks are {[str(b) for b in self._block_info]}.")
        return bid

    def _skip_channels_of(self, block_id) -> int:
        """Channels of the skip a block concatenates (0 if none)."""
        bid = self._check_id(block_id)
        skip = self._block_info[bid]["skip"]
        if skip is None:
            return 0
        return self._skip_channels[stage_level(bid.stage, len(self.down_stages))][skip]

    def set_block_keep_prob(self, p: float) -> None:
        """Keep probability of every removable block in training mode (paper Eq. 5); 1.0 disables skipping."""
        if not 0.0 < p <= 1.0:
            raise ValueError(f"block keep probability must be in (0, 1]; got {p}.")
        self.block_keep_prob = float(p)

    def _layout_tokens(self) -> tuple[list[list[str]], list[str], list[list[str]]]:
        c = self.config
        return copy.deepcopy(list(c.down_layout)), list(c.mid_layout), copy.deepcopy(list(c.up_layout))

    @staticmethod
    def _stage_tokens(layouts, stage: str) -> list[str]:
        down, mid, up = layouts
        if stage == "mid":
            return mid
        if stage.startswith("down"):
            return down[int(stage[4:])]
        return up[int(stage[2:])]

    @staticmethod
    def _token_positions(tokens: list[str]) -> list[int]:
        """Positions in the token list of the real blocks (everything but SKIP markers)."""
        return [p for p, t in enumerate(tokens) if t != "SKIP"]

    def _edited(self, edit) -> "EfficientUNet2DConditionModel":
        """New model whose stage layouts are ``edit(stage, tokens, weight_map)`` (a new token list) of the current
        ones; ``edit`` fills ``weight_map`` (new BlockId -> (old BlockId, "copy" | "identity"))."""
        layouts = self._layout_tokens()
        weight_map = {}
        for stage, _ in self._stages():
            tokens = self._stage_tokens(layouts, stage)
            tokens[:] = edit(stage, list(tokens), weight_map)
        return self._rebuild(layouts, weight_map)

    def _rebuild(self, layouts, weight_map) -> "EfficientUNet2DConditionModel":
        """New model with the given layouts; ``weight_map`` maps new BlockId -> (old BlockId or None, mode)."""
        down, mid, up = layouts
        config = dict(self.config)
        config.update(down_layout=down, mid_layout=mid, up_layout=up)
        config = {k: v for k, v in config.items() if not k.startswith("_")}
        new = _moved(type(self)(**config), self.device, self.dtype)
        state = {k: v for k, v in self.state_dict().items() if not k.startswith(("down_stages.", "mid_stage.",
                                                                                   "up_stages."))}  # fmt: skip
        new.load_state_dict(state, strict=False)
        for nbid, (obid, mode) in weight_map.items():
            target = new.get_block(nbid)
            if obid is None:
                continue
            source = self.get_block(obid)
            if mode == "copy":
                target.load_state_dict(source.state_dict())
            elif mode == "identity":  # new plain RB: output-side weights copied, conv2 zeroed => identity at init
                with torch.no_grad():
                    target.conv2.weight.zero_()
                    target.conv2.bias.zero_()
        new.block_keep_prob = self.block_keep_prob
        return new

    def remove_blocks(self, block_ids: Iterable) -> "EfficientUNet2DConditionModel":
        """New model without the given blocks; all remaining weights are carried over."""
        ids = {self._check_id(b) for b in block_ids}
        for bid in ids:
            if not self.is_removable(bid):
                info = self._block_info[bid]
                raise ValueError(
                    f"Block {bid} changes channels ({info['in']} -> {info['out']}) and cannot be removed; "
                    f"removable blocks are those that keep their input's shape."
                )

        def drop(stage, tokens, weight_map):
            new_index = 0
            for idx, pos in enumerate(self._token_positions(tokens)):
                kind = "RB" if tokens[pos].startswith("RB") else "CA"
                if BlockId(stage, idx, kind) in ids:
                    tokens[pos] = None
                    continue
                weight_map[BlockId(stage, new_index, kind)] = (BlockId(stage, idx, kind), "copy")
                new_index += 1
            return [t for t in tokens if t is not None]

        return self._edited(drop)

    def duplicate_blocks(self, block_ids: Iterable) -> "EfficientUNet2DConditionModel":
        """New model with a copy of each given block inserted right after it.

        A block that keeps its input's shape is copied exactly. A channel-changing or skip-consuming RB
        gets a new plain RB (out -> out channels) after it, initialised as identity (zero last conv).
        """
        ids = {self._check_id(b) for b in block_ids}

        def duplicate(stage, tokens, weight_map):
            out_tokens = []
            new_index = 0
            pos_to_idx = {pos: idx for idx, pos in enumerate(self._token_positions(tokens))}
            for pos, tok in enumerate(tokens):
                out_tokens.append(tok)
                if tok == "SKIP":
                    continue
                idx = pos_to_idx[pos]
                kind = "RB" if tok.startswith("RB") else "CA"
                old = BlockId(stage, idx, kind)
                weight_map[BlockId(stage, new_index, kind)] = (old, "copy")
                new_index += 1
                if old in ids:
                    plain = self.is_removable(old) and self._block_info[old]["skip"] is None
                    out_tokens.append(kind)
                    weight_map[BlockId(stage, new_index, kind)] = (old, "copy" if plain else "identity")
                    new_index += 1
            return out_tokens

        return self._edited(duplicate)

    def architecture(self) -> dict[str, dict[str, int]]:
        """CA/RB counts per paper stage (Table 3 grouping): {"Down-1": {"CA": 0, "RB": 2}, ...}."""
        n = len(self.down_stages)
        if n == 4:
            names = PAPER_STAGES
        else:  # no paper grouping: report diffusers stages
            names = {s: s for s, _ in self._stages()}
        table: dict[str, dict[str, int]] = {}
        for stage, _ in self._stages():
            table.setdefault(names[stage], {"CA": 0, "RB": 0})
        for bid in self._block_info:
            table[names[bid.stage]][bid.kind] += 1
        return table

    # ------------------------------------------------------------------ forward

    def _run_block(self, bid, block, h, temb, ehs, skip_set, level_skips=None):
        info = self._block_info[bid]
        removable = info["in"] == info["out"]
        if removable and bid in skip_set:
            return h

        def f(x):
            if bid.kind == "RB":
                if self.gradient_checkpointing and torch.is_grad_enabled():
                    return self._gradient_checkpointing_func(block, x, temb)
                return block(x, temb)
            return block(x, encoder_hidden_states=ehs, return_dict=False)[0]

        x = h
        if info["skip"] is not None:
            x = torch.cat([h, level_skips[info["skip"]]], dim=1)
        out = f(x)
        if removable and self.training and self.block_keep_prob < 1.0:
            # Eq. 5: each block runs with probability p, else identity (per sample, so DDP sees every param).
            keep = torch.rand(h.shape[0], 1, 1, 1, device=h.device) < self.block_keep_prob
            out = torch.where(keep, out, h)
        return out

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        timestep_cond: torch.Tensor | None = None,
        skip_blocks: Iterable | None = None,
        return_dict: bool = True,
        **kwargs,
    ):
        """``sample`` (B, C, H, W) noisy latents; ``encoder_hidden_states`` (B, L, D) text features.

        ``timestep_cond`` (B, time_cond_proj_dim): the guidance-scale embedding of a guidance-embedded UNet
        (``pipelines.guidance.guidance_scale_embedding``); only for a UNet built with ``time_cond_proj_dim``.

        ``skip_blocks``: blocks to replace by identity in this call (on top of ``self.skip_blocks``).
        Extra diffusers keyword arguments (``cross_attention_kwargs``, ...) are accepted and ignored.
        """
        n = len(self.down_stages)
        factor = 2 ** (n - 1)
        if sample.shape[-2] % factor or sample.shape[-1] % factor:
            raise ValueError(
                f"Latent size {tuple(sample.shape[-2:])} must be a multiple of {factor} (the UNet downsamples "
                f"{n - 1} times)."
            )
        skip_set = set(self.skip_blocks)
        if skip_blocks:
            skip_set |= {self._check_id(b) for b in skip_blocks}

        # 1. time embedding
        timesteps = timestep
        if not torch.is_tensor(timesteps):
            timesteps = torch.tensor([timesteps], dtype=torch.float32, device=sample.device)
        elif timesteps.ndim == 0:
            timesteps = timesteps[None].to(sample.device)
        timesteps = timesteps.expand(sample.shape[0])
        if timestep_cond is not None and self.config.time_cond_proj_dim is None:
            raise ValueError("timestep_cond was given, but this UNet has no guidance embedding "
                             "(time_cond_proj_dim is None); call it without timestep_cond.")  # fmt: skip
        if timestep_cond is not None and timestep_cond.shape[-1] != self.config.time_cond_proj_dim:
            raise ValueError(f"timestep_cond has {timestep_cond.shape[-1]} features; this UNet's "
                             f"time_cond_proj_dim is {self.config.time_cond_proj_dim}.")  # fmt: skip
        t_emb = self.time_proj(timesteps).to(dtype=sample.dtype)
        if timestep_cond is not None:
            timestep_cond = timestep_cond.to(dtype=sample.dtype)
        temb = self.time_embedding(t_emb, timestep_cond)  # (B, 4*c0)

        # 2. down stages, pushing skips per resolution level
        h = self.conv_in(sample)
        skips: list[list[torch.Tensor]] = [[h]]
        for i, stage in enumerate(self.down_stages):
            idx = 0
            for tok in self.config.down_layout[i]:
                if tok == "SKIP":
                    skips[i].append(h)
                    continue
                bid = BlockId(f"down{i}", idx, tok)
                h = self._run_block(bid, stage[idx], h, temb, encoder_hidden_states, skip_set)
                idx += 1
            if i < n - 1:
                h = self.downsamplers[i](h)
                skips.append([h])

        # 3. mid stage
        for idx, block in enumerate(self.mid_stage):
            bid = BlockId("mid", idx, self.config.mid_layout[idx])
            h = self._run_block(bid, block, h, temb, encoder_hidden_states, skip_set)

        # 4. up stages, each RB+skipK concatenating skip K of its level
        for j, stage in enumerate(self.up_stages):
            for idx, block in enumerate(stage):
                kind = "RB" if self.config.up_layout[j][idx].startswith("RB") else "CA"
                bid = BlockId(f"up{j}", idx, kind)
                h = self._run_block(bid, block, h, temb, encoder_hidden_states, skip_set, skips[n - 1 - j])
            if j < n - 1:
                h = self.upsamplers[j](h)

        # 5. output
        h = self.conv_out(self.conv_act(self.conv_norm_out(h)))
        if not return_dict:
            return (h,)
        return EfficientUNet2DConditionOutput(sample=h)
