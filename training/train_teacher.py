"""Stage 1: latent-diffusion training of the teacher (text encoder + UNet, + VAE when none is given).

From scratch (``--model-preset mini``, toy world) or from a checkpoint (``--pretrained DIR``, e.g. a stock
SD-v1.5 folder). Also does the paper's "fine-tune the teacher to v-prediction" step:
``--pretrained teacher_eps --prediction-type v_prediction``.

    python -m training.train_teacher --data toy --model-preset mini --output runs/teacher --max-steps 4000
    accelerate launch --multi_gpu -m training.train_teacher --pretrained sd15 --data wds:/laion/{0..99}.tar ...
"""

from __future__ import annotations

import argparse
import importlib
import time

import torch
import torch.nn.functional as F

from pipelines import EfficientUNet2DConditionModel, SnapFusionPipeline
from pipelines.psnr import psnr
from pipelines.schedulers import ddim_scheduler

from .common import StageError, add_common_args, run_cli, validate_common_args
from .data import add_data_args, infinite, make_dataloader, make_dataset, vocabulary
from .loop import TrainLoop, load_substage, make_optimizer, save_substage, warm_up
from .models import MODEL_PRESETS, build_from_scratch, load_stage_pipeline

STAGE = "train_teacher"
# Pre-training objectives of a from-scratch text encoder (--text-objective), by name: a module whose
# train_text_encoder(text_encoder, tokenizer, args, accelerator, out) returns the pre-trained, frozen encoder.
TEXT_OBJECTIVES = {"toy": "training.toy.caption_objective"}


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
    g.add_argument("--model-preset", default="mini",
                   help=f"{' | '.join(MODEL_PRESETS)} (used without --pretrained)")  # fmt: skip
    g.add_argument("--vae-steps", type=int, default=800, help="VAE training steps when no VAE is given")
    g.add_argument("--vae-lr", type=float, default=1e-3)
    g.add_argument("--vae-batch-size", type=int, default=None, help="default: --batch-size")
    g.add_argument("--vae-kl-weight", type=float, default=1e-6)
    g.add_argument("--text-objective", choices=sorted(TEXT_OBJECTIVES), default="toy",
                   help="pre-training objective of the from-scratch text encoder (toy: read toy-world captions)")
    g.add_argument("--text-steps", type=int, default=300,
                   help="steps pre-training the text encoder (0: train it jointly with the UNet, unprepared)")
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


@torch.no_grad()
def vae_metrics(vae, dataset, num_images: int = 128) -> dict:
    """Held-out reconstruction PSNR (dB, [0, 1] range, from the posterior mean) and the posterior's noise level.

    A mean posterior std close to the latents' own spread means the latents the UNet learns are mostly noise.
    """
    x = torch.stack([dataset[i]["pixel_values"] for i in range(num_images)]).to(vae.device)
    dist = vae.encode(x).latent_dist
    recon = vae.decode(dist.mean).sample.clamp(-1, 1)
    return {"psnr_db": psnr(x.float() / 2, recon.float() / 2, peak=1.0), "posterior_std": dist.std.mean().item(),
            "latent_std": dist.mean.std().item(), "num_images": num_images}  # fmt: skip


def train_vae(vae, args, accelerator, out):
    """Train the VAE as an autoencoder (MSE + small KL); set scaling_factor so latents have unit std."""
    from diffusers import AutoencoderKL

    done = out / "vae_stage"
    trained = load_substage(accelerator, done, AutoencoderKL, "VAE")
    if trained is not None:
        return trained
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

    warm_up(accelerator, "vae", args.vae_steps, opt, loss_fn)
    vae.eval()
    with torch.no_grad():  # SD's recipe: scale latents to unit variance
        x = torch.cat([next(it)["pixel_values"] for _ in range(4)])
        std = vae.encode(x.to(vae.device)).latent_dist.sample().std().item()
    vae.register_to_config(scaling_factor=1.0 / std)
    metrics = vae_metrics(vae, make_dataset(args.data, args.resolution, seed=args.seed + 10**6,
                                            image_column=args.image_column, caption_column=args.caption_column))
    accelerator.print(f"VAE: held-out reconstruction PSNR {metrics['psnr_db']:.2f} dB, mean posterior std "
                      f"{metrics['posterior_std']:.4f} (latent std {metrics['latent_std']:.4f})")  # fmt: skip
    save_substage(accelerator, out, done, vae, metrics, time.time() - t0)
    return vae


def scratch_components(args, loop: TrainLoop) -> tuple[dict, bool]:
    """train_teacher without --pretrained: components built from ``--model-preset``, the VAE trained first, the text
    encoder pre-trained on captions (``--text-steps`` > 0); returns them and whether the text encoder is ready."""
    components = build_from_scratch(args.model_preset, args.resolution, vocabulary(args.data),
                                    args.prediction_type or "epsilon", args.seed)  # fmt: skip
    vae = components["vae"]
    latent_size = args.resolution // (2 ** (len(vae.config.block_out_channels) - 1))
    if components["unet"].config.sample_size != latent_size:
        raise StageError(f"UNet sample_size {components['unet'].config.sample_size} does not match resolution "
                         f"{args.resolution}.")  # fmt: skip
    components["vae"] = train_vae(vae, args, loop.accelerator, loop.out)
    text_ready = args.text_steps > 0
    if text_ready:  # the objective's module, by name
        objective = importlib.import_module(TEXT_OBJECTIVES[args.text_objective])
        components["text_encoder"] = objective.train_text_encoder(
            components["text_encoder"], components["tokenizer"], args, loop.accelerator, loop.out)  # fmt: skip
    return components, text_ready


def train_denoiser(args, stage: str, block_keep_prob: float = 1.0, components: dict | None = None, scratch=None):
    """Diffusion training of the UNet (and optionally the text encoder); shared by train_teacher, robust and evolve.

    Components: ``components`` given in-process (evolve), else the ``--pretrained`` folder, else
    ``scratch(args, loop) -> (components, text_encoder_ready)`` builds them once the accelerator exists."""
    if args.snr_gamma is not None and not args.snr_gamma > 0:
        raise StageError(f"--snr-gamma must be a positive number; got {args.snr_gamma}.")
    loop = TrainLoop(args, stage)
    device = loop.device

    # 1. components: given in-process, from a pipeline folder, or from scratch (VAE and text encoder trained first)
    from_scratch, text_ready = components is None and args.pretrained is None, False
    if from_scratch:
        if scratch is None:
            raise StageError(f"{stage} starts from a trained model: pass --pretrained DIR.")
        components, text_ready = scratch(args, loop)
    elif components is None:
        components = dict(load_stage_pipeline(args.pretrained, "--pretrained").components)
    tokenizer, text_encoder, unet, vae = (components[k] for k in ("tokenizer", "text_encoder", "unet", "vae"))
    if vae is None:
        raise StageError("Denoiser training needs the full VAE (encoder) to make latents; this folder has none.")
    prediction_type = args.prediction_type or components["scheduler"].config.prediction_type
    scheduler = ddim_scheduler(prediction_type) if from_scratch else components["scheduler"]
    if scheduler.config.prediction_type != prediction_type:
        scheduler = type(scheduler).from_config(scheduler.config, prediction_type=prediction_type)
    # from scratch, the text encoder is pre-trained on captions, then frozen
    train_te = from_scratch and not text_ready if args.train_text_encoder is None else args.train_text_encoder

    # 2. frozen parts; the UNet in training mode (with stochastic block skipping for robust training)
    vae.requires_grad_(False).eval().to(device)
    text_encoder.requires_grad_(train_te)
    if not train_te:
        text_encoder.eval().to(device)
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
    dataset = make_dataset(args.data, args.resolution, seed=args.seed, image_column=args.image_column,
                           caption_column=args.caption_column)  # fmt: skip
    loader = make_dataloader(dataset, args.batch_size, args.num_workers)
    if train_te:
        unet, loader, text_encoder = loop.prepare(unet, optimizer, loader, text_encoder)
    else:
        unet, loader = loop.prepare(unet, optimizer, loader)
    rng = loop.random  # caption dropout
    alphas_cumprod = scheduler.alphas_cumprod.to(device)

    # 4. training loop: the denoising loss of a batch (caption dropout for classifier-free guidance)
    def loss_fn(batch):
        x = batch["pixel_values"].to(device)
        captions = ["" if rng.random() < args.caption_dropout else c for c in batch["caption"]]
        with torch.no_grad():
            latents = vae.encode(x).latent_dist.sample() * vae.config.scaling_factor  # (B, 4, h, w)
        ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids.to(device)  # fmt: skip
        with torch.set_grad_enabled(train_te):
            cond = text_encoder(ids)[0]  # (B, L, D)
        noise = torch.randn_like(latents)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],), device=latents.device)
        return denoising_loss(unet, latents, cond, noise, t, alphas_cumprod, prediction_type, args.snr_gamma)

    loop.run(infinite(loader), loss_fn)

    # 5. save a pipeline folder that SnapFusionPipeline loads unchanged
    unet = loop.finish()
    if isinstance(unet, EfficientUNet2DConditionModel):
        unet.set_block_keep_prob(1.0)
    unet.eval()
    text_encoder = loop.accelerator.unwrap_model(text_encoder).eval()
    pipe = SnapFusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        vae_decoder=components.get("vae_decoder"), default_num_inference_steps=args.default_steps,
        default_guidance_scale=args.default_guidance,
    )  # fmt: skip
    return loop.save(pipe, {"final_loss": loop.loss})


def main(args):
    validate_common_args(args)
    if args.pretrained is None and args.vae_steps < 1:
        raise StageError(f"--vae-steps must be >= 1 when training from scratch; got {args.vae_steps}.")
    if args.text_steps < 0:
        raise StageError(f"--text-steps must be >= 0 (0 trains the text encoder jointly); got {args.text_steps}.")
    return train_denoiser(args, STAGE, scratch=scratch_components)


if __name__ == "__main__":
    run_cli(main, parse_args)
