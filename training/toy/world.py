"""The toy world: an endless, seeded source of 64x64 captioned scenes that a mini diffusion model can learn.

No image data can be downloaded here, so the mini teacher and student train on this world and are measured on
it (the probe in ``training/toy/probe.py`` stands in for CLIP and Inception). A scene is one or two flat-colored
objects on a flat background, drawn with hard edges (no anti-aliasing, no noise)::

    shapes       circle, square, triangle, diamond, cross, ring
    colors       red, green, blue, yellow, purple, orange, cyan, pink     (objects)
    backgrounds  gray, white, black, brown                                 (never an object color)
    sizes        big (radius 12 px), small (radius 7 px)
    positions    one object: a 3x3 grid (center, top, bottom, left, right, top left, ... bottom right)
    relations    two objects: "left of", "right of", "above", "below"

Captions always name every attribute, in one of several phrasings, e.g.
``"a big red circle in the top left on a gray background"``,
``"gray background with a small blue square left of a big green triangle"``.

Determinism: ``ToyWorld(seed).sample(index)`` depends only on ``(seed, index)`` (numpy ``SeedSequence``).
Split: training uses ``index < HELDOUT_START``; held-out evaluation (probe accuracy, FID reference sets, prompts
of ``training.evaluate``) uses ``index >= HELDOUT_START`` (see ``ToyWorld.heldout``).

Two-object scenes are symmetric in words ("A left of B" is the image of "B right of A"); ``Labels.canonical()``
orders the objects left-to-right / top-to-bottom with relation "left of" / "above", which is what the probe
predicts and what scoring compares.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np
import PIL.Image

IMAGE_SIZE = 64
HELDOUT_START = 1_000_000_000  # indices >= this are held out from training

SHAPES = ("circle", "square", "triangle", "diamond", "cross", "ring")
COLORS = {
    "red": (220, 30, 30),
    "green": (30, 170, 40),
    "blue": (30, 70, 230),
    "yellow": (245, 220, 30),
    "purple": (140, 40, 190),
    "orange": (250, 140, 20),
    "cyan": (30, 210, 220),
    "pink": (250, 130, 200),
}
BACKGROUNDS = {
    "gray": (128, 128, 128),
    "white": (250, 250, 250),
    "black": (15, 15, 15),
    "brown": (100, 60, 30),
}
SIZES = {"big": 12, "small": 7}  # radius in pixels
# Grid centers at 16 / 32 / 48 px keep a big object (radius 12) plus jitter inside the 64 px canvas.
POSITIONS = {
    "top left": (16, 16), "top": (32, 16), "top right": (48, 16),
    "left": (16, 32), "center": (32, 32), "right": (48, 32),
    "bottom left": (16, 48), "bottom": (32, 48), "bottom right": (48, 48),
}  # fmt: skip
RELATIONS = ("left of", "right of", "above", "below")
# Where the first and second named object sit for each relation (the second is the reference object).
_RELATION_POSITIONS = {"left of": ("left", "right"), "right of": ("right", "left"),
                       "above": ("top", "bottom"), "below": ("bottom", "top")}  # fmt: skip
_POSITION_PHRASES = {
    "center": "in the center", "top": "at the top", "bottom": "at the bottom", "left": "on the left",
    "right": "on the right", "top left": "in the top left", "top right": "in the top right",
    "bottom left": "in the bottom left", "bottom right": "in the bottom right",
}  # fmt: skip
SINGLE_PHRASINGS = (
    "a {obj} {pos} on a {bg} background",
    "{bg} background with a {obj} {pos}",
    "a {obj} {pos}, {bg} background",
    "a {obj} on a {bg} background, {pos}",
)
PAIR_PHRASINGS = (
    "a {a} {rel} a {b}, {bg} background",
    "{bg} background with a {a} {rel} a {b}",
    "a {a} {rel} a {b} on a {bg} background",
    "a {a} and a {b}, the first {rel} the second, {bg} background",
)
NUM_PHRASINGS = len(SINGLE_PHRASINGS)
JITTER = {1: (3, 3), 2: (3, 4)}  # max |dx|, |dy| in pixels, by object count (2: along / across the relation)
NONE = "none"  # value of an attribute that does not exist in the scene (second object of a one-object scene)


@dataclass(frozen=True)
class ObjectLabels:
    """One object. ``None`` means "not specified" (only in labels parsed from partial prompts)."""

    shape: str | None = None
    color: str | None = None
    size: str | None = None
    position: str | None = None


@dataclass(frozen=True)
class Labels:
    """A scene: objects in the order the caption names them, relation of the first to the second, background."""

    objects: tuple[ObjectLabels, ...]
    relation: str | None = None  # None for one object (or not specified)
    background: str | None = None
    count: int | None = None

    def canonical(self) -> Labels:
        """Same scene with objects ordered left-to-right / top-to-bottom and relation "left of" / "above"."""
        if self.relation in ("right of", "below") and len(self.objects) == 2:
            flipped = {"right of": "left of", "below": "above"}[self.relation]
            return replace(self, objects=(self.objects[1], self.objects[0]), relation=flipped)
        return self

    def flat(self) -> dict[str, str]:
        """Canonical labels as ``{attribute name: value}`` over ``attribute_names()``; unspecified ones left out.

        Missing objects and the relation of a one-object scene are ``"none"`` when the count is known.
        """
        c = self.canonical()
        out: dict[str, str] = {}
        if c.count is not None:
            out["count"] = str(c.count)
        if c.background is not None:
            out["background"] = c.background
        if c.relation is not None:
            out["relation"] = c.relation
        elif c.count == 1:
            out["relation"] = NONE
        for slot in (1, 2):
            obj = c.objects[slot - 1] if slot <= len(c.objects) else None
            for field in OBJECT_FIELDS:
                if obj is None:
                    if c.count is not None and slot > c.count:
                        out[f"obj{slot}_{field}"] = NONE
                elif getattr(obj, field) is not None:
                    out[f"obj{slot}_{field}"] = getattr(obj, field)
        return out

    @classmethod
    def from_flat(cls, flat: dict[str, str]) -> Labels:
        """Inverse of ``flat`` for complete canonical labels (e.g. a probe prediction)."""
        count = int(flat["count"]) if "count" in flat else None
        objects = []
        for slot in (1, 2):
            values = {f: flat.get(f"obj{slot}_{f}") for f in OBJECT_FIELDS}
            if all(v == NONE for v in values.values()):
                continue
            objects.append(ObjectLabels(**{f: (None if v == NONE else v) for f, v in values.items()}))
        relation = flat.get("relation")
        return cls(tuple(objects), None if relation == NONE else relation, flat.get("background"), count)


OBJECT_FIELDS = ("shape", "color", "size", "position")
ATTRIBUTE_VALUES: dict[str, tuple[str, ...]] = {
    "count": ("1", "2"),
    "background": tuple(BACKGROUNDS),
    "relation": (NONE, "left of", "above"),  # canonical relations only
    **{f"obj{s}_shape": SHAPES + ((NONE,) if s == 2 else ()) for s in (1, 2)},
    **{f"obj{s}_color": tuple(COLORS) + ((NONE,) if s == 2 else ()) for s in (1, 2)},
    **{f"obj{s}_size": tuple(SIZES) + ((NONE,) if s == 2 else ()) for s in (1, 2)},
    **{f"obj{s}_position": tuple(POSITIONS) + ((NONE,) if s == 2 else ()) for s in (1, 2)},
}


def attribute_names() -> list[str]:
    """Names of the attributes the probe predicts.

    count, background, relation, obj{1,2}_{shape,color,size,position}.
    """
    return list(ATTRIBUTE_VALUES)


@dataclass(frozen=True)
class Placement:
    """Where an object was drawn: center (x, y) in pixels and radius."""

    x: int
    y: int
    radius: int


@dataclass(frozen=True)
class ToySample:
    image: PIL.Image.Image
    caption: str
    labels: Labels
    placements: tuple[Placement, ...]
    index: int


# ---------------------------------------------------------------------------------------------- rendering

_YY, _XX = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32)


def shape_mask(shape: str, x: float, y: float, r: float) -> np.ndarray:
    """(64, 64) bool mask of a shape of radius ``r`` centered at (x, y); hard edges, pixel centers sampled."""
    dx, dy = _XX - x, _YY - y
    if shape == "circle":
        return dx * dx + dy * dy < r * r  # strict: no one-pixel nubs at the four extremes
    if shape == "ring":
        d2 = dx * dx + dy * dy
        return (d2 < r * r) & (d2 >= (0.55 * r) ** 2)
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) <= 0.85 * r
    if shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= 1.15 * r
    if shape == "triangle":  # apex up at y - r, base at y + 0.8 r, half-width r at the base
        return (dy <= 0.8 * r) & (dy >= -r) & (np.abs(dx) <= (dy + r) / 1.8)
    if shape == "cross":  # a plus sign, arms of width 2r/3
        arm = r / 3.0
        return ((np.abs(dx) <= arm) & (np.abs(dy) <= r)) | ((np.abs(dy) <= arm) & (np.abs(dx) <= r))
    raise ValueError(f"Unknown shape {shape!r}; allowed: {', '.join(SHAPES)}.")


def _check_complete(labels: Labels) -> None:
    n = len(labels.objects)
    if labels.count not in (1, 2) or n != labels.count:
        raise ValueError(f"Labels need count 1 or 2 matching the objects; got count {labels.count} with {n} objects.")
    if labels.background not in BACKGROUNDS:
        raise ValueError(f"Unknown background {labels.background!r}; allowed: {', '.join(BACKGROUNDS)}.")
    if n == 2 and labels.relation not in RELATIONS:
        raise ValueError(f"Unknown relation {labels.relation!r}; allowed: {', '.join(RELATIONS)}.")
    if n == 1 and labels.relation is not None:
        raise ValueError(f"A one-object scene has no relation; got {labels.relation!r}.")
    for i, obj in enumerate(labels.objects):
        for field, allowed in (("shape", SHAPES), ("color", COLORS), ("size", SIZES), ("position", POSITIONS)):
            if getattr(obj, field) not in allowed:
                raise ValueError(
                    f"Object {i + 1}: unknown {field} {getattr(obj, field)!r}; allowed: {', '.join(allowed)}."
                )
    if n == 2:
        expected = _RELATION_POSITIONS[labels.relation]
        got = tuple(o.position for o in labels.objects)
        if got != expected:
            raise ValueError(f"Relation {labels.relation!r} puts the objects at {expected}; got positions {got}.")


def layout(labels: Labels, seed: int = 0) -> tuple[Placement, ...]:
    """Object centers and radii: the labeled grid position plus a seeded integer jitter."""
    _check_complete(labels)
    rng = np.random.default_rng(seed)
    jx, jy = JITTER[len(labels.objects)]
    out = []
    for obj in labels.objects:
        x, y = POSITIONS[obj.position]
        x += int(rng.integers(-jx, jx + 1))
        y += int(rng.integers(-jy, jy + 1))
        out.append(Placement(x, y, SIZES[obj.size]))
    return tuple(out)


def render_array(labels: Labels, seed: int = 0) -> np.ndarray:
    """(64, 64, 3) uint8 image of a scene; the jitter comes from ``seed``."""
    placements = layout(labels, seed)
    img = np.empty((IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    img[:] = BACKGROUNDS[labels.background]
    for obj, p in zip(labels.objects, placements):
        img[shape_mask(obj.shape, p.x, p.y, p.radius)] = COLORS[obj.color]
    return img


def render(labels: Labels, seed: int = 0) -> PIL.Image.Image:
    """64x64 RGB image of a scene (complete labels); the jitter comes from ``seed``."""
    return PIL.Image.fromarray(render_array(labels, seed), "RGB")


# ---------------------------------------------------------------------------------------------- captions


def _describe(obj: ObjectLabels) -> str:
    return f"{obj.size} {obj.color} {obj.shape}"


def caption(labels: Labels, phrasing: int = 0) -> str:
    """The caption of a scene in phrasing ``phrasing`` (0 .. NUM_PHRASINGS - 1); names every attribute."""
    _check_complete(labels)
    if not 0 <= phrasing < NUM_PHRASINGS:
        raise ValueError(f"phrasing must be in [0, {NUM_PHRASINGS}); got {phrasing}.")
    if labels.count == 1:
        obj = labels.objects[0]
        return SINGLE_PHRASINGS[phrasing].format(obj=_describe(obj), pos=_POSITION_PHRASES[obj.position],
                                                 bg=labels.background)  # fmt: skip
    a, b = labels.objects
    return PAIR_PHRASINGS[phrasing].format(a=_describe(a), b=_describe(b), rel=labels.relation, bg=labels.background)


def _words() -> list[str]:
    words = set()
    for template in SINGLE_PHRASINGS + PAIR_PHRASINGS:
        words.update(re.findall(r"[a-z]+", re.sub(r"\{\w+\}", " ", template)))
    for phrase in list(_POSITION_PHRASES.values()) + list(RELATIONS):
        words.update(phrase.split())
    words.update(SHAPES, COLORS, BACKGROUNDS, SIZES)
    return sorted(words)


def _max_words() -> int:
    obj, rel = "size color shape", "left of"
    single = [t.format(obj=obj, pos="in the top left", bg="gray") for t in SINGLE_PHRASINGS]
    pair = [t.format(a=obj, b=obj, rel=rel, bg="gray") for t in PAIR_PHRASINGS]
    return max(len(_TOKEN.findall(c)) for c in single + pair)


_TOKEN = re.compile(r"[a-z]+")
VOCABULARY: list[str] = _words()  # every word a caption can contain (captions also contain ",")
MAX_CAPTION_WORDS = _max_words()  # 17; a tokenizer with one token per word needs this + 2 commas + BOS/EOS


def parse_caption(text: str) -> Labels:
    """Labels named by a prompt in the toy grammar; attributes it does not name are ``None``.

    Objects are found as ``[size] [color] shape`` groups in order; a relation word between them and a
    position phrase after a lone object are read; a background word (gray/white/black/brown) anywhere
    names the background. ``count`` is the number of shapes named (``None`` if none).
    """
    words = _TOKEN.findall(text.lower())
    objects: list[dict] = []
    pending: dict = {}
    background = relation = None
    i = 0
    while i < len(words):
        w = words[i]
        two = " ".join(words[i : i + 2])
        if w in SIZES:
            pending["size"] = w
        elif w in COLORS:
            pending["color"] = w
        elif w in BACKGROUNDS:
            background = w
        elif w in SHAPES:
            objects.append({**pending, "shape": w})
            pending = {}
        elif two in ("left of", "right of") and objects:
            relation = two
            i += 1
        elif w in ("above", "below") and objects:
            relation = w
        elif w in ("top", "bottom", "left", "right", "center") and objects:
            pos = w
            if w in ("top", "bottom") and i + 1 < len(words) and words[i + 1] in ("left", "right"):
                pos = f"{w} {words[i + 1]}"
                i += 1
            objects[-1].setdefault("position", pos)
        i += 1
    count = len(objects) if objects else None
    if len(objects) == 2 and relation is not None:
        for obj, pos in zip(objects, _RELATION_POSITIONS[relation]):
            obj["position"] = pos
    if len(objects) != 2:
        relation = None
    return Labels(tuple(ObjectLabels(**o) for o in objects[:2]), relation, background, count)


# ---------------------------------------------------------------------------------------------- the world


def random_labels(rng: np.random.Generator) -> Labels:
    """One scene drawn uniformly: count, then per object shape/color/size, then position or relation, background."""
    count = int(rng.integers(1, 3))

    def pick(options):
        options = list(options)
        return options[int(rng.integers(len(options)))]

    background = pick(BACKGROUNDS)
    if count == 1:
        obj = ObjectLabels(pick(SHAPES), pick(COLORS), pick(SIZES), pick(POSITIONS))
        return Labels((obj,), None, background, 1)
    relation = pick(RELATIONS)
    objs = tuple(ObjectLabels(pick(SHAPES), pick(COLORS), pick(SIZES), pos) for pos in _RELATION_POSITIONS[relation])
    return Labels(objs, relation, background, 2)


class ToyWorld:
    """Deterministic, endless source of captioned scenes: ``sample(index)`` depends only on ``(seed, index)``."""

    def __init__(self, seed: int = 0):
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be an integer >= 0; got {seed!r}.")
        self.seed = int(seed)

    def sample(self, index: int) -> ToySample:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or index < 0:
            raise ValueError(f"index must be an integer >= 0; got {index!r}.")
        rng = np.random.default_rng([self.seed, int(index)])
        labels = random_labels(rng)
        phrasing = int(rng.integers(NUM_PHRASINGS))
        render_seed = int(rng.integers(2**31))
        return ToySample(render(labels, render_seed), caption(labels, phrasing), labels, layout(labels, render_seed),
                         int(index))  # fmt: skip

    def batch(self, start: int, n: int) -> list[ToySample]:
        return [self.sample(start + i) for i in range(n)]

    def heldout(self, start: int, n: int) -> list[ToySample]:
        """``n`` held-out samples: indices ``HELDOUT_START + start`` onward (never used for training)."""
        return self.batch(HELDOUT_START + start, n)

    def iterate(self, start: int = 0) -> Iterator[ToySample]:
        index = start
        while True:
            yield self.sample(index)
            index += 1

    def __iter__(self) -> Iterator[ToySample]:
        return self.iterate(0)


def validation_prompts() -> list[tuple[str, Labels]]:
    """32 fixed prompts: 16 one-object scenes covering every shape, color, size, position and background,
    16 two-object scenes covering every relation, phrasing, shape, color and background."""
    shapes, colors, sizes, positions, bgs = SHAPES, list(COLORS), list(SIZES), list(POSITIONS), list(BACKGROUNDS)
    out = []
    for i in range(16):  # co-prime strides so the attributes do not move in lockstep
        obj = ObjectLabels(shapes[i % 6], colors[(3 * i) % 8], sizes[(i // 2) % 2], positions[(2 * i) % 9])
        labels = Labels((obj,), None, bgs[(i + i // 4) % 4], 1)
        out.append((caption(labels, i % NUM_PHRASINGS), labels))
    for i in range(16):
        rel = RELATIONS[i % 4]
        pa, pb = _RELATION_POSITIONS[rel]
        a = ObjectLabels(shapes[(i + 1) % 6], colors[(5 * i + 1) % 8], sizes[i % 2], pa)
        b = ObjectLabels(shapes[(5 * i + 3) % 6], colors[(3 * i + 4) % 8], sizes[(i // 2) % 2], pb)
        labels = Labels((a, b), rel, bgs[(i // 4 + 2 * i) % 4], 2)
        out.append((caption(labels, (i // 4) % NUM_PHRASINGS), labels))
    return out


def to_tensor(images):
    """List of PIL images or (N, 64, 64, 3) uint8 array -> (N, 3, 64, 64) float32 torch tensor in [0, 1]."""
    import torch

    if isinstance(images, np.ndarray):
        arr = images
    else:
        arr = np.stack([np.asarray(im.convert("RGB")) for im in images])
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).float().div(255.0)


__all__ = [
    "ATTRIBUTE_VALUES",
    "BACKGROUNDS",
    "COLORS",
    "HELDOUT_START",
    "IMAGE_SIZE",
    "MAX_CAPTION_WORDS",
    "NONE",
    "NUM_PHRASINGS",
    "POSITIONS",
    "RELATIONS",
    "SHAPES",
    "SIZES",
    "VOCABULARY",
    "Labels",
    "ObjectLabels",
    "Placement",
    "ToySample",
    "ToyWorld",
    "attribute_names",
    "caption",
    "layout",
    "parse_caption",
    "random_labels",
    "render",
    "render_array",
    "shape_mask",
    "to_tensor",
    "validation_prompts",
]  # fmt: skip
