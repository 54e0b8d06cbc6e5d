"""benchmarks/gpu_check.py: a clear message without CUDA; every stage's step timed and measured (tiny, on CPU)."""

import json

import pytest
import torch

from benchmarks import gpu_check


def test_without_cuda_it_says_so_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as e:
        gpu_check.main(["--out", str(tmp_path / "x.json")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "no CUDA GPU" in err and "sd15-proof" in err
    assert not (tmp_path / "x.json").exists()
    with pytest.raises(SystemExit):
        gpu_check.main(["--stages", "teacher_v,nope", "--device", "cpu"])
    assert "'nope' is not a stage" in capsys.readouterr().err


@pytest.mark.slow
def test_every_stage_on_cpu_at_smoke_size(tmp_path):
    out = tmp_path / "check.json"
    assert gpu_check.main(["--device", "cpu", "--size", "smoke", "--resolution", "64", "--steps", "2",
                           "--dtype", "fp32", "--out", str(out)]) == 0  # fmt: skip
    res = json.loads(out.read_text())
    assert list(res["stages"]) == list(gpu_check.STAGES) and res["resolution"] == 64 and res["host"]
    for name, stage in res["stages"].items():
        assert "error" not in stage, name
        assert stage["peak_memory_gb"] > 0
        if name != "evolve_eval":
            assert stage["seconds_per_step"] > 0 and stage["trainable_params_m"] > 0, name
    sf = res["stages"]["evolve_eval"]["seconds_per_guided_unet_call"]
    assert set(sf) == {"sd15", "snapfusion"}
    # the 8-step student is smaller than its teacher
    assert res["stages"]["distilled"]["trainable_params_m"] < res["stages"]["distill_sd16"]["trainable_params_m"]


def test_the_memory_estimate_runs_anywhere(capsys):
    assert gpu_check.main(["--estimate", "--batch-size", "8"]) == 0
    est = json.loads(capsys.readouterr().out)
    stages = est["stages"]
    assert set(stages) == {"teacher_v", "robust", "evolve", "distill_sd16", "distill_eff16", "distilled", "decoder"}
    # static: 859.52M trained params x 20 bytes (weights, grads, AdamW, DDP buckets) + EMA + frozen text/VAE
    assert stages["robust"]["static_gb"] == pytest.approx(859.52e6 * 20 / 1e9 + 206.71e6 * 4 / 1e9, abs=0.1)
    assert stages["distill_sd16"]["total_gb"] > stages["distilled"]["total_gb"] > stages["evolve"]["total_gb"]
    assert 0 < est["activations_per_image_gb"]["snapfusion"] < est["activations_per_image_gb"]["sd15"]
