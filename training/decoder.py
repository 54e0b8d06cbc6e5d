"""Stage 5: compress the VAE decoder by channel pruning + data distillation (paper Sec. 5).

``--architecture pruned`` (the paper's) keeps ``--width-ratio`` of every layer's channels and starts from the
original decoder's weights. ``--architecture pixel_shuffle`` trains a decoder with far fewer layers from scratch
(``PixelShuffleVAEDecoder``: ``--channels`` and ``--layers`` per stage, from the latent resolution up): for small
images, where per-layer cost and not width sets the decoder's time.

Prompts -> text-to-image latents; decode each latent with the original and the pruned decoder; loss = MSE between
the two decoded images. Only the decoder is trained and no images are needed. Latents are generated once into a pool
of ``--pool-size`` (fresh noise per prompt, a guidance scale drawn from ``--gen-guidance`` per batch), plus
``--heldout`` latents never trained on, on which the final PSNR is reported.

``--latents-from teacher`` (the paper: SD-v1.5's UNet, ``--gen-steps`` DDIM steps) or ``pipeline`` (the pipeline
that receives the decoder, e.g. the 8-step student: the latents the app will decode).

    python -m training.decoder --teacher runs/teacher --pipeline runs/student --prompts prompts.txt \
        --output runs/student_final --width-ratio 0.5
"""

from __future__ import annotations

import argparse
import math
import random

import torch
import torch.nn.functional as F

from pipelines import CompressedVAEDecoder, PixelShuffleVAEDecoder, SnapFusionPipeline
from pipelines.psnr import psnr

from .common import StageError, add_common_args, run_cli, validate_common_args
from .data import read_prompts
from .loop import TrainLoop, make_optimizer, progress
from .models import load_stage_pipeline

STAGE = "decoder"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, lr=5e-4, batch_size=16, max_steps=1000)
    parser.add_argument("--teacher", required=True, help="pipeline whose UNet makes latents and whose VAE decoder "
                        "is the distillation target (paper: SD-v1.5, 50 DDIM steps)")  # fmt: skip
    parser.add_argument("--pipeline", default=None, help="pipeline that receives the compressed decoder "
                        "(default: the teacher)")  # fmt: skip
    parser.add_argument("--prompts", required=True, help="text file, one prompt per line")
    parser.add_argument("--architecture", choices=["pruned", "pixel_shuffle"], default="pruned",
                        help="pruned: the original decoder with --width-ratio of its channels (paper); pixel_shuffle: "
                        "PixelShuffleVAEDecoder with --channels and --layers, trained from scratch")  # fmt: skip
    parser.add_argument("--width-ratio", type=float, default=0.5, help="pruned: fraction of decoder channels kept")
    parser.add_argument("--channels", default="64,16", help="pixel_shuffle: channels per stage, from the latent "
                        "resolution up, each stage at twice the previous one's resolution")  # fmt: skip
    parser.add_argument("--layers", default="2,2", help="pixel_shuffle: ResNet blocks per stage (one number for all)")
    parser.add_argument("--block-type", choices=["resnet", "residual_conv"], default="resnet",
                        help="pixel_shuffle: resnet (diffusers' ResnetBlock2D, GroupNorm) or residual_conv "
                        "(conv-SiLU-conv + skip, no normalization: fewer ops per block)")  # fmt: skip
    parser.add_argument("--norm-groups", type=int, default=None, help="GroupNorm groups of the compressed "
                        "decoder (default: the teacher VAE's; pruned: needed when they do not divide the kept "
                        "widths)")  # fmt: skip
    parser.add_argument("--latents-from", choices=["teacher", "pipeline"], default="teacher",
                        help="which pipeline's text-to-image sampling makes the latents")  # fmt: skip
    parser.add_argument("--gen-steps", type=int, default=None, help="sampling steps per latent (default: the "
                        "generating pipeline's recommended steps)")  # fmt: skip
    parser.add_argument("--gen-guidance", default="7.5", help="guidance scale, or a comma-separated list to draw "
                        "from per batch, e.g. 1.5,2.5,5,8")  # fmt: skip
    parser.add_argument("--pool-size", type=int, default=512, help="latents generated before training")
    parser.add_argument("--heldout", type=int, default=64, help="extra latents, never trained on, for the PSNR")
    parser.add_argument("--cache-targets", action="store_true", help="decode the pool with the original decoder "
                        "once, before training, instead of every step (memory: pool x 3 x H x W floats)")  # fmt: skip
    return parser.parse_args(argv)


def parse_guidance_list(text) -> list[float]:
    try:
        values = [float(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise StageError(f"--gen-guidance must be a number or comma-separated numbers; got {text!r}.") from None
    if not values or any(not math.isfinite(v) or v < 1.0 for v in values):
        raise StageError(f"--gen-guidance needs one or more finite scales >= 1; got {text!r}.")
    return values


def parse_int_list(text, flag: str) -> list[int]:
    try:
        values = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise StageError(f"{flag} must be an integer or comma-separated integers; got {text!r}.") from None
    if not values:
        raise StageError(f"{flag} needs at least one integer; got {text!r}.")
    return values


def pixel_shuffle_layout(channels_text, layers_text, channels_flag: str = "--channels",
                         layers_flag: str = "--layers") -> tuple[list[int], list[int]]:  # fmt: skip
    """Channels and layers per stage from their comma-separated texts (one layers number applies to every stage);
    the flag names go into the error messages."""
    channels = parse_int_list(channels_text, channels_flag)
    layers = parse_int_list(layers_text, layers_flag)
    if len(layers) == 1:
        layers = layers * len(channels)
    if len(layers) != len(channels):
        raise StageError(f"{layers_flag} needs one number or one per stage of {channels_flag} ({len(channels)}); "
                         f"got {layers_text!r}.")  # fmt: skip
    return channels, layers


def make_student_decoder(vae, args):
    """The decoder to distill: pruned from ``vae`` (its weights as the start) or a fresh pixel-shuffle decoder."""
    try:
        if args.architecture == "pruned":
            return CompressedVAEDecoder.from_vae(vae, args.width_ratio, args.norm_groups)
        channels, layers = pixel_shuffle_layout(args.channels, args.layers)
        torch.manual_seed(args.seed)
        return PixelShuffleVAEDecoder.from_vae(vae, channels, tuple(layers), args.norm_groups, args.block_type)
    except ValueError as e:
        raise StageError(str(e)) from None


def main(args):
    validate_common_args(args)
    if args.pool_size < args.batch_size:
        raise StageError(f"--pool-size {args.pool_size} must be >= --batch-size {args.batch_size}.")
    if args.gen_steps is not None and args.gen_steps < 1:
        raise StageError(f"--gen-steps must be >= 1; got {args.gen_steps}.")
    if args.heldout < 1:
        raise StageError(f"--heldout must be >= 1; got {args.heldout}.")
    guidances = parse_guidance_list(args.gen_guidance)
    if args.architecture == "pixel_shuffle":
        pixel_shuffle_layout(args.channels, args.layers)
    prompts = read_prompts(args.prompts)

    # 1. teacher (latents + target decoder) and the pipeline to extend
    teacher = load_stage_pipeline(args.teacher, "--teacher")
    target = load_stage_pipeline(args.pipeline, "--pipeline") if args.pipeline else teacher
    if teacher.vae is None:
        raise StageError(f"teacher {args.teacher} has no full VAE decoder to distill from.")
    if target.unet.config.in_channels != teacher.vae.config.latent_channels:
        raise StageError("the pipeline's latent channels differ from the teacher VAE's.")
    vae = teacher.vae.requires_grad_(False).eval()
    student = make_student_decoder(vae, args).train()
    loop = TrainLoop(args, STAGE)
    device = loop.device
    teacher.to(device)

    # 2. latent pool (+ held-out latents) from text-to-image sampling, deterministic in --seed
    source = teacher if args.latents_from == "teacher" else target
    source.to(device)
    rng = random.Random(args.seed)
    pool = []
    gen = torch.Generator("cpu").manual_seed(args.seed)
    n_batches = math.ceil((args.pool_size + args.heldout) / args.batch_size)
    bar = progress(loop.accelerator, n_batches, 0, "latents")
    for _ in range(n_batches):
        batch_prompts = [rng.choice(prompts) for _ in range(args.batch_size)]
        lat = source(batch_prompts, num_inference_steps=args.gen_steps, guidance_scale=rng.choice(guidances),
                     generator=gen, output_type="latent").images  # fmt: skip
        pool.append(lat.cpu())
        bar.update()
    bar.close()
    pool = torch.cat(pool)  # (P, 4, h, w), scaled latents
    pool, heldout = pool[: args.pool_size], pool[args.pool_size : args.pool_size + args.heldout]

    targets = None
    if args.cache_targets:  # the original decoder's images of the whole pool, decoded once
        with torch.no_grad():
            targets = torch.cat([vae.decode(pool[i : i + args.batch_size].to(device) / vae.config.scaling_factor)
                                 .sample.cpu() for i in range(0, len(pool), args.batch_size)])  # fmt: skip

    # 3. train the compressed decoder to reproduce the original decoder's images
    student, _ = loop.prepare(student, make_optimizer(student.parameters(), args))
    g = loop.generator  # which pool latents each step trains on

    def batches():  # random pool latents and the original decoder's images of them
        while True:
            idx = torch.randint(0, len(pool), (args.batch_size,), generator=g)
            z = pool[idx].to(device) / vae.config.scaling_factor
            if targets is not None:
                ref = targets[idx].to(device)  # (B, 3, H, W)
            else:
                with torch.no_grad():
                    ref = vae.decode(z).sample  # (B, 3, H, W)
            yield z, ref

    def loss_fn(batch):
        z, ref = batch
        return F.mse_loss(student(z).float(), ref.float())

    loop.run(batches(), loss_fn)

    # 4. save the extended pipeline; report PSNR on the held-out latents
    student = loop.finish().eval()
    with torch.no_grad():
        z = heldout.to(device) / vae.config.scaling_factor
        ref = ((vae.decode(z).sample + 1) / 2).clamp(0, 1)
        pred = ((student(z) + 1) / 2).clamp(0, 1)
        psnr_db = psnr(ref, pred, peak=1.0)
    loop.accelerator.print(f"compressed decoder PSNR vs original: {psnr_db:.2f} dB "
                           f"(on {len(heldout)} held-out latents)")
    pipe = SnapFusionPipeline(
        vae=target.vae, text_encoder=target.text_encoder, tokenizer=target.tokenizer, unet=target.unet,
        scheduler=target.scheduler, vae_decoder=student,
        default_num_inference_steps=target.config.default_num_inference_steps,
        default_guidance_scale=target.config.default_guidance_scale,
    )  # fmt: skip
    return loop.save(pipe, {"final_mse": loop.loss, "psnr_db_heldout": psnr_db})


if __name__ == "__main__":
    run_cli(main, parse_args)
