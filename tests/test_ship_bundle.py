"""training/ship_bundle.py: shipping one model leaves the other alone, in fp16, with its sample grid."""

import json

import pytest
import torch
from training_helpers import run

from pipelines.tiny import tiny_pipeline


@pytest.mark.slow
def test_ship_bundle_one_model(tmp_path):
    from safetensors.torch import load_file

    recipe, out = tmp_path / "recipe", tmp_path / "bundle"
    for stage in ("teacher", "student"):
        tiny_pipeline(0, compressed_decoder=stage == "student").save_pretrained(recipe / stage)
        (recipe / stage / "stage_complete.json").write_text(json.dumps({"stage": stage}))
    (out / "teacher").mkdir(parents=True)
    (out / "teacher" / "keep.txt").write_text("shipped earlier")
    r = run("training.ship_bundle", "--recipe", str(recipe), "--out", str(out), "--models", "student",
             "--student-guidance", "3", "--seeds", "1")  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert (out / "teacher" / "keep.txt").read_text() == "shipped earlier"  # the other model is left alone
    weights = load_file(out / "student" / "vae_decoder" / "diffusion_pytorch_model.safetensors")
    assert all(v.dtype == torch.float16 for v in weights.values())
    assert json.loads((out / "student" / "model_index.json").read_text())["default_guidance_scale"] == 3.0
    assert (out / "samples_student.png").exists() and not (out / "samples_teacher.png").exists()
    r = run("training.ship_bundle", "--recipe", str(recipe), "--out", str(out), "--models", "student")
    assert r.returncode == 2 and "exists; pass --overwrite" in r.stderr
    r = run("training.ship_bundle", "--recipe", str(recipe), "--out", str(out), "--models", "decoder")
    assert r.returncode == 2 and "--models must name some of teacher, student, onepass" in r.stderr
