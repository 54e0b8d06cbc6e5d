"""The two sides of the comparison: a loaded pipeline each, what the UI calls it, its recommended settings."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from pipelines import EfficientUNet2DConditionModel, SnapFusionPipeline
from pipelines.unet_efficient import sd_layout

from .inputs import STEPS_MAX, token_limit


@dataclass
class Side:
    """One side of the comparison: a loaded pipeline, what the UI calls it, its recommended settings."""

    key: str  # "left" | "right"
    role: str  # "Baseline" | "SnapFusion student"
    name: str
    source: str
    pipe: SnapFusionPipeline

    @property
    def default_steps(self) -> int:
        return int(self.pipe.config.default_num_inference_steps)

    @property
    def default_guidance(self) -> float:
        return float(self.pipe.config.default_guidance_scale)

    @property
    def max_steps(self) -> int:
        return min(STEPS_MAX, int(self.pipe.scheduler.config.num_train_timesteps))

    @property
    def token_limit(self) -> int:
        return token_limit(self.pipe.tokenizer)

    @property
    def image_size(self) -> tuple[int, int]:
        size = self.pipe.unet.config.sample_size * self.pipe.vae_scale_factor
        return size, size

    @property
    def label(self) -> str:
        return f"{'Left' if self.key == 'left' else 'Right'} · {self.role}"

    @property
    def arrow(self) -> str:
        return "⬅" if self.key == "left" else "➡"


def describe(pipe: SnapFusionPipeline) -> str:
    """What a pipeline is made of, in words, from its modules (never from its name)."""
    unet = pipe.unet
    if isinstance(unet, EfficientUNet2DConditionModel):
        as_lists = lambda layout: json.loads(json.dumps(layout))  # noqa: E731 - tuples and lists compare equal
        cfg = unet.config
        sd = sd_layout(num_stages=len(cfg.block_out_channels))
        same = as_lists([cfg.down_layout, cfg.mid_layout, cfg.up_layout]) == as_lists(list(sd))
        kind = "UNet with SD-v1.5's block layout" if same else "efficient UNet"
    else:
        kind = f"diffusers {type(unet).__name__}"
    decoder = "compressed decoder" if pipe.vae_decoder is not None else "full VAE decoder"
    return f"{kind}, {decoder}"


def warm_up(pipe: SnapFusionPipeline) -> None:
    """One 1-step call, so the first visitor's timings do not include one-off start-up costs."""
    pipe("", num_inference_steps=1, output_type="np", generator=torch.Generator("cpu").manual_seed(0))


# ---------------------------------------------------------------------------------------------- model cards


def split_front_matter(text: str) -> tuple[str, str]:
    """(YAML front matter, body) of a model card; front matter is empty when there is none."""
    if text.startswith("---\n"):
        end = text.find("\n---", 4)
        if end != -1:
            return text[4:end], text[end + 4 :].lstrip("\n")
    return "", text


def card_title(readme: Path) -> str | None:
    """A model card's title: front matter ``model_name`` or its first ``#`` heading."""
    if not readme.is_file():
        return None
    text = readme.read_text(errors="replace")
    front, _ = split_front_matter(text)
    for line in front.splitlines():
        if line.startswith("model_name:"):
            return line.split(":", 1)[1].strip().strip("'\"") or None
    for line in text.splitlines():
        if line.startswith("# "):
            return line[2:].strip() or None
    return None


def model_display_name(source: str) -> str:
    """What the UI calls a model: its model card's title and its folder (relative to the working directory, or its
    last two parts: never the server's absolute path), or the Hub id as given."""
    path = Path(source).expanduser()
    if not path.is_dir():
        return source
    try:
        rel = str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        rel = "/".join(path.resolve().parts[-2:])
    title = card_title(path / "README.md")
    return f"{title} ({rel})" if title and title != rel else rel


def model_card(side: Side) -> str:
    """The side's model card (README.md without its front matter), for the Model tab."""
    readme = Path(side.source).expanduser() / "README.md"
    if not readme.is_file():
        return f"**{side.label}** `{side.name}`: no model card (README.md) in this model's folder."
    _, body = split_front_matter(readme.read_text(errors="replace"))
    return f"**{side.label}** `{side.name}`\n\n{body}"
