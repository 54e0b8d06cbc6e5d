"""benchmarks/run_all.py: ``--quick`` runs every section script in its own process, at toy size, against a bundle
built here, then assembles benchmarks.md. One run serves the whole module; the section tests read its outputs."""

import json
import os
import subprocess
import sys

import pytest
import torch

from benchmarks import run_all
from export.options import MANIFEST_FORMAT, OLDER_MANIFEST_FORMATS
from pipelines import EfficientUNet2DConditionModel
from pipelines.tiny import tiny_pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECTIONS = ["unet_step", "vae_decoder", "end_to_end", "quality", "export_sizes", "export_executorch"]


def _eval_json(steps, alignments, fids, floor=0.5):
    """The layout training.evaluate writes (file-level fields + one row per guidance scale)."""
    rows = [
        {"guidance": g, "alignment": a, "fid": f, "floor_fid": floor, "steps": steps, "num_images": 16}
        for g, a, f in zip((1.5, 4.0, 7.5), alignments, fids)
    ]
    return {"steps": steps, "num_images": 16, "batch_size": 8, "seed": 0, "floor_fid": floor, "results": rows}


def _manifest(bits, unet_mb, unet_before, seconds):
    """The layout of an export folder's manifest.json (export.ExportReport.to_dict, trimmed)."""
    graph = {"ran": True, "psnr_db": 80.0, "passed": True}
    comps = {
        "unet": {
            "name": "unet",
            "package": "Unet.mlpackage",
            "size_mb": unet_mb,
            "size_mb_before_quantization": unet_before,
            "conversion_s": seconds,
            "check": {"exported_graph": graph, "coreml": {"ran": False, "reason": "no runtime"}},
        },
        "vae_decoder": {
            "name": "vae_decoder",
            "package": "VAEDecoder.mlpackage",
            "size_mb": 1.0,
            "size_mb_before_quantization": None,
            "conversion_s": 2.0,
            "check": {"exported_graph": graph},
        },
    }
    return {
        "format": OLDER_MANIFEST_FORMATS[0],  # Core ML folders written before the ExecuTorch format stay readable
        "source": {"model": "bundle/student", "unet": "EfficientUNet"},
        "components": comps,
        "precision": "fp16",
        "image": {"height": 64, "width": 64},
        "quantization": {"bits": bits, "method": "k-means"},
    }


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A bundle folder like the trained one: teacher/, student/, eval/, coreml/, plus an evolved UNet config."""
    root = tmp_path_factory.mktemp("bundle")
    tiny_pipeline(0, unet="stock").save_pretrained(root / "teacher")
    tiny_pipeline(1, compressed_decoder=True).save_pretrained(root / "student")
    (root / "eval" / "teacher").mkdir(parents=True)
    (root / "eval" / "teacher" / "results.json").write_text(json.dumps(_eval_json(50, [0.5, 0.6, 0.7], [3, 4, 5])))
    (root / "eval" / "student.json").write_text(json.dumps(_eval_json(8, [0.45, 0.62, 0.71], [3.5, 3.2, 4.4])))
    for name, bits, mb, before, secs in (("student-fp16", None, 8.0, None, 30.0), ("student-6bit", 6, 3.0, 8.0, 40.0)):
        folder = root / "coreml" / name
        (folder / "Unet.mlpackage" / "Data").mkdir(parents=True)
        (folder / "Unet.mlpackage" / "Data" / "weight.bin").write_bytes(b"\0" * 1000)
        (folder / "manifest.json").write_text(json.dumps(_manifest(bits, mb, before, secs)))
    et = root / "export" / "student-et"  # an ExecuTorch export in the current manifest format
    et.mkdir(parents=True)
    (et / "Unet.pte").write_bytes(b"\0" * 700)
    check = {"executorch": {"ran": True, "psnr_db": 130.0, "passed": True}}
    (et / "manifest.json").write_text(json.dumps(dict(
        _manifest(None, 8.0, None, 30.0), format=MANIFEST_FORMAT, components={},
        executorch={"precision": "fp32", "quantization": {"scheme": "none"}, "components": {"unet": {
            "name": "unet", "package": "Unet.pte", "size_mb": 6.4, "conversion_s": 91.0, "check": check}}})))
    with torch.device("meta"):  # the full-size config, without allocating its weights
        evolved = EfficientUNet2DConditionModel.from_preset("snapfusion").remove_blocks(
            ["up1.7:CA"]
        )  # Up-1: 6 -> 5 CA
    evolved.save_config(root / "evolved")
    return root


@pytest.fixture(scope="module")
def quick_run(bundle, tmp_path_factory):
    """``python -m benchmarks.run_all --quick`` into a temporary docs folder, once for the module."""
    out = tmp_path_factory.mktemp("docs")
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.run_all",
        "--quick",
        "--out-dir",
        str(out),
        "--bundle",
        str(bundle),
        "--threads",
        "1",
        "--repeats",
        "1",
        "--warmup",
        "0",
        "--stage-repeats",
        "1",
        "--bundle-repeats",
        "1",
        "--extra-unet",
        str(bundle / "evolved" / "config.json"),
    ]
    env = dict(os.environ, PYTHONPATH=ROOT, HF_HUB_OFFLINE="1")
    # run outside the checkout, so that a developer's own exports (out/coreml, a default export folder) stay out
    proc = subprocess.run(cmd, cwd=out, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def _load(out, name):
    with open(out / "benchmarks" / f"{name}.json") as f:
        return json.load(f)


@pytest.mark.slow
def test_run_all_writes_every_section_and_the_report(quick_run):
    for name in SECTIONS:
        data = _load(quick_run, name)
        assert data["benchmark"] == name and data["mode"] == "quick" and "cores" in data["machine"]
        md = (quick_run / "benchmarks" / f"{name}.md").read_text()
        assert md.startswith("## ") and "*Machine:*" in md
    report = (quick_run / "benchmarks.md").read_text()
    assert report.startswith("# Benchmarks") and "## Headline" in report
    for heading in ("## UNet per denoising step", "## VAE decoder", "## End to end", "## Quality",
                    "## Export: Core ML and ExecuTorch sizes", "## Export: the bundle student in the ExecuTorch"):
        assert heading in report
    for png in ("unet_step_stages", "vae_decoder_bars", "end_to_end_breakdown", "quality_curve"):
        assert (quick_run / "benchmarks" / f"{png}.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_unet_step_results(quick_run):
    data = _load(quick_run, "unet_step")
    assert data["latent"] == [16, 16] and data["batch"] == 2 and data["repeats"] == 1
    models = data["models"]
    assert list(models) == ["sd15", "snapfusion", "extra:evolved"]
    assert models["sd15"]["ratio_to_sd15"] == 1.0
    assert models["snapfusion"]["macs"] < models["sd15"]["macs"]
    assert models["extra:evolved"]["macs"] < models["snapfusion"]["macs"]  # one CA block fewer
    for m in models.values():
        assert m["latency"]["median_ms"] > 0 and len(m["latency"]["samples_ms"]) == 1
        assert sum(r["params"] for r in m["architecture"]) == m["params"]
        assert list(m["stages"]) == ["Down-1", "Down-2", "Down-3", "Mid", "Up-1", "Up-2", "Up-3", "Other"]
        assert all(s["ms"] > 0 for s in m["stages"].values())
    up1 = {r["stage"]: r for r in models["extra:evolved"]["architecture"]}["Up-1"]
    assert (up1["CA"], up1["RB"]) == (5, 2)
    assert data["target"]["snapfusion_over_sd15_max"] == 0.7  # the verdict itself: test_benchmarks_unet_step.py


@pytest.mark.slow
def test_vae_decoder_results(quick_run):
    data = _load(quick_run, "vae_decoder")
    sd, pruned = data["decoders"]["sd15"], data["decoders"]["pruned"]
    assert pruned["block_out_channels"] == [c // 2 for c in sd["block_out_channels"]]
    assert 0.2 < data["params_ratio"] < 0.3 and data["macs_ratio"] < 0.3
    assert data["target"]["speedup_min"] == 3.0  # the speed-up and verdict: test_benchmarks_vae_decoder.py


@pytest.mark.slow
def test_end_to_end_results(quick_run):
    data = _load(quick_run, "end_to_end")
    sd, sf = data["pipelines"]["sd15"], data["pipelines"]["snapfusion"]
    assert (sd["steps"], sd["steps_run"], sf["steps"], sf["steps_run"]) == (50, 50, 8, 8)
    assert sd["cfg"] and sf["cfg"]
    assert sd["total_kind"] == sf["total_kind"] == "measured (full loop)"
    assert sd["decoder_params"] > sf["decoder_params"] and sd["text_encoder_params"] == sf["text_encoder_params"]
    assert [len(c["unet_ms_per_step"]) for c in sd["calls"] + sf["calls"]] == [50, 8]
    bundle = data["bundle"]
    assert bundle["skipped"] is False
    teacher, student = bundle["models"]["teacher"], bundle["models"]["student"]
    assert (teacher["steps_run"], student["steps_run"]) == (50, 8)
    assert teacher["unet_class"] == "UNet2DConditionModel" and student["unet_class"] == "EfficientUNet2DConditionModel"
    assert teacher["image"] == [32, 32]


@pytest.mark.slow
def test_quality_results(quick_run):
    data = _load(quick_run, "quality")
    assert data["skipped"] is False and not data["ignored"]
    by_label = {m["label"]: m for m in data["models"]}
    assert set(by_label) == {"teacher", "student"}
    assert [r["guidance"] for r in by_label["student"]["rows"]] == [1.5, 4.0, 7.5]
    assert by_label["student"]["rows"][1]["fid"] == 3.2 and by_label["student"]["rows"][0]["fid_floor"] == 0.5
    assert (
        "| student | 8 | 4 | 0.6200 | 3.200 (best) | 0.500 |" in (quick_run / "benchmarks" / "quality.md").read_text()
    )


@pytest.mark.slow
def test_export_results(quick_run):
    data = _load(quick_run, "export_sizes")
    assert data["skipped"] is False and len(data["exports"]) == 3  # two Core ML folders (v1), one ExecuTorch (v2)
    (cmp,) = data["comparisons"]
    assert cmp["bits"] == 6 and cmp["size_ratio"] == pytest.approx(4.0 / 9.0)  # (3 + 1) MB vs (8 + 1) MB
    unet = next(c for e in data["exports"] if e["bits"] == 6 for c in e["components"] if c["name"] == "unet")
    assert unet["bytes_on_disk"] == 1000 and unet["conversion_s"] == 40.0
    (et,) = [e for e in data["exports"] if e["format"] == "executorch"]
    assert et["components"][0]["bytes_on_disk"] == 700 and et["components"][0]["psnr_db"] == 130.0
    md = (quick_run / "benchmarks" / "export_sizes.md").read_text()
    assert "| `" + str(et["folder"]) + "` | bundle/student | ExecuTorch | fp32, not quantized | unet | 6.40 |" in md


@pytest.mark.slow
def test_export_executorch_results(quick_run):
    """--quick: the tiny pipeline exported (fp32, the runner's components), the runner's image against the
    pipeline's for one prompt, in the same run; the temporary exports are gone."""
    data = _load(quick_run, "export_executorch")
    assert data["skipped"] is False and data["threads"] == 1 and data["model"].startswith("tiny pipeline")
    (name, e), = data["exports"].items()
    assert name == "fp32" and set(e["components"]) == {"text_encoder", "denoiser", "vae_decoder"}
    assert all(c["psnr_db"] >= 35 for c in e["components"].values())  # the export's gate, in the runtime
    assert len(e["images"]) == 1 and e["min_psnr_db"] >= 30  # the target for the runner's image
    assert e["runner_s_median"] > 0 and e["pipeline_s_median"] > 0 and e["dir"] is None
    assert e["export_s"] > 0 and "ExecuTorch" in e["label"]


def test_unknown_section_exits_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        run_all.main(["--out-dir", str(tmp_path), "--only", "quality,nope", "--skip", "unet_step"])
    assert e.value.code == 2
    assert capsys.readouterr().err == (
        "error: unknown section(s) nope; choose from unet_step, vae_decoder, end_to_end, quality, export_sizes, "
        "export_executorch.\n"
    )
    assert os.listdir(tmp_path) == []


def test_run_all_refuses_to_overwrite(tmp_path, capsys):
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "quality.md").write_text("keep me")
    with pytest.raises(SystemExit) as e:  # before any section runs
        run_all.main(["--out-dir", str(tmp_path), "--only", "quality"])
    assert e.value.code == 2 and "pass --overwrite to replace them" in capsys.readouterr().err
    assert (tmp_path / "benchmarks" / "quality.md").read_text() == "keep me"
