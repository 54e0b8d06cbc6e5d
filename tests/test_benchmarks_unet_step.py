"""benchmarks/unet_step.py: latency ratios and the verdict from known timings, evolved UNets, bad input."""

import pytest
import torch

from benchmarks import unet_step
from pipelines import EfficientUNet2DConditionModel
from pipelines.profiling import count_params
from pipelines.tiny import tiny_efficient_unet, tiny_stock_unet


def test_latency_ratios_and_target_from_known_timings():
    models = {"sd15": {"macs": 400}, "snapfusion": {"macs": 300}, "extra:evo": {"macs": 200}}
    samples = {"sd15": [100.0, 120.0, 110.0], "snapfusion": [80.0, 90.0, 70.0], "extra:evo": [77.0, 60.0, 99.0]}
    unet_step.add_latency(models, samples)
    assert models["sd15"]["latency"]["median_ms"] == 110.0 and models["sd15"]["ratio_to_sd15"] == 1.0
    assert models["snapfusion"]["ratio_to_sd15"] == 80.0 / 110.0 and models["snapfusion"]["macs_ratio_to_sd15"] == 0.75
    assert models["extra:evo"]["ratio_to_sd15"] == 0.7 and models["extra:evo"]["latency"]["min_ms"] == 60.0
    assert unet_step.target(80.0 / 110.0) == {"snapfusion_over_sd15_max": 0.7, "met": False}
    assert unet_step.target(0.7) == {"snapfusion_over_sd15_max": 0.7, "met": True}  # the bound is inclusive


def test_target_text_says_by_how_much_it_missed():
    sf = {"ratio_to_sd15": 0.77, "macs_ratio_to_sd15": 0.55}
    res = {"device": "cpu", "dtype": "float32", "models": {"snapfusion": sf}}
    text = unet_step.target_text(res)
    assert text.startswith(
        "**Target missed** by 0.070 (SnapFusion preset / SD-v1.5 = 0.770x per step on cpu float32; target <= 0.7x, "
        "i.e. 10% too slow). Why: the preset keeps 0.550x of SD-v1.5's MACs and here its latency ratio is 1.40x"
    )
    res["models"]["snapfusion"]["ratio_to_sd15"] = 0.65
    assert unet_step.target_text(res).startswith("**Target met:** SnapFusion preset / SD-v1.5 = 0.650x per step")


def test_extra_unet_accepts_stock_configs(tmp_path):
    tiny_stock_unet().save_config(tmp_path / "stock_unet")
    label, config = unet_step.load_unet_config(str(tmp_path / "stock_unet"))
    assert label == "stock_unet" and config["_class_name"] == "UNet2DConditionModel"
    model = unet_step.build_unet(config, quick=False, seed=0)
    assert isinstance(model, EfficientUNet2DConditionModel)
    assert model.architecture()["Up-3"] == {"CA": 3, "RB": 3}


def test_extra_unet_at_sd_width_keeps_the_layout():
    efficient = dict(tiny_efficient_unet(preset="snapfusion").config, _class_name="EfficientUNet2DConditionModel")
    stock = dict(tiny_stock_unet().config, _class_name="UNet2DConditionModel")
    with torch.device("meta"):  # full size, without allocating weights
        sf = unet_step.build_unet(efficient, quick=False, seed=0, sd_width=True)
        sd = unet_step.build_unet(stock, quick=False, seed=0, sd_width=True)
    assert count_params(sf) == 767_520_644  # the snapfusion preset's count
    assert count_params(sd) == 859_520_964  # SD-v1.5's count
    assert sf.architecture()["Up-1"] == {"CA": 6, "RB": 2}


def test_bad_arguments_exit_with_code_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        unet_step.main(["--quick", "--out-dir", str(tmp_path), "--extra-unet", str(tmp_path / "nothing")])
    assert e.value.code == 2 and "no UNet config found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        unet_step.main(["--quick", "--out-dir", str(tmp_path), "--repeats", "0"])
    assert e.value.code == 2 and "expected an integer >= 1, got 0" in capsys.readouterr().err
