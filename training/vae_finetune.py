"""Fine-tune a pipeline's VAE decoder on real images with the encoder frozen (SD's ``sd-vae-ft-mse`` recipe).

The encoder, and so the latent space the UNet was trained in, stays exactly as it is: the UNet needs no
retraining. Only the decoder learns to reconstruct images from the encoder's latents (MSE on pixels). Use it when
the decoder is the bottleneck, e.g. after the short from-scratch VAE warm-up of ``train_teacher``.

    python -m training.vae_finetune --pretrained runs/mini/teacher --data toy --max-steps 2000 \\
        --output runs/mini/teacher_ft

The output is the input pipeline with the new decoder. The held-out reconstruction PSNR before and after is
printed and recorded in ``stage_complete.json``.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from pipelines import SnapFusionPipeline
from pipelines.psnr import psnr

from .common import StageError, add_common_args, run_cli, validate_common_args
from .data import add_data_args, infinite, make_dataloader, make_dataset
from .loop import TrainLoop, make_optimizer
from .models import load_stage_pipeline

STAGE = "vae_finetune"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, lr=5e-4, batch_size=16, max_steps=2000)
    parser.add_argument("--pretrained", required=True, help="pipeline folder whose VAE decoder is fine-tuned")
    add_data_args(parser)
    parser.add_argument("--eval-images", type=int, default=128, help="held-out images for the PSNR report")
    return parser.parse_args(argv)


@torch.no_grad()
def reconstruction_psnr(vae, images: torch.Tensor, batch_size: int = 64) -> float:
    """PSNR (dB, images in [0, 1]) of decode(encoder mean) against ``images`` (N, 3, H, W) in [-1, 1]."""
    recon = []
    for i in range(0, len(images), batch_size):
        x = images[i : i + batch_size].to(vae.device)
        recon.append(vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1).float().cpu())
    return psnr(images.float() / 2, torch.cat(recon) / 2, peak=1.0)  # over every image together


def main(args):
    validate_common_args(args)
    if args.eval_images < 1:
        raise StageError(f"--eval-images must be >= 1; got {args.eval_images}.")
    pipe = load_stage_pipeline(args.pretrained, "--pretrained")
    if pipe.vae is None:
        raise StageError(f"{args.pretrained} has no full VAE (encoder + decoder) to fine-tune.")
    loop = TrainLoop(args, STAGE)
    device = loop.device
    vae = pipe.vae.to(device)
    vae.requires_grad_(False).eval()
    vae.decoder.requires_grad_(True).train()  # post_quant_conv stays frozen with the encoder side

    # held-out images: a different data seed than training
    held = make_dataset(args.data, args.resolution, seed=args.seed + 10**6, image_column=args.image_column,
                        caption_column=args.caption_column)  # fmt: skip
    held_it = iter(make_dataloader(held, min(args.eval_images, 64)))
    eval_images = torch.cat([next(held_it)["pixel_values"] for _ in range(-(-args.eval_images // 64))])
    eval_images = eval_images[: args.eval_images]
    vae.decoder.eval()
    psnr_before = reconstruction_psnr(vae, eval_images)
    vae.decoder.train()
    loop.accelerator.print(f"held-out reconstruction PSNR before: {psnr_before:.2f} dB")

    dataset = make_dataset(args.data, args.resolution, seed=args.seed, image_column=args.image_column,
                           caption_column=args.caption_column)  # fmt: skip
    optimizer = make_optimizer(vae.decoder.parameters(), args)
    decoder, loader = loop.prepare(vae.decoder, optimizer, make_dataloader(dataset, args.batch_size, args.num_workers))

    def loss_fn(batch):  # pixel MSE of the decoded latents the UNet was trained on (a posterior sample)
        x = batch["pixel_values"].to(device)  # (B, 3, R, R) in [-1, 1]
        with torch.no_grad():  # the frozen encoder
            z = vae.post_quant_conv(vae.encode(x).latent_dist.sample())
        return F.mse_loss(decoder(z).float(), x.float())

    loop.run(infinite(loader), loss_fn)

    vae.decoder = loop.finish()
    vae.eval()
    psnr_after = reconstruction_psnr(vae, eval_images)
    loop.accelerator.print(f"held-out reconstruction PSNR after: {psnr_after:.2f} dB (before: {psnr_before:.2f} dB)")
    new = SnapFusionPipeline(
        vae=vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=pipe.unet,
        scheduler=pipe.scheduler, vae_decoder=pipe.vae_decoder,
        default_num_inference_steps=pipe.config.default_num_inference_steps,
        default_guidance_scale=pipe.config.default_guidance_scale,
    )  # fmt: skip
    return loop.save(new, {"final_mse": loop.loss, "psnr_db_before": psnr_before, "psnr_db_after": psnr_after,
                           "eval_images": len(eval_images)})  # fmt: skip


if __name__ == "__main__":
    run_cli(main, parse_args)
