"""Export options and their validation; light (no torch), so the CLI rejects a typo before loading anything."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable

from .errors import ExportError

COMPONENTS = ("text_encoder", "unet", "vae_decoder")
PACKAGE_NAMES = {"text_encoder": "TextEncoder.mlpackage", "unet": "Unet.mlpackage",
                 "vae_decoder": "VAEDecoder.mlpackage"}  # the names apple's Swift package loads (as .mlmodelc)
PRECISIONS = ("fp16", "fp32")
QUANTIZE_CHOICES = ("none", "8", "6", "4")
ATTENTION_VARIANTS = ("original", "split_einsum")
MANIFEST_FORMAT = "snapfusion-coreml-export/1"


def parse_components(components: str | Iterable[str]) -> tuple[str, ...]:
    """"unet,vae_decoder" or ("unet", "vae_decoder") -> components in pipeline order."""
    items = [c.strip() for c in components.split(",")] if isinstance(components, str) else list(components)
    if not items or any(not isinstance(c, str) for c in items) or "" in items:
        raise ExportError(f"components must name one or more of {', '.join(COMPONENTS)}; got {components!r}.")
    for c in items:
        if c not in COMPONENTS:
            raise ExportError(f"unknown component {c!r}; choose from {', '.join(COMPONENTS)}.")
    if len(set(items)) != len(items):
        raise ExportError(f"components lists a component twice: {components!r}.")
    return tuple(c for c in COMPONENTS if c in items)


def parse_quantize(quantize) -> int | None:
    """"none" / None -> None; "8" / 8, "6", "4" -> bits."""
    if quantize is None or (isinstance(quantize, str) and quantize.lower() == "none"):
        return None
    if isinstance(quantize, bool) or str(quantize) not in QUANTIZE_CHOICES:
        raise ExportError(f"quantize must be one of {', '.join(QUANTIZE_CHOICES)} (bits); got {quantize!r}.")
    return int(quantize)


def check_options(components, precision: str, quantize, attention: str) -> tuple[tuple[str, ...], int | None]:
    """Validate the model-independent options; returns (components, bits)."""
    comps = parse_components(components)
    if precision not in PRECISIONS:
        raise ExportError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}.")
    bits = parse_quantize(quantize)
    if attention not in ATTENTION_VARIANTS:
        raise ExportError(f"attention must be one of {', '.join(ATTENTION_VARIANTS)}; got {attention!r}.")
    return comps, bits


def is_export_folder(path: str) -> bool:
    """True if ``path`` holds a manifest.json written by this package."""
    try:
        with open(os.path.join(path, "manifest.json")) as f:
            return json.load(f).get("format") == MANIFEST_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def check_out_dir(out_dir, overwrite: bool) -> str:
    """The absolute output path, if writing there is allowed: a new path, an empty folder, or (with ``overwrite``)
    a folder that a previous export wrote. Anything else is refused untouched."""
    if not isinstance(out_dir, (str, os.PathLike)) or not str(out_dir):
        raise ExportError(f"out_dir must be a folder path; got {out_dir!r}.")
    out = os.path.abspath(os.fspath(out_dir))
    if os.path.exists(out):
        if not os.path.isdir(out):
            raise ExportError(f"{out} exists and is not a folder; choose another output path.")
        if os.listdir(out):
            if not overwrite:
                raise ExportError(f"{out} exists and is not empty; pass overwrite=True (--overwrite) to replace it.")
            if not is_export_folder(out):
                raise ExportError(
                    f"{out} is not a previous export (no manifest.json from this tool); refusing to replace it even "
                    "with overwrite. Choose a new or empty folder."
                )
    return out
