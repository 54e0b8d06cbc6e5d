"""export/cli.py: ``python -m export`` in a subprocess: an export with --zip, one-line errors with exit code 2,
SIGTERM leaving no partial folder."""

import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from export import convert
from pipelines.tiny import tiny_pipeline

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "efficient"
    tiny_pipeline(0).save_pretrained(path, safe_serialization=True)
    return str(path)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "export", *args], cwd=REPO, env=ENV, capture_output=True,
                          text=True, check=False, timeout=300)  # fmt: skip


def test_cli_exports_text_encoder_and_zips(model_dir, tmp_path):
    out = tmp_path / "cli_out"
    proc = _cli("--model", model_dir, "--components", "text_encoder", "--precision", "fp32",
                "--out", str(out), "--zip")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(os.listdir(out)) == ["TextEncoder.mlpackage", "manifest.json", "merges.txt", "vocab.json"]
    ct = convert.import_coremltools()
    outputs = ct.models.MLModel(str(out / "TextEncoder.mlpackage"), skip_model_load=True).get_spec().description.output
    assert {f.name: tuple(f.type.multiArrayType.shape) for f in outputs} == {
        "last_hidden_state": (1, 16, 32), "pooled_outputs": (1, 32)}  # fmt: skip
    assert json.loads((out / "manifest.json").read_text())["precision"] == "fp32"
    assert "| text_encoder | TextEncoder.mlpackage |" in proc.stdout
    assert f"zip: {out}.zip" in proc.stdout and zipfile.is_zipfile(f"{out}.zip")


@pytest.mark.parametrize("args, message", [
    (["--quantize", "5"], "quantize must be one of none, 8, 6, 4"),
    (["--components", "unet,text"], "unknown component 'text'"),
    (["--height", "abc"], "--height must be an integer"),
    (["--bogus"], "unrecognized arguments: --bogus"),
])  # fmt: skip
def test_cli_bad_input_exits_2_with_one_line(tmp_path, args, message):
    proc = _cli("--model", "unused", "--out", str(tmp_path / "o"), *args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert os.listdir(tmp_path) == []


def test_cli_refuses_missing_component_and_existing_output(model_dir, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(model_dir, folder)
    shutil.rmtree(folder / "unet")
    proc = _cli("--model", str(folder), "--components", "unet", "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "no 'unet' component" in proc.stderr
    proc = _cli("--model", str(folder), "--out", str(folder))
    assert proc.returncode == 2 and "exists and is not empty" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_cli_sigterm_leaves_no_partial_folder(model_dir, tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "export", "--model", model_dir, "--components",
                             "text_encoder", "--out", str(tmp_path / "o")], cwd=REPO, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 240
    while not any(p.name.startswith(".o.partial-") for p in tmp_path.iterdir()):
        assert proc.poll() is None and time.time() < deadline, "the export never started"
        time.sleep(0.05)
    proc.terminate()
    assert proc.wait(timeout=120) == 128 + 15
    assert os.listdir(tmp_path) == []
