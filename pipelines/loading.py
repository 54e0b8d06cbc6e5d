"""Load a ``SnapFusionPipeline`` from a local diffusers folder or a Hugging Face Hub id: safetensors only, never
remote code, every failure a ``ModelLoadError`` (a ``ValueError``) whose one-line message says what to pass instead.

The app, the CLIs, export, training and evaluation all load through ``load_pipeline``."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path

from .devices import pick_device
from .pipeline_snapfusion import SnapFusionPipeline

HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
# What a pipeline needs to generate; a decoder is `vae_decoder` or `vae` (SnapFusionPipeline checks that one is there).
PIPELINE_COMPONENTS = ("unet", "text_encoder", "tokenizer", "scheduler")


class ModelLoadError(ValueError):
    """A model path or id that cannot be loaded; the message says what to pass instead."""


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def _listed(path: Path, config: dict, name: str) -> bool:
    entry = config.get(name)
    return bool(entry) and entry[0] is not None and (path / name).is_dir()


def check_model_folder(path: str | Path, required: Iterable[str | tuple[str, ...]] = PIPELINE_COMPONENTS) -> None:
    """Raise ``ModelLoadError`` for a folder that is not a loadable safetensors diffusers pipeline.

    ``required``: the components that must be listed in ``model_index.json`` and present as folders; a tuple means
    "one of these" (``("vae_decoder", "vae")``)."""
    path = Path(path)
    index = path / "model_index.json"
    if not index.is_file():
        raise ModelLoadError(f"{path} is not a diffusers pipeline folder: it has no model_index.json.")
    try:
        config = json.loads(index.read_text())
    except json.JSONDecodeError as e:
        raise ModelLoadError(f"{index} is not valid JSON ({e}).") from None
    if not isinstance(config, dict):
        raise ModelLoadError(f"{index} must hold a JSON object.")
    for need in required:
        options = (need,) if isinstance(need, str) else tuple(need)
        if not any(_listed(path, config, name) for name in options):
            names = " or ".join(f"'{n}'" for n in options)
            raise ModelLoadError(f"{path} has no {names} component (listed in model_index.json, with its folder).")
    for name in ("unet", "text_encoder", "vae", "vae_decoder"):
        folder = path / name
        if not folder.is_dir():
            continue
        files = [f.name for f in folder.iterdir() if f.name.endswith(WEIGHT_SUFFIXES)]
        if files and not any(f.endswith(".safetensors") for f in files):
            raise ModelLoadError(
                f"{folder} holds only pickle weights ({', '.join(sorted(files))}); only safetensors are loaded. "
                "Convert with `pipe.save_pretrained(dir, safe_serialization=True)` on a trusted machine."
            )
        if not files:
            raise ModelLoadError(f"{folder} has no weights (*.safetensors).")


def resolve_model(model: str, required: Iterable[str | tuple[str, ...]] = PIPELINE_COMPONENTS) -> str:
    """The local folder that holds ``model``: the checked folder itself, or the Hub snapshot of an id."""
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(f"{model} is a file; pass a diffusers pipeline folder (with model_index.json).")
        check_model_folder(path, required)
        return str(path)
    if HUB_ID.match(model):
        return _fetch_from_hub(model)
    raise ModelLoadError(
        f"{model!r} is neither an existing folder nor a Hugging Face Hub id of the form 'owner/name'."
    )


def load_pipeline(model: str, device: str | None = None, dtype: str | None = None,
                  required: Iterable[str | tuple[str, ...]] = PIPELINE_COMPONENTS) -> SnapFusionPipeline:  # fmt: skip
    """``model``: a local diffusers folder (ours or a stock SD-1.x one) or a Hub id such as
    ``stable-diffusion-v1-5/stable-diffusion-v1-5``. ``device`` / ``dtype`` as in ``pick_device`` (fp32 weights are
    loaded as fp32 also from a folder of fp16 files, e.g. for training). The progress bar is off."""
    try:
        dev, dt = pick_device(device, dtype)
    except ValueError as e:
        raise ModelLoadError(str(e)) from None
    source = resolve_model(model, required)
    try:
        pipe = SnapFusionPipeline.from_pretrained(source, use_safetensors=True, dtype=dt)
    except Exception as e:  # noqa: BLE001 - config, weight and import errors all end here, as one line
        first = (str(e).splitlines() or [""])[0][:200]
        raise ModelLoadError(f"Could not load a pipeline from {model}: {type(e).__name__}: {first}") from None
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(dev)


def _fetch_from_hub(repo_id: str) -> str:
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(
            repo_id,
            allow_patterns=["*.json", "*.txt", "*.safetensors"],
            ignore_patterns=["*.fp16.safetensors", "*.non_ema*", "*ema*"],
            local_files_only=hub_offline(),
        )
    except Exception as e:  # noqa: BLE001 - network, auth and cache errors all end here
        raise ModelLoadError(
            f"Could not get {repo_id!r} from the Hugging Face Hub ({type(e).__name__}"
            f"{', HF_HUB_OFFLINE is set' if hub_offline() else ''}). Download it on a connected machine "
            f"(`hf download {repo_id} --local-dir DIR`) and pass the local folder DIR instead."
        ) from None
