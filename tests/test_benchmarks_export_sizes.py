"""benchmarks/export_sizes.py: export folders read from their manifests; skipped with a note when there are none."""

import json

from benchmarks import export_sizes


def test_summarise_export_reads_the_manifest_and_measures_the_disk(tmp_path):
    (tmp_path / "Unet.mlpackage").mkdir()
    (tmp_path / "Unet.mlpackage" / "w.bin").write_bytes(b"\0" * 1234)
    manifest = {
        "format": export_sizes.MANIFEST_FORMAT,
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
    e = export_sizes.summarise_export(folder, m)
    assert e["model"] == "in-process pipeline (EfficientUNet2DConditionModel)"
    assert (e["bits"], e["image"], e["total_mb"], e["total_conversion_s"]) == (6, [64, 48], 3.75, 10.0)
    unet, text = e["components"]
    assert (unet["bytes_on_disk"], unet["psnr_db"]) == (1234, 60.5)
    assert (text["bytes_on_disk"], text["conversion_s"], text["psnr_db"]) == (None, None, None)


def test_missing_bundle_and_exports_are_skipped_with_a_note(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no out/coreml here, whatever the checkout holds
    export_sizes.main(["--out-dir", str(tmp_path), "--bundle", str(tmp_path / "none")])
    data = json.loads((tmp_path / "benchmarks" / "export_sizes.json").read_text())
    assert data["skipped"] is True and "no export folder" in data["reason"]
    assert "Skipped:" in (tmp_path / "benchmarks" / "export_sizes.md").read_text()
    assert data["command"].startswith("python -m benchmarks.export_sizes --out-dir ")
    monkeypatch.setattr(export_sizes, "export_available", lambda: (False, "no export_pipeline"))
    export_sizes.main(["--out-dir", str(tmp_path), "--overwrite"])
    data = json.loads((tmp_path / "benchmarks" / "export_sizes.json").read_text())
    assert data["skipped"] is True and "export library is not available" in data["reason"]
