"""Shared by the training tests (not a test file): running a stage CLI, tiny saved models, a fixed batch."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import torch

from pipelines.schedulers import ddim_scheduler
from pipelines.tiny import tiny_components, tiny_efficient_unet, tiny_pipeline

ROOT = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
K = 80  # images per toy evaluation: > probe feature_dim (64) + 1


def run(module, *args, timeout=600):
    """``python -m module args`` from the repo root: the CompletedProcess (text output)."""
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=ROOT, env=ENV,
                          timeout=timeout)  # fmt: skip


def save_teacher(path):
    """A tiny v-prediction pipeline (32x32 images) saved to ``path``, as a stage input."""
    pipe = tiny_pipeline(0)
    pipe.scheduler = ddim_scheduler("v_prediction")
    pipe.save_pretrained(path)
    return path


def tiny_pipe_at(sample_size: int, seed: int = 0):
    """A tiny pipeline whose UNet has ``sample_size`` (x VAE factor 2 = image size)."""
    from pipelines import SnapFusionPipeline

    comps = tiny_components(seed)
    comps["unet"] = tiny_efficient_unet(seed, sample_size=sample_size)
    pipe = SnapFusionPipeline(**comps)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def pipe_64():
    """A tiny pipeline that makes the toy world's 64x64 images (VAE factor 2 x latent 32)."""
    pipe = tiny_pipe_at(32)
    assert pipe.unet.config.sample_size * pipe.vae_scale_factor == 64 and 64 % pipe.size_multiple == 0
    return pipe


def saved(pipe, path) -> str:
    pipe.save_pretrained(path, safe_serialization=True)
    return str(path)


def weights_hash(state_dict: dict) -> str:
    """The hash ``training.loop.write_rank_checksum`` writes, of a state dict."""
    h = hashlib.sha256()
    for name, p in sorted(state_dict.items()):
        h.update(name.encode())
        h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def fixed_batch(seed=0):
    comps = tiny_components(seed)
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(4, 4, 16, 16, generator=g)
    noise = torch.randn(4, 4, 16, 16, generator=g)
    ids = comps["tokenizer"](["a red circle", "a big blue square", "a small green triangle", ""], padding="max_length",
                             max_length=16, return_tensors="pt").input_ids  # fmt: skip
    with torch.no_grad():
        cond = comps["text_encoder"](ids)[0]
    return comps, x0, noise, cond


def fit(loss_fn, params, steps, lr):
    """Adam on ``loss_fn()``: (first loss, loss after ``steps`` steps)."""
    opt = torch.optim.Adam(params, lr=lr)
    first = None
    for _ in range(steps):
        loss = loss_fn()
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    return first, loss_fn().item()
