"""Training recipe: loss math, learning on a fixed batch, bad input, resume, DDP, and an end-to-end smoke run."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from pipelines.schedulers import ddim_scheduler
from pipelines.tiny import tiny_components, tiny_pipeline
from training.common import StageError
from training.distill import alpha_sigma, ddim_step, distill_target, distillation_loss, step_grids, to_v

ROOT = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")


def _run(module, *args, timeout=600):
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=ROOT, env=ENV,
                          timeout=timeout)  # fmt: skip


# ---------------------------------------------------------------------- distillation math


def test_distillation_target_matches_two_ddim_steps():
    torch.manual_seed(0)
    sched = ddim_scheduler("v_prediction")
    ac = sched.alphas_cumprod.double()
    teacher, student = step_grids(sched.config, 16, 8)
    assert teacher[::2] == student and len(student) == 8
    grid = teacher + [-1]
    for k in (0, 3, 7):  # 7: the last step ends on the clean sample (alpha 1, sigma 0)
        t, t1, t2 = (torch.tensor([grid[2 * k + j]]) for j in range(3))
        a, s = alpha_sigma(ac, t)
        a1, s1 = alpha_sigma(ac, t1)
        a2, s2 = alpha_sigma(ac, t2)
        z_t = torch.randn(1, 4, 8, 8, dtype=torch.float64)
        v1, v2 = torch.randn_like(z_t), torch.randn_like(z_t)  # any teacher outputs
        z_tpp = ddim_step(ddim_step(z_t, v1, a, s, a1, s1), v2, a1, s1, a2, s2)
        x_target = distill_target(z_t, z_tpp, a, s, a2, s2)
        # closed form of Sec. 4, written out
        closed = (z_tpp - (s2 / s) * z_t) / (a2 - (s2 / s) * a)
        assert (x_target - closed).abs().max() < 1e-5
        # one DDIM step from z_t with x0 = x_target lands on z_t''
        eps = (z_t - a * x_target) / s
        assert (a2 * x_target + s2 * eps - z_tpp).abs().max() < 1e-5


def test_to_v_and_grids_validation():
    z, eps, x0 = torch.randn(3, 1, 4, 4).unbind(0)
    a, s = torch.tensor(0.6), torch.tensor(0.8)
    zt = a * x0 + s * eps
    assert torch.allclose(to_v(eps, zt, a, s, "epsilon"), a * eps - s * x0, atol=1e-5)
    with pytest.raises(StageError, match="must divide"):
        step_grids(ddim_scheduler().config, 16, 6)
    with pytest.raises(StageError, match="must divide"):
        step_grids(ddim_scheduler().config, 8, 8)


# ---------------------------------------------------------------------- learning is real


def _fixed_batch(seed=0):
    comps = tiny_components(seed)
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(4, 4, 16, 16, generator=g)
    noise = torch.randn(4, 4, 16, 16, generator=g)
    ids = comps["tokenizer"](["a red circle", "a big blue square", "a small green triangle", ""], padding="max_length",
                             max_length=16, return_tensors="pt").input_ids  # fmt: skip
    with torch.no_grad():
        cond = comps["text_encoder"](ids)[0]
    return comps, x0, noise, cond


def _fit(loss_fn, params, steps, lr):
    opt = torch.optim.Adam(params, lr=lr)
    first = None
    for _ in range(steps):
        loss = loss_fn()
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    return first, loss_fn().item()


@pytest.mark.parametrize("prediction_type, keep", [("epsilon", 1.0), ("v_prediction", 1.0), ("epsilon", 0.8)])
def test_denoiser_and_robust_losses_fall_by_half(prediction_type, keep):
    from training.train_teacher import denoising_loss

    torch.manual_seed(0)
    comps, x0, noise, cond = _fixed_batch()
    unet = comps["unet"].train()
    unet.set_block_keep_prob(keep)  # keep < 1: robust training (stochastic skipping)
    ac = comps["scheduler"].alphas_cumprod
    t = torch.tensor([50, 300, 600, 900])
    first, last = _fit(lambda: denoising_loss(unet, x0, cond, noise, t, ac, prediction_type), unet.parameters(),
                       150, 2e-3)  # fmt: skip
    assert last < 0.5 * first, (first, last)


@pytest.mark.parametrize("cfg", [False, True])
def test_distillation_loss_falls_by_half(cfg):
    torch.manual_seed(0)
    comps, x0, noise, cond = _fixed_batch()
    teacher = comps["unet"].eval().requires_grad_(False)
    student = tiny_components(1)["unet"].train()  # another architecture seed, trained from scratch
    sched = comps["scheduler"]
    grid = step_grids(sched.config, 4, 2)[0] + [-1]
    uncond = cond[-1:].expand_as(cond)
    k = torch.tensor([0, 1, 0, 1])
    w = torch.tensor([2.0, 5.0, 9.0, 14.0]).view(-1, 1, 1, 1) if cfg else None
    first, last = _fit(
        lambda: distillation_loss(student, teacher, x0, noise, cond, uncond, k, w, grid, 2, sched.alphas_cumprod,
                                  "epsilon", 0.2)[0],
        student.parameters(), 200, 2e-3)  # fmt: skip
    assert last < 0.5 * first, (first, last)


def test_decoder_distillation_loss_falls_by_half():
    from pipelines import CompressedVAEDecoder

    torch.manual_seed(0)
    vae = tiny_components(0)["vae"].eval()
    student = CompressedVAEDecoder.from_vae(vae, 0.5).train()
    z = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = vae.decode(z).sample
    first, last = _fit(lambda: torch.nn.functional.mse_loss(student(z), ref), student.parameters(), 150, 2e-3)
    assert last < 0.5 * first, (first, last)


def test_lr_schedules_warm_up_then_hold_or_decay():
    from argparse import Namespace

    from training.loop import make_lr_scheduler

    def lrs(schedule):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        sched = make_lr_scheduler(opt, Namespace(warmup_steps=4, max_steps=12, lr_schedule=schedule))
        out = []
        for _ in range(12):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out

    const, cos = lrs("constant"), lrs("cosine")
    assert const[:4] == cos[:4] == [0.25, 0.5, 0.75, 1.0] and const[4:] == [1.0] * 8
    assert cos[4] == 1.0 and all(a > b for a, b in zip(cos[4:], cos[5:]))
    assert cos[-1] == pytest.approx(0.0381, abs=1e-3)


def test_decoder_stage_guidance_list():
    from training.decoder import parse_guidance_list

    assert parse_guidance_list("5") == [5.0] and parse_guidance_list(7.5) == [7.5]
    assert parse_guidance_list("1.5, 2,8") == [1.5, 2.0, 8.0]
    for bad in ("", "two", "0.5,2", "nan"):
        with pytest.raises(StageError, match="--gen-guidance"):
            parse_guidance_list(bad)


# ---------------------------------------------------------------------- data and bad input


def test_caption_folder_and_missing_captions(tmp_path):
    from training.data import make_dataset, read_prompts

    for i in range(2):
        PIL.Image.new("RGB", (40, 30), (i * 100, 0, 0)).save(tmp_path / f"{i}.png")
        (tmp_path / f"{i}.txt").write_text(f"caption {i}")
    ds = make_dataset(f"folder:{tmp_path}", 16)
    item = ds[1]
    assert item["pixel_values"].shape == (3, 16, 16) and item["caption"] == "caption 1"
    assert -1.0 <= item["pixel_values"].min() <= item["pixel_values"].max() <= 1.0
    (tmp_path / "1.txt").unlink()
    with pytest.raises(StageError, match="no caption file"):
        make_dataset(f"folder:{tmp_path}", 16)
    with pytest.raises(StageError, match="does not exist"):
        make_dataset(f"folder:{tmp_path / 'missing'}", 16)
    with pytest.raises(StageError, match="empty"):
        make_dataset("", 16)
    with pytest.raises(StageError, match="unknown"):
        make_dataset("s3:bucket", 16)
    empty = tmp_path / "prompts.txt"
    empty.write_text("\n\n")
    with pytest.raises(StageError, match="holds no prompts"):
        read_prompts(str(empty))


def test_webdataset_and_hf_sources(tmp_path):
    import io
    import tarfile

    import datasets

    from training.data import make_dataset

    shard = tmp_path / "000.tar"
    with tarfile.open(shard, "w") as tar:
        for i in range(3):
            for ext, data in (("jpg", _jpeg(i)), ("txt", f"caption {i}".encode())):
                info = tarfile.TarInfo(f"{i:05d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    items = list(make_dataset(f"wds:{shard}", 16))
    assert [x["caption"] for x in items] == ["caption 0", "caption 1", "caption 2"]
    ds = datasets.Dataset.from_dict({"image": [PIL.Image.new("RGB", (8, 8))] * 2, "text": ["a", "b"]})
    ds = ds.cast_column("image", datasets.Image())
    ds.save_to_disk(str(tmp_path / "hf"))
    hf = make_dataset(f"hf:{tmp_path / 'hf'}", 16)
    assert len(hf) == 2 and hf[1]["caption"] == "b"
    with pytest.raises(StageError, match="no 'caption' column"):
        make_dataset(f"hf:{tmp_path / 'hf'}", 16, caption_column="caption")


def _jpeg(i):
    import io

    buf = io.BytesIO()
    PIL.Image.new("RGB", (20, 20), (i * 80, 10, 10)).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def saved_teacher(tmp_path_factory):
    d = tmp_path_factory.mktemp("teacher")
    pipe = tiny_pipeline(0)
    pipe.scheduler = ddim_scheduler("v_prediction")
    pipe.save_pretrained(d)
    return d


def test_distill_bad_input(saved_teacher, tmp_path):
    from training import distill

    with pytest.raises(StageError, match="must divide"):
        distill.main(distill.parse_args(["--teacher", str(saved_teacher), "--output", str(tmp_path / "a"),
                                         "--teacher-steps", "16", "--student-steps", "5"]))  # fmt: skip
    other = tiny_pipeline(0)
    other.unet = tiny_components(0)["unet"].__class__.from_preset(
        "snapfusion", block_out_channels=(8, 16, 16, 16), norm_num_groups=4, cross_attention_dim=24,
        num_attention_heads=2, sample_size=16)  # fmt: skip
    other.register_modules(unet=other.unet)
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(StageError, match="cross_attention_dim"):
        distill.main(distill.parse_args(["--teacher", str(saved_teacher), "--student", str(tmp_path / "other"),
                                         "--output", str(tmp_path / "b")]))  # fmt: skip
    with pytest.raises(StageError, match="neither an existing folder"):
        distill.main(distill.parse_args(["--teacher", str(tmp_path / "nothing"), "--output", str(tmp_path / "c")]))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_evolve_latency_target_errors(saved_teacher, tmp_path):
    from training import evolve

    for ratio_args, match in ((["--target-ms", "1e9"], "already met"), (["--target-ms", "1e-6"], "unreachable")):
        with pytest.raises(StageError, match=match):
            evolve.main(evolve.parse_args(["--model", str(saved_teacher), "--output", str(tmp_path / "e"),
                                           "--latency-repeats", "1", *ratio_args]))  # fmt: skip
    assert not (tmp_path / "e").exists()


def test_decoder_stage_pixel_shuffle(saved_teacher, tmp_path):
    from pipelines import PixelShuffleVAEDecoder
    from training.models import load_stage_pipeline

    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle\na blue square\n")
    out = tmp_path / "ps"
    common = ["--teacher", str(saved_teacher), "--prompts", str(prompts), "--architecture", "pixel_shuffle",
              "--norm-groups", "4", "--gen-steps", "1", "--pool-size", "4", "--heldout", "2", "--batch-size", "2",
              "--log-with", "none"]  # fmt: skip
    r = _run("training.decoder", *common, "--channels", "16,8", "--layers", "1", "--max-steps", "3",
             "--output", str(out))  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    pipe = load_stage_pipeline(str(out))
    dec = pipe.vae_decoder
    assert isinstance(dec, PixelShuffleVAEDecoder) and dec.config.block_out_channels == [16, 8]
    assert dec.stage_layers == (1, 1) and dec.vae_scale_factor == pipe.vae_scale_factor == 2
    done = json.loads((out / "stage_complete.json").read_text())
    assert done["steps"] == 3 and np.isfinite(done["psnr_db_heldout"])
    image = pipe("a red circle", num_inference_steps=1, output_type="np").images
    assert image.shape == (1, 32, 32, 3)
    # decoding the pool once (--cache-targets) trains the same decoder as decoding every step
    r = _run("training.decoder", *common, "--channels", "16,8", "--layers", "1", "--max-steps", "3", "--cache-targets",
             "--output", str(tmp_path / "cached"))  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    cached = load_stage_pipeline(str(tmp_path / "cached")).vae_decoder.state_dict()
    assert all(torch.allclose(v, cached[k], atol=1e-5) for k, v in dec.state_dict().items())
    # --block-type residual_conv: the same layout without normalization
    r = _run("training.decoder", *common, "--channels", "16,8", "--layers", "1", "--max-steps", "1", "--block-type",
             "residual_conv", "--output", str(tmp_path / "rc"))  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    rc = load_stage_pipeline(str(tmp_path / "rc")).vae_decoder
    assert rc.config.block_type == "residual_conv" and rc.norm_out is None and rc.stage_layers == (1, 1)
    for bad, msg in ((["--channels", "16,x"], "--channels must be an integer"),
                     (["--channels", "16,8", "--layers", "1,1,1"], "one per stage of --channels (2)"),
                     (["--channels", "16,6"], "multiples of norm_num_groups=4")):  # fmt: skip
        r = _run("training.decoder", *common, *bad, "--max-steps", "1", "--output", str(tmp_path / "bad"))
        assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / "bad").exists()


def test_stage_cli_bad_input_exit_code(saved_teacher, tmp_path):
    r = _run("training.train_teacher", "--pretrained", str(saved_teacher), "--data", f"folder:{tmp_path / 'none'}",
             "--output", str(tmp_path / "o"), "--max-steps", "1", "--log-with", "none")  # fmt: skip
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 2 and last.startswith("error:") and "does not exist" in last, r.stderr
    assert "Traceback" not in r.stderr
    r = _run("training.train_teacher", "--data", "folder:x", "--output", str(tmp_path / "o1"), "--max-steps", "1")
    assert r.returncode == 2 and "toy world's vocabulary" in r.stderr, r.stderr
    r = _run("training.train_teacher", "--max-steps", "0", "--output", str(tmp_path / "o2"))
    assert r.returncode == 2 and "--max-steps" in r.stderr


def test_text_encoder_pretraining_reads_captions_then_stays_frozen(tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "t"
    r = _run("training.train_teacher", "--model-preset", "smoke", "--output", str(out), "--max-steps", "2",
             "--vae-steps", "2", "--text-steps", "150", "--text-batch-size", "64", "--batch-size", "2",
             "--log-with", "none")  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    metrics = json.loads((out / "text_stage" / "metrics.json").read_text())
    # 150 steps are enough for the easy attributes; chance is 1/2 (count) and 1/4 (background)
    assert metrics["per_attribute"]["count"] > 0.95 and metrics["per_attribute"]["background"] > 0.9, metrics
    vae = json.loads((out / "vae_stage" / "metrics.json").read_text())
    assert np.isfinite(vae["psnr_db"]) and vae["posterior_std"] > 0
    pre = load_file(out / "text_stage" / "model.safetensors")
    final = load_file(out / "text_encoder" / "model.safetensors")
    assert all(torch.equal(pre[k], final[k]) for k in pre)  # frozen during diffusion training, like SD-v1.5's


def test_teacher_resume_and_no_clobber(tmp_path):
    out = tmp_path / "t"
    args = ["--model-preset", "smoke", "--output", str(out), "--max-steps", "4", "--vae-steps", "2",
            "--text-steps", "2", "--batch-size", "2", "--checkpoint-every", "2", "--log-with", "none"]  # fmt: skip
    r = _run("training.train_teacher", *args)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (out / "model_index.json").exists() and (out / "checkpoints" / "step-2").is_dir()
    # a finished stage is never overwritten without --overwrite
    before = (out / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    r = _run("training.train_teacher", *args)
    assert r.returncode == 2 and "completed stage" in r.stderr
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() == before
    # the stage clock: every sub-stage and checkpoint records its kept time
    first = json.loads((out / "stage_complete.json").read_text())["seconds"]
    step2 = json.loads((out / "checkpoints" / "step-2" / "step.json").read_text())
    assert 0 < step2["elapsed_s"] < first and (out / "vae_stage" / "seconds.json").exists()
    # resume from the checkpoint continues at step 2 and adds to the time kept up to it; a corrupt checkpoint is a
    # clear error
    (out / "stage_complete.json").unlink()
    (out / "checkpoints" / "step-2" / "step.json").write_text(json.dumps({"step": 2, "elapsed_s": 1000.0}))
    r = _run("training.train_teacher", *args, "--resume", "latest")
    assert r.returncode == 0 and "resumed from" in r.stdout + r.stderr, r.stderr[-2000:]
    assert 1000.0 < json.loads((out / "stage_complete.json").read_text())["seconds"] < 1000.0 + first + 300
    (out / "stage_complete.json").unlink()
    for f in (out / "checkpoints" / "step-2").glob("*.safetensors"):
        f.write_bytes(b"not a tensor file")
    r = _run("training.train_teacher", *args, "--resume", "latest")
    assert r.returncode == 2 and "corrupt" in r.stderr, r.stderr[-2000:]


@pytest.mark.slow
def test_ddp_two_processes_end_with_identical_weights(tmp_path):
    out = tmp_path / "ddp"
    # accelerate 1.15 runs `--cpu` with one process; two CPU processes (gloo) need --multi_gpu + ACCELERATE_USE_CPU
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "training.train_teacher", "--model-preset",
           "smoke", "--output", str(out), "--max-steps", "3", "--vae-steps", "2", "--batch-size", "2",
           "--text-steps", "2", "--log-with", "none"]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=dict(ENV, ACCELERATE_USE_CPU="true"),
                       timeout=900)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    sums = [(out / "rank_checksums" / f"rank{i}.txt").read_text() for i in range(2)]
    assert sums[0] == sums[1]


# ---------------------------------------------------------------------- every stage, end to end


@pytest.mark.slow
def test_recipe_smoke_end_to_end(tmp_path):
    if not (ROOT / "bundle" / "probe").is_dir():
        pytest.skip("the toy-world probe (bundle/probe) is needed by the evolve stage's scorer")
    out = tmp_path / "smoke"
    r = _run("training.recipe", "--preset", "smoke", "--output", str(out), timeout=1200)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for stage in ("teacher", "teacher_v", "robust", "evolved", "distilled", "student"):
        assert (out / stage / "stage_complete.json").exists(), stage
    log = json.loads((out / "evolved" / "evolve_log.json").read_text())
    assert log["final_ms"] < log["start_ms"] and (out / "evolved" / "evolve_curve.png").exists()
    from snapfusion_app import load_pipeline

    pipe = load_pipeline(str(out / "student"))
    assert pipe.vae_decoder is not None and pipe.scheduler.config.prediction_type == "v_prediction"
    assert pipe.config.default_num_inference_steps == 2
    img = pipe("a big red circle", generator=torch.Generator().manual_seed(0), output_type="np").images
    assert img.shape == (1, 64, 64, 3) and np.isfinite(img).all()
    # running the recipe again skips every completed stage
    r = _run("training.recipe", "--preset", "smoke", "--output", str(out), timeout=600)
    assert r.returncode == 0 and r.stdout.count("complete, skipping") == 7
    shutil.rmtree(out)


def test_model_card_decoder_report_measures_fresh_latents():
    from pipelines.tiny import tiny_pipeline
    from training.common import StageError
    from training.model_card import decoder_report

    teacher = tiny_pipeline(0)
    student = tiny_pipeline(0, compressed_decoder=True)
    d = decoder_report(student, teacher, num_latents=2, steps=1, repeats=1)
    assert set(d["psnr_db"]) == {"teacher_latents", "student_latents"}
    assert all(np.isfinite(v) for v in d["psnr_db"].values())
    assert d["full_ms"] > 0 and d["compressed_ms"] > 0 and d["params_compressed"] < d["params_full"]
    assert d["full_plain_ms"] > 0 and d["speedup_vs_plain"] == pytest.approx(d["full_plain_ms"] / d["compressed_ms"])
    assert d["psnr_db"]["teacher_latents"] < 100  # the untrained pruned decoder is not the full one
    with pytest.raises(StageError, match="compressed decoder"):
        decoder_report(teacher, teacher, num_latents=2, steps=1, repeats=1)


def test_model_card_names_the_decoder_pruning():
    from pipelines import CompressedVAEDecoder, PixelShuffleVAEDecoder
    from pipelines.tiny import tiny_pipeline
    from training.model_card import decoder_phrase

    pipe = tiny_pipeline(0, compressed_decoder=True)
    assert decoder_phrase(pipe) == "50%-pruned VAE decoder (50% of its channels kept)"
    pipe.vae_decoder = CompressedVAEDecoder.from_vae(pipe.vae, 0.75, norm_num_groups=2)
    assert decoder_phrase(pipe) == "25%-pruned VAE decoder (75% of its channels kept)"
    assert decoder_phrase(tiny_pipeline(0)) == "the full VAE decoder"
    ps = decoder_phrase(tiny_pipeline(0, compressed_decoder="pixel_shuffle"))
    assert ps == ("pixel-shuffle VAE decoder (2 stage(s) from the latent resolution up: 16 ch x 1 ResNet, "
                  "8 ch x 1 ResNet; no attention; trained from scratch)")  # fmt: skip
    rc = tiny_pipeline(0, compressed_decoder="pixel_shuffle")
    rc.vae_decoder = PixelShuffleVAEDecoder(block_out_channels=(16, 8), layers_per_block=1, upscale_factor=2,
                                            block_type="residual_conv")  # fmt: skip
    assert decoder_phrase(rc).endswith("8 ch x 1 ResNet; no attention; no normalization (residual conv blocks); "
                                       "trained from scratch)")  # fmt: skip


@pytest.mark.parametrize("preset", ["smoke", "mini"])
def test_recipe_configs_parse_with_their_stage_modules(preset):
    import importlib
    from argparse import Namespace

    from training.recipe import load_config, stage_argv

    config = load_config(Namespace(config=None, preset=preset))
    values = {"output": "runs/x", **{s["name"]: f"runs/x/{s['name']}" for s in config["stages"]}}
    for s in config["stages"]:
        if s["module"] == "write_prompts":
            continue
        args = importlib.import_module(f"training.{s['module']}").parse_args(
            stage_argv(s, values) + ["--output", "runs/x/out"])  # fmt: skip
        for key, value in s.get("args", {}).items():  # every config key is a flag of that stage
            assert hasattr(args, key), (s["name"], key)
            if value is True:
                assert getattr(args, key) is True, (s["name"], key)


def test_ship_bundle_one_model(tmp_path):
    from safetensors.torch import load_file

    recipe, out = tmp_path / "recipe", tmp_path / "bundle"
    for stage in ("teacher", "student"):
        tiny_pipeline(0, compressed_decoder=stage == "student").save_pretrained(recipe / stage)
        (recipe / stage / "stage_complete.json").write_text(json.dumps({"stage": stage}))
    (out / "teacher").mkdir(parents=True)
    (out / "teacher" / "keep.txt").write_text("shipped earlier")
    r = _run("training.ship_bundle", "--recipe", str(recipe), "--out", str(out), "--models", "student",
             "--student-guidance", "3", "--seeds", "1")  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert (out / "teacher" / "keep.txt").read_text() == "shipped earlier"  # the other model is left alone
    weights = load_file(out / "student" / "vae_decoder" / "diffusion_pytorch_model.safetensors")
    assert all(v.dtype == torch.float16 for v in weights.values())
    assert json.loads((out / "student" / "model_index.json").read_text())["default_guidance_scale"] == 3.0
    assert (out / "samples_student.png").exists() and not (out / "samples_teacher.png").exists()
    r = _run("training.ship_bundle", "--recipe", str(recipe), "--out", str(out), "--models", "student")
    assert r.returncode == 2 and "exists; pass --overwrite" in r.stderr
    r = _run("training.ship_bundle", "--recipe", str(recipe), "--out", str(out), "--models", "decoder")
    assert r.returncode == 2 and "--models must name teacher and/or student" in r.stderr


def test_model_card_quality_targets_use_each_models_best_guidance():
    from training.model_card import quality_targets

    def ev(rows, k=2000):
        return {"num_images": k, "seed": 0, "floor_fid": 37.4, "steps": 8,
                "results": [{"guidance": g, "alignment": a, "fid": f} for g, a, f in rows]}  # fmt: skip

    teacher = ev([(2.0, 0.895, 240.0), (3.5, 0.897, 257.0)])  # lowest FID at 2, best alignment at 3.5
    rows = quality_targets(ev([(2.5, 0.90, 260.0), (4.0, 0.88, 380.0)]), teacher)
    assert "260.0 at 2.5 = 1.083x | 240.0 at 2 | met" in rows[2]
    assert "0.8770 | 0.9000 at 2.5 | 0.8970 at 3.5 | met" in rows[3]
    rows = quality_targets(ev([(2.5, 0.87, 270.0)]), teacher)  # 1.125x: judged against 240, not 257
    assert rows[2].endswith("| **missed** |") and rows[3].endswith("| **missed** |")
    with pytest.raises(ValueError, match="num_images"):
        quality_targets(ev([(2.5, 0.9, 250.0)], k=256), teacher)


def test_model_card_quotes_stages_missing_from_the_recipe():
    from training.model_card import card_stage_lines

    card = "\n".join([
        "## Training", "", "Reproduce: `x`.", "",
        "- **teacher** (`training.train_teacher`, 10 s on this CPU): lr=1",
        "  - text encoder pre-trained on toy captions, then frozen: 1.0000",
        "- **student** (`training.decoder`, 5 s on this CPU): lr=2",
        "", "## Next",
    ])  # fmt: skip
    stages = card_stage_lines(card)
    assert list(stages) == ["teacher", "student"]
    assert stages["teacher"][1].startswith("  - text encoder") and len(stages["student"]) == 1


def test_vae_finetune_trains_only_the_decoder(saved_teacher, tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "ft"
    r = _run("training.vae_finetune", "--pretrained", str(saved_teacher), "--resolution", "32", "--max-steps", "3",
             "--batch-size", "2", "--eval-images", "4", "--log-with", "none", "--output", str(out))  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    before = load_file(saved_teacher / "vae" / "diffusion_pytorch_model.safetensors")
    after = load_file(out / "vae" / "diffusion_pytorch_model.safetensors")
    assert before.keys() == after.keys()
    # the encoder side (and so the UNet's latent space) is untouched; the decoder changed
    assert all(torch.equal(before[k], after[k]) for k in before if not k.startswith("decoder."))
    assert not all(torch.equal(before[k], after[k]) for k in before if k.startswith("decoder."))
    done = json.loads((out / "stage_complete.json").read_text())
    assert done["steps"] == 3 and np.isfinite(done["psnr_db_before"]) and np.isfinite(done["psnr_db_after"])
    r = _run("training.vae_finetune", "--pretrained", str(tmp_path / "none"), "--output", str(tmp_path / "x"))
    assert r.returncode == 2 and "neither an existing folder" in r.stderr
