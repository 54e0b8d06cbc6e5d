"""Benchmark scripts (benchmarks/): a smoke run of every script at toy size, and their input handling."""

import json
import os
import subprocess
import sys

import pytest
import torch

from benchmarks import end_to_end, export_sizes, quality, unet_step
from pipelines import EfficientUNet2DConditionModel
from pipelines.profiling import count_params
from pipelines.tiny import tiny_efficient_unet, tiny_pipeline, tiny_stock_unet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECTIONS = ["unet_step", "vae_decoder", "end_to_end", "quality", "export_sizes"]


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
        "format": export_sizes.MANIFEST_FORMAT,
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
    proc = subprocess.run(cmd, cwd=out, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def _load(out, name):
    with open(out / "benchmarks" / f"{name}.json") as f:
        return json.load(f)


def test_run_all_writes_every_section_and_the_report(quick_run):
    for name in SECTIONS:
        data = _load(quick_run, name)
        assert data["benchmark"] == name and data["mode"] == "quick" and "cores" in data["machine"]
        md = (quick_run / "benchmarks" / f"{name}.md").read_text()
        assert md.startswith("## ") and "*Machine:*" in md
    report = (quick_run / "benchmarks.md").read_text()
    assert report.startswith("# Benchmarks") and "## Headline" in report
    for heading in ("## UNet per denoising step", "## VAE decoder", "## End to end", "## Quality", "## Export"):
        assert heading in report
    for png in ("unet_step_stages", "vae_decoder_bars", "end_to_end_breakdown", "quality_curve"):
        assert (quick_run / "benchmarks" / f"{png}.png").read_bytes()[:4] == b"\x89PNG"


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
        assert m["stage_ms_sum"] == pytest.approx(sum(s["ms"] for s in m["stages"].values()))
    up1 = {r["stage"]: r for r in models["extra:evolved"]["architecture"]}["Up-1"]
    assert (up1["CA"], up1["RB"]) == (5, 2)
    assert isinstance(data["target"]["met"], bool)


def test_vae_decoder_results(quick_run):
    data = _load(quick_run, "vae_decoder")
    sd, pruned = data["decoders"]["sd15"], data["decoders"]["pruned"]
    assert pruned["block_out_channels"] == [c // 2 for c in sd["block_out_channels"]]
    assert 0.2 < pruned["params"] / sd["params"] < 0.3
    assert data["speedup"] == pytest.approx(sd["latency"]["median_ms"] / pruned["latency"]["median_ms"])


def test_end_to_end_results(quick_run):
    data = _load(quick_run, "end_to_end")
    sd, sf = data["pipelines"]["sd15"], data["pipelines"]["snapfusion"]
    assert (sd["steps"], sd["steps_run"], sf["steps"], sf["steps_run"]) == (50, 50, 8, 8)
    assert sd["cfg"] and sf["cfg"]
    assert sd["total_kind"] == sf["total_kind"] == "measured (full loop)"
    assert sd["decoder_params"] > sf["decoder_params"] and sd["text_encoder_params"] == sf["text_encoder_params"]
    assert data["speedup"] == pytest.approx(sd["total_ms"] / sf["total_ms"])
    bundle = data["bundle"]
    assert bundle["skipped"] is False
    teacher, student = bundle["models"]["teacher"], bundle["models"]["student"]
    assert (teacher["steps_run"], student["steps_run"]) == (50, 8)
    assert teacher["unet_class"] == "UNet2DConditionModel" and student["unet_class"] == "EfficientUNet2DConditionModel"
    assert teacher["image"] == [32, 32]


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


def test_export_results(quick_run):
    data = _load(quick_run, "export_sizes")
    assert data["skipped"] is False and len(data["exports"]) == 2
    (cmp,) = data["comparisons"]
    assert cmp["bits"] == 6 and cmp["size_ratio"] == pytest.approx(4.0 / 9.0)
    unet = next(c for e in data["exports"] if e["bits"] == 6 for c in e["components"] if c["name"] == "unet")
    assert unet["bytes_on_disk"] == 1000 and unet["conversion_s"] == 40.0


# ---------------------------------------------------------------------------------------------- input handling


@pytest.fixture
def restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_existing_outputs_are_not_overwritten(tmp_path, capsys):
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "quality.md").write_text("keep me")
    with pytest.raises(SystemExit) as e:
        quality.main(["--out-dir", str(tmp_path), "--bundle", str(tmp_path / "none")])
    assert e.value.code == 2 and "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "benchmarks" / "quality.md").read_text() == "keep me"
    quality.main(["--out-dir", str(tmp_path), "--bundle", str(tmp_path / "none"), "--overwrite"])
    assert "Skipped: no usable evaluation JSON" in (tmp_path / "benchmarks" / "quality.md").read_text()
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.run_all", "--out-dir", str(tmp_path), "--only", "quality"],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=ROOT),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "--overwrite" in proc.stderr


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


def test_quality_reads_defensively(tmp_path):
    good = tmp_path / "a.json"
    good.write_text(json.dumps({"2.5": {"alignment": 0.3, "fid": 9.0, "fid_floor": 1.0}, "note": "x"}))
    m = quality.read_eval(str(good))
    assert m["rows"] == [{"guidance": 2.5, "alignment": 0.3, "fid": 9.0, "fid_floor": 1.0, "seconds_per_image": None}]
    bad = tmp_path / "b.json"
    bad.write_text(json.dumps({"results": [{"guidance": 2.5, "fid": 1.0}]}))
    with pytest.raises(ValueError, match="alignment"):
        quality.read_eval(str(bad))


def test_end_to_end_composes_a_cut_loop_and_says_so(tmp_path, restore_threads):
    end_to_end.main(
        [
            "--quick",
            "--out-dir",
            str(tmp_path),
            "--threads",
            "1",
            "--sd-steps",
            "6",
            "--sd-measured-steps",
            "2",
            "--sf-steps",
            "2",
            "--warmup",
            "0",
            "--bundle",
            str(tmp_path / "none"),
        ]
    )
    data = json.loads((tmp_path / "benchmarks" / "end_to_end.json").read_text())
    sd = data["pipelines"]["sd15"]
    assert (sd["steps"], sd["steps_run"], sd["total_kind"]) == (6, 2, "composed from measured components")
    assert sd["total_ms"] == pytest.approx(
        sd["text_encoder_ms"] + 6 * sd["unet_ms_per_step_median"] + sd["decoder_ms"]
    )
    assert data["pipelines"]["snapfusion"]["total_kind"] == "measured (full loop)"
    md = (tmp_path / "benchmarks" / "end_to_end.md").read_text()
    assert "**composed from measured components**" in md and "Skipped:" in md


def test_bad_arguments_exit_with_code_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        unet_step.main(["--quick", "--out-dir", str(tmp_path), "--extra-unet", str(tmp_path / "nothing")])
    assert e.value.code == 2 and "no UNet config found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        end_to_end.main(["--quick", "--out-dir", str(tmp_path), "--sd-measured-steps", "50", "--overwrite"])
    assert e.value.code == 2 and "--sd-measured-steps" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        unet_step.main(["--quick", "--out-dir", str(tmp_path), "--repeats", "0"])
    assert e.value.code == 2


def test_extra_unet_accepts_stock_configs(tmp_path):
    tiny_stock_unet().save_config(tmp_path / "stock_unet")
    label, config = unet_step.load_unet_config(str(tmp_path / "stock_unet"))
    assert label == "stock_unet" and config["_class_name"] == "UNet2DConditionModel"
    model = unet_step.build_unet(config, quick=False, seed=0)
    assert isinstance(model, EfficientUNet2DConditionModel)
    assert model.architecture()["Up-3"] == {"CA": 3, "RB": 3}


def test_extra_unet_at_sd_width_keeps_the_layout():
    efficient = dict(tiny_efficient_unet(preset="snapfusion").config, _class_name="EfficientUNet2DConditionModel")
    stock = dict(tiny_stock_unet().config, _class_name="UNet2DConditionModel")
    with torch.device("meta"):  # full size, without allocating weights
        sf = unet_step.build_unet(efficient, quick=False, seed=0, sd_width=True)
        sd = unet_step.build_unet(stock, quick=False, seed=0, sd_width=True)
    assert count_params(sf) == 767_520_644  # the snapfusion preset's count
    assert count_params(sd) == 859_520_964  # SD-v1.5's count
    assert sf.architecture()["Up-1"] == {"CA": 6, "RB": 2}


def test_decoder_params_counts_what_decoding_uses():
    from pipelines.profiling import count_decoder_params, count_params
    from pipelines.tiny import tiny_components

    parts = tiny_components(0)
    vae = parts["vae"]
    assert count_decoder_params(vae) == count_params(vae.decoder) + count_params(vae.post_quant_conv)
    assert count_decoder_params(vae) < count_params(vae)  # the encoder is not counted
    ps = tiny_components(0, compressed_decoder="pixel_shuffle")["vae_decoder"]
    assert count_decoder_params(ps) == count_params(ps) > 0
    with pytest.raises(ValueError, match="AutoencoderKL"):
        count_decoder_params(parts["unet"])


def test_decoder_layouts_times_candidates_against_a_vae(tmp_path, capsys):
    from benchmarks import decoder_layouts

    tiny_pipeline(0).vae.save_pretrained(tmp_path / "vae")
    out = tmp_path / "layouts.json"

    def argv(*layouts, overwrite=False):
        return ["--vae", str(tmp_path / "vae"), "--latent", "4", "--norm-groups", "4", "--repeats", "2", "--warmup",
                "0", "--out", str(out), *(["--overwrite"] if overwrite else []), "--layouts", *layouts]  # fmt: skip

    rows = decoder_layouts.main(argv("resnet:16,8:1", "residual_conv:16:2"))["decoders"]
    assert list(rows) == ["vae", "vae:plain_blocks", "resnet:16,8:1", "residual_conv:16:2"]
    assert rows["vae"]["speedup"] == 1.0 and rows["vae:plain_blocks"]["speedup_vs_plain_blocks"] == 1.0
    assert all(r["median_ms"] > 0 and r["params"] > 0 and r["macs"] > 0 for r in rows.values())
    r = rows["resnet:16,8:1"]
    assert r["speedup"] == pytest.approx(rows["vae"]["median_ms"] / r["median_ms"])
    assert r["speedup_vs_plain_blocks"] == pytest.approx(rows["vae:plain_blocks"]["median_ms"] / r["median_ms"])
    assert json.loads(out.read_text())["decoders"].keys() == rows.keys()
    assert "| `residual_conv:16:2` |" in capsys.readouterr().out
    for layouts, overwrite, msg in ((["resnet:16"], True, "must be BLOCK:CHANNELS:LAYERS"),
                                    (["resnet:16,x:1"], True, "comma-separated integers"),
                                    (["plain:16:1"], True, "block_type must be"),
                                    (["resnet:16:1"], False, "exists; pass --overwrite")):  # fmt: skip
        with pytest.raises(SystemExit) as e:
            decoder_layouts.main(argv(*layouts, overwrite=overwrite))
        assert e.value.code == 2 and msg in capsys.readouterr().err
