"""Guidance distillation: a student that takes the guidance scale w as an input and runs one UNet pass per step.

Meng et al., "On Distillation of Guided Diffusion Models" (CVPR 2023), stage one: the student v_s(z_t, t, c, w)
learns the teacher's classifier-free-guided prediction v~ = w v(t, z_t, c) - (w - 1) v(t, z_t, empty) over a range
of w, so that sampling needs one pass per step instead of the CFG pair. The student gets diffusers' guidance
embedding (``time_cond_proj_dim``, as LCM's UNets; ``pipelines/guidance.py``), zero-initialised, so it starts as
the conditional teacher. Timesteps are drawn from the ``--steps``-step 'trailing' grid, the one a step-distilled
teacher (the SnapFusion student) was trained for; the loss is the distillation loss's x0 error with the truncated
SNR weight, plus ``gamma`` L_ori at w = 1 against the data's true v.

Step distillation of the result (8 -> 4 -> 2 -> 1 single-pass steps, stage two) is ``training.distill`` with this
stage's output as teacher and student.

    python -m training.guidance_distill --teacher runs/distilled --student runs/student --steps 8 \\
        --w-min 1 --w-max 8 --output runs/guided
"""

from __future__ import annotations

import argparse

import torch

from diffusers import DDIMScheduler
from pipelines import SnapFusionPipeline
from pipelines.guidance import add_guidance_embedding, is_guidance_embedded

from .common import StageError, add_common_args, run_cli, validate_common_args
from .data import add_data_args, infinite
from .distill import alpha_sigma, check_teacher_grid, guided, prepare_student, snr_weight_truncated, trailing_grid
from .loop import TrainLoop
from .models import load_stage_pipeline

STAGE = "guidance_distill"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, lr=1e-4, batch_size=32, max_steps=1000)
    parser.add_argument("--teacher", required=True, help="CFG teacher pipeline folder (v-prediction or epsilon)")
    parser.add_argument("--student", default=None, help="pipeline folder whose UNet (and decoder) initialises the "
                        "student (default: the teacher's)")  # fmt: skip
    parser.add_argument("--steps", type=int, default=8, help="train on this many-step 'trailing' DDIM grid")
    parser.add_argument("--w-min", type=float, default=1.0, help="smallest guidance scale learnt")
    parser.add_argument("--w-max", type=float, default=8.0, help="largest guidance scale learnt")
    parser.add_argument("--embedding-dim", type=int, default=256, help="time_cond_proj_dim of the w embedding")
    parser.add_argument("--gamma", type=float, default=0.1, help="weight of L_ori (the student at w = 1)")
    add_data_args(parser)
    parser.add_argument("--default-guidance", type=float, default=2.5, help="recommended w saved with the student")
    return parser.parse_args(argv)


def guidance_loss(s_unet, t_unet, x0, noise, cond, uncond, t, w, alphas_cumprod, teacher_type, gamma):
    """(loss, l_guide, l_ori) at timesteps ``t`` (B,) and guidance scales ``w`` (B, 1, 1, 1)."""
    a_t, s_t = alpha_sigma(alphas_cumprod, t)
    z_t = a_t * x0 + s_t * noise
    with torch.no_grad():
        v_target = guided(t_unet, z_t, t, cond, uncond, w, teacher_type, a_t, s_t)
    v_s = guided(s_unet, z_t, t, cond, uncond, w, "v_prediction", a_t, s_t)
    weight = snr_weight_truncated(a_t, s_t)
    loss_guide = (weight * (s_t * (v_s.float() - v_target.float())) ** 2).mean()  # x0 error = sigma * v error
    loss_ori = torch.zeros((), device=x0.device)
    if gamma > 0:
        v_c = guided(s_unet, z_t, t, cond, uncond, None, "v_prediction", a_t, s_t)
        loss_ori = ((v_c.float() - (a_t * noise - s_t * x0).float()) ** 2).mean()
    return loss_guide + gamma * loss_ori, loss_guide, loss_ori


def main(args):
    validate_common_args(args)
    if not 1.0 <= args.w_min < args.w_max:
        raise StageError(f"need 1 <= --w-min < --w-max; got {args.w_min}, {args.w_max}.")
    if not args.w_min <= args.default_guidance <= args.w_max:
        raise StageError(f"--default-guidance {args.default_guidance} is outside [--w-min {args.w_min}, --w-max "
                         f"{args.w_max}].")  # fmt: skip
    if args.gamma < 0:
        raise StageError(f"--gamma must be >= 0; got {args.gamma}.")
    if args.embedding_dim < 2:
        raise StageError(f"--embedding-dim must be >= 2; got {args.embedding_dim}.")

    # 1. teacher (CFG, frozen) and the student with a zero-initialised guidance embedding
    teacher_pipe = load_stage_pipeline(args.teacher, "--teacher")
    student_pipe = load_stage_pipeline(args.student, "--student") if args.student else teacher_pipe
    t_unet = teacher_pipe.unet
    if is_guidance_embedded(t_unet):
        raise StageError(f"the teacher {args.teacher} already takes the guidance scale as an input; guidance "
                         "distillation needs a classifier-free-guidance teacher.")  # fmt: skip
    if is_guidance_embedded(student_pipe.unet):
        raise StageError(f"the student {args.student} already has a guidance embedding; step-distil it with "
                         "training.distill instead.")  # fmt: skip
    for name, m in (("latent channels", "in_channels"), ("cross_attention_dim", "cross_attention_dim")):
        if getattr(student_pipe.unet.config, m) != getattr(t_unet.config, m):
            raise StageError(f"student {name} {getattr(student_pipe.unet.config, m)} != teacher's "
                             f"{getattr(t_unet.config, m)}.")  # fmt: skip
    if teacher_pipe.vae is None:
        raise StageError(f"teacher {args.teacher} has no full VAE to encode training images.")
    grid = trailing_grid(teacher_pipe.scheduler.config, args.steps)
    check_teacher_grid(args.teacher, grid, "--steps")
    s_unet = add_guidance_embedding(student_pipe.unet, args.embedding_dim)
    teacher_type = teacher_pipe.scheduler.config.prediction_type
    loop = TrainLoop(args, STAGE, {"grid": grid})
    device = loop.device
    vae, text_encoder, tokenizer = teacher_pipe.vae, teacher_pipe.text_encoder, teacher_pipe.tokenizer

    # 2. optimizer, data
    s_unet, loader, ac, uncond_1 = prepare_student(loop, args, teacher_pipe, s_unet)
    grid_t = torch.tensor(grid, device=device)

    # 3. training loop: w ~ U[w_min, w_max] and a grid timestep per sample
    def loss_fn(batch):
        x = batch["pixel_values"].to(device)
        b = x.shape[0]
        with torch.no_grad():
            x0 = vae.encode(x).latent_dist.sample() * vae.config.scaling_factor
            ids = tokenizer(list(batch["caption"]), padding="max_length", max_length=tokenizer.model_max_length,
                            truncation=True, return_tensors="pt").input_ids.to(device)  # fmt: skip
            cond = text_encoder(ids)[0]
            t = grid_t[torch.randint(0, len(grid), (b,), device=device)]
            noise = torch.randn_like(x0)
            w = torch.rand(b, 1, 1, 1, device=device) * (args.w_max - args.w_min) + args.w_min
        loss, l_guide, l_ori = guidance_loss(s_unet, t_unet, x0, noise, cond, uncond_1.expand(b, -1, -1), t, w, ac,
                                             teacher_type, args.gamma)  # fmt: skip
        return loss, {"l_guide": l_guide.item(), "l_ori": l_ori.item()}

    loop.run(infinite(loader), loss_fn)

    # 4. save: one pass per step on the same grid, the trained guidance range in the pipeline's config
    s_unet = loop.finish().eval()
    scheduler = DDIMScheduler.from_config(teacher_pipe.scheduler.config, prediction_type="v_prediction",
                                          timestep_spacing="trailing", set_alpha_to_one=True)  # fmt: skip
    pipe = SnapFusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=s_unet, scheduler=scheduler,
        vae_decoder=student_pipe.vae_decoder, default_num_inference_steps=args.steps,
        default_guidance_scale=args.default_guidance, guidance_scale_range=[args.w_min, args.w_max],
    )  # fmt: skip
    return loop.save(pipe, {"final_loss": loop.loss, "student_grid": grid})


if __name__ == "__main__":
    run_cli(main, parse_args)
