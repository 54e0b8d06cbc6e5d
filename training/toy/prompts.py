"""The recipe's prompts stage: toy-world captions, one per line, for the decoder stage's text-to-image latents.

    python -m training.toy.prompts --output runs/mini/prompts --count 1000 --seed 5     # writes prompts.txt
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..common import DONE_FILE, StageError, run_cli
from .world import ToyWorld

STAGE = "write_prompts"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", required=True, help="folder for prompts.txt")
    parser.add_argument("--count", type=int, default=1000, help="captions to write")
    parser.add_argument("--seed", type=int, default=0, help="toy-world seed")
    parser.add_argument("--overwrite", action="store_true", help="accepted for the recipe; the file is rewritten")
    parser.add_argument("--resume", default=None, help="accepted for the recipe; the stage restarts cleanly")
    return parser.parse_args(argv)


def main(args):
    if args.count < 1:
        raise StageError(f"--count must be >= 1; got {args.count}.")
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    world = ToyWorld(args.seed)
    (out / "prompts.txt").write_text("\n".join(world.sample(i).caption for i in range(args.count)) + "\n")
    (out / DONE_FILE).write_text(json.dumps({"stage": STAGE, "count": args.count}))
    return out


if __name__ == "__main__":
    run_cli(main, parse_args)
