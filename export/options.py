"""Export options and their validation; light (no torch), so the CLI rejects a typo before loading anything."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable

from .errors import ExportError

COMPONENTS = ("text_encoder", "denoiser", "unet", "vae_decoder")
PACKAGE_NAMES = {"text_encoder": "TextEncoder.mlpackage", "denoiser": "Denoiser.mlpackage", "unet": "Unet.mlpackage",
                 "vae_decoder": "VAEDecoder.mlpackage"}  # the names apple's Swift package loads (as .mlmodelc)
PTE_NAMES = {"text_encoder": "TextEncoder.pte", "denoiser": "Denoiser.pte", "unet": "Unet.pte",
             "vae_decoder": "VAEDecoder.pte"}  # fmt: skip
FORMATS = ("coreml", "executorch", "both")
PRECISIONS = ("fp16", "fp32")
PALETTIZE_BITS = ("8", "6", "4")  # Core ML k-means palettization
EXECUTORCH_QUANTIZE = ("int8",)  # ExecuTorch XNNPACK: int8 weights, dynamically quantized activations
QUANTIZE_CHOICES = ("none", *PALETTIZE_BITS, *EXECUTORCH_QUANTIZE)
ATTENTION_VARIANTS = ("original", "split_einsum")
MANIFEST_FORMAT = "snapfusion-export/2"
OLDER_MANIFEST_FORMATS = ("snapfusion-coreml-export/1",)  # recognised as previous exports (for overwrite) only


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


def parse_quantize(quantize) -> int | str | None:
    """"none" / None -> None; "8" / 8, "6", "4" -> palettization bits (Core ML); "int8" -> "int8" (ExecuTorch)."""
    if quantize is None or (isinstance(quantize, str) and quantize.lower() == "none"):
        return None
    if isinstance(quantize, bool) or str(quantize) not in QUANTIZE_CHOICES:
        raise ExportError(f"quantize must be one of {', '.join(QUANTIZE_CHOICES)} (Core ML palettization bits, or "
                          f"int8 for ExecuTorch); got {quantize!r}.")  # fmt: skip
    return str(quantize) if str(quantize) in EXECUTORCH_QUANTIZE else int(quantize)


def parse_format(fmt: str) -> tuple[str, ...]:
    """"coreml" | "executorch" | "both" -> the formats to write, e.g. ("coreml", "executorch")."""
    if fmt not in FORMATS:
        raise ExportError(f"format must be one of {', '.join(FORMATS)}; got {fmt!r}.")
    return ("coreml", "executorch") if fmt == "both" else (fmt,)


def check_options(components, precision: str, quantize, attention: str,
                  fmt: str = "coreml") -> tuple[tuple[str, ...], int | str | None]:  # fmt: skip
    """Validate the model-independent options; returns (components, quantization): palettization bits for Core ML,
    "int8" for ExecuTorch, or None. A quantization or attention variant the chosen runtime cannot run is refused."""
    comps = parse_components(components)
    formats = parse_format(fmt)
    if precision not in PRECISIONS:
        raise ExportError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}.")
    quant = parse_quantize(quantize)
    if attention not in ATTENTION_VARIANTS:
        raise ExportError(f"attention must be one of {', '.join(ATTENTION_VARIANTS)}; got {attention!r}.")
    if isinstance(quant, int) and "executorch" in formats:
        raise ExportError(f"quantize {quant} is Core ML k-means palettization, which ExecuTorch cannot run; for "
                          "ExecuTorch use quantize int8 (or none), or export Core ML alone.")  # fmt: skip
    if isinstance(quant, str) and "coreml" in formats:
        raise ExportError(f"quantize {quant} is ExecuTorch's XNNPACK int8 scheme, which Core ML cannot run; for "
                          f"Core ML use {', '.join(PALETTIZE_BITS)} bits (or none), or export ExecuTorch alone.")
    if attention != "original" and formats == ("executorch",):
        raise ExportError(f"attention {attention} is the Neural Engine layout of Core ML; ExecuTorch exports take "
                          "attention original (with format both it applies to the Core ML packages only).")
    return comps, quant


def is_export_folder(path: str) -> bool:
    """True if ``path`` holds a manifest.json written by this package."""
    try:
        with open(os.path.join(path, "manifest.json")) as f:
            return json.load(f).get("format") in (MANIFEST_FORMAT, *OLDER_MANIFEST_FORMATS)
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
