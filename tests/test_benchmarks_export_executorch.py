"""benchmarks/export_executorch.py as a section of run_all: its summary table, the docs' run rendered as stored,
existing outputs and working folders refused, skipped with a note when the model or the runtime is missing. The
``--quick`` path itself runs in tests/test_benchmarks_run_all.py (one run_all --quick for the module)."""

import json
import os

import pytest

from benchmarks import common, export_executorch, run_all

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_markdown_summary_of_a_result():
    result = {"model": "bundle/student", "cpu": "AMD EPYC, 2 cores, Linux", "threads": 1, "torch": "2.13.0",
              "exports": {
        "fp32": {"export_s": 251.4, "denoiser_to_unet_size": 1.002, "min_psnr_db": 41.25, "images": [{}] * 8,
                 "runner_s_median": 0.081, "pipeline_s_median": 0.1, "ratio_runner_over_pipeline": 0.81},
        "int8": {"export_s": 120.0, "denoiser_to_unet_size": None, "min_psnr_db": 31.0, "images": [{}] * 8,
                 "runner_s_median": 0.07, "pipeline_s_median": 0.1, "ratio_runner_over_pipeline": 0.7}}}  # fmt: skip
    md = export_executorch.to_markdown(result).splitlines()
    assert md[0] == "bundle/student on AMD EPYC, 2 cores, Linux, 1 thread(s) in both runtimes, torch 2.13.0"
    assert md[4] == "| fp32 | 251 s | 1.002x | 41.2 dB over 8 images | 81 ms | 100 ms | 0.81x |"
    assert md[5].startswith("| int8 | 120 s | - | 31.0 dB")


def test_the_docs_run_is_rendered_as_stored():
    """docs/benchmarks/export_executorch.md is markdown() of the JSON beside it (the bundle student, fp32 and int8)."""
    with open(os.path.join(ROOT, "docs", "benchmarks", "export_executorch.json")) as f:
        stored = json.load(f)
    md = export_executorch.markdown(stored)
    assert md.startswith("## Export: the bundle student in the ExecuTorch runtime\n\n*Machine:* AMD EPYC, 2 cores")
    assert "| fp32 | 256 s | 1.001x | 86.0 dB over 8 images |" in md and "| int8 | 215 s | - | 49.7 dB" in md
    with open(os.path.join(ROOT, "docs", "benchmarks", "export_executorch.md")) as f:
        assert f.read() == md.rstrip() + "\n"  # the docs' section is this rendering


def test_a_registered_section_with_its_flags():
    assert common.SECTIONS[-2:] == ["export_sizes", "export_executorch"]
    args = run_all.parse_args(["--quick", "--bundle", "b", "--threads", "1", "--repeats", "3"])
    cmd = run_all.command("export_executorch", args)
    assert cmd[1:] == ["-m", "benchmarks.export_executorch", "--out-dir", "docs", "--overwrite", "--quick",
                       "--threads", "1", "--bundle", "b"]  # fmt: skip  (--repeats is not one of its options)
    parsed = export_executorch.parse_args(cmd[3:] + ["--int8", "--prompts", "5"])
    assert (parsed.bundle, parsed.quick, parsed.prompts, parsed.seeds, parsed.int8) == ("b", True, 1, 1, False)


def test_existing_outputs_and_working_folders_are_refused(tmp_path, capsys):
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "export_executorch.md").write_text("keep me")
    with pytest.raises(SystemExit) as e:
        export_executorch.main(["--out-dir", str(tmp_path), "--bundle", str(tmp_path / "none")])
    assert e.value.code == 2 and "pass --overwrite to replace" in capsys.readouterr().err
    assert (tmp_path / "benchmarks" / "export_executorch.md").read_text() == "keep me"
    for argv, message in ((["--work-dir", str(tmp_path)], "exists; choose a new --work-dir"),
                          (["--out", str(tmp_path)], "exists; choose a new --work-dir"),  # the older name
                          (["--reuse"], "--reuse reads the exports of --work-dir")):  # fmt: skip
        with pytest.raises(SystemExit) as e:
            export_executorch.main(["--out-dir", str(tmp_path), "--overwrite", *argv])
        assert e.value.code == 2 and message in capsys.readouterr().err
        assert (tmp_path / "benchmarks" / "export_executorch.md").read_text() == "keep me"  # before any work


def test_skipped_with_a_note_without_the_model_or_the_runtime(tmp_path, monkeypatch):
    export_executorch.main(["--out-dir", str(tmp_path), "--bundle", str(tmp_path / "none"), "--threads", "1"])
    data = json.loads((tmp_path / "benchmarks" / "export_executorch.json").read_text())
    assert data["skipped"] is True and data["reason"].startswith(f"no model folder {tmp_path / 'none' / 'student'}")
    assert (data["benchmark"], data["mode"], data["device"]) == ("export_executorch", "full", "cpu")
    assert data["threads"] == 1
    md = (tmp_path / "benchmarks" / "export_executorch.md").read_text()
    assert "*Machine:*" in md and "Skipped: no model folder" in md
    import export.executorch

    monkeypatch.setattr(export.executorch, "executorch_available", lambda: False)
    export_executorch.main(["--out-dir", str(tmp_path), "--overwrite", "--quick"])
    data = json.loads((tmp_path / "benchmarks" / "export_executorch.json").read_text())
    assert data["skipped"] is True and data["reason"].startswith("the ExecuTorch runtime is not installed")
    assert export.executorch.INSTALL_HINT in data["reason"]
