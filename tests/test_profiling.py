"""Parameter and MAC counting (pipelines/profiling.py)."""

import pytest
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from diffusers.models.attention_processor import Attention
from pipelines import CompressedVAEDecoder, EfficientUNet2DConditionModel
from pipelines.guidance import add_guidance_embedding
from pipelines.latency import LatencyTable
from pipelines.profiling import (
    OTHER,
    architecture_table,
    count_decoder_macs,
    count_forward_macs,
    count_macs,
    count_params,
    per_stage_latency,
    per_stage_macs,
)
from pipelines.tiny import tiny_efficient_unet, tiny_stock_unet, tiny_vae

PAPER_TABLE3 = {  # stage: (SD-v1.5 CA, RB), (SnapFusion CA, RB)
    "Down-1": ((2, 2), (0, 2)),
    "Down-2": ((2, 2), (2, 2)),
    "Down-3": ((2, 2), (2, 1)),
    "Mid": ((1, 7), (1, 4)),
    "Up-1": ((3, 3), (6, 2)),
    "Up-2": ((3, 3), (3, 3)),
    "Up-3": ((3, 3), (0, 3)),
}


def _meta_preset(name):
    with torch.device("meta"):
        return EfficientUNet2DConditionModel.from_preset(name)


def test_conv2d_macs_by_hand():
    conv = nn.Conv2d(3, 8, kernel_size=3, padding=1)
    # output (1, 8, 10, 10) = 800 elements, each a dot product over 3 channels x 3 x 3
    assert count_forward_macs(conv, torch.zeros(1, 3, 10, 10)) == 800 * 27
    grouped = nn.Conv2d(4, 8, kernel_size=1, stride=2, groups=2)
    # output (2, 8, 3, 3) = 144 elements, each over 4 / 2 input channels
    assert count_forward_macs(grouped, torch.zeros(2, 4, 6, 6)) == 144 * 2


def test_linear_macs_by_hand():
    assert count_forward_macs(nn.Linear(5, 7), torch.zeros(2, 3, 5)) == 2 * 3 * 7 * 5


def test_cross_attention_macs_by_hand():
    attn = Attention(query_dim=8, cross_attention_dim=6, heads=2, dim_head=4)
    x, ctx = torch.zeros(1, 10, 8), torch.zeros(1, 3, 6)
    projections = 10 * 8 * 8 + 3 * 8 * 6 * 2 + 10 * 8 * 8  # to_q, to_k + to_v, to_out
    matmuls = 10 * 3 * 8 * 2  # Q K^T and A V: Lq x Lk x inner dim each
    assert count_forward_macs(attn, x, encoder_hidden_states=ctx) == projections + matmuls


def test_sd15_preset_has_sd15_parameter_count():
    assert count_params(_meta_preset("sd15")) == 859_520_964


@pytest.mark.parametrize("preset,column", [("sd15", 0), ("snapfusion", 1)])
def test_architecture_table_matches_paper_table3(preset, column):
    unet = _meta_preset(preset)
    rows = architecture_table(unet)
    assert [r["stage"] for r in rows] == list(PAPER_TABLE3) + [OTHER]
    for row in rows[:-1]:
        assert (row["CA"], row["RB"]) == PAPER_TABLE3[row["stage"]][column], row
    assert sum(r["params"] for r in rows) == count_params(unet)
    assert rows[0]["resolution"] == "H/8" and rows[3]["resolution"] == "H/64" and rows[3]["channels"] == 1280


def test_converted_stock_unet_has_identical_counts():
    stock = tiny_stock_unet()
    converted = EfficientUNet2DConditionModel.from_unet(stock)
    assert count_params(stock) == count_params(converted)
    assert count_macs(stock, 16, 16) == count_macs(converted, 16, 16)
    assert per_stage_macs(stock, 16, 16, batch=1) == per_stage_macs(converted, 16, 16, batch=1)
    assert architecture_table(stock) == architecture_table(converted)


def test_macs_agree_with_torch_flop_counter():
    # an independent count: PyTorch's FlopCounterMode (FLOPs = 2 x MACs) over the decomposed attention
    stock, vae = tiny_stock_unet(), tiny_vae()
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc, torch.no_grad():
        stock(torch.randn(2, 4, 16, 16), 500, torch.randn(2, 77, 32))
    assert fc.get_total_flops() == 2 * count_macs(stock, 16, 16)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc, torch.no_grad():
        vae.decode(torch.randn(1, 4, 8, 8))
    assert fc.get_total_flops() == 2 * count_decoder_macs(vae, 8, 8)


def test_per_stage_macs_sum_and_batch_scaling():
    unet = tiny_efficient_unet(preset="sd15")
    stages = per_stage_macs(unet, 16, 16, batch=2)
    assert list(stages) == list(PAPER_TABLE3) + [OTHER]
    assert sum(stages.values()) == count_macs(unet, 16, 16, batch=2)
    assert count_macs(unet, 16, 16, batch=4) == 2 * count_macs(unet, 16, 16, batch=2)
    # self-attention grows with tokens^2, everything else with tokens: 4x the tokens costs more than 4x
    assert count_macs(unet, 32, 32) > 4 * count_macs(unet, 16, 16)


def test_guidance_embedding_counts_its_projection():
    unet = tiny_efficient_unet()
    embedded = add_guidance_embedding(unet, 8)
    sinusoid = embedded.time_embedding.linear_1.in_features
    # one more linear layer, w's 8 features -> the timestep sinusoid's width, per sample: nothing else changes
    assert count_macs(embedded, 16, 16, batch=1) == count_macs(unet, 16, 16, batch=1) + 8 * sinusoid
    assert count_macs(embedded, 16, 16, batch=2) == count_macs(unet, 16, 16, batch=2) + 2 * 8 * sinusoid


def test_removed_and_skipped_blocks_cost_nothing():
    unet = tiny_efficient_unet(preset="sd15")
    block = "up3.1:CA"
    full = count_macs(unet, 16, 16)
    removed = count_macs(unet.remove_blocks([block]), 16, 16)
    assert removed < full
    unet.skip_blocks = frozenset({unet._check_id(block)})
    assert count_macs(unet, 16, 16) == removed


def test_full_size_snapfusion_costs_less_than_sd15():
    sd, sf = _meta_preset("sd15"), _meta_preset("snapfusion")
    sd_stages, sf_stages = per_stage_macs(sd, 64, 64), per_stage_macs(sf, 64, 64)
    assert sum(sf_stages.values()) < sum(sd_stages.values())
    assert sf_stages["Down-1"] < sd_stages["Down-1"] and sf_stages["Up-3"] < sd_stages["Up-3"]  # no CA at H/8
    assert sf_stages["Up-1"] > sd_stages["Up-1"]  # 3 more CA blocks at H/32
    assert sf_stages["Down-2"] == sd_stages["Down-2"]  # unchanged stage


def test_pruned_decoder_has_about_a_quarter_of_the_macs():
    vae = tiny_vae(channels=(8, 16))
    pruned = CompressedVAEDecoder.from_vae(vae, 0.5)
    full, half = count_decoder_macs(vae, 8, 8), count_decoder_macs(pruned, 8, 8)
    assert 0.2 < half / full < 0.35  # channel halving: ~1/4 of the conv MACs


def test_bad_sizes_are_rejected():
    unet = tiny_efficient_unet()
    with pytest.raises(ValueError, match="multiple of 8"):
        count_macs(unet, 12, 16)
    with pytest.raises(ValueError, match="batch"):
        count_macs(unet, 16, 16, batch=0)
    with pytest.raises(ValueError, match="latent_height"):
        count_decoder_macs(tiny_vae(), 0, 8)
    with pytest.raises(ValueError, match="architecture_table"):
        architecture_table(nn.Linear(2, 2))


def test_per_stage_latency_sums_to_table_estimate():
    unet = tiny_efficient_unet(preset="snapfusion")
    table = LatencyTable.measure(unet, 16, 16, batch=2, warmup=0, repeats=1)
    stages = per_stage_latency(table, unet, 16, 16)
    assert list(stages) == list(PAPER_TABLE3) + [OTHER]
    assert sum(stages.values()) == pytest.approx(table.estimate(unet, 16, 16)["total_ms"])
    assert stages["Down-1"] > 0 and stages[OTHER] > 0
