"""benchmarks/decoder_layouts.py: candidate decoders timed against a VAE's; speed-ups from known timings."""

import json

import pytest

from benchmarks import common, decoder_layouts
from pipelines.tiny import tiny_pipeline


def test_decoder_layouts_times_candidates_against_a_vae(tmp_path, capsys, monkeypatch):
    tiny_pipeline(0).vae.save_pretrained(tmp_path / "vae")
    out = tmp_path / "layouts.json"

    def argv(*layouts, overwrite=False):
        return ["--vae", str(tmp_path / "vae"), "--latent", "4", "--norm-groups", "4", "--repeats", "2", "--warmup",
                "0", "--out", str(out), *(["--overwrite"] if overwrite else []), "--layouts", *layouts]  # fmt: skip

    # known timings in place of the measured ones (each decoder still runs once, to check it decodes)
    known = {"vae": [10.0, 12.0], "vae:plain_blocks": [8.0, 8.0], "resnet:16,8:1": [2.0, 3.0],
             "residual_conv:16:2": [4.0, 4.0]}  # fmt: skip

    def interleaved(fns, device, warmup, repeats, log=print):
        assert (warmup, repeats) == (0, 2) and all(fn() is not None for fn in fns.values())
        return {k: known[k] for k in fns}

    monkeypatch.setattr(common, "interleaved", interleaved)
    rows = decoder_layouts.main(argv("resnet:16,8:1", "residual_conv:16:2"))["decoders"]
    assert list(rows) == ["vae", "vae:plain_blocks", "resnet:16,8:1", "residual_conv:16:2"]
    assert [(r["median_ms"], r["speedup"], r["speedup_vs_plain_blocks"]) for r in rows.values()] == [
        (11.0, 1.0, 8.0 / 11.0), (8.0, 11.0 / 8.0, 1.0), (2.5, 4.4, 3.2), (4.0, 2.75, 2.0)]  # fmt: skip
    assert all(r["params"] > 0 and r["macs"] > 0 for r in rows.values())
    assert rows["resnet:16,8:1"]["params"] < rows["vae"]["params"]
    assert json.loads(out.read_text())["decoders"] == rows
    assert "| `resnet:16,8:1` | 2.500 | 2.000 | 4.40x | 3.20x |" in capsys.readouterr().out
    for layouts, overwrite, msg in ((["resnet:16"], True, "must be BLOCK:CHANNELS:LAYERS"),
                                    (["resnet:16,x:1"], True, "comma-separated integers"),
                                    (["plain:16:1"], True, "block_type must be"),
                                    (["resnet:16:1"], False, "exists; pass --overwrite")):  # fmt: skip
        with pytest.raises(SystemExit) as e:
            decoder_layouts.main(argv(*layouts, overwrite=overwrite))
        assert e.value.code == 2 and msg in capsys.readouterr().err
