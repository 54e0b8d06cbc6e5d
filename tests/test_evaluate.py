"""The probe (shipped weights in bundle/probe) and the toy-world metrics of training.evaluate."""

import json
import os

import numpy as np
import pytest
import torch
from safetensors import safe_open

from training import evaluate as ev
from training.probe import DEFAULT_PROBE, Probe, images_to_tensor, load_probe, true_renders
from training.toy_world import ATTRIBUTE_VALUES, HELDOUT_START, ToyWorld, parse_caption, to_tensor

K = 80  # > probe feature_dim (64) + 1


@pytest.fixture(scope="module")
def probe():
    return load_probe(DEFAULT_PROBE)


@pytest.fixture(scope="module")
def heldout():
    # A different world seed than the probe's training world, held-out indices: never seen in training.
    return true_renders(ToyWorld(7), range(HELDOUT_START, HELDOUT_START + 400))


def _pipe(sample_size: int, seed: int = 0):
    from pipelines import SnapFusionPipeline
    from pipelines.tiny import tiny_components, tiny_efficient_unet

    comps = tiny_components(seed)
    comps["unet"] = tiny_efficient_unet(seed, sample_size=sample_size)
    pipe = SnapFusionPipeline(**comps)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def pipe64():
    pipe = _pipe(32)  # tiny VAE factor 2 x latent 32 = 64x64 images
    assert pipe.unet.config.sample_size * pipe.vae_scale_factor == 64 and 64 % pipe.size_multiple == 0
    return pipe


@pytest.fixture(scope="module")
def model64(tmp_path_factory, pipe64):
    path = str(tmp_path_factory.mktemp("model64"))
    pipe64.save_pretrained(path, safe_serialization=True)
    return path


# ---------------------------------------------------------------------------------------------- probe


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
    from training import probe as probe_cli

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


# ---------------------------------------------------------------------------------------------- metrics


def test_fid_of_known_gaussians():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(20000, 4, generator=g)
    b = torch.randn(20000, 4, generator=g) * 2 + 1  # mean shift 1 per dim, std 2: FID = 4 + 4 * (1 + 4 - 2*2) = 8
    assert ev.fid_from_features(a, a) == pytest.approx(0, abs=1e-6)
    assert ev.fid_from_features(a, b) == pytest.approx(8.0, rel=0.05)
    with pytest.raises(ValueError, match="at least feature_dim"):
        ev.fid_from_features(a[:4], b)


def test_fid_true_vs_true_is_small_and_color_shuffled_is_larger(probe):
    world = ToyWorld(0)
    a = to_tensor([s.image for s in world.heldout(0, 300)])
    b = to_tensor([s.image for s in world.heldout(300, 300)])
    shuffled = b[:, [2, 0, 1]]  # RGB -> BRG: every color off the palette
    fa = probe.features(a)
    floor = ev.fid_from_features(probe.features(b), fa)
    off = ev.fid_from_features(probe.features(shuffled), fa)
    assert off > 5 * floor and off > floor + 1.0, (floor, off)


def test_alignment_scores_count_prompted_attributes():
    one = parse_caption("a big red circle in the top left on a gray background")
    two = parse_caption("a small blue square right of a big green triangle, white background")
    expected = {"count", "background", "obj1_shape", "obj1_color", "obj1_size", "obj1_position"}
    assert set(ev.prompted_items(one)) == expected
    assert len(ev.prompted_items(two)) == 9 and "relation" in ev.prompted_items(two)
    perfect = [{**{n: "none" for n in ATTRIBUTE_VALUES}, **lab.flat()} for lab in (one, two)]
    res = ev.alignment_scores([one, two], perfect)
    assert res["overall"] == 1.0 and res["per_prompt"] == [1.0, 1.0]
    wrong = [dict(perfect[0], obj1_color="blue"), dict(perfect[1], obj1_shape="ring")]  # canonical obj1 = triangle
    res = ev.alignment_scores([one, two], wrong)
    assert res["per_prompt"] == pytest.approx([5 / 6, 8 / 9])
    assert res["overall"] == pytest.approx(13 / 15)
    assert res["per_attribute"]["color"] == pytest.approx(2 / 3)
    assert res["per_attribute"]["shape"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("text", ["", "1,x", "1,,2", "0.5", "nan", " "])
def test_parse_guidance_rejects_bad_lists(text):
    with pytest.raises(ValueError, match="guidance"):
        ev.parse_guidance(text)
    assert ev.parse_guidance("1, 2.5,7.5") == [1.0, 2.5, 7.5]


def test_check_settings_errors(probe, pipe64):
    with pytest.raises(ValueError, match="64x64"):
        ev.check_settings(_pipe(16), probe, 2, [1.0], K, 8)  # 32x32 images
    with pytest.raises(ValueError, match="feature_dim"):
        ev.check_settings(pipe64, probe, 2, [1.0], probe.config.feature_dim, 8)
    with pytest.raises(ValueError, match="steps"):
        ev.check_settings(pipe64, probe, 0, [1.0], K, 8)
    with pytest.raises(ValueError, match="empty"):
        ev.check_settings(pipe64, probe, 2, [], K, 8)
    ev.check_settings(pipe64, probe, 2, [1.0, 3.0], K, 8)


def _cli_error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        ev.main(argv)
    assert e.value.code == 2
    return capsys.readouterr().err


def test_cli_bad_input(tmp_path, capsys, model64):
    small = str(tmp_path / "model32")
    _pipe(16).save_pretrained(small, safe_serialization=True)
    base = ["--steps", "2", "--num-images", str(K), "--out", str(tmp_path / "o")]
    assert "64x64" in _cli_error(["--model", small, "--guidance", "1", *base], capsys)
    assert "not a number" in _cli_error(["--model", model64, "--guidance", "1,abc", *base], capsys)
    assert "--guidance" in _cli_error(["--model", model64, "--guidance", "", *base], capsys)
    assert "--steps" in _cli_error(["--model", model64, "--guidance", "1", *base, "--steps", "0"], capsys)
    assert "feature_dim" in _cli_error(["--model", model64, "--guidance", "1", *base, "--num-images", "10"], capsys)
    (tmp_path / "exists.json").write_text("{}")
    err = _cli_error(["--model", model64, "--guidance", "1", *base, "--out", str(tmp_path / "exists.json")], capsys)
    assert "--overwrite" in err


def test_evaluate_end_to_end_writes_json_and_curve(tmp_path, capsys, model64):
    out = tmp_path / "eval"
    argv = ["--model", model64, "--steps", "1", "--guidance", "1,3", "--num-images", str(K), "--batch-size", "56",
            "--out", str(out)]  # fmt: skip
    assert ev.main(argv) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["model"] == os.path.abspath(model64) and res["num_images"] == K and res["steps"] == 1
    assert res["machine"] and [r["guidance"] for r in res["results"]] == [1.0, 3.0]
    assert res["alignment_true_renders"] > 0.98 and res["alignment_unrelated_renders"] < 0.6
    assert res["reference_feature_trace"] > res["floor_fid"] > 0
    for r in res["results"]:
        assert 0.0 <= r["alignment"] <= 1.0 and r["fid"] > r["floor_fid"] >= 0  # an untrained model is off
        assert set(r["alignment_per_attribute"]) == set(ev.ATTRIBUTE_KINDS)
        assert r["seconds_per_image"] > 0 and r["num_images"] == K and len(r["validation"]) == 32
    assert (out / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "--overwrite" in _cli_error(argv, capsys)

    # overlay of several results on one figure
    second = dict(res, label="other", results=[dict(r, fid=r["fid"] / 2) for r in res["results"]])
    (tmp_path / "b.json").write_text(json.dumps(second))
    png = tmp_path / "both.png"
    assert ev.main(["--overlay", str(out / "results.json"), str(tmp_path / "b.json"), "--out", str(png)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="results"):
        ev.plot_curves([{"label": "x"}], str(tmp_path / "bad.png"))

    # merge: two runs of one model at other guidance scales join into one sorted curve, numbers untouched
    low = dict(res, results=[dict(r, guidance=r["guidance"] / 4) for r in res["results"]])
    (tmp_path / "low.json").write_text(json.dumps(low))
    merged = tmp_path / "merged.json"
    assert ev.main(["--merge", str(out / "results.json"), str(tmp_path / "low.json"), "--out", str(merged)]) == 0
    m = json.loads(merged.read_text())
    assert [r["guidance"] for r in m["results"]] == [0.25, 0.75, 1.0, 3.0]
    assert m["results"][2] == res["results"][0] and m["floor_fid"] == res["floor_fid"]
    assert "appears in more than one run" in _cli_error(
        ["--merge", str(out / "results.json"), str(out / "results.json"), "--out", str(tmp_path / "x.json")], capsys)
    other_k = dict(low, num_images=K + 1)
    (tmp_path / "k.json").write_text(json.dumps(other_k))
    merge_k = ["--merge", str(out / "results.json"), str(tmp_path / "k.json"), "--out", str(tmp_path / "y.json")]
    err = _cli_error(merge_k, capsys)
    assert "num_images" in err
    assert "--overwrite" in _cli_error(["--merge", str(out / "results.json"), str(tmp_path / "low.json"), "--out",
                                        str(merged)], capsys)  # fmt: skip


# ---------------------------------------------------------------------------------------------- block removal


def test_ablate_removal_sweep_writes_table_and_plot(tmp_path, capsys, model64, pipe64):
    from training import ablate

    out = tmp_path / "abl"
    blocks = [str(b) for b in pipe64.unet.removable_blocks()][:3]  # all of them: see --blocks' default
    argv = ["--model", f"a={model64}", "--model", f"b={model64}", "--steps", "1", "--num-images", str(K),
            "--batch-size", "80", "--blocks", ",".join(blocks), "--out", str(out)]  # fmt: skip
    assert ablate.main(argv) == 0
    res = json.loads((out / "removal.json").read_text())
    assert blocks and [m["label"] for m in res["models"]] == ["a", "b"]
    rows = res["models"][0]["rows"]
    assert [r["removed"] for r in rows] == ["none", *blocks]
    assert any(r["fid"] != rows[0]["fid"] for r in rows[1:])  # removing a block changes the images
    assert res["models"][1]["rows"] == rows  # same model, same noise: same numbers
    table = (out / "removal.md").read_text()
    assert all(f"| {b} |" in table for b in blocks)
    assert (out / "removal.png").read_bytes()[:4] == b"\x89PNG"

    def error(args):
        with pytest.raises(SystemExit) as e:
            ablate.main(args)
        assert e.value.code == 2
        return capsys.readouterr().err

    assert "--overwrite" in error(argv)
    assert "LABEL=DIR" in error(["--model", model64, "--out", str(tmp_path / "x")])
    assert "model_index.json" in error(["--model", f"a={tmp_path}", "--out", str(tmp_path / "x")])
    assert "feature_dim" in error(["--model", f"a={model64}", "--num-images", "10", "--out", str(tmp_path / "x")])
    assert "not removable" in error(["--model", f"a={model64}", "--blocks", "up9.0:RB", "--out", str(tmp_path / "x")])
