"""export/exporter.py: ``export_pipeline`` on tiny seeded pipelines saved to temp folders -> .mlpackage folders for
apple's Swift package. Two module-scoped exports are shared by most tests (conversion is the slow part):

* ``efficient_export``: efficient UNet pipeline, text encoder + UNet + decoder, fp16, 6-bit palettization, with a
  latency table;
* ``stock_export``: diffusers ``UNet2DConditionModel`` pipeline (compressed decoder), UNet only, fp16, split-einsum
  attention, with a latency table (priced through ``EfficientUNet2DConditionModel.from_unet``).
"""

import json
import os
import shutil
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from export import ExportError, convert, export_pipeline
from export.convert import ComponentReport
from export.exporter import _end_to_end
from export.loading import load_pipeline_for_export
from pipelines import EfficientUNet2DConditionModel
from pipelines.latency import LatencyTable
from pipelines.tiny import tiny_pipeline

ct = convert.import_coremltools()

# Tiny shapes (pipelines/tiny.py): 16x16 latents, VAE factor 2 -> 32x32 images, 16 tokens, 32-d text features.
L, D, LAT, IMG = 16, 32, 16, 32


def _spec(path):
    return ct.models.MLModel(str(path), skip_model_load=True).get_spec()


def _io(features):
    return {f.name: tuple(int(s) for s in f.type.multiArrayType.shape) for f in features}


def _op_types(spec) -> set[str]:
    return {op.type for f in spec.mlProgram.functions.values() for b in f.block_specializations.values()
            for op in b.operations}  # fmt: skip


def _table_for(unet, path):
    eff = unet if isinstance(unet, EfficientUNet2DConditionModel) else EfficientUNet2DConditionModel.from_unet(unet)
    table = LatencyTable.measure(eff, LAT, LAT, batch=2, context_len=L, warmup=0, repeats=1)
    table.save(str(path))
    return table, eff


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    dirs = {}
    for kind, kwargs in (("efficient", {}), ("stock", {"unet": "stock", "compressed_decoder": True})):
        dirs[kind] = str(root / kind)
        tiny_pipeline(0, **kwargs).save_pretrained(dirs[kind], safe_serialization=True)
    return dirs


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread: on a shared 2-core machine, two OpenMP threads competing with other jobs stall each
    other at every barrier and tiny models run 10-100x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def small_pipe():
    return tiny_pipeline(0)


@pytest.fixture(scope="module")
def fast_timing():
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(convert, "LATENCY_BUDGET_S", 0.0)  # 3 timed runs per component, enough for a tiny model
        yield


@pytest.fixture(scope="module")
def efficient_export(model_dirs, tmp_path_factory, fast_timing):
    tmp = tmp_path_factory.mktemp("efficient_export")
    pipe = load_pipeline_for_export(model_dirs["efficient"])
    table, _ = _table_for(pipe.unet, tmp / "table.json")
    calls = []
    out = tmp / "coreml"
    report = export_pipeline(pipe, out, quantize="6", latency_table=str(tmp / "table.json"),
                             progress=lambda f, m: calls.append((f, m)))  # fmt: skip
    return SimpleNamespace(pipe=pipe, report=report, out=out, table=table, progress=calls)


@pytest.fixture(scope="module")
def stock_export(model_dirs, tmp_path_factory, fast_timing):
    tmp = tmp_path_factory.mktemp("stock_export")
    pipe = load_pipeline_for_export(model_dirs["stock"], ("unet",))
    table, eff = _table_for(pipe.unet, tmp / "table.json")
    out = tmp / "coreml"
    report = export_pipeline(pipe, out, components="unet", attention="split_einsum",
                             latency_table=str(tmp / "table.json"))  # fmt: skip
    return SimpleNamespace(pipe=pipe, report=report, out=out, table=table, eff=eff)


# ---------------------------------------------------------------------------------------------- packages


EXPECTED = {
    "TextEncoder.mlpackage": ({"input_ids": (1, L)}, {"last_hidden_state": (1, L, D), "pooled_outputs": (1, D)}),
    "Unet.mlpackage": ({"sample": (2, 4, LAT, LAT), "timestep": (2,), "encoder_hidden_states": (2, D, 1, L)},
                       {"noise_pred": (2, 4, LAT, LAT)}),
    "VAEDecoder.mlpackage": ({"z": (1, 4, LAT, LAT)}, {"image": (1, 3, IMG, IMG)}),
    "Denoiser.mlpackage": ({"latents": (1, 4, LAT, LAT), "step_index": (1,), "text_states": (1, L, D),
                            "uncond_states": (1, L, D), "guidance_scale": (1,)}, {"next_latents": (1, 4, LAT, LAT)}),
}  # fmt: skip


@pytest.mark.slow
def test_efficient_export_packages_have_documented_io(efficient_export):
    out = efficient_export.out
    assert sorted(os.listdir(out)) == sorted([*EXPECTED, "manifest.json", "merges.txt", "vocab.json"])
    for package, (inputs, outputs) in EXPECTED.items():
        spec = _spec(out / package)
        assert spec.WhichOneof("Type") == "mlProgram"
        assert spec.specificationVersion >= 7  # iOS16 / macOS13
        assert _io(spec.description.input) == inputs, package
        assert _io(spec.description.output) == outputs, package
    manifest = json.loads((out / "manifest.json").read_text())
    unet = manifest["components"]["unet"]
    assert [(i["name"], tuple(i["shape"])) for i in unet["inputs"]] == list(EXPECTED["Unet.mlpackage"][0].items())
    assert unet["inputs"][0]["dtype"] in ("float32", "float16")


@pytest.mark.slow
def test_stock_unet_exports_with_split_einsum(stock_export):
    assert sorted(os.listdir(stock_export.out)) == ["Unet.mlpackage", "manifest.json", "merges.txt", "vocab.json"]
    spec = _spec(stock_export.out / "Unet.mlpackage")
    inputs, outputs = EXPECTED["Unet.mlpackage"]
    assert _io(spec.description.input) == inputs
    assert _io(spec.description.output) == outputs
    rep = stock_export.report.components["unet"]
    assert "attention: split_einsum" in rep.notes
    assert stock_export.report.attention == "split_einsum"
    # the pipeline's own UNet got its original processors back
    procs = {type(m.processor).__name__ for m in stock_export.pipe.unet.modules() if hasattr(m, "processor")}
    assert "SplitEinsumAttnProcessor" not in procs


@pytest.mark.slow
def test_numeric_check_ran_and_passed(efficient_export, stock_export):
    reports = [*efficient_export.report.components.values(), *stock_export.report.components.values()]
    assert [r.name for r in reports] == ["text_encoder", "denoiser", "unet", "vae_decoder", "unet"]
    for r in reports:
        check = r.check["exported_graph"]
        assert check["ran"] and check["passed"]
        assert check["psnr_db"] >= convert.MIN_PSNR_DB == 35.0
        if not convert.coreml_runtime_available():
            assert r.check["coreml"]["ran"] is False and "not run" in r.check["coreml"]["reason"]
    summary = json.loads((efficient_export.out / "manifest.json").read_text())["numeric_checks"]
    assert set(summary) == {"text_encoder", "denoiser", "unet", "vae_decoder"}
    assert all(v["exported_graph"]["passed"] for v in summary.values())


@pytest.mark.slow
def test_pixel_shuffle_decoder_exports(tmp_path, fast_timing):
    pipe = tiny_pipeline(0, compressed_decoder="pixel_shuffle")
    report = export_pipeline(pipe, tmp_path / "coreml", components="vae_decoder", precision="fp32")
    r = report.components["vae_decoder"]
    assert r.check["exported_graph"]["passed"] and r.check["exported_graph"]["psnr_db"] >= convert.MIN_PSNR_DB
    assert any("PixelShuffleVAEDecoder" in n for n in r.notes)
    spec = _spec(tmp_path / "coreml" / "VAEDecoder.mlpackage")
    assert _io(spec.description.input) == {"z": (1, 4, LAT, LAT)} and _io(spec.description.output) == {
        "image": (1, 3, IMG, IMG)}  # fmt: skip
    assert "pixel_shuffle" in _op_types(spec) or "depth_to_space" in _op_types(spec)


@pytest.mark.slow
def test_six_bit_export_is_smaller_than_fp16(efficient_export, stock_export):
    unet = efficient_export.report.components["unet"]
    assert unet.size_mb_before_quantization is not None
    # tiny models are mostly program text and tensors under the palettization threshold, so the gain is small here
    assert unet.size_mb < unet.size_mb_before_quantization
    on_disk = convert.package_size_mb(str(efficient_export.out / "Unet.mlpackage"))
    assert unet.size_mb == pytest.approx(on_disk, abs=1e-3)
    assert "constexpr_lut_to_dense" in _op_types(_spec(efficient_export.out / "Unet.mlpackage"))
    # the unquantized fp16 export has plain weights
    assert "constexpr_lut_to_dense" not in _op_types(_spec(stock_export.out / "Unet.mlpackage"))
    assert stock_export.report.components["unet"].size_mb_before_quantization is None
    assert efficient_export.report.quantization["bits"] == 6


@pytest.mark.slow
def test_manifest_records_pipeline_settings(efficient_export):
    pipe, report = efficient_export.pipe, efficient_export.report
    manifest = json.loads((efficient_export.out / "manifest.json").read_text())
    assert manifest["format"] == "snapfusion-export/2" and manifest["formats"] == ["coreml"]
    assert manifest["denoiser"]["num_inference_steps"] == pipe.config.default_num_inference_steps
    assert "out_dir" not in manifest  # the folder can move; paths inside are relative
    assert manifest["num_inference_steps"] == pipe.config.default_num_inference_steps
    assert manifest["guidance_scale"] == pipe.config.default_guidance_scale
    assert manifest["scheduler"]["class"] == type(pipe.scheduler).__name__
    assert manifest["scheduler"]["config"]["prediction_type"] == pipe.scheduler.config.prediction_type
    assert manifest["image"] == {"height": IMG, "width": IMG, "latent_height": LAT, "latent_width": LAT,
                                 "vae_scale_factor": 2, "latent_channels": 4, "scaling_factor": 0.18215}  # fmt: skip
    assert manifest["precision"] == "fp16" and manifest["attention"] == "original"
    assert manifest["components"]["unet"]["package"] == "Unet.mlpackage"
    assert json.loads(json.dumps(report.to_dict())) == report.to_dict()
    fractions = [f for f, _ in efficient_export.progress]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


@pytest.mark.slow
def test_latency_measured_and_estimated_are_labelled(efficient_export):
    report, table = efficient_export.report, efficient_export.table
    unet = report.components["unet"].latency
    assert unet["measured"]["kind"] == "host-pytorch-exported-graph"
    assert "(PyTorch exported graph, not Core ML)" in unet["measured"]["label"]
    assert unet["measured"]["ms"] > 0 and unet["measured"]["runs"] >= 3
    est = unet["estimate"]
    assert est["kind"] == "estimate" and est["label"].startswith("estimate for ")
    assert "not a measurement" in est["label"]
    expected = table.estimate(efficient_export.pipe.unet, LAT, LAT)["total_ms"]
    assert est["ms"] == pytest.approx(expected, rel=1e-3)
    e2e = report.end_to_end  # its arithmetic: test_end_to_end_latency_from_known_components
    assert e2e["measured"]["ms"] > 0 and " x denoiser step " in e2e["measured"]["formula"]  # the denoiser's loop
    assert e2e["estimate"]["label"] == est["label"]
    md = report.to_markdown()
    assert "| unet | Unet.mlpackage |" in md
    estimate_lines = [line for line in md.splitlines() if line.startswith("Estimate")]
    assert estimate_lines
    assert all("not a measurement" in line and "exported graph" not in line for line in estimate_lines)


def _timed(ms: float, estimate_ms: float | None = None) -> ComponentReport:
    latency = {"measured": {"ms": ms, "label": "measured here", "kind": "host-pytorch-exported-graph"}}
    if estimate_ms is not None:
        latency["estimate"] = {"ms": estimate_ms, "label": "estimate for phone"}
    return ComponentReport(name="c", package="C.mlpackage", inputs=[], outputs=[], size_mb=1.0,
                           size_mb_before_quantization=None, check={}, latency=latency, conversion_s=1.0)  # fmt: skip


def test_end_to_end_latency_from_known_components():
    reports = {"text_encoder": _timed(10.0), "unet": _timed(20.0, estimate_ms=12.5), "vae_decoder": _timed(30.0)}
    cfg = _end_to_end(reports, steps=8, cfg=True)
    assert cfg["measured"] == {  # 2 text encoder calls (prompt and negative prompt) + 8 UNet steps + 1 decode
        "ms": 210.0, "label": "measured here", "kind": "host-pytorch-exported-graph",
        "formula": "2 x text encoder 10.0 ms + 8 x UNet 20.0 ms (batch 2, CFG) + decoder 30.0 ms",
    }  # fmt: skip
    assert cfg["estimate"]["ms"] == 100.0 and cfg["estimate"]["label"] == "estimate for phone"
    assert _end_to_end(reports, steps=8, cfg=False)["measured"]["ms"] == 200.0
    unet_only = _end_to_end({"unet": reports["unet"]}, steps=4, cfg=True)
    assert unet_only["measured"] is None and unet_only["estimate"]["ms"] == 50.0
    assert unet_only["measured_note"] == "not computed: text_encoder, vae_decoder not exported"


@pytest.mark.slow
def test_stock_unet_priced_through_from_unet(stock_export):
    est = stock_export.report.components["unet"].latency["estimate"]
    assert "from_unet" in est["note"]
    assert est["ms"] == pytest.approx(stock_export.table.estimate(stock_export.eff, LAT, LAT)["total_ms"], rel=1e-3)
    assert stock_export.report.end_to_end["measured"] is None  # only the UNet was exported


# ---------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("kwargs, message", [
    ({"components": "unet,text"}, "unknown component 'text'"),
    ({"components": ""}, "components must name"),
    ({"components": "unet,unet"}, "twice"),
    ({"precision": "fp8"}, "precision must be one of fp16, fp32; got 'fp8'"),
    ({"quantize": "5"}, "quantize must be one of none, 8, 6, 4"),
    ({"quantize": 3}, "quantize must be one of"),
    ({"attention": "fancy"}, "attention must be one of original, split_einsum; got 'fancy'"),
    ({"height": 40}, "height must be a positive multiple of 16"),
    ({"width": 0}, "width must be a positive multiple of 16"),
    ({"height": 32.0}, "height must be"),
])  # fmt: skip
def test_bad_options_are_refused_before_writing(small_pipe, tmp_path, kwargs, message):
    out = tmp_path / "out"
    with pytest.raises(ExportError, match=message):
        export_pipeline(small_pipe, out, **kwargs)
    assert os.listdir(tmp_path) == []


def test_existing_output_is_not_touched(small_pipe, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    before = os.stat(out / "keep.txt").st_mtime_ns
    with pytest.raises(ExportError, match="exists and is not empty; pass overwrite=True"):
        export_pipeline(small_pipe, out, components="text_encoder")
    with pytest.raises(ExportError, match="not a previous export"):  # overwrite never deletes foreign folders
        export_pipeline(small_pipe, out, components="text_encoder", overwrite=True)
    assert os.listdir(out) == ["keep.txt"] and os.stat(out / "keep.txt").st_mtime_ns == before
    assert sorted(os.listdir(tmp_path)) == ["out"]


class _Skewed(nn.Module):
    """Stands in for a conversion that changed the numbers: outputs scaled by 1.5."""

    input_names = convert.TextEncoderForCoreML.input_names
    output_names = convert.TextEncoderForCoreML.output_names

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, input_ids):
        return tuple(o * 1.5 for o in self.inner(input_ids))


@pytest.mark.slow
def test_failed_numeric_check_keeps_nothing(efficient_export, tmp_path, monkeypatch):
    real = convert._export_program
    monkeypatch.setattr(convert, "_export_program", lambda wrapper, args: real(_Skewed(wrapper), args))
    new = tmp_path / "new"
    with pytest.raises(ExportError, match=r"text_encoder: numeric check failed .* PSNR \d+\.\d dB is below the 35 dB"):
        export_pipeline(efficient_export.pipe, new, components="text_encoder")
    assert os.listdir(tmp_path) == []  # no output folder, no leftover temporary folder
    # replacing a previous export: a failed run leaves the previous one as it was
    old = tmp_path / "old"
    shutil.copytree(efficient_export.out, old)
    listing = sorted(os.listdir(old))
    with pytest.raises(ExportError, match="numeric check failed"):
        export_pipeline(efficient_export.pipe, old, components="text_encoder", overwrite=True)
    assert sorted(os.listdir(old)) == listing and sorted(os.listdir(tmp_path)) == ["old"]


@pytest.mark.slow
def test_latency_table_errors(efficient_export, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(ExportError, match="not a latency table"):
        export_pipeline(efficient_export.pipe, tmp_path / "o", latency_table=str(bad))
    empty = LatencyTable(entries={}, device="phone", source="hand-made")
    with pytest.raises(ExportError, match="has no entry for"):
        export_pipeline(efficient_export.pipe, tmp_path / "o", latency_table=empty)
    with pytest.raises(ExportError, match="prices the UNet"):
        export_pipeline(efficient_export.pipe, tmp_path / "o", components="text_encoder", latency_table=empty)
    assert sorted(os.listdir(tmp_path)) == ["bad.json"]


