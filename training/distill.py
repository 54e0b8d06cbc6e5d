"""Stage 4: step distillation in v-prediction with the CFG-aware loss (paper Sec. 4).

The teacher takes ``r = teacher_steps / student_steps`` DDIM steps t -> ... -> t''; the student takes one step
t -> t'' and must land on the same point. In x0-space the target is

    x_target = (z_t'' - (sigma_t''/sigma_t) z_t) / (alpha_t'' - (sigma_t''/sigma_t) alpha_t)

and L_dstl = w(lambda_t) ||x0_hat_student - x_target||^2 with the truncated SNR weight w = max(alpha^2/sigma^2, 1).
CFG-aware: with probability p both teacher and student are guided before the loss,
v~ = w v(t, z_t, c) - (w - 1) v(t, z_t, empty), w ~ U[w_min, w_max]. Total L = L_dstl + gamma * L_ori with
L_ori = ||v_hat - v||^2 on the data sample. Paper setting: p = 0.1, w in [2, 14], gamma = 0.2.

Teacher and student may differ in architecture and step count (32 -> 16, 16 -> 8).

Guidance-embedded models (``time_cond_proj_dim``, made by ``training.guidance_distill``) run one pass with the
guidance scale as an input instead of the CFG pair: a guidance-embedded student learns the guided target at every
step (``--cfg-prob 1``), from a CFG teacher or from a guidance-embedded one (progressive distillation of the
one-pass student, 8 -> 4 -> 2 -> 1 steps, Meng et al., CVPR 2023, stage two); its L_ori is taken at w = 1.

    python -m training.distill --teacher runs/teacher_v --student runs/evolved --teacher-steps 16 \
        --student-steps 8 --output runs/student
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from diffusers import DDIMScheduler
from pipelines import EfficientUNet2DConditionModel, SnapFusionPipeline
from pipelines.guidance import guidance_scale_embedding, is_guidance_embedded

from .common import DONE_FILE, StageError, add_common_args, run_cli, validate_common_args
from .data import add_data_args, infinite, make_dataloader, make_dataset
from .loop import TrainLoop, make_optimizer
from .models import load_stage_pipeline

STAGE = "distill"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, lr=1e-4, batch_size=32, max_steps=2000)
    parser.add_argument("--teacher", required=True, help="teacher pipeline folder (v-prediction or epsilon)")
    parser.add_argument("--student", default=None, help="pipeline folder whose UNet initialises the student "
                        "(default: the teacher's UNet)")  # fmt: skip
    parser.add_argument("--teacher-steps", type=int, default=16)
    parser.add_argument("--student-steps", type=int, default=8)
    parser.add_argument("--cfg-prob", type=float, default=0.1, help="p: probability of the CFG-aware loss")
    parser.add_argument("--w-min", type=float, default=2.0)
    parser.add_argument("--w-max", type=float, default=14.0)
    parser.add_argument("--gamma", type=float, default=0.2, help="weight of L_ori")
    parser.add_argument("--caption-dropout", type=float, default=0.1, help="empty captions in the vanilla loss")
    add_data_args(parser)
    parser.add_argument("--default-guidance", type=float, default=7.5, help="recommended CFG saved with the student")
    return parser.parse_args(argv)


# ---------------------------------------------------------------------- the math, kept testable


def trailing_grid(scheduler_config, steps: int) -> list[int]:
    """Descending DDIM timesteps of ``steps`` steps with 'trailing' spacing (the students' sampling grid)."""
    if steps < 1:
        raise StageError(f"step counts must be >= 1; got {steps}.")
    sched = DDIMScheduler.from_config(scheduler_config, timestep_spacing="trailing")
    sched.set_timesteps(steps)
    return [int(t) for t in sched.timesteps]


def step_grids(scheduler_config, teacher_steps: int, student_steps: int) -> tuple[list[int], list[int]]:
    """Descending DDIM timesteps ('trailing' spacing) of teacher and student; the student's must nest."""
    if student_steps < 1 or teacher_steps < 1:
        raise StageError(f"step counts must be >= 1; got teacher {teacher_steps}, student {student_steps}.")
    if teacher_steps % student_steps or teacher_steps == student_steps:
        raise StageError(f"--student-steps {student_steps} must divide --teacher-steps {teacher_steps} and be "
                         "smaller (e.g. 16 -> 8, 32 -> 16).")  # fmt: skip
    teacher = trailing_grid(scheduler_config, teacher_steps)
    student = trailing_grid(scheduler_config, student_steps)
    r = teacher_steps // student_steps
    if teacher[::r] != student:
        raise StageError(f"student grid {student} is not every {r}-th teacher step of {teacher}.")
    return teacher, student


def alpha_sigma(alphas_cumprod: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """alpha_t, sigma_t of z_t = alpha_t x0 + sigma_t eps; t = -1 means the clean end (alpha 1, sigma 0)."""
    ac = torch.where(t >= 0, alphas_cumprod[t.clamp(min=0)], torch.ones_like(alphas_cumprod[0]))
    return ac.sqrt().view(-1, 1, 1, 1), (1 - ac).clamp(min=0).sqrt().view(-1, 1, 1, 1)


def to_v(pred, z, alpha, sigma, prediction_type: str):
    """Any UNet output as v = alpha eps - sigma x0."""
    if prediction_type == "v_prediction":
        return pred
    if prediction_type == "epsilon":
        x0 = (z - sigma * pred) / alpha
        return alpha * pred - sigma * x0
    raise StageError(f"prediction type {prediction_type!r} is not supported; use epsilon or v_prediction.")


def ddim_step(z, v, alpha, sigma, alpha_next, sigma_next):
    """Deterministic DDIM from t to t' with a v prediction: x0 = alpha z - sigma v, eps = sigma z + alpha v."""
    x0 = alpha * z - sigma * v
    eps = sigma * z + alpha * v
    return alpha_next * x0 + sigma_next * eps


def snr_weight_truncated(alphas: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Truncated SNR weight max(alpha^2 / sigma^2, 1) of the paper's distillation loss (Sec. 4)."""
    return torch.clamp(alphas**2 / sigmas.clamp(min=1e-8) ** 2, min=1.0)


def distill_target(z_t, z_tpp, alpha_t, sigma_t, alpha_tpp, sigma_tpp):
    """x_target of Sec. 4: the x0 with which one DDIM step from z_t lands exactly on z_t''."""
    ratio = sigma_tpp / sigma_t
    return (z_tpp - ratio * z_t) / (alpha_tpp - ratio * alpha_t)


def check_teacher_grid(teacher_path: str, grid: list[int], flag: str = "--teacher-steps") -> None:
    """A step-distilled teacher (its ``stage_complete.json`` records ``student_grid``) runs only on its own grid."""
    done = Path(teacher_path) / DONE_FILE
    trained = json.loads(done.read_text()).get("student_grid") if done.is_file() else None
    if trained is not None and list(trained) != list(grid):
        raise StageError(f"the teacher {teacher_path} was distilled for the {len(trained)}-step grid {trained}; "
                         f"{flag} {len(grid)} asks it for {grid}, which it was not trained on. Use {flag} "
                         f"{len(trained)}.")  # fmt: skip


def guided(unet, z, t, cond, uncond, w, prediction_type, alpha, sigma):
    """v~ = w v(c) - (w - 1) v(empty), or v(c) when w is None; one pass with w as an input for a
    guidance-embedded UNet (w None: w = 1, the conditional model)."""
    if is_guidance_embedded(unet):
        scale = torch.ones(z.shape[0], device=z.device) if w is None else w.reshape(-1)
        emb = guidance_scale_embedding(scale, unet.config.time_cond_proj_dim).to(device=z.device, dtype=z.dtype)
        return to_v(unet(z, t, cond, timestep_cond=emb).sample, z, alpha, sigma, prediction_type)
    if w is None:
        return to_v(unet(z, t, cond).sample, z, alpha, sigma, prediction_type)
    out = unet(torch.cat([z, z]), torch.cat([t, t]), torch.cat([cond, uncond])).sample
    v = to_v(out, torch.cat([z, z]), torch.cat([alpha, alpha]), torch.cat([sigma, sigma]), prediction_type)
    v_c, v_u = v.chunk(2)
    return w * v_c - (w - 1) * v_u


def distillation_loss(s_unet, t_unet, x0, noise, cond, uncond, k, w, grid, r, alphas_cumprod, teacher_type, gamma):
    """L = L_dstl + gamma * L_ori for student step indices ``k`` (B,) on the teacher ``grid`` (+ [-1]).

    ``w``: (B, 1, 1, 1) guidance scales for the CFG-aware loss, or None for the vanilla loss."""
    device = x0.device
    with torch.no_grad():
        t = torch.tensor([grid[i * r] for i in k.tolist()], device=device)
        a_t, s_t = alpha_sigma(alphas_cumprod, t)
        z_t = a_t * x0 + s_t * noise  # (B, C, h, w)
        z = z_t  # teacher: r DDIM steps t -> ... -> t''
        for j in range(r):
            tj = torch.tensor([grid[i * r + j] for i in k.tolist()], device=device)
            tn = torch.tensor([grid[i * r + j + 1] for i in k.tolist()], device=device)
            a_j, s_j = alpha_sigma(alphas_cumprod, tj)
            a_n, s_n = alpha_sigma(alphas_cumprod, tn)
            v = guided(t_unet, z, tj, cond, uncond, w, teacher_type, a_j, s_j)
            z = ddim_step(z, v, a_j, s_j, a_n, s_n)
        x_target = distill_target(z_t, z, a_t, s_t, a_n, s_n)
    # student: one step t -> t'', guided the same way
    v_s = guided(s_unet, z_t, t, cond, uncond, w, "v_prediction", a_t, s_t)
    x0_s = a_t * z_t - s_t * v_s
    loss_dstl = (snr_weight_truncated(a_t, s_t) * (x0_s.float() - x_target.float()) ** 2).mean()
    if w is None:
        v_c = v_s
    elif is_guidance_embedded(s_unet):
        v_c = guided(s_unet, z_t, t, cond, uncond, None, "v_prediction", a_t, s_t)  # the student at w = 1
    else:
        v_c = s_unet(z_t, t, cond).sample
    loss_ori = ((v_c.float() - (a_t * noise - s_t * x0).float()) ** 2).mean()  # L_ori against the true v
    return loss_dstl + gamma * loss_ori, loss_dstl, loss_ori


# ---------------------------------------------------------------------- the stage


def prepare_student(loop: TrainLoop, args, teacher_pipe, s_unet):
    """The teacher's VAE, text encoder and UNet frozen on the loop's device; the student in training mode with its
    optimizer and the data, prepared by the loop. Returns (student, loader, alphas_cumprod, empty-caption text
    states (1, L, D)) for a distillation stage (this one, ``training.guidance_distill``)."""
    device = loop.device
    for m in (teacher_pipe.vae, teacher_pipe.text_encoder, teacher_pipe.unet):
        m.requires_grad_(False).eval().to(device)
    if isinstance(s_unet, EfficientUNet2DConditionModel):
        s_unet.set_block_keep_prob(1.0)
    if args.gradient_checkpointing:
        s_unet.enable_gradient_checkpointing()
    s_unet.train()
    optimizer = make_optimizer(s_unet.parameters(), args)
    dataset = make_dataset(args.data, args.resolution, seed=args.seed + 7, image_column=args.image_column,
                           caption_column=args.caption_column)  # fmt: skip
    s_unet, loader = loop.prepare(s_unet, optimizer, make_dataloader(dataset, args.batch_size, args.num_workers))
    tokenizer = teacher_pipe.tokenizer
    with torch.no_grad():
        empty = tokenizer([""], padding="max_length", max_length=tokenizer.model_max_length,
                          return_tensors="pt").input_ids.to(device)  # fmt: skip
        uncond_1 = teacher_pipe.text_encoder(empty)[0]
    return s_unet, loader, teacher_pipe.scheduler.alphas_cumprod.to(device), uncond_1


def main(args):
    validate_common_args(args)
    if not 0.0 <= args.cfg_prob <= 1.0:
        raise StageError(f"--cfg-prob must be in [0, 1]; got {args.cfg_prob}.")
    if not (1.0 <= args.w_min <= args.w_max):
        raise StageError(f"need 1 <= --w-min <= --w-max; got {args.w_min}, {args.w_max}.")
    if args.gamma < 0:
        raise StageError(f"--gamma must be >= 0; got {args.gamma}.")

    # 1. teacher and student
    teacher_pipe = load_stage_pipeline(args.teacher, "--teacher")
    student_pipe = load_stage_pipeline(args.student, "--student") if args.student else teacher_pipe
    teacher_grid, student_grid = step_grids(teacher_pipe.scheduler.config, args.teacher_steps, args.student_steps)
    check_teacher_grid(args.teacher, teacher_grid)
    t_unet = teacher_pipe.unet
    s_unet = student_pipe.unet if args.student else type(t_unet).from_config(t_unet.config)
    if not args.student:
        s_unet.load_state_dict(t_unet.state_dict())
    embedded = is_guidance_embedded(s_unet)
    if is_guidance_embedded(t_unet) and not embedded:
        raise StageError(f"the teacher {args.teacher} takes the guidance scale as an input but the student does "
                         "not; give the student a guidance embedding first (training.guidance_distill).")  # fmt: skip
    if embedded and args.cfg_prob != 1.0:
        raise StageError(f"a guidance-embedded student learns the guided target at every step: use --cfg-prob 1 "
                         f"(got {args.cfg_prob}).")  # fmt: skip
    if embedded and not args.w_min <= args.default_guidance <= args.w_max:
        raise StageError(f"--default-guidance {args.default_guidance} is outside the trained range [--w-min "
                         f"{args.w_min}, --w-max {args.w_max}].")  # fmt: skip
    if s_unet.config.in_channels != t_unet.config.in_channels:
        raise StageError(
            f"student latent channels {s_unet.config.in_channels} != teacher's {t_unet.config.in_channels}."
        )
    text_dim = teacher_pipe.text_encoder.config.hidden_size
    if s_unet.config.cross_attention_dim != text_dim:
        raise StageError(
            f"student cross_attention_dim {s_unet.config.cross_attention_dim} != teacher text dim {text_dim}."
        )
    if teacher_pipe.vae is None:
        raise StageError(f"teacher {args.teacher} has no full VAE to encode training images.")
    teacher_type = teacher_pipe.scheduler.config.prediction_type
    r = args.teacher_steps // args.student_steps
    loop = TrainLoop(args, STAGE, {"teacher_grid": teacher_grid, "student_grid": student_grid})
    device = loop.device
    vae, text_encoder, tokenizer = teacher_pipe.vae, teacher_pipe.text_encoder, teacher_pipe.tokenizer

    # 2. optimizer, data
    s_unet, loader, ac, uncond_1 = prepare_student(loop, args, teacher_pipe, s_unet)
    rng = loop.random  # CFG-aware or vanilla loss, caption dropout
    grid = teacher_grid + [-1]  # -1: the clean end of the last step

    # 3. training loop: CFG-aware (probability --cfg-prob) or vanilla distillation loss of a batch
    def loss_fn(batch):
        x = batch["pixel_values"].to(device)
        b = x.shape[0]
        cfg_aware = rng.random() < args.cfg_prob
        captions = list(batch["caption"])
        if not cfg_aware:
            captions = ["" if rng.random() < args.caption_dropout else c for c in captions]
        with torch.no_grad():
            x0 = vae.encode(x).latent_dist.sample() * vae.config.scaling_factor  # (B, 4, h, w)
            ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length,
                            truncation=True, return_tensors="pt").input_ids.to(device)  # fmt: skip
            cond = text_encoder(ids)[0]
            uncond = uncond_1.expand(b, -1, -1)
            k = torch.randint(0, args.student_steps, (b,))  # student step index per sample
            noise = torch.randn_like(x0)
            w = None
            if cfg_aware:  # guidance scale per sample, uniform in [w_min, w_max]
                w = torch.rand(b, 1, 1, 1, device=device) * (args.w_max - args.w_min) + args.w_min
        loss, loss_dstl, loss_ori = distillation_loss(
            s_unet, t_unet, x0, noise, cond, uncond, k, w, grid, r, ac, teacher_type, args.gamma)  # fmt: skip
        return loss, {"l_dstl": loss_dstl.item(), "l_ori": loss_ori.item(), "cfg_aware": float(cfg_aware)}

    loop.run(infinite(loader), loss_fn)

    # 4. save the student with a scheduler that reproduces its step grid
    s_unet = loop.finish().eval()
    scheduler = DDIMScheduler.from_config(teacher_pipe.scheduler.config, prediction_type="v_prediction",
                                          timestep_spacing="trailing", set_alpha_to_one=True)  # fmt: skip
    scheduler.set_timesteps(args.student_steps)
    if [int(t) for t in scheduler.timesteps] != student_grid:
        raise RuntimeError(f"saved scheduler grid {scheduler.timesteps.tolist()} != trained grid {student_grid}")
    pipe = SnapFusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=s_unet, scheduler=scheduler,
        vae_decoder=student_pipe.vae_decoder, default_num_inference_steps=args.student_steps,
        default_guidance_scale=args.default_guidance,
        guidance_scale_range=[args.w_min, args.w_max] if embedded else None,
    )  # fmt: skip
    return loop.save(pipe, {"final_loss": loop.loss, "student_grid": student_grid})


if __name__ == "__main__":
    run_cli(main, parse_args)
