"""benchmarks/export_sizes.py: export folders (Core ML packages and ExecuTorch files, current and older manifest
formats) read from their manifests; skipped with a note when there are none."""

import json

import pytest

from benchmarks import export_sizes
from export.options import MANIFEST_FORMAT, OLDER_MANIFEST_FORMATS


def _et_component(package, size_mb, seconds, psnr):
    """An ExecuTorch component as ``export.report.ExportReport.to_dict`` writes it (trimmed)."""
    check = {"executorch": {"ran": True, "psnr_db": psnr, "passed": True}}
    return {"name": package, "package": package, "size_mb": size_mb, "size_mb_before_quantization": None,
            "conversion_s": seconds, "check": check}  # fmt: skip


def _v2_manifest(et_components, scheme="none", coreml_components=None):
    return {
        "format": MANIFEST_FORMAT,
        "formats": (["coreml"] if coreml_components else []) + ["executorch"],
        "source": {"model": "bundle/student", "unet": "EfficientUNet2DConditionModel"},
        "precision": "fp16",  # Core ML's compute precision (the ExecuTorch files compute in fp32)
        "quantization": {"bits": None},
        "image": {"height": 64, "width": 64},
        "components": coreml_components or {},
        "executorch": {"runtime": "ExecuTorch", "backend": "XNNPACK", "precision": "fp32",
                       "quantization": {"scheme": scheme}, "components": et_components},  # fmt: skip
    }


def test_summarise_export_reads_the_manifest_and_measures_the_disk(tmp_path):
    (tmp_path / "Unet.mlpackage").mkdir()
    (tmp_path / "Unet.mlpackage" / "w.bin").write_bytes(b"\0" * 1234)
    manifest = {
        "format": OLDER_MANIFEST_FORMATS[0],  # a v1 folder (Core ML only) stays readable
        "source": {"unet": "EfficientUNet2DConditionModel"},
        "precision": "fp16",
        "quantization": {"bits": 6},
        "image": {"height": 64, "width": 48},
        "components": {
            "unet": {"package": "Unet.mlpackage", "size_mb": 2.5, "conversion_s": 10.0,
                     "check": {"exported_graph": {"psnr_db": 60.5}}},
            "text_encoder": {"package": "TextEncoder.mlpackage", "size_mb": 1.25, "conversion_s": "soon"},
        },
    }  # fmt: skip
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    [(folder, m)] = export_sizes.find_exports(str(tmp_path))
    [e] = export_sizes.summarise_export(folder, m)
    assert e["model"] == "in-process pipeline (EfficientUNet2DConditionModel)" and e["format"] == "coreml"
    assert (e["bits"], e["image"], e["total_mb"], e["total_conversion_s"]) == (6, [64, 48], 3.75, 10.0)
    unet, text = e["components"]
    assert (unet["bytes_on_disk"], unet["psnr_db"]) == (1234, 60.5)
    assert (text["bytes_on_disk"], text["conversion_s"], text["psnr_db"]) == (None, None, None)


def test_current_manifest_with_both_formats_and_the_int8_ratio(tmp_path, monkeypatch):
    both, int8, other = tmp_path / "exports" / "both", tmp_path / "exports" / "et-int8", tmp_path / "exports" / "x"
    for d in (both / "Unet.mlpackage", int8, other):
        d.mkdir(parents=True)
    (both / "Unet.mlpackage" / "weight.bin").write_bytes(b"\0" * 3000)
    (both / "Unet.pte").write_bytes(b"\0" * 4000)
    (both / "VAEDecoder.pte").write_bytes(b"\0" * 500)
    (int8 / "Unet.pte").write_bytes(b"\0" * 1100)
    coreml = {"unet": {"name": "unet", "package": "Unet.mlpackage", "size_mb": 3.0, "conversion_s": 6.0,
                       "size_mb_before_quantization": None,
                       "check": {"exported_graph": {"ran": True, "psnr_db": 80.0, "passed": True}}}}  # fmt: skip
    et = {"unet": _et_component("Unet.pte", 4.0, 90.0, 129.8), "vae_decoder": _et_component("VAEDecoder.pte", 0.5,
                                                                                           9.0, 125.2)}  # fmt: skip
    (both / "manifest.json").write_text(json.dumps(_v2_manifest(et, coreml_components=coreml)))
    et_int8 = {"unet": _et_component("Unet.pte", 1.5, 80.0, 41.0), "vae_decoder": _et_component("VAEDecoder.pte",
                                                                                               0.25, 8.0, 44.0)}
    (int8 / "manifest.json").write_text(json.dumps(_v2_manifest(et_int8, scheme="int8")))
    (other / "manifest.json").write_text(json.dumps(dict(_v2_manifest(et), format="snapfusion-export/99")))
    monkeypatch.chdir(tmp_path)
    export_sizes.main(["--out-dir", str(tmp_path / "docs"), "--export-dir", "exports"])
    data = json.loads((tmp_path / "docs" / "benchmarks" / "export_sizes.json").read_text())
    assert data["skipped"] is False and data["manifest_formats"] == [MANIFEST_FORMAT, *OLDER_MANIFEST_FORMATS]
    got = {(e["folder"], e["format"]): e for e in data["exports"]}
    assert sorted(got) == [("exports/both", "coreml"), ("exports/both", "executorch"),
                           ("exports/et-int8", "executorch")]  # fmt: skip  (an unknown format is not read)
    cm, et_fp32, et8 = got["exports/both", "coreml"], got["exports/both", "executorch"], got["exports/et-int8",
                                                                                             "executorch"]
    assert (cm["precision"], cm["bits"], cm["total_mb"], cm["components"][0]["psnr_db"]) == ("fp16", None, 3.0, 80.0)
    assert cm["components"][0]["bytes_on_disk"] == 3000
    assert (et_fp32["precision"], et_fp32["quantization"], et_fp32["total_mb"]) == ("fp32", None, 4.5)
    unet, decoder = et_fp32["components"]
    assert (unet["bytes_on_disk"], unet["psnr_db"], unet["conversion_s"]) == (4000, 129.8, 90.0)  # file size, runtime
    assert (decoder["bytes_on_disk"], et8["quantization"]) == (500, "int8")
    assert et8["components"][1]["bytes_on_disk"] is None  # VAEDecoder.pte is not in that folder
    (cmp,) = data["comparisons"]  # int8 vs fp32 of the same model and image; Core ML has no palettized folder here
    assert (cmp["format"], cmp["quantization"], cmp["quantized"], cmp["unquantized"]) == (
        "executorch", "int8", "exports/et-int8", "exports/both")
    assert cmp["size_ratio"] == pytest.approx(1.75 / 4.5)
    md = (tmp_path / "docs" / "benchmarks" / "export_sizes.md").read_text()
    assert md.startswith("## Export: Core ML and ExecuTorch sizes and conversion times")
    row = "| `exports/both` | bundle/student | {} | unet | {} | 0.00 | {} |"
    assert row.format("ExecuTorch | fp32, not quantized", "4.00", "90.0 | 129.8") in md  # the .pte's runtime check
    assert row.format("Core ML | fp16, not palettized", "3.00", "6.0 | 80.0") in md
    assert "| `exports/et-int8` | bundle/student | ExecuTorch | fp32, int8 weights | **total** | **1.75** |" in md
    assert ("bundle/student ExecuTorch: int8 weights are 0.389x the size of the fp32 export (`exports/et-int8` vs "
            "`exports/both`).") in md  # fmt: skip


def test_missing_bundle_and_exports_are_skipped_with_a_note(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no out/coreml here, whatever the checkout holds
    export_sizes.main(["--out-dir", str(tmp_path), "--bundle", str(tmp_path / "none")])
    data = json.loads((tmp_path / "benchmarks" / "export_sizes.json").read_text())
    assert data["skipped"] is True and "no export folder" in data["reason"] and MANIFEST_FORMAT in data["reason"]
    assert "Skipped:" in (tmp_path / "benchmarks" / "export_sizes.md").read_text()
    assert data["command"].startswith("python -m benchmarks.export_sizes --out-dir ")
    monkeypatch.setattr(export_sizes, "export_available", lambda: (False, "no export_pipeline"))
    export_sizes.main(["--out-dir", str(tmp_path), "--overwrite"])
    data = json.loads((tmp_path / "benchmarks" / "export_sizes.json").read_text())
    assert data["skipped"] is True and "export library is not available" in data["reason"]
