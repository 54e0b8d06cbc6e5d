"""training/evaluate.py: the evaluation command line (bad input, results JSON and curve, overlay, merge)."""

import json
import os

import pytest
from training_helpers import K, pipe_64, saved, tiny_pipe_at

from training import evaluate
from training.toy.metrics import ATTRIBUTE_KINDS


@pytest.fixture(scope="module")
def pipe64():
    return pipe_64()


@pytest.fixture(scope="module")
def model64(tmp_path_factory, pipe64):
    return saved(pipe64, tmp_path_factory.mktemp("model64"))


@pytest.mark.parametrize("text", ["", "1,x", "1,,2", "0.5", "nan", " "])
def test_parse_guidance_rejects_bad_lists(text):
    with pytest.raises(ValueError, match="guidance"):
        evaluate.parse_guidance(text)
    assert evaluate.parse_guidance("1, 2.5,7.5") == [1.0, 2.5, 7.5]


def _cli_error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        evaluate.main(argv)
    assert e.value.code == 2
    return capsys.readouterr().err


def test_cli_bad_input(tmp_path, capsys, model64):
    small = str(tmp_path / "model32")
    tiny_pipe_at(16).save_pretrained(small, safe_serialization=True)
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
    assert evaluate.main(argv) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["model"] == os.path.abspath(model64) and res["num_images"] == K and res["steps"] == 1
    assert res["machine"] and [r["guidance"] for r in res["results"]] == [1.0, 3.0]
    assert res["alignment_true_renders"] > 0.98 and res["alignment_unrelated_renders"] < 0.6
    assert res["reference_feature_trace"] > res["floor_fid"] > 0
    for r in res["results"]:
        assert 0.0 <= r["alignment"] <= 1.0 and r["fid"] > r["floor_fid"] >= 0  # an untrained model is off
        assert set(r["alignment_per_attribute"]) == set(ATTRIBUTE_KINDS)
        assert r["seconds_per_image"] > 0 and r["num_images"] == K and len(r["validation"]) == 32
    assert (out / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "--overwrite" in _cli_error(argv, capsys)

    # overlay of several results on one figure
    second = dict(res, label="other", results=[dict(r, fid=r["fid"] / 2) for r in res["results"]])
    (tmp_path / "b.json").write_text(json.dumps(second))
    png = tmp_path / "both.png"
    assert evaluate.main(["--overlay", str(out / "results.json"), str(tmp_path / "b.json"), "--out", str(png)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="results"):
        evaluate.plot_curves([{"label": "x"}], str(tmp_path / "bad.png"))

    # merge: two runs of one model at other guidance scales join into one sorted curve, numbers untouched
    low = dict(res, results=[dict(r, guidance=r["guidance"] / 4) for r in res["results"]])
    (tmp_path / "low.json").write_text(json.dumps(low))
    merged = tmp_path / "merged.json"
    assert evaluate.main(["--merge", str(out / "results.json"), str(tmp_path / "low.json"), "--out", str(merged)]) == 0
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
