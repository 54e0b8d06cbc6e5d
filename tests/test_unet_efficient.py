"""pipelines/unet_efficient.py: the efficient UNet: conversion from a stock SD-1.x UNet, layouts, block surgery."""

import tempfile

import pytest
import torch

from pipelines import BlockId, EfficientUNet2DConditionModel
from pipelines.tiny import tiny_efficient_unet, tiny_stock_unet
from pipelines.unet_efficient import snapfusion_layout


def _inputs(batch=2, size=16, ctx=32, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 4, size, size, generator=g), torch.tensor([10, 700][:batch]),
            torch.randn(batch, 5, ctx, generator=g))  # fmt: skip


@pytest.mark.parametrize("channels", [(8, 16, 16, 16), (16, 24, 32, 32), (8, 8, 8, 8)])
def test_from_unet_is_exact(channels):
    stock = tiny_stock_unet(0, channels=channels)
    eff = EfficientUNet2DConditionModel.from_unet(stock)
    x, t, c = _inputs()
    with torch.no_grad():
        a = stock(x, t, c).sample
        b = eff(x, t, c).sample
    assert a.shape == b.shape == x.shape
    assert (a - b).abs().max().item() <= 1e-5
    assert sum(p.numel() for p in eff.parameters()) == sum(p.numel() for p in stock.parameters())


def test_from_unet_rejects_other_topologies():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    other = UNet2DConditionModel(sample_size=8, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
                                 cross_attention_dim=16, attention_head_dim=2,
                                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                 up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"))  # fmt: skip
    with pytest.raises(ValueError, match="SD-1.x topology"):
        EfficientUNet2DConditionModel.from_unet(other)


@pytest.mark.slow
def test_preset_parameter_counts():
    sd = EfficientUNet2DConditionModel.from_preset("sd15")
    assert sum(p.numel() for p in sd.parameters()) == 859_520_964  # SD-v1.5's UNet, exactly
    snap = EfficientUNet2DConditionModel.from_preset("snapfusion")
    n = sum(p.numel() for p in snap.parameters())
    assert n == 767_520_644  # our Table 3 reading (docs/architecture.md); the paper says 848M
    assert snap.architecture() == {
        "Down-1": {"CA": 0, "RB": 2}, "Down-2": {"CA": 2, "RB": 2}, "Down-3": {"CA": 2, "RB": 1},
        "Mid": {"CA": 1, "RB": 4}, "Up-1": {"CA": 6, "RB": 2}, "Up-2": {"CA": 3, "RB": 3},
        "Up-3": {"CA": 0, "RB": 3},
    }  # fmt: skip


def test_snapfusion_layout_matches_table3_at_tiny_width():
    m = tiny_efficient_unet(0, preset="snapfusion")
    assert m.architecture()["Up-1"] == {"CA": 6, "RB": 2}
    assert m.architecture()["Mid"] == {"CA": 1, "RB": 4}
    down, mid, up = snapfusion_layout()
    assert m.config.up_layout == up and m.config.mid_layout == mid and m.config.down_layout == down


def test_block_ids_are_stable_and_parse():
    m = tiny_efficient_unet(0, preset="sd15")
    ids = m.blocks()
    assert len(ids) == len(set(ids)) == 2 * 3 * 2 + 2 + 3 + 3 + 3 * 6  # down RB+CA, down3 RB, mid, up
    assert ids == tiny_efficient_unet(1, preset="sd15").blocks()
    for b in ids:
        assert BlockId.parse(str(b)) == b
    with pytest.raises(ValueError, match="malformed"):
        BlockId.parse("up1-3")
    with pytest.raises(ValueError, match="does not exist"):
        m.get_block("up9.0:RB")


def test_skip_equals_remove_and_changes_output_only_when_expected():
    m = tiny_efficient_unet(0, preset="sd15")
    x, t, c = _inputs()
    drop = ["up1.3:CA", "down0.2:RB", "mid.1:CA", "up2.2:RB"]
    with torch.no_grad():
        full = m(x, t, c).sample
        skipped = m(x, t, c, skip_blocks=drop).sample
        removed_model = m.remove_blocks(drop)
        removed = removed_model(x, t, c).sample
    assert (skipped - removed).abs().max().item() <= 1e-6
    assert (full - skipped).abs().max().item() > 1e-4
    assert len(removed_model.blocks()) == len(m.blocks()) - len(drop)
    # weights of the remaining blocks are carried over unchanged
    assert torch.equal(removed_model.get_block("up1.3:RB").conv1.weight, m.get_block("up1.4:RB").conv1.weight)
    assert torch.equal(removed_model.conv_in.weight, m.conv_in.weight)


def test_channel_changing_blocks_cannot_be_removed():
    m = tiny_efficient_unet(0, preset="sd15")
    assert not m.is_removable("down1.0:RB")  # 8 -> 16 channels
    with pytest.raises(ValueError, match="changes channels"):
        m.remove_blocks(["down1.0:RB"])


def test_duplicate_blocks():
    m = tiny_efficient_unet(0, preset="sd15")
    x, t, c = _inputs()
    d = m.duplicate_blocks(["up1.1:CA", "down0.2:RB"])
    assert len(d.blocks()) == len(m.blocks()) + 2
    assert d.config.up_layout[1][:3] == ["RB+skip2", "CA", "CA"]
    # the copy carries the original's weights
    assert torch.equal(d.get_block("up1.2:CA").proj_in.weight, m.get_block("up1.1:CA").proj_in.weight)
    # a skip-consuming RB gets an identity-initialised plain RB after it: output unchanged
    e = m.duplicate_blocks(["up2.0:RB"])
    assert e.config.up_layout[2][:2] == ["RB+skip2", "RB"]
    with torch.no_grad():
        assert (e(x, t, c).sample - m(x, t, c).sample).abs().max().item() <= 1e-6
        assert d(x, t, c).sample.shape == x.shape


def test_stochastic_skipping_only_in_training():
    m = tiny_efficient_unet(0, preset="sd15")
    x, t, c = _inputs()
    m.set_block_keep_prob(0.5)
    with torch.no_grad():
        m.eval()
        a, b = m(x, t, c).sample, m(x, t, c).sample
        assert torch.equal(a, b)
        m.train()
        outs = [m(x, t, c).sample for _ in range(3)]
    assert any((o - a).abs().max() > 1e-4 for o in outs)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        m.set_block_keep_prob(0.0)


def test_layout_validation():
    down, mid, up = snapfusion_layout()
    bad = [list(s) for s in up]
    bad[3][0] = "RB+skip7"
    with pytest.raises(ValueError, match="skip 7"):
        EfficientUNet2DConditionModel(block_out_channels=(8, 16, 16, 16), norm_num_groups=4, down_layout=down,
                                      mid_layout=mid, up_layout=bad, cross_attention_dim=8, num_attention_heads=2)
    with pytest.raises(ValueError, match="not allowed"):
        EfficientUNet2DConditionModel(block_out_channels=(8, 16, 16, 16), norm_num_groups=4, down_layout=down,
                                      mid_layout=["RB", "XX"], up_layout=up, cross_attention_dim=8)


def test_latent_size_must_match_downsampling():
    m = tiny_efficient_unet(0)
    with pytest.raises(ValueError, match="multiple of 8"):
        m(torch.randn(1, 4, 12, 12), 1, torch.randn(1, 3, 32))


def test_save_load_round_trip():
    m = tiny_efficient_unet(0).remove_blocks(["up1.1:CA"])
    x, t, c = _inputs()
    with tempfile.TemporaryDirectory() as d:
        m.save_pretrained(d)
        n = EfficientUNet2DConditionModel.from_pretrained(d)
    assert n.config.up_layout == m.config.up_layout
    with torch.no_grad():
        assert torch.equal(m(x, t, c).sample, n(x, t, c).sample)


def test_torch_export():
    m = tiny_efficient_unet(0).eval()
    x, t, c = _inputs()
    ep = torch.export.export(m, (x, t, c), kwargs={"return_dict": False})
    with torch.no_grad():
        assert (ep.module()(x, t, c, return_dict=False)[0] - m(x, t, c).sample).abs().max() <= 1e-5
