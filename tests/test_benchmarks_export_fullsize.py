"""benchmarks/export_fullsize.py (the full-size .pte measurement; too slow to run here): what it refuses before any
work, and its stored result in docs has the fields docs/export.md quotes."""

import json
import os

import pytest

from benchmarks import export_fullsize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("flag", ["--out", "--json"])
def test_an_existing_output_is_refused_before_any_work(tmp_path, capsys, flag):
    existing = tmp_path / "there"
    existing.mkdir()
    args = {"--out": str(tmp_path / "new"), "--json": None, flag: str(existing)}
    argv = [x for k, v in args.items() if v for x in (k, v)]
    with pytest.raises(SystemExit) as e:
        export_fullsize.parse_args(argv)
    assert e.value.code == 2
    assert capsys.readouterr().err == f"error: {flag} {existing} exists; choose a new path.\n"


def test_bad_counts_are_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        export_fullsize.parse_args(["--out", str(tmp_path / "o"), "--threads", "0"])
    assert e.value.code == 2 and "--threads and --repeats must be >= 1" in capsys.readouterr().err


def test_the_stored_measurement():
    with open(os.path.join(ROOT, "docs", "benchmarks", "export_fullsize.json")) as f:
        r = json.load(f)
    assert r["preset"] == "snapfusion" and r["inputs"][0]["shape"] == [2, 4, 64, 64]  # one CFG step at 512x512
    assert r["psnr_db"] >= 35.0  # the export's gate, in the runtime
    assert r["runtime_over_eager"] == pytest.approx(r["runtime_ms_per_step"] / r["eager_ms_per_step"])


def test_a_standalone_result_is_printed_and_written(tmp_path, capsys):
    from benchmarks import common

    path = tmp_path / "r.json"
    assert common.emit_result({"a": 1.5}, str(path)) == {"a": 1.5}
    assert json.loads(capsys.readouterr().out) == {"a": 1.5} == json.loads(path.read_text())
