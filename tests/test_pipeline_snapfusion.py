"""SnapFusionPipeline (pipelines/pipeline_snapfusion.py): sampling, timings, input checks, and the contract of
diffusers' own pipeline tests (``PipelineTesterMixin``, ``test_stable_diffusion.py``)."""

import inspect
import json
import logging

import numpy as np
import pytest
import torch

from diffusers.callbacks import SDCFGCutoffCallback

from pipelines import SnapFusionPipeline, format_timings
from pipelines.loading import load_pipeline
from pipelines.schedulers import ddim_scheduler
from pipelines.tiny import tiny_components, tiny_pipeline

PROMPT = "a red circle"


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _run(pipe, seed=0, **kw):
    kw.setdefault("num_inference_steps", 2)
    if "prompt_embeds" not in kw:
        kw.setdefault("prompt", PROMPT)
    kw.setdefault("output_type", "np")
    return pipe(generator=_gen(seed), **kw)


def _tiny_safety_checker():
    from transformers import CLIPConfig, CLIPImageProcessor

    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker

    torch.manual_seed(0)
    cfg = CLIPConfig(
        text_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16,
    )  # fmt: skip
    return StableDiffusionSafetyChecker(cfg).eval(), CLIPImageProcessor(crop_size=32, size=32)


# ------------------------------------------------------------------ sampling and timings


@pytest.mark.parametrize("unet", ["efficient", "stock"])
def test_determinism_and_timings(unet):
    pipe = tiny_pipeline(0, unet=unet)
    a, b, c = _run(pipe, 0), _run(pipe, 0), _run(pipe, 1)
    assert a.images.shape == (1, 32, 32, 3)
    assert np.array_equal(a.images, b.images)
    assert np.abs(a.images - c.images).max() > 1e-3
    t = a.timings
    assert t["steps_run"] == 2 and len(t["unet_ms_per_step"]) == 2 and t["cfg"] is True
    assert all(v > 0 for v in (t["text_encoder_ms"], t["unet_ms_total"], t["decoder_ms"], t["total_ms"]))
    assert t["total_ms"] >= t["unet_ms_total"] + t["decoder_ms"]
    assert "UNet:" in format_timings(t)


def test_timings_keys_and_return_dict_false():
    """Other code reads these keys; ``return_dict=False`` gives ``(images, nsfw, timings)``."""
    pipe = tiny_pipeline(0)
    images, nsfw, timings = _run(pipe, return_dict=False)
    assert images.shape == (1, 32, 32, 3) and nsfw is None
    assert set(timings) == {"text_encoder_ms", "unet_ms_per_step", "unet_ms_total", "unet_ms_mean", "decoder_ms",
                            "total_ms", "steps", "steps_run", "cfg", "guidance_embedded", "interrupted",
                            "device"}  # fmt: skip
    assert timings["steps"] == 2 and timings["interrupted"] is False and timings["device"] == "cpu"
    assert timings["unet_ms_total"] == pytest.approx(sum(timings["unet_ms_per_step"]))
    assert np.array_equal(images, _run(pipe).images)


# Images of the pipeline before it became a diffusers drop-in (commit f713a04), for the fixed tiny pipelines below:
# image[-1, -3:, -3:, -1] and the mean of all pixels. The bundle's evaluations were made with that code; a change in
# how noise is drawn, prompts are batched or guidance is applied moves these by 1e-2 or more.
GOLDEN = {
    "efficient_cfg": (
        dict(), dict(prompt=PROMPT, num_inference_steps=3, guidance_scale=7.5), (1, 32, 32, 3),
        [0.28627026, 0.41913041, 0.54308516, 0.41504443, 0.58369756, 0.62290305, 0.46754175, 0.47582254, 0.48847353],
        0.46865091,
    ),
    "stock_negative_two_per_prompt": (
        dict(unet="stock"),
        dict(prompt=[PROMPT, "blue square"], negative_prompt="green", num_images_per_prompt=2, num_inference_steps=2,
             guidance_scale=5.0),
        (4, 32, 32, 3),
        [0.71521270, 0.65317756, 0.55907017, 0.70671356, 0.71899104, 0.62357116, 0.43567359, 0.49118286, 0.57336199],
        0.47463909,
    ),
    "pixel_shuffle_no_cfg": (
        dict(compressed_decoder="pixel_shuffle"), dict(prompt="a small triangle", num_inference_steps=2,
                                                        guidance_scale=1.0), (1, 32, 32, 3),
        [0.79771781, 0.51154405, 0.54365939, 0.54063559, 0.69334608, 0.37056738, 0.44479245, 0.50049460, 0.59248072],
        0.58047575,
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(GOLDEN))
def test_images_match_the_pre_drop_in_pipeline(case):
    pipe_kwargs, call_kwargs, shape, corner, mean = GOLDEN[case]
    images = tiny_pipeline(0, **pipe_kwargs)(**call_kwargs, generator=_gen(0), output_type="np").images
    assert images.shape == shape
    assert np.abs(images[-1, -3:, -3:, -1].flatten() - np.array(corner)).max() < 2e-5
    assert abs(float(images.mean()) - mean) < 2e-6


def test_default_steps_and_guidance_come_from_the_config():
    comps = tiny_components(0)
    pipe = SnapFusionPipeline(**comps, default_num_inference_steps=3, default_guidance_scale=1.0)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(PROMPT, generator=_gen(0), output_type="np")
    assert out.timings["steps"] == 3 and out.timings["cfg"] is False and pipe.guidance_scale == 1.0
    explicit = pipe(PROMPT, generator=_gen(0), output_type="np", num_inference_steps=3, guidance_scale=1.0)
    assert np.array_equal(out.images, explicit.images)


def test_compressed_decoder_is_used():
    pipe = tiny_pipeline(0, compressed_decoder=True)
    a = _run(pipe).images
    pipe.vae_decoder = None
    pipe.register_modules(vae_decoder=None)
    b = _run(pipe).images
    assert np.abs(a - b).max() > 1e-4  # the pruned decoder decodes differently from the full one


def test_epsilon_and_v_prediction_through_scheduler_config():
    comps = tiny_components(0)
    eps = _run(SnapFusionPipeline(**comps)).images
    comps["scheduler"] = ddim_scheduler("v_prediction")
    v = _run(SnapFusionPipeline(**comps)).images
    assert np.abs(eps - v).max() > 1e-3


def test_pipeline_save_load_round_trip(tmp_path):
    pipe = tiny_pipeline(0, compressed_decoder=True)
    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["_class_name"] == "SnapFusionPipeline" and index["unet"][1] == "EfficientUNet2DConditionModel"
    loaded = load_pipeline(str(tmp_path))
    assert np.array_equal(_run(pipe).images, _run(loaded).images)


@pytest.mark.parametrize("with_safety", [False, True])
def test_loads_stock_sd_folder(tmp_path, with_safety):
    from diffusers import StableDiffusionPipeline

    comps = tiny_components(0, unet="stock")
    comps.pop("vae_decoder")
    checker, extractor = _tiny_safety_checker() if with_safety else (None, None)
    sd = StableDiffusionPipeline(**comps, safety_checker=checker, feature_extractor=extractor,
                                 requires_safety_checker=with_safety)  # fmt: skip
    sd.set_progress_bar_config(disable=True)
    sd.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "model_index.json").read_text())["_class_name"] == "StableDiffusionPipeline"
    pipe = load_pipeline(str(tmp_path))
    assert type(pipe.unet).__name__ == "UNet2DConditionModel"
    assert (pipe.safety_checker is not None) == with_safety
    ours = _run(pipe, guidance_scale=7.5)
    ref = sd(PROMPT, generator=_gen(0), num_inference_steps=2, output_type="np")
    assert np.abs(ours.images - ref.images).max() < 1e-4  # same sampling as diffusers' own pipeline


# ------------------------------------------------------------------ input checks


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_inference_steps=0), "num_inference_steps"),
        (dict(num_inference_steps=2.5), "num_inference_steps"),
        (dict(guidance_scale=float("nan")), "guidance_scale"),
        (dict(guidance_scale="high"), "guidance_scale"),
        (dict(height=20), "multiple of 16"),
        (dict(width=0), "multiple of 16"),
        (dict(output_type="jpeg"), "output_type"),
        (dict(num_images_per_prompt=0), "num_images_per_prompt"),
        (dict(latents=torch.zeros(1, 4, 8, 8)), r"`latents` has shape \(1, 4, 8, 8\); expected \(1, 4, 16, 16\)"),
    ],
)
def test_bad_input(tiny_pipe, kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny_pipe("x", **kwargs)


def test_long_prompt_truncates_and_warns_once(tiny_pipe, caplog):
    long = "red " * 200
    with caplog.at_level(logging.WARNING):
        tiny_pipe(long, num_inference_steps=1, output_type="np")
        tiny_pipe(long, num_inference_steps=1, output_type="np")
    warnings = [r for r in caplog.records if "truncated" in r.getMessage()]
    assert len(warnings) == 1 and "16 tokens" in warnings[0].getMessage()


# ------------------------------------------------------------------ generators: one per image


def test_one_generator_per_image_gives_each_image_its_own_noise():
    """``generator=[g1, g2]``: image k is drawn from generator k (diffusers' ``randn_tensor``)."""
    pipe = tiny_pipeline(0)
    images = pipe([PROMPT, PROMPT], generator=[_gen(1), _gen(2)], num_inference_steps=2, output_type="np").images
    assert images.shape == (2, 32, 32, 3)
    assert np.abs(images[0] - images[1]).max() > 1e-3  # two generators, two noises
    one = pipe(PROMPT, generator=[_gen(1)], num_inference_steps=2, output_type="np").images
    assert np.array_equal(one, _run(pipe, 1).images)  # a list of one is that generator


def test_inference_batch_single_identical():
    """diffusers' ``test_inference_batch_single_identical``: an image in a batch equals it alone with its generator."""
    pipe = tiny_pipeline(0)
    prompts, seeds = [PROMPT, "a blue square on the left"], [3, 4]
    batch = pipe(prompts, generator=[_gen(s) for s in seeds], num_inference_steps=2, output_type="np").images
    for k, (prompt, seed) in enumerate(zip(prompts, seeds)):
        alone = pipe(prompt, generator=_gen(seed), num_inference_steps=2, output_type="np").images[0]
        assert np.abs(batch[k] - alone).max() < 1e-4
    per_prompt = pipe(PROMPT, num_images_per_prompt=2, generator=[_gen(3), _gen(5)], num_inference_steps=2,
                      output_type="np").images  # fmt: skip
    assert np.abs(per_prompt[0] - batch[0]).max() < 1e-4
    assert np.abs(per_prompt[1] - _run(pipe, 5).images[0]).max() < 1e-4


@pytest.mark.parametrize("n", [1, 3])
def test_generator_list_of_the_wrong_length_is_refused(tiny_pipe, n):
    with pytest.raises(ValueError, match=f"list of {n} generators but 2 images"):
        tiny_pipe([PROMPT, PROMPT], generator=[_gen(s) for s in range(n)], num_inference_steps=1, output_type="np")


# ------------------------------------------------------------------ optional components


def test_save_load_optional_components(tmp_path):
    """diffusers' ``test_save_load_optional_components``: every optional component set to ``None``, the pipeline
    runs, saves, loads with them ``None`` and gives the same images."""
    checker, extractor = _tiny_safety_checker()
    for decoder in (False, True):
        pipe = SnapFusionPipeline(**tiny_components(0, compressed_decoder=decoder), safety_checker=checker,
                                  feature_extractor=extractor)  # fmt: skip
        pipe.set_progress_bar_config(disable=True)
        optional = list(pipe._optional_components)
        assert optional == ["vae" if decoder else "vae_decoder", "safety_checker", "feature_extractor"]
        for name in optional:
            setattr(pipe, name, None)
        before = _run(pipe).images
        folder = tmp_path / str(decoder)
        pipe.save_pretrained(folder, safe_serialization=False)
        loaded = SnapFusionPipeline.from_pretrained(folder)
        loaded.set_progress_bar_config(disable=True)
        assert all(getattr(loaded, name) is None for name in optional)
        assert np.abs(_run(loaded).images - before).max() < 1e-4


def test_decoder_only_pipeline_saves_and_loads(tmp_path):
    comps = tiny_components(0, compressed_decoder="pixel_shuffle")
    comps["vae"] = None
    pipe = SnapFusionPipeline(**comps)
    pipe.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "model_index.json").read_text())["vae"] == [None, None]
    loaded = load_pipeline(str(tmp_path))
    assert loaded.vae is None and np.array_equal(_run(loaded).images, _run(pipe).images)


def test_no_decoder_and_checker_without_extractor_are_refused():
    pipe = tiny_pipeline(0)
    pipe.vae = None
    with pytest.raises(ValueError, match="no `vae` and no `vae_decoder`"):
        _run(pipe)
    assert _run(pipe, output_type="latent").images.shape == (1, 4, 16, 16)
    checker, _ = _tiny_safety_checker()
    pipe = SnapFusionPipeline(**tiny_components(0), safety_checker=checker)
    with pytest.raises(ValueError, match="`safety_checker` but no `feature_extractor`"):
        _run(pipe)


def test_components_round_trip():
    """``SnapFusionPipeline(**pipe.components)`` rebuilds the pipeline from the same modules (diffusers'
    ``test_components_function``: the keys are the modules, not the config values)."""
    checker, extractor = _tiny_safety_checker()
    pipe = SnapFusionPipeline(**tiny_components(0, compressed_decoder=True), safety_checker=checker,
                              feature_extractor=extractor)  # fmt: skip
    assert set(pipe.components) == {"vae", "text_encoder", "tokenizer", "unet", "scheduler", "vae_decoder",
                                    "safety_checker", "feature_extractor"}  # fmt: skip
    again = SnapFusionPipeline(**pipe.components)
    assert all(again.components[k] is v for k, v in pipe.components.items())
    a, b = _run(pipe, guidance_scale=7.5), _run(again, guidance_scale=7.5)
    assert np.array_equal(a.images, b.images) and a.nsfw_content_detected == b.nsfw_content_detected


def test_encode_prompt_works_in_isolation():
    """diffusers' ``test_encode_prompt_works_in_isolation``: a pipeline of only the text encoder and tokenizer
    encodes; one without them generates from the embeddings, the same images as from the text."""
    comps = tiny_components(0)
    text_only = SnapFusionPipeline(**{k: v if k in ("text_encoder", "tokenizer") else None for k, v in comps.items()})
    prompt_embeds, negative_prompt_embeds = text_only.encode_prompt(PROMPT, "cpu", 1, True, negative_prompt="green")
    assert prompt_embeds.shape == negative_prompt_embeds.shape == (1, 16, 32)
    no_text = SnapFusionPipeline(**{k: None if k in ("text_encoder", "tokenizer") else v for k, v in comps.items()})
    no_text.set_progress_bar_config(disable=True)
    out = _run(no_text, prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds)
    ref = _run(SnapFusionPipeline(**comps), negative_prompt="green")
    assert np.abs(out.images - ref.images).max() < 1e-4
    with pytest.raises(ValueError, match="no text encoder"):
        _run(no_text, prompt_embeds=prompt_embeds)  # guidance needs negative embeddings, which it cannot encode


# ------------------------------------------------------------------ prompt_embeds / negative_prompt_embeds


def test_prompt_embeds_give_the_same_images_as_the_prompt():
    pipe = tiny_pipeline(0)
    prompts = [PROMPT, "a green triangle"]
    prompt_embeds, negative_prompt_embeds = pipe.encode_prompt(prompts, "cpu", 1, True, negative_prompt="blue")
    ref = pipe(prompts, negative_prompt="blue", generator=[_gen(0), _gen(1)], num_inference_steps=2, output_type="np")
    both = pipe(prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds,
                generator=[_gen(0), _gen(1)], num_inference_steps=2, output_type="np")  # fmt: skip
    assert np.array_equal(both.images, ref.images)
    only = pipe(prompt_embeds=prompt_embeds, negative_prompt="blue", generator=[_gen(0), _gen(1)],
                num_inference_steps=2, output_type="np")  # fmt: skip
    assert np.abs(only.images - ref.images).max() < 1e-4
    no_cfg = _run(pipe, prompt=None, prompt_embeds=prompt_embeds[:1], guidance_scale=1.0)
    assert np.abs(no_cfg.images - _run(pipe, guidance_scale=1.0).images).max() < 1e-4


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(prompt=PROMPT, prompt_embeds=torch.zeros(1, 16, 32)), "`prompt` or `prompt_embeds`, not both"),
        (dict(prompt=None), "Pass `prompt`"),
        (dict(negative_prompt="x", negative_prompt_embeds=torch.zeros(1, 16, 32)), "not both"),
        (dict(prompt=None, prompt_embeds=torch.zeros(16, 32)), r"\(batch, tokens, features\) tensor; got \(16, 32\)"),
        (dict(prompt=None, prompt_embeds=torch.zeros(1, 16, 8)), "8 features per token; the UNet expects 32"),
        (dict(prompt=None, prompt_embeds=torch.zeros(1, 16, 32), negative_prompt_embeds=torch.zeros(1, 8, 32)),
         "must have the same shape"),
        (dict(prompt=[PROMPT, PROMPT], negative_prompt_embeds=torch.zeros(1, 16, 32)),
         "batch 1 but the prompts are 2"),
        (dict(prompt=None, prompt_embeds=torch.zeros(2, 16, 32), negative_prompt=["x"]), "has 1 entries"),
    ],
)  # fmt: skip
def test_bad_embeddings(tiny_pipe, kwargs, match):
    kwargs.setdefault("prompt", PROMPT)
    with pytest.raises(ValueError, match=match):
        tiny_pipe(**kwargs, num_inference_steps=1, output_type="np")


# ------------------------------------------------------------------ callbacks


def test_call_signature_has_diffusers_argument_names():
    params = inspect.signature(SnapFusionPipeline.__call__).parameters
    for name in ("prompt", "negative_prompt", "num_inference_steps", "guidance_scale", "generator", "height", "width",
                 "num_images_per_prompt", "latents", "prompt_embeds", "negative_prompt_embeds", "output_type",
                 "return_dict", "cross_attention_kwargs", "callback_on_step_end",
                 "callback_on_step_end_tensor_inputs"):  # fmt: skip
        assert name in params
    assert params["prompt"].default is None


def test_no_cfg_at_guidance_one_and_callback():
    pipe = tiny_pipeline(0)
    seen = []

    def cb(p, i, t, kwargs):
        seen.append(i)
        return {"latents": kwargs["latents"] * 0}

    out = _run(pipe, guidance_scale=1.0, num_inference_steps=3, callback_on_step_end=cb)
    assert seen == [0, 1, 2] and out.timings["cfg"] is False


def test_callback_inputs():
    """diffusers' ``test_callback_inputs``: every name in ``_callback_tensor_inputs`` is passable and arrives as a
    tensor; a subset gives only that subset; a replaced tensor is used; an unknown name is a ValueError."""
    pipe = tiny_pipeline(0)
    assert pipe._callback_tensor_inputs == ["latents", "prompt_embeds", "negative_prompt_embeds"]
    got = []

    def record(p, i, t, kwargs):
        got.append({k: tuple(v.shape) for k, v in kwargs.items()})
        return kwargs

    _run(pipe, callback_on_step_end=record, callback_on_step_end_tensor_inputs=pipe._callback_tensor_inputs)
    assert got[0] == {"latents": (1, 4, 16, 16), "prompt_embeds": (2, 16, 32), "negative_prompt_embeds": (1, 16, 32)}
    got.clear()
    _run(pipe, callback_on_step_end=record, callback_on_step_end_tensor_inputs=["latents"])
    assert got == [{"latents": (1, 4, 16, 16)}] * 2

    def zero_last(p, i, t, kwargs):
        if i == p.num_timesteps - 1:
            kwargs["latents"] = torch.zeros_like(kwargs["latents"])
        return kwargs

    out = _run(pipe, output_type="latent", callback_on_step_end=zero_last,
               callback_on_step_end_tensor_inputs=pipe._callback_tensor_inputs)  # fmt: skip
    assert out.images.abs().sum() == 0
    for bad in (["latents", "noise_pred"], ["timesteps"]):
        with pytest.raises(ValueError, match="callback_on_step_end_tensor_inputs"):
            _run(pipe, callback_on_step_end=record, callback_on_step_end_tensor_inputs=bad)


def test_callback_cfg_reads_and_writes_the_pipeline_properties():
    """diffusers' ``test_callback_cfg``: a callback raising ``pipe._guidance_scale`` each step; the properties a
    callback reads (num_timesteps, do_classifier_free_guidance, cross_attention_kwargs, interrupt)."""
    pipe = tiny_pipeline(0)
    seen = []

    def increase_guidance(p, i, t, kwargs):
        seen.append((p.num_timesteps, p.do_classifier_free_guidance, p.cross_attention_kwargs, p.interrupt))
        p._guidance_scale += 1.0
        return kwargs

    _run(pipe, guidance_scale=2.0, num_inference_steps=3, callback_on_step_end=increase_guidance,
         cross_attention_kwargs={"scale": 1.0})  # fmt: skip
    assert pipe.guidance_scale == 2.0 + pipe.num_timesteps == 5.0
    assert seen == [(3, True, {"scale": 1.0}, False)] * 3


def test_guidance_changed_by_a_callback_is_used_from_the_next_step():
    """A callback that sets ``pipe._guidance_scale = 0.0`` and keeps the conditional embeddings (diffusers'
    ``SDCFGCutoffCallback``) turns classifier-free guidance off for the steps after it."""
    pipe = tiny_pipeline(0)
    batches = []
    hook = pipe.unet.register_forward_pre_hook(lambda module, args: batches.append(args[0].shape[0]))
    try:
        cut = _run(pipe, num_inference_steps=3, callback_on_step_end=SDCFGCutoffCallback(cutoff_step_ratio=None,
                                                                                           cutoff_step_index=0))
        assert batches == [2, 1, 1] and pipe.guidance_scale == 0.0 and not pipe.do_classifier_free_guidance
        batches.clear()
        last = _run(pipe, num_inference_steps=3, callback_on_step_end=SDCFGCutoffCallback(cutoff_step_ratio=None,
                                                                                            cutoff_step_index=2))
        assert batches == [2, 2, 2]
    finally:
        hook.remove()
    full = _run(pipe, num_inference_steps=3)
    assert np.array_equal(last.images, full.images)  # cut after the last step: nothing changes
    assert np.abs(cut.images - full.images).max() > 1e-3


def test_interrupt_stops_after_current_step():
    """diffusers' stop, as the app's Cancel uses it: a step callback sets ``pipe._interrupt = True``; the run ends
    after that step, ``pipe.interrupt`` reads True, and the next call starts afresh."""
    pipe = tiny_pipeline(0)
    flags = []

    def stop_at_second(p, i, t, kwargs):
        flags.append(p.interrupt)
        if i == 1:
            p._interrupt = True
        return kwargs

    out = _run(pipe, num_inference_steps=4, callback_on_step_end=stop_at_second)
    assert flags == [False, False] and out.timings["steps_run"] == 2 and out.timings["interrupted"] is True
    assert pipe.interrupt is True
    assert _run(pipe).timings["interrupted"] is False and pipe.interrupt is False
