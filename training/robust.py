"""Stage 2: robust training with stochastic block skipping (paper Sec. 3.2, Eq. 5).

Every removable CA/RB block runs with probability ``--block-keep-prob`` (per sample) and is otherwise the
identity, so the network tolerates block removal and the architecture search can score a removal by
skipping the block, without retraining. The paper does not give p; 0.9 is our default (a flag).

    python -m training.robust --pretrained runs/teacher_v --output runs/robust --block-keep-prob 0.9
"""

from __future__ import annotations

import argparse

from .common import StageError, add_common_args, run_cli, validate_common_args
from .train_teacher import add_denoiser_args, train_denoiser

STAGE = "robust"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, lr=1e-4, batch_size=32, max_steps=1000)
    add_denoiser_args(parser)
    parser.add_argument("--block-keep-prob", type=float, default=0.9, help="p of Eq. 5 (per block, per sample)")
    return parser.parse_args(argv)


def main(args):
    validate_common_args(args)
    if args.pretrained is None:
        raise StageError("robust training starts from a trained model: pass --pretrained DIR.")
    if not 0.0 < args.block_keep_prob <= 1.0:
        raise StageError(f"--block-keep-prob must be in (0, 1]; got {args.block_keep_prob}.")
    return train_denoiser(args, STAGE, block_keep_prob=args.block_keep_prob)


if __name__ == "__main__":
    run_cli(main, parse_args)
