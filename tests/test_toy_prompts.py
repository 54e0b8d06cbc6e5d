"""training/toy/prompts.py: the recipe's prompts stage writes toy-world captions, one per line."""

import json

import pytest

from training.common import StageError
from training.toy import prompts
from training.toy.world import ToyWorld, parse_caption


def test_prompts_stage_writes_captions_of_the_seeded_world(tmp_path):
    out = prompts.main(prompts.parse_args(["--output", str(tmp_path / "p"), "--count", "5", "--seed", "2"]))
    lines = (out / "prompts.txt").read_text().splitlines()
    assert lines == [ToyWorld(2).sample(i).caption for i in range(5)]
    assert all(parse_caption(line).count in (1, 2) for line in lines)
    assert json.loads((out / "stage_complete.json").read_text()) == {"stage": "write_prompts", "count": 5}
    with pytest.raises(StageError, match="--count"):
        prompts.main(prompts.parse_args(["--output", str(tmp_path / "q"), "--count", "0"]))
