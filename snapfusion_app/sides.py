"""The sides of the comparison: a loaded pipeline each, what the UI calls it, its recommended settings and the
guidance it accepts. The right side has a choice of models (the SnapFusion student, and the one-pass student when
it is loaded)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from pipelines import EfficientUNet2DConditionModel, SnapFusionPipeline
from pipelines.unet_efficient import sd_layout

from .inputs import GUIDANCE_MAX, GUIDANCE_MIN, STEPS_MAX, token_limit

# The right side's models, by the value a visitor (or an API call) picks: the SnapFusion student (8 steps, CFG) by
# default, the one-pass student (a guidance-embedded UNet: one pass per step, the guidance scale as its input).
STUDENT, ONEPASS = "student", "onepass"
RIGHT_ROLES = {STUDENT: "SnapFusion student", ONEPASS: "One-pass student"}


@dataclass
class Side:
    """One side of the comparison: a loaded pipeline, what the UI calls it, its recommended settings."""

    key: str  # "left" | "right"
    role: str  # "Baseline" | "SnapFusion student" | "One-pass student"
    name: str
    source: str
    pipe: SnapFusionPipeline

    @property
    def default_steps(self) -> int:
        return int(self.pipe.config.default_num_inference_steps)

    @property
    def default_guidance(self) -> float:
        """The model's recommended guidance scale (inside ``guidance_range``)."""
        low, high = self.guidance_range
        return min(max(float(self.pipe.config.default_guidance_scale), low), high)

    @property
    def guidance_embedded(self) -> bool:
        """True for a UNet that takes the guidance scale as an input: one UNet pass per step, no CFG batch."""
        return bool(self.pipe.guidance_embedded)

    @property
    def trained_guidance_range(self) -> tuple[float, float] | None:
        """The guidance scales a guidance-embedded model was trained on (``guidance_scale_range`` in its config)."""
        lo_hi = getattr(self.pipe.config, "guidance_scale_range", None) if self.guidance_embedded else None
        return None if lo_hi is None else (float(lo_hi[0]), float(lo_hi[1]))

    @property
    def guidance_range(self) -> tuple[float, float]:
        """The guidance scales the app accepts for this side: the trained range, else [1, 20]."""
        return self.trained_guidance_range or (GUIDANCE_MIN, GUIDANCE_MAX)

    @property
    def guidance_info(self) -> str:
        """What the guidance slider does for this model, in a few words."""
        if not self.guidance_embedded:
            return "≤ 1 turns CFG off"
        trained = self.trained_guidance_range
        return "an input of the UNet" + (f", trained on [{trained[0]:g}, {trained[1]:g}]" if trained else "")

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
    if pipe.guidance_embedded:
        kind += " with the guidance scale as an input (one pass per step)"
    decoder = "compressed decoder" if pipe.vae_decoder is not None else "full VAE decoder"
    return f"{kind}, {decoder}"


def warm_up(pipe: SnapFusionPipeline, guidance_scale: float | None = None) -> None:
    """One 1-step call, so the first visitor's timings do not include one-off start-up costs."""
    pipe("", num_inference_steps=1, guidance_scale=guidance_scale, output_type="np",
         generator=torch.Generator("cpu").manual_seed(0))  # fmt: skip


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
