"""training/ablate.py: removing one block at a time, measured with the toy metrics."""

import json

import pytest
from training_helpers import K, pipe_64, saved


def test_ablate_removal_sweep_writes_table_and_plot(tmp_path, capsys):
    from training import ablate

    pipe64 = pipe_64()
    model64 = saved(pipe64, tmp_path / "model64")
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
