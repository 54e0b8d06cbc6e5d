"""training/toy/probe.py: the shipped probe (bundle/probe), its inputs and errors, its training CLI."""

import json
import os

import numpy as np
import pytest
import torch
from safetensors import safe_open

from training.toy.probe import DEFAULT_PROBE, Probe, images_to_tensor, load_probe, true_renders
from training.toy.world import ATTRIBUTE_VALUES, HELDOUT_START, ToyWorld, to_tensor


@pytest.fixture(scope="module")
def probe():
    return load_probe(DEFAULT_PROBE)


@pytest.fixture(scope="module")
def heldout():
    # A different world seed than the probe's training world, held-out indices: never seen in training.
    return true_renders(ToyWorld(7), range(HELDOUT_START, HELDOUT_START + 400))


def test_shipped_probe_is_small_fp16_and_reports_its_accuracy():
    weights = os.path.join(DEFAULT_PROBE, "diffusion_pytorch_model.safetensors")
    assert os.path.getsize(weights) < 1_000_000
    with safe_open(weights, "pt") as f:
        dtypes = {f.get_tensor(k).dtype for k in f.keys()}  # noqa: SIM118
    assert {d for d in dtypes if d.is_floating_point} == {torch.float16}
    with open(os.path.join(DEFAULT_PROBE, "metrics.json")) as f:
        metrics = json.load(f)
    assert metrics["passed"] and set(ATTRIBUTE_VALUES) <= set(metrics["heldout_accuracy"])
    assert min(metrics["heldout_accuracy"][n] for n in ATTRIBUTE_VALUES) >= 0.98


def test_probe_accuracy_on_heldout_true_renders(probe, heldout):
    x, flats = heldout
    pred = probe.predict_flat(x)
    for name in ATTRIBUTE_VALUES:
        acc = np.mean([p[name] == f[name] for p, f in zip(pred, flats)])
        assert acc >= 0.98, (name, acc)


def test_probe_accepts_pil_numpy_and_tensors_alike(probe):
    samples = ToyWorld(0).heldout(0, 6)
    pil = [s.image for s in samples]
    arr = np.stack([np.asarray(im) for im in pil])
    ref = probe.predict(pil)
    assert probe.predict(arr) == ref and probe.predict(to_tensor(pil)) == ref
    assert probe.predict(arr.astype(np.float32) / 255) == ref and probe.predict(pil[0]) == ref[:1]
    assert ref == [s.labels.canonical() for s in samples]
    assert probe.features(pil).shape == (6, probe.config.feature_dim)


def test_probe_rejects_bad_images():
    with pytest.raises(ValueError, match="64x64"):
        images_to_tensor(torch.rand(2, 3, 32, 32))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        images_to_tensor(torch.rand(2, 3, 64, 64) * 2 - 1)
    with pytest.raises(ValueError, match="N, 3, H, W"):
        images_to_tensor(torch.rand(2, 64, 64, 3))


def test_load_probe_errors(tmp_path):
    with pytest.raises(ValueError, match="config.json"):
        load_probe(str(tmp_path))
    Probe(attributes={"count": ["1", "2"]}).save_pretrained(str(tmp_path))
    with pytest.raises(ValueError, match="other attributes"):
        load_probe(str(tmp_path))


def test_probe_cli_trains_saves_and_refuses_to_overwrite(tmp_path, capsys):
    from training.toy import probe as probe_cli

    out = str(tmp_path / "probe")
    argv = ["--output", out, "--steps", "3", "--batch-size", "16", "--eval-samples", "20"]
    assert probe_cli.main(argv) == 1  # 3 steps cannot reach the accuracy target: reported, exit code 1
    assert "below the target" in capsys.readouterr().err
    with open(os.path.join(out, "metrics.json")) as f:
        metrics = json.load(f)
    assert metrics["passed"] is False and metrics["steps"] == 3
    assert load_probe(out).predict(ToyWorld(0).sample(0).image)
    with pytest.raises(SystemExit) as e:
        probe_cli.main(argv)
    assert e.value.code == 2 and "--overwrite" in capsys.readouterr().err
