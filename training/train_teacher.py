"""Stage 1: latent-diffusion training of the teacher (text encoder + UNet, + VAE when none is given).

From scratch (``--model-preset mini``, toy world) or from a checkpoint (``--pretrained DIR``, e.g. a stock
SD-v1.5 folder). Also does the paper's "fine-tune the teacher to v-prediction" step:
``--pretrained teacher_eps --prediction-type v_prediction``.

    python -m training.train_teacher --data toy --model-preset mini --output runs/teacher --max-steps 4000
    accelerate launch --multi_gpu -m training.train_teacher --pretrained sd15 --data wds:/laion/{0..99}.tar ...
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time

import torch
import torch.nn.functional as F

from pipelines import EfficientUNet2DConditionModel, SnapFusionPipeline
from pipelines.schedulers import ddim_scheduler

from .common import (
    StageError, add_common_args, make_accelerator, make_ema, make_lr_scheduler, make_optimizer,
    mark_complete, maybe_resume, prepare_output, progress, reuse_substage_time, run_cli, save_checkpoint, save_clock,
    save_config, validate_common_args,
    write_rank_checksum,
)  # fmt: skip
from .common import optimizer_step
from .data import add_data_args, infinite, make_dataloader, make_dataset
from .models import build_from_scratch, load_stage_pipeline

STAGE = "train_teacher"


def add_denoiser_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("denoiser training")
    add_data_args(g)
    g.add_argument("--pretrained", default=None, help="pipeline folder to start from (else --model-preset)")
    g.add_argument("--prediction-type", choices=["epsilon", "v_prediction"], default=None,
                   help="target of the UNet (default: the pretrained scheduler's, else epsilon)")  # fmt: skip
    g.add_argument("--caption-dropout", type=float, default=0.1, help="probability of an empty caption (for CFG)")
    g.add_argument("--train-text-encoder", action=argparse.BooleanOptionalAction, default=None,
                   help="train the text encoder with the UNet (default: off; on from scratch with "
                   "--text-steps 0)")  # fmt: skip
    g.add_argument("--snr-gamma", type=float, default=None,
                   help="Min-SNR-gamma loss weighting (5 is the usual choice); default: unweighted")  # fmt: skip
    g.add_argument("--default-steps", type=int, default=50, help="recommended sampling steps saved with the model")
    g.add_argument("--default-guidance", type=float, default=7.5, help="recommended CFG scale saved with the model")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, lr=3e-4, batch_size=32, max_steps=4000)
    add_denoiser_args(parser)
    g = parser.add_argument_group("from scratch")
    g.add_argument("--model-preset", default="mini", help="smoke | mini (used without --pretrained)")
    g.add_argument("--vae-steps", type=int, default=800, help="VAE training steps when no VAE is given")
    g.add_argument("--vae-lr", type=float, default=1e-3)
    g.add_argument("--vae-batch-size", type=int, default=None, help="default: --batch-size")
    g.add_argument("--vae-kl-weight", type=float, default=1e-6)
    g.add_argument("--text-steps", type=int, default=300,
                   help="steps pre-training the text encoder to read toy captions (0: train it jointly, unprepared)")
    g.add_argument("--text-lr", type=float, default=1e-3)
    g.add_argument("--text-batch-size", type=int, default=256)
    return parser.parse_args(argv)


def denoising_loss(
    unet, latents, cond, noise, t, alphas_cumprod, prediction_type: str, snr_gamma: float | None = None
) -> torch.Tensor:
    """MSE of the UNet's eps or v prediction at z_t = alpha_t x0 + sigma_t eps (v = alpha_t eps - sigma_t x0).

    ``snr_gamma``: Min-SNR-gamma weighting (Hang et al., 2023; diffusers' ``--snr_gamma``), which caps the weight of
    low-noise timesteps and speeds up convergence; None is the plain mean.
    """
    a = alphas_cumprod[t].sqrt().view(-1, 1, 1, 1)
    s = (1 - alphas_cumprod[t]).sqrt().view(-1, 1, 1, 1)
    noisy = a * latents + s * noise  # (B, C, h, w)
    target = noise if prediction_type == "epsilon" else a * noise - s * latents
    if snr_gamma is None:
        return F.mse_loss(unet(noisy, t, cond).sample.float(), target.float())
    per_sample = F.mse_loss(unet(noisy, t, cond).sample.float(), target.float(), reduction="none").mean((1, 2, 3))
    snr = (alphas_cumprod[t] / (1 - alphas_cumprod[t])).float()
    weight = snr.clamp(max=snr_gamma) / (snr if prediction_type == "epsilon" else snr + 1)
    return (weight * per_sample).mean()


def _warm_up(accelerator, name: str, steps: int, opt, loss_fn) -> None:
    """A plain optimisation loop kept out of accelerate's state (the from-scratch VAE and text-encoder phases)."""
    bar = progress(accelerator, steps, 0, name)
    for step in range(steps):
        loss = loss_fn()
        loss.backward()
        opt.step()
        opt.zero_grad()
        bar.update()
        bar.set_postfix(loss=f"{loss.item():.4f}")
        accelerator.log({f"{name}/loss": loss.item()}, step=step)
    bar.close()


@torch.no_grad()
def vae_metrics(vae, dataset, num_images: int = 128) -> dict:
    """Held-out reconstruction PSNR (dB, [0, 1] range, from the posterior mean) and the posterior's noise level.

    A mean posterior std close to the latents' own spread means the latents the UNet learns are mostly noise.
    """
    x = torch.stack([dataset[i]["pixel_values"] for i in range(num_images)]).to(vae.device)
    dist = vae.encode(x).latent_dist
    recon = vae.decode(dist.mean).sample.clamp(-1, 1)
    mse = F.mse_loss(recon.float() / 2, x.float() / 2).item()
    return {"psnr_db": 10 * math.log10(1.0 / mse), "posterior_std": dist.std.mean().item(),
            "latent_std": dist.mean.std().item(), "num_images": num_images}  # fmt: skip


def train_vae(vae, args, accelerator, out):
    """Train the VAE as an autoencoder (MSE + small KL); set scaling_factor so latents have unit std."""
    done = out / "vae_stage"
    if (done / "config.json").exists():
        from diffusers import AutoencoderKL

        accelerator.print(f"VAE already trained: loading {done}")
        reuse_substage_time(done)
        return AutoencoderKL.from_pretrained(done)
    t0 = time.time()
    dataset = make_dataset(args.data, args.resolution, seed=args.seed + 1, image_column=args.image_column,
                           caption_column=args.caption_column)  # fmt: skip
    loader = make_dataloader(dataset, args.vae_batch_size or args.batch_size, args.num_workers)
    # Not passed through accelerator.prepare: the VAE phase is a small from-scratch warm-up, and keeping it out of
    # the accelerator's state keeps checkpoints of the diffusion phase resumable. Every rank trains the same copy
    # (same seed, same data), so the VAE is identical across processes.
    opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    vae.to(accelerator.device).train()
    it = infinite(loader)

    def loss_fn():
        x = next(it)["pixel_values"].to(accelerator.device)  # (B, 3, R, R) in [-1, 1]
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        return F.mse_loss(recon, x) + args.vae_kl_weight * posterior.kl().mean()

    _warm_up(accelerator, "vae", args.vae_steps, opt, loss_fn)
    vae.eval()
    with torch.no_grad():  # SD's recipe: scale latents to unit variance
        x = torch.cat([next(it)["pixel_values"] for _ in range(4)])
        std = vae.encode(x.to(vae.device)).latent_dist.sample().std().item()
    vae.register_to_config(scaling_factor=1.0 / std)
    metrics = vae_metrics(vae, make_dataset(args.data, args.resolution, seed=args.seed + 10**6,
                                            image_column=args.image_column, caption_column=args.caption_column))
    accelerator.print(f"VAE: held-out reconstruction PSNR {metrics['psnr_db']:.2f} dB, mean posterior std "
                      f"{metrics['posterior_std']:.4f} (latent std {metrics['latent_std']:.4f})")  # fmt: skip
    if accelerator.is_main_process:
        vae.save_pretrained(done)
        (done / "metrics.json").write_text(json.dumps(metrics, indent=2))
        (done / "seconds.json").write_text(json.dumps({"seconds": time.time() - t0}))
        save_clock(out)
    accelerator.wait_for_everyone()
    return vae


def train_text_encoder(text_encoder, tokenizer, args, accelerator, out):
    """Pre-train the from-scratch text encoder to read toy-world captions, then keep it frozen (SD-v1.5 freezes its
    pre-trained CLIP text encoder too).

    Objective: from the caption's end-of-text state (CLIP's pooled output), predict every attribute label of the
    scene (count, background, relation, each object's shape, color, size and position) with one linear head each.
    Without this, a randomly initialised encoder gives nearly the same states for every caption, and the UNet
    learns to ignore the text (bundle v0). Captions and labels come from the toy world; no image is rendered.
    """
    import numpy as np

    from .toy_world import ATTRIBUTE_VALUES, NUM_PHRASINGS, caption, random_labels

    done = out / "text_stage"
    if (done / "config.json").exists():
        from transformers import CLIPTextModel

        accelerator.print(f"text encoder already pre-trained: loading {done}")
        reuse_substage_time(done)
        return CLIPTextModel.from_pretrained(done)
    t0 = time.time()

    def make(n: int, seed: int):
        rng = np.random.default_rng(seed)
        texts, labels = [], []
        for _ in range(n):
            scene = random_labels(rng)
            texts.append(caption(scene, int(rng.integers(NUM_PHRASINGS))))
            flat = scene.flat()
            labels.append([ATTRIBUTE_VALUES[a].index(flat[a]) for a in ATTRIBUTE_VALUES])
        ids = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids  # fmt: skip
        return ids, torch.tensor(labels)  # (n, L), (n, attributes)

    train_ids, train_labels = make(min(20000, args.text_steps * args.text_batch_size), args.seed + 2)
    test_ids, test_labels = make(2000, args.seed + 3)
    hidden = text_encoder.config.hidden_size
    heads = torch.nn.ModuleList([torch.nn.Linear(hidden, len(v)) for v in ATTRIBUTE_VALUES.values()])
    params = list(text_encoder.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=args.text_lr, weight_decay=0.01)
    device = accelerator.device
    text_encoder.to(device).train()
    heads.to(device)
    gen = torch.Generator().manual_seed(args.seed + 4)

    def logits(ids):
        pooled = text_encoder(ids.to(device)).pooler_output  # (B, hidden): the end-of-text token's state
        return [head(pooled) for head in heads]

    def loss_fn():
        pick = torch.randint(0, len(train_ids), (args.text_batch_size,), generator=gen)
        y = train_labels[pick].to(device)
        return sum(F.cross_entropy(lg, y[:, i]) for i, lg in enumerate(logits(train_ids[pick])))

    _warm_up(accelerator, "text", args.text_steps, opt, loss_fn)
    text_encoder.eval()
    with torch.no_grad():
        preds = torch.stack([lg.argmax(1).cpu() for lg in logits(test_ids)], dim=1)  # (n, attributes)
    per_attribute = (preds == test_labels).float().mean(0)
    all_right = (preds == test_labels).all(1).float().mean().item()
    metrics = {"heldout_captions": len(test_ids), "all_attributes": all_right,
               "per_attribute": dict(zip(ATTRIBUTE_VALUES, per_attribute.tolist()))}  # fmt: skip
    accelerator.print(f"text encoder: held-out captions read fully right {metrics['all_attributes']:.4f}")
    if accelerator.is_main_process:
        text_encoder.save_pretrained(done)
        (done / "metrics.json").write_text(json.dumps(metrics, indent=2))
        (done / "seconds.json").write_text(json.dumps({"seconds": time.time() - t0}))
        save_clock(out)
    accelerator.wait_for_everyone()
    return text_encoder


def train_denoiser(args, stage: str, block_keep_prob: float = 1.0, components: dict | None = None):
    """Diffusion training of the UNet (and optionally the text encoder); shared by train_teacher and robust."""
    if args.snr_gamma is not None and not args.snr_gamma > 0:
        raise StageError(f"--snr-gamma must be a positive number; got {args.snr_gamma}.")
    out = prepare_output(args)
    accelerator = make_accelerator(args, stage)
    save_config(args, out, stage)

    # 1. components: from a pipeline folder, given in-process, or from scratch
    from_scratch = args.pretrained is None and components is None
    if components is None:
        if args.pretrained is not None:
            pipe = load_stage_pipeline(args.pretrained, "--pretrained")
            components = dict(pipe.components)
        else:
            from .toy_world import VOCABULARY

            if not args.data.startswith("toy"):
                raise StageError("Training from scratch builds a tokenizer from the toy world's vocabulary; for "
                                 "other data pass --pretrained with a folder that has a CLIP tokenizer.")  # fmt: skip
            components = build_from_scratch(args.model_preset, args.resolution, VOCABULARY,
                                            args.prediction_type or "epsilon", args.seed)  # fmt: skip
    tokenizer, text_encoder, unet, vae = (components[k] for k in ("tokenizer", "text_encoder", "unet", "vae"))
    if vae is None:
        raise StageError("Denoiser training needs the full VAE (encoder) to make latents; this folder has none.")
    prediction_type = args.prediction_type or components["scheduler"].config.prediction_type
    scheduler = ddim_scheduler(prediction_type) if from_scratch else components["scheduler"]
    if scheduler.config.prediction_type != prediction_type:
        scheduler = type(scheduler).from_config(scheduler.config, prediction_type=prediction_type)
    # from scratch, the text encoder is pre-trained on captions, then frozen
    text_ready = from_scratch and getattr(args, "text_steps", 0) > 0
    if args.train_text_encoder is None:
        train_te = from_scratch and not text_ready
    else:
        train_te = args.train_text_encoder
    latent_size = args.resolution // (2 ** (len(vae.config.block_out_channels) - 1))
    if unet.config.sample_size != latent_size and from_scratch:
        raise StageError(f"UNet sample_size {unet.config.sample_size} does not match resolution {args.resolution}.")

    # 2. VAE (only from scratch: trained first, then frozen)
    if from_scratch:
        vae = train_vae(vae, args, accelerator, out)
    if text_ready:
        text_encoder = train_text_encoder(text_encoder, tokenizer, args, accelerator, out)
    vae.requires_grad_(False).eval().to(accelerator.device)
    text_encoder.requires_grad_(train_te)
    if not train_te:
        text_encoder.eval().to(accelerator.device)
    if isinstance(unet, EfficientUNet2DConditionModel):
        unet.set_block_keep_prob(block_keep_prob)
    elif block_keep_prob < 1.0:
        unet = EfficientUNet2DConditionModel.from_unet(unet)  # stochastic skipping needs the block view
        unet.set_block_keep_prob(block_keep_prob)
    if args.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()

    # 3. optimizer, data, accelerate
    params = list(unet.parameters()) + (list(text_encoder.parameters()) if train_te else [])
    optimizer = make_optimizer(params, args)
    lr_scheduler = make_lr_scheduler(optimizer, args)
    dataset = make_dataset(args.data, args.resolution, seed=args.seed, image_column=args.image_column,
                           caption_column=args.caption_column)  # fmt: skip
    loader = make_dataloader(dataset, args.batch_size, args.num_workers)
    if train_te:
        unet, text_encoder, optimizer, loader, lr_scheduler = accelerator.prepare(
            unet, text_encoder, optimizer, loader, lr_scheduler)  # fmt: skip
    else:
        unet, optimizer, loader, lr_scheduler = accelerator.prepare(unet, optimizer, loader, lr_scheduler)
    ema = make_ema(accelerator.unwrap_model(unet), args)
    if ema is not None:
        ema.to(accelerator.device)
        accelerator.register_for_checkpointing(ema)
    start = maybe_resume(accelerator, args, out)
    if start and hasattr(dataset, "offset"):
        dataset.offset = start * args.batch_size * accelerator.num_processes  # fresh samples after resume
    rng = random.Random(args.seed + accelerator.process_index + start)
    alphas_cumprod = scheduler.alphas_cumprod.to(accelerator.device)

    # 4. training loop
    bar = progress(accelerator, args.max_steps, start, stage)
    it = infinite(loader)
    step = start
    while step < args.max_steps:
        batch = next(it)
        with accelerator.accumulate(unet):
            x = batch["pixel_values"].to(accelerator.device)
            captions = ["" if rng.random() < args.caption_dropout else c for c in batch["caption"]]
            with torch.no_grad():
                latents = vae.encode(x).latent_dist.sample() * vae.config.scaling_factor  # (B, 4, h, w)
            ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                            return_tensors="pt").input_ids.to(accelerator.device)  # fmt: skip
            with torch.set_grad_enabled(train_te):
                cond = text_encoder(ids)[0]  # (B, L, D)
            noise = torch.randn_like(latents)
            t = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],), device=latents.device)
            loss = denoising_loss(unet, latents, cond, noise, t, alphas_cumprod, prediction_type, args.snr_gamma)
            optimizer_step(accelerator, loss, params, optimizer, lr_scheduler, args.max_grad_norm)
        if accelerator.sync_gradients:
            step += 1
            if ema is not None:
                ema.step(accelerator.unwrap_model(unet).parameters())
            if not math.isfinite(loss.item()):
                raise RuntimeError(f"loss became {loss.item()} at step {step}; lower --lr")
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.4f}")
            accelerator.log({f"{stage}/loss": loss.item(), "lr": lr_scheduler.get_last_lr()[0]}, step=step)
            if step % args.checkpoint_every == 0 and step < args.max_steps:
                save_checkpoint(accelerator, args, out, step, stage)
    bar.close()

    # 5. save a pipeline folder that SnapFusionPipeline loads unchanged
    accelerator.wait_for_everyone()
    write_rank_checksum(accelerator, unet, out)
    unet = accelerator.unwrap_model(unet)
    if ema is not None:
        ema.copy_to(unet.parameters())
    if isinstance(unet, EfficientUNet2DConditionModel):
        unet.set_block_keep_prob(1.0)
    unet.eval()
    text_encoder = accelerator.unwrap_model(text_encoder).eval()
    if accelerator.is_main_process:
        pipe = SnapFusionPipeline(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
            vae_decoder=components.get("vae_decoder"), default_num_inference_steps=args.default_steps,
            default_guidance_scale=args.default_guidance,
        )  # fmt: skip
        pipe.save_pretrained(out)
        mark_complete(out, {"stage": stage, "steps": step, "final_loss": loss.item()})
    accelerator.end_training()
    return out


def main(args):
    validate_common_args(args)
    if args.pretrained is None and args.vae_steps < 1:
        raise StageError(f"--vae-steps must be >= 1 when training from scratch; got {args.vae_steps}.")
    if args.text_steps < 0:
        raise StageError(f"--text-steps must be >= 0 (0 trains the text encoder jointly); got {args.text_steps}.")
    return train_denoiser(args, STAGE)


if __name__ == "__main__":
    run_cli(main, parse_args)
