"""pipelines/guidance.py and the guidance-embedded UNet: diffusers' embedding, exact conversion of an LCM-style
diffusers UNet, save/load, the zero-initialised embedding, and the pipeline's one pass per step."""

import tempfile

import numpy as np
import pytest
import torch

from diffusers import LatentConsistencyModelPipeline
from pipelines import EfficientUNet2DConditionModel
from pipelines.guidance import add_guidance_embedding, guidance_scale_embedding, is_guidance_embedded
from pipelines.tiny import tiny_efficient_unet, tiny_pipeline, tiny_stock_unet


def _inputs(batch=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 4, 16, 16, generator=g), torch.tensor([10, 700][:batch]),
            torch.randn(batch, 5, 32, generator=g))  # fmt: skip


@pytest.mark.parametrize("dim", [8, 9, 256])
def test_embedding_is_diffusers_lcm_embedding_of_w_minus_one(dim):
    w = torch.tensor([1.0, 2.5, 8.0, 14.0])
    ours = guidance_scale_embedding(w, dim)
    theirs = LatentConsistencyModelPipeline.get_guidance_scale_embedding(None, w - 1, embedding_dim=dim)
    assert torch.equal(ours, theirs)
    assert torch.equal(guidance_scale_embedding(2.5, dim, batch=3), theirs[1:2].repeat(3, 1))


def test_from_unet_converts_a_guidance_embedded_diffusers_unet_exactly():
    stock = tiny_stock_unet(0, time_cond_proj_dim=8)
    torch.nn.init.normal_(stock.time_embedding.cond_proj.weight)
    eff = EfficientUNet2DConditionModel.from_unet(stock)
    assert eff.config.time_cond_proj_dim == 8 and is_guidance_embedded(eff)
    x, t, c = _inputs()
    cond = guidance_scale_embedding(torch.tensor([2.0, 7.5]), 8)
    with torch.no_grad():
        a, b = stock(x, t, c, timestep_cond=cond).sample, eff(x, t, c, timestep_cond=cond).sample
        other = eff(x, t, c, timestep_cond=guidance_scale_embedding(torch.tensor([4.0, 4.0]), 8)).sample
    assert (a - b).abs().max().item() <= 1e-5
    assert (other - b).abs().max().item() > 1e-3  # the guidance input changes the output
    assert sum(p.numel() for p in eff.parameters()) == sum(p.numel() for p in stock.parameters())


def test_guidance_embedded_unet_round_trips_save_pretrained():
    unet = tiny_efficient_unet(0, time_cond_proj_dim=8)
    x, t, c = _inputs()
    cond = guidance_scale_embedding(torch.tensor([3.0, 5.0]), 8)
    with tempfile.TemporaryDirectory() as d:
        unet.save_pretrained(d)
        back = EfficientUNet2DConditionModel.from_pretrained(d)
    assert back.config.time_cond_proj_dim == 8
    with torch.no_grad():
        assert torch.equal(unet(x, t, c, timestep_cond=cond).sample, back(x, t, c, timestep_cond=cond).sample)


def test_a_unet_without_embedding_is_unchanged_and_refuses_timestep_cond():
    unet = tiny_efficient_unet(0)
    assert unet.config.time_cond_proj_dim is None and not is_guidance_embedded(unet)
    assert not hasattr(unet.time_embedding, "cond_proj") or unet.time_embedding.cond_proj is None
    x, t, c = _inputs()
    with pytest.raises(ValueError, match="no guidance embedding"):
        unet(x, t, c, timestep_cond=guidance_scale_embedding(2.0, 8, batch=2))
    with pytest.raises(ValueError, match="time_cond_proj_dim is 8"):
        tiny_efficient_unet(0, time_cond_proj_dim=8)(x, t, c, timestep_cond=guidance_scale_embedding(2.0, 4, batch=2))


@pytest.mark.parametrize("kind", ["efficient", "stock"])
def test_added_embedding_starts_as_the_original_unet(kind):
    unet = tiny_efficient_unet(0) if kind == "efficient" else tiny_stock_unet(0)
    new = add_guidance_embedding(unet, 8)
    assert type(new) is type(unet) and new.config.time_cond_proj_dim == 8
    x, t, c = _inputs()
    with torch.no_grad():
        ref = unet(x, t, c).sample
        for w in (1.0, 5.0, 12.0):
            assert torch.equal(new(x, t, c, timestep_cond=guidance_scale_embedding(w, 8, batch=2)).sample, ref)
    with pytest.raises(ValueError, match="already has a guidance embedding"):
        add_guidance_embedding(new, 8)


def test_embedding_is_added_to_a_unet_loaded_from_a_folder(tmp_path):
    # a loaded config lists time_cond_proj_dim among diffusers' "_use_default_values"
    tiny_efficient_unet(0).save_pretrained(tmp_path)
    loaded = EfficientUNet2DConditionModel.from_pretrained(tmp_path)
    assert add_guidance_embedding(loaded, 8).config.time_cond_proj_dim == 8


def _count_unet_calls(pipe):
    batches = []
    forward = pipe.unet.forward

    def counted(sample, *args, **kwargs):
        batches.append((sample.shape[0], kwargs.get("timestep_cond") is not None))
        return forward(sample, *args, **kwargs)

    pipe.unet.forward = counted
    return batches


def _run(pipe, **kw):
    kw.setdefault("num_inference_steps", 4)
    return pipe("a red circle", generator=torch.Generator().manual_seed(0), output_type="np", **kw)


def test_pipeline_runs_one_pass_per_step_with_the_guidance_as_input():
    pipe = tiny_pipeline(0, time_cond_proj_dim=8)
    calls = _count_unet_calls(pipe)
    out = _run(pipe, guidance_scale=5.0)
    assert calls == [(1, True)] * 4  # 4 steps, batch 1 each: no CFG batch
    assert out.timings["cfg"] is False and out.timings["guidance_embedded"] is True
    assert not pipe.do_classifier_free_guidance
    low, high = _run(pipe, guidance_scale=1.5).images, _run(pipe, guidance_scale=8.0).images
    assert np.abs(low - high).max() > 1e-3  # the guidance scale reaches the network
    plain = tiny_pipeline(0)
    plain_calls = _count_unet_calls(plain)
    _run(plain, guidance_scale=5.0)
    assert plain_calls == [(2, False)] * 4  # the CFG pipeline: one batch-2 pass per step


def test_pipeline_refuses_a_negative_prompt_and_a_scale_outside_the_trained_range():
    pipe = tiny_pipeline(0, time_cond_proj_dim=8)
    with pytest.raises(ValueError, match="`negative_prompt` has no effect"):
        _run(pipe, negative_prompt="blurry")
    _run(pipe, negative_prompt="")  # empty is fine: nothing to ignore
    pipe.register_to_config(guidance_scale_range=[1.5, 6.0])
    with pytest.raises(ValueError, match=r"outside the range .* \[1.5, 6\]"):
        _run(pipe, guidance_scale=8.0)
    _run(pipe, guidance_scale=6.0)


def test_guidance_range_round_trips_with_the_pipeline(tmp_path):
    pipe = tiny_pipeline(0, time_cond_proj_dim=8)
    pipe.register_to_config(guidance_scale_range=[1.5, 6.0])
    pipe.save_pretrained(tmp_path)
    from pipelines.loading import load_pipeline

    back = load_pipeline(str(tmp_path), "cpu", "fp32")
    assert back.config.guidance_scale_range == [1.5, 6.0] and back.guidance_embedded
    assert np.allclose(_run(back, guidance_scale=3.0).images, _run(pipe, guidance_scale=3.0).images, atol=1e-5)
