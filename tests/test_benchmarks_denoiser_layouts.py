"""benchmarks/denoiser_layouts.py: the step graph and the unrolled loop of ``export.denoiser`` lowered to ExecuTorch
give the same final latents, with one runtime call per step against one per image; bad flags are refused."""

import pytest
import torch

from benchmarks import denoiser_layouts
from export.denoiser import DenoiserStep, UnrolledDenoiser, denoiser_inputs, step_schedule
from pipelines.tiny import one_attention_block, tiny_pipeline


def small_pipe():
    """A tiny pipeline whose UNet keeps one CA block (lowering time grows with the graph); 3 steps, guidance 2.5."""
    pipe = tiny_pipeline(0, prediction_type="v_prediction")
    pipe.unet = one_attention_block(pipe.unet)
    pipe.register_to_config(default_num_inference_steps=3, default_guidance_scale=2.5)
    return pipe


def test_the_unrolled_loop_is_the_step_graph_called_in_turn():
    pipe = small_pipe()
    step = DenoiserStep(pipe.unet.eval(), step_schedule(pipe.scheduler, 3)).eval()
    inputs = denoiser_inputs(pipe.unet, 8, 8, 16, 2.5)
    rest = [v for k, v in inputs.items() if k not in ("latents", "step_index")]
    with torch.no_grad():
        latents = inputs["latents"]
        for i in range(3):
            latents = step(latents, torch.tensor([i]), *rest)
        unrolled = UnrolledDenoiser(step)(inputs["latents"], *rest)
    assert UnrolledDenoiser(step).input_names == ("latents", "text_states", "uncond_states", "guidance_scale")
    torch.testing.assert_close(unrolled, latents)


@pytest.mark.slow
def test_both_layouts_in_the_runtime():
    out = denoiser_layouts.compare(small_pipe(), threads=None, repeats=1)  # other tests may have run programs
    step, loop = out["step graph (shipped)"], out["unrolled loop"]
    assert (step["runtime_calls_per_image"], loop["runtime_calls_per_image"]) == (3, 1)
    assert out["final_latents_psnr_db"] > 60  # the same computation, two graphs
    assert out["unrolled_over_step"]["pte_mb"] == pytest.approx(loop["pte_mb"] / step["pte_mb"])
    assert min(step["export_s"], loop["export_s"], step["sampling_ms_median"], loop["sampling_ms_median"]) > 0


def test_bad_flags(tmp_path, capsys):
    (tmp_path / "r.json").write_text("{}")
    for argv, message in ((["--json", str(tmp_path / "r.json")], "exists"), (["--repeats", "0"], ">= 1")):
        with pytest.raises(SystemExit) as e:
            denoiser_layouts.parse_args(argv)
        assert e.value.code == 2 and message in capsys.readouterr().err
