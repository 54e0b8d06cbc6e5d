"""snapfusion_app/exports.py: the Export tab through gradio_client (a fake conversion, and a real one of the tiny
student's decoder), its folder store, one size unit, no server path in what a visitor sees."""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path

import pytest

ZIP_BYTES = 3_774_873  # 3.6 MB with MB = 2^20 bytes (what gradio's file box shows); 3.8 with MB = 10^6



class FakeReport:
    """What ``export_pipeline`` returns, with the server paths a real report holds (out_dir, the model's folder)."""

    def __init__(self, kwargs, out_dir, model):
        self.kwargs, self.out_dir, self.model = kwargs, out_dir, model

    def to_markdown(self):
        return (f"Core ML export to `{self.out_dir}`\n\n| component | PSNR |\n|---|---|\n| unet | 48.0 dB |\n\n"
                f"fake export {self.kwargs['quantize']}")  # fmt: skip

    def to_dict(self):
        return {"out_dir": self.out_dir, "source": {"model": self.model, "pipeline": "SnapFusionPipeline"},
                "psnr_db": {"unet": 48.0}, "quantize": self.kwargs["quantize"]}  # fmt: skip


@pytest.fixture
def fake_export(monkeypatch):
    """The export library's API (export_pipeline, zip_export, ExportError, format_size) with a fake conversion."""
    from export.report import format_size
    from snapfusion_app import exports

    class ExportError(ValueError):
        pass

    calls = []

    def export_pipeline(pipe, out_dir, components=("text_encoder", "unet", "vae_decoder"), precision="fp16",
                        quantize="none", attention="original", height=None, width=None, overwrite=False,
                        latency_table=None, progress=None, format="coreml"):  # fmt: skip
        if quantize == "4":
            raise ExportError("4-bit palettization fails the PSNR check (31.2 dB < 35 dB).")
        calls.append({"components": components, "precision": precision, "quantize": quantize, "attention": attention,
                      "format": format})
        os.makedirs(out_dir)
        for i, c in enumerate(components):
            Path(out_dir, f"{c}.mlpackage").write_bytes(b"x" * 1000)
            progress((i + 1) / len(components), f"converted {c}")
        return FakeReport(calls[-1], out_dir, os.path.abspath(pipe.name_or_path))

    def zip_export(out_dir):
        return shutil.make_archive(out_dir, "zip", out_dir)

    monkeypatch.setattr(exports, "export_library", lambda: (export_pipeline, zip_export, ExportError, format_size))
    return calls


def test_export_serves_a_zip_with_the_report_and_keeps_only_the_newest(served, client, fake_export, model_dirs):
    from gradio_client.exceptions import AppError

    store = served[1].snapfusion_exporter.store
    for bits in ("8", "6", "none", "8"):
        path, report, data = client.predict("right", ["vae_decoder", "unet"], "fp16", bits, "split_einsum",
                                            api_name="/export")  # fmt: skip
        assert sorted(zipfile.ZipFile(path).namelist()) == ["unet.mlpackage", "vae_decoder.mlpackage"]
        assert f"fake export {bits}" in report and "MB** zip" in report and "48.0 dB" in report
        assert data["quantize"] == bits and data["model"] == "right" and data["zip_bytes"] > 0
    assert fake_export[-1] == {"components": ("unet", "vae_decoder"), "precision": "fp16", "quantize": "8",
                               "attention": "split_einsum", "format": "coreml"}  # fmt: skip  (pipeline order)
    # ExecuTorch beside Core ML: int8, the Core ML attention choice not applied to it
    path, report, data = client.predict("right", ["unet", "denoiser"], "fp16", "int8", "split_einsum", "executorch",
                                        api_name="/export")  # fmt: skip
    assert fake_export[-1] == {"components": ("denoiser", "unet"), "precision": "fp16", "quantize": "int8",
                               "attention": "original", "format": "executorch"}  # fmt: skip
    assert "→ ExecuTorch (XNNPACK): denoiser, unet, quantization int8." in report
    assert len(store.folders()) == store.keep == 3  # older exports were deleted
    with pytest.raises(AppError, match="Export failed: 4-bit palettization fails the PSNR check"):
        client.predict("left", ["unet"], "fp32", "4", "original", api_name="/export")
    assert len(store.folders()) == 3  # the failed export left nothing behind
    bad_inputs = [
        (("/etc", ["unet"], "fp16", "8", "original"), "model must be one of left, right"),
        (("left", [], "fp16", "8", "original"), "components must be a non-empty list"),
        (("left", ["unet", "safety_checker"], "fp16", "8", "original"), "component must be one of"),
        (("left", ["unet"], "fp16", "3", "original"), "quantization must be one of none, 8, 6, 4, int8"),
        (("left", ["unet"], "fp16", "6", "original", "executorch"), "Core ML k-means palettization, which ExecuTorch"),
        (("left", ["unet"], "fp16", "int8", "original", "coreml"), "which Core ML cannot run"),
        (("left", ["unet"], "fp16", "none", "original", "tflite"), "format must be one of coreml, executorch, both"),
        (("left", ["unet"], "int8", "8", "original"), "precision must be one of fp16, fp32"),
        (("left", ["unet"], "fp16", "8", "flash"), "attention must be one of original, split_einsum"),
    ]
    for bad, match in bad_inputs:
        with pytest.raises(AppError, match=match):
            client.predict(*bad, api_name="/export")


def test_export_report_shows_no_server_path(served, client, fake_export, model_dirs):
    path, report, data = client.predict("right", ["unet"], "fp16", "none", "original", api_name="/export")
    shown = report + json.dumps(data)
    workdir = str(served[1].snapfusion.workdir)
    for server_path in (model_dirs[1], str(Path(model_dirs[1]).resolve()), workdir, str(Path(workdir).resolve())):
        assert server_path not in shown, server_path
    assert data["out_dir"] == "coreml" and "Core ML export to `coreml`" in report
    assert data["source"]["model"] == served[1].snapfusion.sides["right"].name  # "Tiny student (.../student)"


def test_zip_size_in_the_report_uses_the_file_boxs_unit(served, client, fake_export, monkeypatch):
    """gradio's file box divides by 1024 (prettyBytes); the report says the same number, from one size function."""
    from export.report import format_size
    from snapfusion_app import exports

    export_pipeline, _, error, _ = exports.export_library()

    def zip_of_known_size(out_dir):
        zip_path = out_dir + ".zip"
        Path(zip_path).write_bytes(b"\0" * ZIP_BYTES)
        return zip_path

    monkeypatch.setattr(exports, "export_library", lambda: (export_pipeline, zip_of_known_size, error, format_size))
    path, report, data = client.predict("right", ["unet"], "fp16", "none", "original", api_name="/export")
    assert data["zip_bytes"] == ZIP_BYTES == os.path.getsize(path)
    assert "Download: **3.6 MB** zip (MB = 2^20 bytes, as the file box counts)." in report
    assert format_size(ZIP_BYTES) == "3.6 MB" and format_size(3 * 2**20, 2) == "3.00 MB"


def _export_ready() -> bool:
    try:
        from export import export_pipeline  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.skipif(not _export_ready(), reason="export.export_pipeline is not available")
def test_real_core_ml_export_of_the_tiny_student(served, client, model_dirs):
    path, report, data = client.predict(model="right", components=["vae_decoder"], precision="fp32", quantize="none",
                                        attention="original", api_name="/export")  # fmt: skip
    names = zipfile.ZipFile(path).namelist()
    assert "coreml/manifest.json" in names and "coreml/VAEDecoder.mlpackage/Manifest.json" in names, names
    assert "MB** zip" in report and "VAEDecoder.mlpackage" in report and "dB (pass)" in report, report
    shown = report + json.dumps(data)
    assert str(served[1].snapfusion.workdir) not in shown and str(Path(model_dirs[1]).resolve()) not in shown
    assert data["out_dir"] == "coreml" and data["model"] == "right"
    mb = data["components"]["vae_decoder"]["size_mb"]
    assert f" | {mb:,.2f} MB | " in report  # the package size, in the zip's unit


@pytest.mark.slow
@pytest.mark.skipif(not _export_ready(), reason="export.export_pipeline is not available")
def test_real_executorch_export_of_the_tiny_student(served, client, model_dirs):
    path, report, data = client.predict(model="right", components=["vae_decoder"], precision="fp16", quantize="none",
                                        attention="split_einsum", fmt="executorch", api_name="/export")  # fmt: skip
    names = zipfile.ZipFile(path).namelist()
    assert "executorch/manifest.json" in names and "executorch/VAEDecoder.pte" in names, names
    assert "→ ExecuTorch (XNNPACK): vae_decoder" in report and "ExecuTorch runtime vs eager" in report, report
    assert "measured in the ExecuTorch" in report and "threads" in report  # the runtime's readout, labelled
    assert data["out_dir"] == "executorch" and data["formats"] == ["executorch"]
    assert str(served[1].snapfusion.workdir) not in report + json.dumps(data)


def test_the_right_sides_chosen_model_is_exported(served, client, fake_export):
    """right_model="onepass": the one-pass student (the right side's other model) is exported, and said so; the
    default stays the SnapFusion student, for API callers from before; the tab's choices follow the Compare tab's."""
    from gradio_client.exceptions import AppError

    from snapfusion_app.exports import model_choices

    app_ = served[1].snapfusion
    student, onepass = app_.right_models["student"], app_.right_models["onepass"]
    path, report, data = client.predict("right", ["unet"], "fp16", "none", "original", "coreml", "onepass",
                                        api_name="/export")  # fmt: skip
    assert data["source"]["model"] == onepass.name and data["right_model"] == "onepass"
    assert report.startswith(f"**{onepass.label}** (`{onepass.name}`) → Core ML: unet"), report
    path, report, data = client.predict("right", ["unet"], "fp16", "none", "original", api_name="/export")
    assert data["source"]["model"] == student.name and data["right_model"] == "student"
    path, report, data = client.predict("left", ["unet"], "fp16", "none", "original", "coreml", "onepass",
                                        api_name="/export")  # fmt: skip
    assert data["source"]["model"] == app_.sides["left"].name and "right_model" not in data
    with pytest.raises(AppError, match="right model must be one of student, onepass; got 'third'"):
        client.predict("right", ["unet"], "fp16", "none", "original", "coreml", "third", api_name="/export")
    assert model_choices(app_, "onepass")[0] == ("Right: " + onepass.name + " (One-pass student)", "right")
    assert model_choices(app_)[0] == ("Right: " + student.name + " (SnapFusion student)", "right")


@pytest.mark.slow
@pytest.mark.skipif(not _export_ready(), reason="export.export_pipeline is not available")
def test_real_export_of_a_guidance_embedded_one_pass_student(tmp_path):
    """A tiny guidance-embedded pipeline as the right side's one-pass student, exported through the tab's handler:
    its UNet package takes the guidance scale as an input at batch 1 (one pass per step), with the usual readouts."""
    import threading

    from pipelines.tiny import tiny_pipeline
    from snapfusion_app.exports import Exporter
    from snapfusion_app.session import CompareApp
    from snapfusion_app.sides import ONEPASS, RIGHT_ROLES, STUDENT, Side

    onepass = tiny_pipeline(2, time_cond_proj_dim=8)
    onepass.register_to_config(default_num_inference_steps=4, default_guidance_scale=4.5,
                               guidance_scale_range=[1.0, 8.0])  # fmt: skip
    app_ = CompareApp(Side("left", "Baseline", "teacher", "", tiny_pipeline(0, unet="stock")),
                      Side("right", RIGHT_ROLES[STUDENT], "student", "", tiny_pipeline(1)), tmp_path,
                      onepass=Side("right", RIGHT_ROLES[ONEPASS], "onepass", "", onepass))  # fmt: skip
    exporter = Exporter(app_, tmp_path, threading.RLock())
    path, report, data = exporter("right", ["unet"], "fp32", "none", "original", "coreml", "onepass",
                                  progress=lambda *a, **k: None)  # fmt: skip
    assert "coreml/Unet.mlpackage/Manifest.json" in zipfile.ZipFile(path).namelist()
    assert data["right_model"] == "onepass" and data["guidance_embedded"] is True and data["cfg"] is False
    assert data["unet_batch"] == 1 and data["guidance_scale"] == 4.5
    unet = data["components"]["unet"]
    assert [i["name"] for i in unet["inputs"]][-1] == "guidance_scale" and unet["inputs"][0]["shape"][0] == 1
    assert unet["check"]["exported_graph"]["passed"] is True
    assert "(guidance-embedded UNet: one pass per step)" in report and "dB (pass)" in report
    assert report.startswith("**Right · One-pass student** (`onepass`) → Core ML: unet"), report
    assert str(tmp_path) not in report + json.dumps(data)
