"""The shipped mini bundle (bundle/): what the app and the CLI load by default, offline.

These tests read the committed weights, so they fail when a retrained bundle loses its size budget, its dtype,
its model cards' agreement with its evaluation, or its ability to follow a prompt.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from training.toy.metrics import alignment_scores
from training.toy.probe import DEFAULT_PROBE, load_probe
from training.toy.world import validation_prompts

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = ROOT / "bundle"
MAX_BUNDLE_BYTES = 60_000_000  # the bundle issue: 60 MB at most in all
# The probe scores unrelated true renders at about 0.3 (chance) and true renders at about 1.0; v0, which ignored
# its prompts, scored 0.25-0.31. A model that reads its prompt clears this bar with a wide margin.
MIN_VALIDATION_ALIGNMENT = 0.6

pytestmark = pytest.mark.skipif(not (BUNDLE / "student").is_dir(), reason="no bundle in this checkout")
MODELS = ("teacher", "student", "onepass")  # bundle folders: the teacher, the SnapFusion student, the one-pass one


@pytest.fixture(scope="module")
def pipes():
    from snapfusion_app import load_pipeline

    return {name: load_pipeline(str(BUNDLE / name), device="cpu") for name in MODELS}


def test_bundle_is_small_fp16_safetensors():
    files = [f for f in BUNDLE.rglob("*") if f.is_file()]
    assert sum(f.stat().st_size for f in files) <= MAX_BUNDLE_BYTES
    assert not [f for f in files if f.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl")]
    weights = [f for f in files if f.suffix == ".safetensors"]
    assert {f.relative_to(BUNDLE).parts[0] for f in weights} == {*MODELS, "probe"}
    for f in weights:
        with safe_open(str(f), "pt") as g:
            dtypes = {g.get_slice(k).get_dtype() for k in g.keys()}
        assert not dtypes & {"F32", "F64", "BF16"}, f"{f}: {dtypes}"


def test_app_and_cli_default_to_the_bundle():
    import app
    from snapfusion_app import cli

    args = app.parse_args([])
    assert Path(args.teacher) == BUNDLE / "teacher" and Path(args.student) == BUNDLE / "student"
    assert Path(cli.parse_args(["generate", "--prompt", "x"]).model) == BUNDLE / "student"


def test_shipped_models_are_the_teacher_and_its_snapfusion_student(pipes):
    from pipelines import EfficientUNet2DConditionModel

    teacher, student = pipes["teacher"], pipes["student"]
    assert teacher.scheduler.config.prediction_type == "epsilon" and teacher.config.default_num_inference_steps == 50
    assert student.scheduler.config.prediction_type == "v_prediction"
    assert student.config.default_num_inference_steps == 8
    assert teacher.vae_decoder is None and student.vae_decoder is not None
    # the compressed decoder (v3 on): a pixel-shuffle decoder that does under half of the teacher decoder's work
    # (bundle/README.md says why channel pruning was not enough at 64x64), with the layout the recipe trains
    from pipelines import PixelShuffleVAEDecoder
    from pipelines.profiling import count_decoder_macs

    assert isinstance(student.vae_decoder, PixelShuffleVAEDecoder)
    assert student.vae_scale_factor == teacher.vae_scale_factor
    assert count_decoder_macs(student.vae_decoder, 16, 16) < 0.5 * count_decoder_macs(teacher.vae, 16, 16)
    config = json.loads((ROOT / "training" / "configs" / "mini.json").read_text())
    stage = next(s["args"] for s in config["stages"] if s["name"] == "student")
    dec = student.vae_decoder.config
    assert ",".join(map(str, dec.block_out_channels)) == stage["channels"]
    assert ",".join(map(str, dec.layers_per_block)) == stage["layers"]
    assert isinstance(student.unet, EfficientUNet2DConditionModel)
    # the student's UNet is smaller than the teacher's; both read the same text encoder and latent space
    assert sum(p.numel() for p in student.unet.parameters()) < sum(p.numel() for p in teacher.unet.parameters())
    assert student.unet.config.in_channels == teacher.unet.config.in_channels


def test_shipped_one_pass_student_takes_the_guidance_scale_and_runs_four_single_pass_steps(pipes):
    """bundle/onepass: the SnapFusion student's UNet and decoder with a guidance embedding, step-distilled to 4."""
    onepass, student = pipes["onepass"], pipes["student"]
    assert onepass.guidance_embedded and not student.guidance_embedded
    assert onepass.config.default_num_inference_steps == 4
    config = json.loads((ROOT / "training" / "configs" / "mini.json").read_text())
    stage = next(s["args"] for s in config["stages"] if s["name"] == "onepass4")
    assert list(onepass.config.guidance_scale_range) == [stage["w_min"], stage["w_max"]]
    assert type(onepass.vae_decoder) is type(student.vae_decoder)
    prompt = "a big red circle in the center on a gray background"
    out = onepass(prompt, generator=torch.Generator().manual_seed(0), output_type="np")
    assert out.timings["steps_run"] == 4 and out.timings["cfg"] is False  # one UNet pass per step
    with pytest.raises(ValueError, match="guidance"):
        onepass(prompt, guidance_scale=stage["w_max"] + 1)


@pytest.mark.parametrize("name", MODELS)
def test_shipped_model_generates_deterministically(pipes, name):
    pipe = pipes[name]
    prompt = "a big red circle in the center on a gray background"
    a = pipe(prompt, generator=torch.Generator().manual_seed(0), output_type="np").images
    b = pipe(prompt, generator=torch.Generator().manual_seed(0), output_type="np").images
    c = pipe(prompt, generator=torch.Generator().manual_seed(1), output_type="np").images
    assert a.shape == (1, 64, 64, 3) and np.isfinite(a).all()
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert a.std() > 0.05  # an image, not a flat field


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_shipped_model_follows_its_prompts(pipes, name):
    """The probe reads the prompted attributes back from the 32 fixed validation prompts, at the defaults."""
    pipe = pipes[name]
    prompts, labels = zip(*validation_prompts())
    out = pipe(list(prompts), generator=torch.Generator().manual_seed(0), output_type="pt").images
    score = alignment_scores(list(labels), load_probe(DEFAULT_PROBE).predict_flat(out.float()))["overall"]
    assert score >= MIN_VALIDATION_ALIGNMENT, f"{name}: validation alignment {score:.3f}"


@pytest.mark.parametrize("name", MODELS)
def test_model_card_quotes_the_shipped_evaluation(pipes, name):
    card = (BUNDLE / name / "README.md").read_text()
    ev = json.loads((BUNDLE / "eval" / f"{name}.json").read_text())
    assert ev["num_images"] >= 2000  # the K
    for row in ev["results"]:
        assert f"| {row['guidance']:g} | {row['alignment']:.4f} | {row['fid']:.3f} |" in card
    best = max(ev["results"], key=lambda r: r["alignment"])
    # the recommended guidance (the app's default) is the evaluated scale with the best alignment
    assert pipes[name].config.default_guidance_scale == pytest.approx(best["guidance"])
    assert "python -m training.recipe" in card and "s per image" in card


@pytest.mark.parametrize("name", ["student", "onepass"])
def test_student_cards_state_the_quality_targets_from_the_shipped_evaluations(name):
    from training.model_card import quality_targets

    card = (BUNDLE / name / "README.md").read_text()
    student, teacher = (json.loads((BUNDLE / "eval" / f"{n}.json").read_text()) for n in (name, "teacher"))
    for row in quality_targets(student, teacher):
        assert row in card
