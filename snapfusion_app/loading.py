"""Load a SnapFusionPipeline from a local diffusers folder or a Hugging Face Hub id (safetensors only)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch

from pipelines import SnapFusionPipeline

REPO_ROOT = Path(__file__).resolve().parent.parent
BUNDLE_DIR = REPO_ROOT / "bundle"
DEFAULT_TEACHER = str(BUNDLE_DIR / "teacher")
DEFAULT_STUDENT = str(BUNDLE_DIR / "student")

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")


class ModelLoadError(ValueError):
    """A model path or id that cannot be loaded; the message says what to pass instead."""


def pick_device(device: str | None = None, dtype: str | None = None) -> tuple[torch.device, torch.dtype]:
    """CUDA in fp16, else MPS in fp16, else CPU in fp32; ``device`` / ``dtype`` override."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    dev = torch.device(device)
    if dtype is None:
        dt = torch.float32 if dev.type == "cpu" else torch.float16
    else:
        table = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
                 "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}  # fmt: skip
        if dtype not in table:
            raise ValueError(f"dtype {dtype!r} is not supported; choose one of fp32, fp16, bf16.")
        dt = table[dtype]
    return dev, dt


def check_model_folder(path: Path) -> None:
    """Raise ``ModelLoadError`` for a folder that is not a loadable safetensors diffusers pipeline."""
    index = path / "model_index.json"
    if not index.is_file():
        raise ModelLoadError(f"{path} is not a diffusers pipeline folder: it has no model_index.json.")
    try:
        config = json.loads(index.read_text())
    except json.JSONDecodeError as e:
        raise ModelLoadError(f"{index} is not valid JSON ({e}).") from None
    if not isinstance(config, dict):
        raise ModelLoadError(f"{index} must hold a JSON object.")
    for name in ("unet", "text_encoder", "tokenizer", "scheduler"):
        entry = config.get(name)
        if not entry or entry[0] is None:
            raise ModelLoadError(f"{path} has no '{name}' component in model_index.json.")
        if not (path / name).is_dir():
            raise ModelLoadError(f"{path} lists '{name}' in model_index.json but has no {name}/ folder.")
    for name in ("unet", "text_encoder", "vae", "vae_decoder"):
        folder = path / name
        if not folder.is_dir():
            continue
        files = [f.name for f in folder.iterdir() if f.name.endswith(_WEIGHT_SUFFIXES)]
        if files and not any(f.endswith(".safetensors") for f in files):
            raise ModelLoadError(
                f"{folder} holds only pickle weights ({', '.join(sorted(files))}); this app loads safetensors only. "
                "Convert with `pipe.save_pretrained(dir, safe_serialization=True)` on a trusted machine."
            )
        if not files:
            raise ModelLoadError(f"{folder} has no weights (*.safetensors).")


def load_pipeline(model: str, device: str | None = None, dtype: str | None = None) -> SnapFusionPipeline:
    """``model``: a local diffusers folder (ours or a stock SD-1.x one) or a Hub id such as
    ``stable-diffusion-v1-5/stable-diffusion-v1-5``. Safetensors only, never remote code."""
    dev, dt = pick_device(device, dtype)
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(f"{model} is a file; pass a diffusers pipeline folder (with model_index.json).")
        check_model_folder(path)
        source = str(path)
    elif _HUB_ID.match(model):
        source = _fetch_from_hub(model)
    else:
        raise ModelLoadError(
            f"{model!r} is neither an existing folder nor a Hub id of the form 'owner/name'."
        )
    try:
        pipe = SnapFusionPipeline.from_pretrained(source, use_safetensors=True, dtype=dt)
    except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"Could not load a pipeline from {model}: {e}") from e
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(dev)


def _fetch_from_hub(repo_id: str) -> str:
    from huggingface_hub import snapshot_download

    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    try:
        return snapshot_download(
            repo_id,
            allow_patterns=["*.json", "*.txt", "*.safetensors"],
            ignore_patterns=["*.fp16.safetensors", "*.non_ema*", "*ema*"],
            local_files_only=offline,
        )
    except Exception as e:  # network, auth and cache errors all end here
        raise ModelLoadError(
            f"Could not get {repo_id!r} from the Hugging Face Hub ({type(e).__name__}"
            f"{', HF_HUB_OFFLINE is set' if offline else ''}). Download it on a connected machine "
            f"(`huggingface-cli download {repo_id} --local-dir DIR`) and pass the local folder DIR instead."
        ) from None
