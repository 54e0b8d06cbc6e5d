"""export/loading.py: a model folder or Hub id loaded for export, every failure one ExportError line."""

import os
import shutil

import pytest
import torch

from export import ExportError
from export.loading import load_pipeline_for_export, preset_pipeline
from pipelines.tiny import tiny_pipeline


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "efficient"
    tiny_pipeline(0).save_pretrained(path, safe_serialization=True)
    return path


def test_loads_on_the_cpu_in_float32(model_dir):
    pipe = load_pipeline_for_export(str(model_dir), ("unet",))
    assert (pipe.device.type, pipe.unet.dtype) == ("cpu", torch.float32)


@pytest.mark.parametrize("component, remove, message", [
    ("unet", ["unet"], "no 'unet' component"),
    ("vae_decoder", ["vae"], "no 'vae_decoder' or 'vae' component"),
    ("text_encoder", ["tokenizer"], "no 'tokenizer' component"),
])  # fmt: skip
def test_model_folder_without_component(model_dir, tmp_path, component, remove, message):
    folder = tmp_path / "model"
    shutil.copytree(model_dir, folder)
    for name in remove:
        shutil.rmtree(folder / name)
    with pytest.raises(ExportError, match=message):
        load_pipeline_for_export(str(folder), (component,))


def test_hub_id_offline_fails_with_one_clear_message():
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    with pytest.raises(ExportError) as err:
        load_pipeline_for_export("nobody-here/no-such-model")
    msg = str(err.value)
    assert "\n" not in msg and "nobody-here/no-such-model" in msg and "HF_HUB_OFFLINE" in msg


def test_unknown_preset():
    with pytest.raises(ExportError, match="unknown preset 'sd21'; choose one of snapfusion, sd15"):
        preset_pipeline("sd21")
