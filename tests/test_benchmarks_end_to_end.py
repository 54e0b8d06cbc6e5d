"""benchmarks/end_to_end.py: totals (measured or composed) and the verdict from known timings, a cut SD loop."""

import json

import pytest

from benchmarks import end_to_end


def _call(steps_run, text_encoder_ms, step_ms, decoder_ms, total_ms):
    return {
        "steps_run": steps_run,
        "cfg": True,
        "device": "cpu",
        "text_encoder_ms": text_encoder_ms,
        "unet_ms_per_step": [step_ms] * steps_run,
        "unet_ms_total": step_ms * steps_run,
        "decoder_ms": decoder_ms,
        "total_ms": total_ms,
    }


def test_summarise_measures_a_full_loop_and_composes_a_cut_one():
    full = end_to_end.summarise([_call(6, 10.0, 100.0, 50.0, 700.0), _call(6, 30.0, 100.0, 70.0, 720.0)], 6)
    assert (full["total_ms"], full["total_kind"]) == (710.0, "measured (full loop)")  # median of the measured totals
    assert (full["text_encoder_ms"], full["decoder_ms"], full["composed_total_ms"]) == (20.0, 60.0, 680.0)
    cut = end_to_end.summarise([_call(2, 10.0, 100.0, 50.0, 999.0)], 6)
    assert (cut["steps"], cut["steps_run"]) == (6, 2)
    assert (cut["total_ms"], cut["total_kind"]) == (660.0, "composed from measured components")  # 10 + 6 x 100 + 50
    assert cut["unet_ms_total"] == 600.0


def test_compare_from_known_totals():
    sd = {"total_ms": 9000.0, "composed_total_ms": 8800.0, "unet_ms_total": 8000.0, "unet_ms_per_step_median": 160.0}
    sf = {"total_ms": 1000.0, "composed_total_ms": 1100.0, "unet_ms_total": 500.0, "unet_ms_per_step_median": 62.5}
    assert end_to_end.compare(sd, sf) == {
        "speedup": 9.0,
        "speedup_composed": 8.0,
        "unet_part_speedup": 16.0,
        "step_ratio": 0.390625,
        "target": {"speedup_min": 10.0, "met": False},
    }
    assert end_to_end.compare(sd, dict(sf, total_ms=900.0))["target"]["met"] is True  # 10.0x: inclusive
    assert end_to_end.compare(sd, dict(sf, total_ms=400.0), 25.0)["target"] == {"speedup_min": 25.0, "met": False}


def test_a_cut_sd_loop_is_composed_and_says_so(tmp_path):
    argv = ["--quick", "--out-dir", str(tmp_path), "--threads", "1", "--sd-steps", "6", "--sd-measured-steps", "2",
            "--sf-steps", "2", "--warmup", "0", "--bundle", str(tmp_path / "none")]  # fmt: skip
    end_to_end.main(argv)
    data = json.loads((tmp_path / "benchmarks" / "end_to_end.json").read_text())
    sd = data["pipelines"]["sd15"]
    assert (sd["steps"], sd["steps_run"], sd["total_kind"]) == (6, 2, "composed from measured components")
    assert [len(c["unet_ms_per_step"]) for c in sd["calls"]] == [2]
    assert data["pipelines"]["snapfusion"]["total_kind"] == "measured (full loop)"
    one = data["pipelines"]["onepass"]  # one batch-1 pass per step, the guidance as an input
    assert one["guidance_embedded"] is True and one["cfg"] is False and one["steps"] == 4
    assert [len(c["unet_ms_per_step"]) for c in one["calls"]] == [4]
    assert data["onepass"]["speedup"] == pytest.approx(sd["total_ms"] / one["total_ms"])
    assert data["onepass"]["target"]["speedup_min"] == 25.0
    assert data["bundle"]["skipped"] is True and "not found (no trained bundle yet)" in data["bundle"]["reason"]
    mf = data["memory_format"]  # --memory-format auto (the default): each component in its faster probed layout
    assert mf["mode"] == "auto" and set(mf) == {"mode", "sd15", "snapfusion", "onepass"}
    for key in ("sd15", "snapfusion", "onepass"):
        probe = mf[key]["probe_ms"]
        assert set(probe) == {"contiguous", "channels_last"}
        for part in ("unet", "decoder"):
            assert mf[key][part] == min(probe, key=lambda f: probe[f][f"{part}_ms"])
    md = (tmp_path / "benchmarks" / "end_to_end.md").read_text()
    assert "Memory format, each component in the faster layout of a probe in this run" in md
    assert "SD-v1.5's loop ran 2 of 6 steps: its total is **composed from measured components**" in md
    assert "Skipped:" in md
    assert "no: one pass, guidance as input" in md and "**One pass per step, 4 steps:" in md


def test_bad_arguments_exit_with_code_2(tmp_path, capsys):
    for argv, message in ((["--sd-measured-steps", "50"], "--sd-measured-steps (50) must be below --sd-steps (50)"),
                          (["--size", "100"], "--size must be a multiple of 64"),
                          (["--guidance", "1"], "--guidance must be > 1")):  # fmt: skip
        with pytest.raises(SystemExit) as e:
            end_to_end.main(["--quick", "--out-dir", str(tmp_path), "--overwrite", *argv])
        assert e.value.code == 2 and message in capsys.readouterr().err


def test_set_memory_format_moves_the_unet_and_the_decoder_it_uses():
    import torch

    from pipelines.tiny import tiny_pipeline

    pipe = tiny_pipeline(0, compressed_decoder=True)

    def is_cl(module):
        w = next(p for p in module.parameters() if p.ndim == 4 and p.shape[-1] > 1)
        return w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()

    end_to_end.set_memory_format(pipe, "channels_last", "contiguous")
    assert is_cl(pipe.unet) and not is_cl(pipe.vae_decoder)
    end_to_end.set_memory_format(pipe, "contiguous", "channels_last")
    assert not is_cl(pipe.unet) and is_cl(pipe.vae_decoder)


def test_each_pipeline_has_its_own_unet_and_decoder(tmp_path):
    args = end_to_end.parse_args(["--quick", "--out-dir", str(tmp_path)])
    pipes = {k: pipe for k, (_, pipe) in end_to_end.build_pipelines(args, str(tmp_path)).items()}
    decoders = [p.decoder for p in pipes.values()]
    assert len({id(d) for d in decoders}) == 3 and len({id(p.unet) for p in pipes.values()}) == 3
