"""Per-block latency lookup tables (paper Algorithm 1) for the efficient UNet.

A table maps a block *signature* (kind, channels, resolution, batch) to milliseconds, so it prices any
architecture built from the same kinds of blocks: the one it was measured on, and every architecture the
search derives from it by removing or duplicating blocks. Tables are JSON, so a table measured elsewhere
(e.g. on a phone) loads the same way as one measured here:

    {"format": "snapfusion-latency-table/1", "device": "...", "source": "...", "dtype": "float32",
     "batch": 2, "entries": {"RB:in320+0:out320:64x64": 12.3, ...}}

``source`` says where the numbers come from; estimates built from a table say so (never "measured").
"""

from __future__ import annotations

import json
import platform
import statistics
from dataclasses import dataclass, field

import torch

from .timing import time_ms
from .unet_efficient import BlockId, EfficientUNet2DConditionModel, stage_level

FORMAT = "snapfusion-latency-table/1"
# Modules that are not searchable blocks but cost time: priced as "fixed:<name>:<shape>".
_FIXED = ("conv_in", "time_embedding", "downsamplers", "upsamplers", "conv_norm_out", "conv_out")


def host_description() -> str:
    """CPU model / GPU name, core count and torch version, e.g. for a table's ``device`` field."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import os

    desc = f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"
    if torch.cuda.is_available():
        desc += f", GPU {torch.cuda.get_device_name(0)}"
    return desc


def block_signature(unet: EfficientUNet2DConditionModel, bid: BlockId, shape: tuple[int, ...]) -> str:
    """Signature of a block given its hidden input shape (B, C, H, W)."""
    info = unet._block_info[bid]
    b, _, h, w = shape
    if bid.kind == "RB":
        skip = unet._skip_channels_of(bid)
        return f"RB:in{info['in']}+{skip}:out{info['out']}:{h}x{w}:b{b}"
    heads = unet.get_block(bid).config.num_attention_heads
    return f"CA:c{info['in']}:h{heads}:ctx{unet.config.cross_attention_dim}:{h}x{w}:b{b}"


def _collect_inputs(unet, height: int, width: int, batch: int, context_len: int, device, dtype):
    """Run one forward with hooks; return [(signature, module, args, kwargs)] for blocks and fixed modules."""
    if not isinstance(unet, EfficientUNet2DConditionModel):
        raise ValueError(
            f"Latency tables price EfficientUNet2DConditionModel blocks; got {type(unet).__name__}. "
            "Convert a stock SD-1.x UNet with EfficientUNet2DConditionModel.from_unet first."
        )
    f = 2 ** (len(unet.config.block_out_channels) - 1)
    if height % f or width % f:
        raise ValueError(f"Latent size {height}x{width} must be a multiple of {f}.")
    records = []
    hooks = []
    owner = {}
    for bid in unet.blocks():
        owner[id(unet.get_block(bid))] = bid
    named = []
    for name in _FIXED:
        mod = getattr(unet, name)
        if isinstance(mod, torch.nn.ModuleList):
            named += [(f"{name}.{i}", m) for i, m in enumerate(mod)]
        else:
            named.append((name, mod))

    def make_hook(key_fn, module):
        def hook(mod, args, kwargs):
            records.append((key_fn(args, kwargs), module, args, kwargs))

        return hook

    for bid in unet.blocks():
        mod = unet.get_block(bid)

        def key_fn(args, kwargs, bid=bid):
            x = args[0]
            shape = tuple(x.shape)
            if bid.kind == "RB":  # input includes the concatenated skip: report the hidden part
                shape = (shape[0], unet._block_info[bid]["in"], shape[2], shape[3])
            return block_signature(unet, bid, shape)

        hooks.append(mod.register_forward_pre_hook(make_hook(key_fn, mod), with_kwargs=True))
    for name, mod in named:
        def key_fn(args, kwargs, name=name):
            return f"fixed:{name.split('.')[0]}:{'x'.join(str(s) for s in args[0].shape)}"

        hooks.append(mod.register_forward_pre_hook(make_hook(key_fn, mod), with_kwargs=True))
    try:
        sample = torch.randn(batch, unet.config.in_channels, height, width, device=device, dtype=dtype)
        ctx = torch.randn(batch, context_len, unet.config.cross_attention_dim, device=device, dtype=dtype)
        with torch.no_grad():
            unet(sample, torch.tensor(500, device=device), ctx)
    finally:
        for h in hooks:
            h.remove()
    return records


def _time(module, args, kwargs, device, warmup: int, repeats: int) -> float:
    """Median milliseconds of ``module(*args, **kwargs)`` over ``repeats`` calls after ``warmup`` untimed ones."""
    with torch.no_grad():
        for _ in range(warmup):
            module(*args, **kwargs)
        return statistics.median(time_ms(lambda: module(*args, **kwargs), device) for _ in range(repeats))


@dataclass
class LatencyTable:
    entries: dict[str, float]
    device: str
    source: str
    dtype: str = "float32"
    batch: int = 2
    extra: dict = field(default_factory=dict)

    # ---------------------------------------------------------------- measuring

    @classmethod
    def measure(cls, unet: EfficientUNet2DConditionModel, height: int, width: int, batch: int = 2,
                context_len: int = 77, warmup: int = 1, repeats: int = 3,
                existing: "LatencyTable | None" = None) -> "LatencyTable":  # fmt: skip
        """Time every block and fixed module of ``unet`` at latent size ``height`` x ``width`` on its device.

        Signatures already in ``existing`` are not measured again (their values are kept)."""
        device, dtype = unet.device, unet.dtype
        was_training = unet.training
        unet.eval()
        entries = dict(existing.entries) if existing is not None else {}
        try:
            for key, module, args, kwargs in _collect_inputs(unet, height, width, batch, context_len, device, dtype):
                if key not in entries:
                    entries[key] = _time(module, args, kwargs, device, warmup, repeats)
        finally:
            unet.train(was_training)
        return cls(
            entries=entries, device=existing.device if existing else host_description(),
            source=existing.source if existing else f"measured with PyTorch on {device.type}",
            dtype=str(dtype).replace("torch.", ""), batch=batch,
        )  # fmt: skip

    # ---------------------------------------------------------------- pricing

    def missing(self, unet, height: int, width: int, context_len: int = 77) -> list[str]:
        keys = self._keys(unet, height, width, context_len)
        return sorted({k for k, _ in keys if k not in self.entries})

    def _keys(self, unet, height, width, context_len):
        if not isinstance(unet, EfficientUNet2DConditionModel):
            raise ValueError(f"Latency tables price EfficientUNet2DConditionModel blocks; got {type(unet).__name__}.")
        return _shape_forward(unet, height, width, self.batch)

    def estimate(self, unet, height: int, width: int, context_len: int = 77) -> dict:
        """Estimated UNet ms per call: {"total_ms", "blocks_ms": {block id: ms}, "fixed_ms", "source"}.

        Raises ``ValueError`` listing the signatures the table lacks."""
        keys = self._keys(unet, height, width, context_len)
        lacking = sorted({k for k, _ in keys if k not in self.entries})
        if lacking:
            raise ValueError(f"Latency table ({self.source}) has no entry for: {', '.join(lacking[:5])}"
                             + (f" and {len(lacking) - 5} more" if len(lacking) > 5 else ""))  # fmt: skip
        blocks = {str(who): self.entries[k] for k, who in keys if who is not None}
        fixed = sum(self.entries[k] for k, who in keys if who is None)
        return {"total_ms": sum(blocks.values()) + fixed, "blocks_ms": blocks, "fixed_ms": fixed,
                "source": f"estimate from latency table: {self.source} ({self.device})"}  # fmt: skip

    def block_ms(self, unet, height: int, width: int, context_len: int = 77) -> dict[BlockId, float]:
        keys = self._keys(unet, height, width, context_len)
        return {who: self.entries[k] for k, who in keys if who is not None and k in self.entries}

    # ---------------------------------------------------------------- JSON

    def to_dict(self) -> dict:
        return {"format": FORMAT, "device": self.device, "source": self.source, "dtype": self.dtype,
                "batch": self.batch, "entries": self.entries, **self.extra}  # fmt: skip

    def save(self, path: str) -> None:
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=2, sort_keys=True)

    @classmethod
    def load(cls, path: str) -> "LatencyTable":
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"Cannot read latency table {path}: {e}") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"{path} is not a latency table (expected \"format\": \"{FORMAT}\").")
        entries = data.get("entries")
        if not isinstance(entries, dict) or not all(isinstance(v, (int, float)) and v >= 0 for v in entries.values()):
            raise ValueError(f"{path}: 'entries' must map block signatures to non-negative milliseconds.")
        known = {"format", "device", "source", "dtype", "batch", "entries"}
        return cls(
            entries={k: float(v) for k, v in entries.items()}, device=str(data.get("device", "unknown")),
            source=str(data.get("source", path)), dtype=str(data.get("dtype", "float32")),
            batch=int(data.get("batch", 2)), extra={k: v for k, v in data.items() if k not in known},
        )  # fmt: skip


def _shape_forward(unet, height, width, batch) -> list[tuple[str, BlockId | None]]:
    """Signatures of every block / fixed module, computed from the layout without running the model."""
    n = len(unet.config.block_out_channels)
    f = 2 ** (n - 1)
    if height % f or width % f:
        raise ValueError(f"Latent size {height}x{width} must be a multiple of {f}.")
    out: list[tuple[str, BlockId | None]] = []
    c0 = unet.config.block_out_channels[0]
    out.append((f"fixed:conv_in:{batch}x{unet.config.in_channels}x{height}x{width}", None))
    out.append((f"fixed:time_embedding:{batch}x{c0}", None))
    for bid in unet.blocks():
        level = stage_level(bid.stage, n)
        hh, ww = height // 2**level, width // 2**level
        info = unet._block_info[bid]
        out.append((block_signature(unet, bid, (batch, info["in"], hh, ww)), bid))
    for i in range(n - 1):
        c = _stage_out_channels(unet, f"down{i}")
        out.append((f"fixed:downsamplers:{batch}x{c}x{height // 2**i}x{width // 2**i}", None))
    for j in range(n - 1):
        c = _stage_out_channels(unet, f"up{j}")
        level = n - 1 - j
        out.append((f"fixed:upsamplers:{batch}x{c}x{height // 2**level}x{width // 2**level}", None))
    c_last = unet.conv_norm_out.num_channels
    out.append((f"fixed:conv_norm_out:{batch}x{c_last}x{height}x{width}", None))
    out.append((f"fixed:conv_out:{batch}x{c_last}x{height}x{width}", None))
    return out


def _stage_out_channels(unet, stage: str) -> int:
    """Channels leaving a stage (those the sampler after it sees)."""
    if stage.startswith("down"):
        return unet.downsamplers[int(stage[4:])].channels
    return unet.upsamplers[int(stage[2:])].channels
