"""training/recipe.py: the configs name real stage modules and flags; the smoke recipe end to end."""

import json
import shutil

import numpy as np
import pytest
import torch
from training_helpers import ROOT, run

from training.common import StageError


@pytest.mark.parametrize("preset", ["smoke", "mini", "sd15", "sd15-proof"])
def test_recipe_configs_parse_with_their_stage_modules(preset):
    import importlib
    from argparse import Namespace

    from training.recipe import load_config, stage_argv

    config = load_config(Namespace(config=None, preset=preset))
    values = {"output": "runs/x", **{s["name"]: f"runs/x/{s['name']}" for s in config["stages"]},
              **{v: f"/given/{v}" for v in config.get("vars", {})}}  # fmt: skip
    for s in config["stages"]:  # every note is about one of the stage's settings
        assert set(s.get("notes", {})) <= set(s.get("args", {})) | {"scorer", "latency_table"}, s["name"]
    for s in config["stages"]:
        args = importlib.import_module(f"training.{s['module']}").parse_args(
            stage_argv(s, values) + ["--output", "runs/x/out"])  # fmt: skip
        for key, value in s.get("args", {}).items():  # every config key is a flag of that stage
            negated = key.startswith("no_") and not hasattr(args, key)  # --no-X of a BooleanOptionalAction
            assert hasattr(args, key[3:] if negated else key), (s["name"], key)
            if value is True:
                assert getattr(args, key[3:]) is False if negated else getattr(args, key) is True, (s["name"], key)


@pytest.mark.slow
def test_recipe_smoke_end_to_end(tmp_path):
    if not (ROOT / "bundle" / "probe").is_dir():
        pytest.skip("the toy-world probe (bundle/probe) is needed by the evolve stage's scorer")
    out = tmp_path / "smoke"
    r = run("training.recipe", "--preset", "smoke", "--output", str(out), timeout=1200)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for stage in ("teacher", "teacher_v", "robust", "evolved", "distilled", "student", "guided", "onepass"):
        assert (out / stage / "stage_complete.json").exists(), stage
    log = json.loads((out / "evolved" / "evolve_log.json").read_text())
    assert log["final_ms"] < log["start_ms"] and (out / "evolved" / "evolve_curve.png").exists()
    from pipelines.loading import load_pipeline

    pipe = load_pipeline(str(out / "student"))
    assert pipe.vae_decoder is not None and pipe.scheduler.config.prediction_type == "v_prediction"
    assert pipe.config.default_num_inference_steps == 2
    img = pipe("a big red circle", generator=torch.Generator().manual_seed(0), output_type="np").images
    assert img.shape == (1, 64, 64, 3) and np.isfinite(img).all()
    onepass = load_pipeline(str(out / "onepass"))  # the one-pass student: guidance as input, 1 step
    assert onepass.guidance_embedded and onepass.vae_decoder is not None
    assert onepass.config.default_num_inference_steps == 1 and onepass.config.guidance_scale_range == [1.0, 6.0]
    img = onepass("a big red circle", generator=torch.Generator().manual_seed(0), output_type="np").images
    assert img.shape == (1, 64, 64, 3) and np.isfinite(img).all()
    # running the recipe again skips every completed stage
    r = run("training.recipe", "--preset", "smoke", "--output", str(out), timeout=600)
    assert r.returncode == 0 and r.stdout.count("complete, skipping") == 9
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


@pytest.mark.parametrize("preset, unet_params", [("sd15", 859.52), ("snapfusion", 767.52)])
def test_full_size_presets_have_sd15_shapes(preset, unet_params):
    """The proof's stand-ins, built on the meta device (no memory): SD-v1.5's text encoder, VAE and UNet shapes."""
    from training.models import build_from_scratch
    from training.toy.world import VOCABULARY

    with torch.device("meta"):
        c = build_from_scratch(preset, 512, VOCABULARY, "epsilon")
    te, unet, vae = c["text_encoder"], c["unet"], c["vae"]
    assert te.config.hidden_size == 768 and te.config.num_hidden_layers == 12 and te.config.vocab_size == 49408
    assert c["tokenizer"].model_max_length == 77 and te.config.max_position_embeddings == 77
    assert unet.config.cross_attention_dim == 768 and unet.config.sample_size == 64
    assert sum(p.numel() for p in unet.parameters()) / 1e6 == pytest.approx(unet_params, abs=0.01)
    assert sum(p.numel() for p in te.parameters()) / 1e6 == pytest.approx(123.06, abs=0.01)
    assert sum(p.numel() for p in vae.parameters()) / 1e6 == pytest.approx(83.65, abs=0.01)


def test_a_config_names_the_vars_it_needs(tmp_path):
    from argparse import Namespace

    from training.recipe import main

    args = Namespace(config=None, preset="sd15", output=str(tmp_path / "o"), var=["data=folder:/x"], only=None)
    with pytest.raises(StageError, match=r"needs --var clip=\.\.\. \(a local transformers CLIP folder"):
        main(args)
    assert not (tmp_path / "o").exists()


def test_stages_in_one_process_may_differ_in_mixed_precision():
    """The recipe runs its stages in-process: a bf16 stage after an fp32 one (sd15-proof's robust stage)."""
    from accelerate import Accelerator

    from training.recipe import fresh_accelerator_state

    fresh_accelerator_state()
    assert Accelerator(mixed_precision="no", cpu=True).mixed_precision == "no"
    with pytest.raises(ValueError, match="already been initialized"):
        Accelerator(mixed_precision="bf16", cpu=True)
    fresh_accelerator_state()
    assert Accelerator(mixed_precision="bf16", cpu=True).mixed_precision == "bf16"
    fresh_accelerator_state()
