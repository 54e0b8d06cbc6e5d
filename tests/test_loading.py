"""pipelines/loading.py: load a pipeline from a folder or Hub id; every failure one ModelLoadError line."""

import json
import shutil

import pytest
import torch

from pipelines.loading import ModelLoadError, check_model_folder, load_pipeline, resolve_model
from pipelines.tiny import tiny_pipeline


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny") / "model"
    tiny_pipeline(0, compressed_decoder=True).save_pretrained(folder)
    return folder


def _copy(folder, tmp_path):
    return shutil.copytree(folder, tmp_path / "copy")


def _one_line(e) -> str:
    message = str(e.value)
    assert "\n" not in message and len(message) < 400
    return message


def test_loading_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="neither an existing folder nor a Hugging Face Hub id"):
        load_pipeline(str(tmp_path / "nope" / "deeper"))
    with pytest.raises(ModelLoadError, match="no model_index.json"):
        load_pipeline(str(tmp_path))
    (tmp_path / "model_index.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="not valid JSON"):
        load_pipeline(str(tmp_path))
    (tmp_path / "model_index.json").write_text("[1, 2]")
    with pytest.raises(ModelLoadError, match="must hold a JSON object"):
        load_pipeline(str(tmp_path))


def test_a_file_is_not_a_folder(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"")
    with pytest.raises(ModelLoadError, match="is a file; pass a diffusers pipeline folder") as e:
        load_pipeline(str(path))
    _one_line(e)


def test_bin_only_checkpoint_is_refused(tmp_path):
    pipe = tiny_pipeline(0)
    pipe.save_pretrained(tmp_path, safe_serialization=False)
    with pytest.raises(ModelLoadError, match="holds only pickle weights .*diffusion_pytorch_model.bin") as e:
        load_pipeline(str(tmp_path))
    _one_line(e)


def test_missing_component(tiny_folder, tmp_path):
    folder = _copy(tiny_folder, tmp_path)
    shutil.rmtree(folder / "unet")
    with pytest.raises(ModelLoadError, match="has no 'unet' component") as e:
        load_pipeline(str(folder))
    _one_line(e)
    index = json.loads((folder / "model_index.json").read_text())
    del index["unet"]
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match="has no 'unet' component"):
        check_model_folder(folder)


def test_component_folder_without_weights(tiny_folder, tmp_path):
    folder = _copy(tiny_folder, tmp_path)
    for f in (folder / "text_encoder").glob("*.safetensors"):
        f.unlink()
    with pytest.raises(ModelLoadError, match=r"text_encoder has no weights \(\*.safetensors\)"):
        load_pipeline(str(folder))


def test_a_tuple_means_one_of(tiny_folder, tmp_path):
    """``("vae_decoder", "vae")``: either decoder will do; neither is an error naming both."""
    check_model_folder(tiny_folder, required=["unet", ("vae_decoder", "vae")])
    folder = _copy(tiny_folder, tmp_path)
    shutil.rmtree(folder / "vae_decoder")
    check_model_folder(folder, required=[("vae_decoder", "vae")])  # the vae is left
    shutil.rmtree(folder / "vae")
    with pytest.raises(ModelLoadError, match="has no 'vae_decoder' or 'vae' component") as e:
        check_model_folder(folder, required=[("vae_decoder", "vae")])
    _one_line(e)
    check_model_folder(folder, required=["unet"])


def test_offline_hub_id_says_how_to_pass_a_folder(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE is set.*pass the local folder DIR instead") as e:
        load_pipeline("someone/not-cached-model")
    assert "hf download someone/not-cached-model" in _one_line(e)


def test_a_good_folder_loads_with_the_dtype_asked(tiny_folder):
    assert resolve_model(str(tiny_folder)) == str(tiny_folder)
    pipe = load_pipeline(str(tiny_folder), device="cpu")
    assert pipe.device == torch.device("cpu") and pipe.unet.dtype == torch.float32
    assert type(pipe.vae_decoder).__name__ == "CompressedVAEDecoder"
    assert pipe._progress_bar_config == {"disable": True}
    half = load_pipeline(str(tiny_folder), device="cpu", dtype="bf16")
    assert {half.unet.dtype, half.text_encoder.dtype, half.vae_decoder.dtype} == {torch.bfloat16}
    ref = tiny_pipeline(0, compressed_decoder=True)
    kwargs = dict(num_inference_steps=2, output_type="np")
    assert (pipe("a red circle", generator=torch.Generator().manual_seed(0), **kwargs).images
            == ref("a red circle", generator=torch.Generator().manual_seed(0), **kwargs).images).all()  # fmt: skip


def test_device_and_dtype_errors_are_load_errors(tiny_folder, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ModelLoadError, match="device 'cuda' is not available on this machine; choose one of cpu"):
        load_pipeline(str(tiny_folder), device="cuda")
    with pytest.raises(ModelLoadError, match="dtype 'fp64' is not supported"):
        load_pipeline(str(tiny_folder), device="cpu", dtype="fp64")
