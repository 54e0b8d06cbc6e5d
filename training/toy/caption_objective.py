"""``train_teacher --text-objective toy``: pre-train a from-scratch text encoder to read toy-world captions.

From the caption's end-of-text state (CLIP's pooled output), predict every attribute label of the scene (count,
background, relation, each object's shape, color, size and position) with one linear head each. Without this, a
randomly initialised encoder gives nearly the same states for every caption, and the UNet learns to ignore the text
(bundle v0). Options: ``--text-steps``, ``--text-lr``, ``--text-batch-size`` of ``train_teacher``.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from transformers import CLIPTextModel

from ..loop import load_substage, save_substage, warm_up
from .world import ATTRIBUTE_VALUES, NUM_PHRASINGS, caption, random_labels


def train_text_encoder(text_encoder, tokenizer, args, accelerator, out):
    """Pre-train ``text_encoder`` on toy captions (``--text-steps`` steps; kept in ``out/text_stage``), then freeze
    it, as SD-v1.5 freezes its pre-trained CLIP text encoder. Captions and labels only: no image is rendered."""
    done = out / "text_stage"
    trained = load_substage(accelerator, done, CLIPTextModel, "text encoder")
    if trained is not None:
        return trained
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

    warm_up(accelerator, "text", args.text_steps, opt, loss_fn)
    text_encoder.eval()
    with torch.no_grad():
        preds = torch.stack([lg.argmax(1).cpu() for lg in logits(test_ids)], dim=1)  # (n, attributes)
    per_attribute = (preds == test_labels).float().mean(0)
    all_right = (preds == test_labels).all(1).float().mean().item()
    metrics = {"heldout_captions": len(test_ids), "all_attributes": all_right,
               "per_attribute": dict(zip(ATTRIBUTE_VALUES, per_attribute.tolist()))}  # fmt: skip
    accelerator.print(f"text encoder: held-out captions read fully right {metrics['all_attributes']:.4f}")
    save_substage(accelerator, out, done, text_encoder, metrics, time.time() - t0)
    return text_encoder
