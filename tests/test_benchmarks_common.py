"""benchmarks/common.py: argument types, the device choice of the scripts, timing rounds, outputs, markdown."""

import argparse
from argparse import Namespace

import pytest
import torch

from benchmarks import common, quality
from pipelines import devices


def test_integer_arguments():
    assert common.positive_int("3") == 3 and common.nonneg_int("0") == 0
    with pytest.raises(argparse.ArgumentTypeError, match=r"^expected an integer >= 1, got 0$"):
        common.positive_int("0")
    with pytest.raises(argparse.ArgumentTypeError, match=r"^expected an integer >= 0, got 'x'$"):
        common.nonneg_int("x")


def test_pick_device_follows_pipelines_devices_and_fails_in_one_line(monkeypatch, capsys):
    monkeypatch.setattr(devices, "available_devices", lambda: ["cpu"])
    assert common.pick_device(Namespace(device=None, dtype=None)) == (torch.device("cpu"), torch.float32)
    assert common.pick_device(Namespace(device="cpu", dtype="bf16")) == (torch.device("cpu"), torch.bfloat16)
    with pytest.raises(SystemExit) as e:
        common.pick_device(Namespace(device="cuda", dtype=None))
    assert e.value.code == 2
    assert capsys.readouterr().err == "error: device 'cuda' is not available on this machine; choose one of cpu.\n"


def test_interleaved_rounds_alternate_and_summary():
    calls = []
    fns = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    samples = common.interleaved(fns, torch.device("cpu"), warmup=1, repeats=2, log=lambda *_: None)
    assert calls == ["a", "b"] * 3  # one warm-up round, then two timed rounds, A B A B
    assert {k: len(v) for k, v in samples.items()} == {"a": 2, "b": 2}
    assert common.summary([3.0, 1.0, 2.0004]) == {
        "median_ms": 2.0004,
        "min_ms": 1.0,
        "max_ms": 3.0,
        "samples_ms": [3.0, 1.0, 2.0],
    }


def test_markdown_helpers():
    assert common.md_table(["a", "b"], [[1, None], ["x", 2.5]]) == "| a | b |\n|---|---|\n| 1 | - |\n| x | 2.5 |"
    assert [common.fmt_ms(v) for v in (1234.4, 12.34, 0.12345, None)] == ["1,234", "12.3", "0.123", None]
    assert [common.fmt_ratio(v) for v in (0.5, 2.0, None)] == ["0.500x", "2.00x", None]
    assert [common.fmt_gmacs(v) for v in (12.34e9, 1.234e9, None)] == ["12.3", "1.23", None]
    assert common.fmt_int(1234567) == "1,234,567"


def test_outputs_are_refused_before_any_work_without_overwrite(tmp_path, capsys, monkeypatch):
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "quality.md").write_text("keep me")
    ran = []
    monkeypatch.setattr(quality, "run", lambda args: ran.append(args) or {"skipped": True})
    with pytest.raises(SystemExit) as e:
        quality.main(["--out-dir", str(tmp_path), "--bundle", str(tmp_path / "none")])
    assert e.value.code == 2 and "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "benchmarks" / "quality.md").read_text() == "keep me" and ran == []
    monkeypatch.undo()
    quality.main(["--out-dir", str(tmp_path), "--bundle", str(tmp_path / "none"), "--overwrite"])
    assert "Skipped: no usable evaluation JSON" in (tmp_path / "benchmarks" / "quality.md").read_text()
    assert not (tmp_path / "benchmarks" / "quality_curve.png").exists()  # nothing to plot when skipped


def test_outputs_paths():
    out = common.Outputs("docs", "end_to_end")
    assert out.all() == [
        "docs/benchmarks/end_to_end.json",
        "docs/benchmarks/end_to_end.md",
        "docs/benchmarks/end_to_end_breakdown.png",
    ]
    assert out.png_link("breakdown") == "benchmarks/end_to_end_breakdown.png"
    assert common.Outputs("docs", "export_sizes").pngs == {}
