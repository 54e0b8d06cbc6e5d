"""training/recipe.py: the configs name real stage modules and flags; the smoke recipe end to end."""

import json
import shutil

import numpy as np
import pytest
import torch
from training_helpers import ROOT, run

from training.common import StageError


@pytest.mark.parametrize("preset", ["smoke", "mini"])
def test_recipe_configs_parse_with_their_stage_modules(preset):
    import importlib
    from argparse import Namespace

    from training.recipe import load_config, stage_argv

    config = load_config(Namespace(config=None, preset=preset))
    values = {"output": "runs/x", **{s["name"]: f"runs/x/{s['name']}" for s in config["stages"]}}
    for s in config["stages"]:
        args = importlib.import_module(f"training.{s['module']}").parse_args(
            stage_argv(s, values) + ["--output", "runs/x/out"])  # fmt: skip
        for key, value in s.get("args", {}).items():  # every config key is a flag of that stage
            assert hasattr(args, key), (s["name"], key)
            if value is True:
                assert getattr(args, key) is True, (s["name"], key)


@pytest.mark.slow
def test_recipe_smoke_end_to_end(tmp_path):
    if not (ROOT / "bundle" / "probe").is_dir():
        pytest.skip("the toy-world probe (bundle/probe) is needed by the evolve stage's scorer")
    out = tmp_path / "smoke"
    r = run("training.recipe", "--preset", "smoke", "--output", str(out), timeout=1200)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for stage in ("teacher", "teacher_v", "robust", "evolved", "distilled", "student"):
        assert (out / stage / "stage_complete.json").exists(), stage
    log = json.loads((out / "evolved" / "evolve_log.json").read_text())
    assert log["final_ms"] < log["start_ms"] and (out / "evolved" / "evolve_curve.png").exists()
    from pipelines.loading import load_pipeline

    pipe = load_pipeline(str(out / "student"))
    assert pipe.vae_decoder is not None and pipe.scheduler.config.prediction_type == "v_prediction"
    assert pipe.config.default_num_inference_steps == 2
    img = pipe("a big red circle", generator=torch.Generator().manual_seed(0), output_type="np").images
    assert img.shape == (1, 64, 64, 3) and np.isfinite(img).all()
    # running the recipe again skips every completed stage
    r = run("training.recipe", "--preset", "smoke", "--output", str(out), timeout=600)
    assert r.returncode == 0 and r.stdout.count("complete, skipping") == 7
    shutil.rmtree(out)


def test_recipe_config_modules_must_be_stages(tmp_path):
    from argparse import Namespace

    from training.recipe import is_stage_module, load_config

    assert is_stage_module("toy.prompts") and is_stage_module("distill")
    assert not is_stage_module("common") and not is_stage_module("os.path") and not is_stage_module("../x")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"stages": [{"name": "a", "module": "write_prompts"}]}))
    with pytest.raises(StageError, match="a .module. of training/"):
        load_config(Namespace(config=str(bad), preset=None))
