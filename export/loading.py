"""Pipelines to export: a local diffusers folder or Hub id, or a full-size preset with random weights."""

from __future__ import annotations

import json
import os
import re

import torch

from pipelines import CompressedVAEDecoder, EfficientUNet2DConditionModel, SnapFusionPipeline

from .errors import ExportError
from .options import COMPONENTS

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
# The folders each component is loaded from; the decoder comes from `vae_decoder` if present, else `vae`.
_FOLDERS = {"text_encoder": (("text_encoder", "tokenizer"),), "unet": (("unet",),),
            "vae_decoder": (("vae_decoder",), ("vae",))}  # fmt: skip

# Full-size presets for size / conversion-time measurements: random weights, placeholder tokenizer vocabulary.
PRESETS = {
    # paper Table 3 UNet, half-width decoder (paper Sec. 5), 8 steps; CFG 4.5 = the 8-step model's best FID (Fig. 9)
    "snapfusion": {"decoder_channels": (64, 128, 256, 256), "steps": 8, "guidance": 4.5,
                   "prediction_type": "v_prediction"},
    # SD-v1.5: stock layout and decoder widths, 50 steps, CFG 7.5
    "sd15": {"decoder_channels": (128, 256, 512, 512), "steps": 50, "guidance": 7.5, "prediction_type": "epsilon"},
}


def _check_folder(path: str, components) -> None:
    index = os.path.join(path, "model_index.json")
    if not os.path.isfile(index):
        raise ExportError(f"{path} is not a diffusers pipeline folder: it has no model_index.json.")
    try:
        with open(index) as f:
            listed = json.load(f)
    except ValueError as e:
        raise ExportError(f"{index} is not valid JSON ({e}).") from None

    def present(folder: str) -> bool:
        entry = listed.get(folder)
        return bool(entry) and entry[0] is not None and os.path.isdir(os.path.join(path, folder))

    for name in components:
        options = _FOLDERS[name]
        if not any(all(present(f) for f in folders) for folders in options):
            need = " or ".join("+".join(f"{f}/" for f in folders) for folders in options)
            raise ExportError(f"{path} has no '{name}' component to export (needs {need} listed in model_index.json).")


def load_pipeline_for_export(model: str, components=COMPONENTS) -> SnapFusionPipeline:
    """Load ``model`` (a local diffusers folder, or a Hub id passed to ``from_pretrained``) on the CPU in float32,
    safetensors only; every failure is an ``ExportError`` with a one-line message."""
    path = os.path.expanduser(model)
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise ExportError(f"{model} is a file; pass a diffusers pipeline folder (with model_index.json).")
        _check_folder(path, components)
        source, local = path, True
    elif _HUB_ID.match(model):
        source, local = model, False
    else:
        raise ExportError(f"{model!r} is neither an existing folder nor a Hugging Face Hub id ('owner/name').")
    try:
        pipe = SnapFusionPipeline.from_pretrained(source, use_safetensors=True, torch_dtype=torch.float32)
    except Exception as e:  # noqa: BLE001 - hub, network, cache and config errors all end here
        first = (str(e).splitlines() or [""])[0][:200]
        if local:
            raise ExportError(f"Could not load a pipeline from {path}: {type(e).__name__}: {first}") from None
        offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
        raise ExportError(
            f"Could not load {model!r} from the Hugging Face Hub ({type(e).__name__}"
            f"{'; HF_HUB_OFFLINE is set' if offline else ''}). Download it on a connected machine and pass the "
            "local folder instead."
        ) from None
    pipe.set_progress_bar_config(disable=True)
    return pipe


def preset_pipeline(name: str) -> SnapFusionPipeline:
    """A full-size pipeline with random weights: ``EfficientUNet2DConditionModel.from_preset(name)``, an SD-1.5-sized
    CLIP text encoder, a decoder of the preset's widths, SD's DDIM schedule. For measuring conversion time and package
    size only: its outputs are noise and its tokenizer vocabulary is a placeholder."""
    if name not in PRESETS:
        raise ExportError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}.")
    from transformers import CLIPTextConfig, CLIPTextModel

    from pipelines.tiny import TINY_WORDS, tiny_scheduler, tiny_tokenizer

    p = PRESETS[name]
    torch.manual_seed(0)
    unet = EfficientUNet2DConditionModel.from_preset(name).eval()
    tokenizer = tiny_tokenizer(model_max_length=77)
    vocab = len(tokenizer.get_vocab())
    # SD-1.5's text encoder (CLIP ViT-L/14 text tower) shape, with the placeholder vocabulary
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768, bos_token_id=vocab - 2,
        eos_token_id=vocab - 1, pad_token_id=vocab - 1,
    )).eval()  # fmt: skip
    decoder = CompressedVAEDecoder(block_out_channels=p["decoder_channels"], norm_num_groups=32).eval()
    pipe = SnapFusionPipeline(
        vae=None, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=tiny_scheduler(p["prediction_type"]), vae_decoder=decoder,
        default_num_inference_steps=p["steps"], default_guidance_scale=p["guidance"],
    )  # fmt: skip
    pipe.register_to_config(_name_or_path=f"preset:{name} (random weights; {len(TINY_WORDS)}-word placeholder vocab)")
    pipe.set_progress_bar_config(disable=True)
    return pipe
