"""training/robust.py: robust training needs a trained model and a keep probability in (0, 1]."""

import pytest

from training import robust
from training.common import StageError


def test_robust_bad_input(tmp_path):
    with pytest.raises(StageError, match="--pretrained"):
        robust.main(robust.parse_args(["--output", str(tmp_path / "a")]))
    with pytest.raises(StageError, match="--block-keep-prob"):
        robust.main(robust.parse_args(["--output", str(tmp_path / "b"), "--pretrained", "x",
                                       "--block-keep-prob", "0"]))  # fmt: skip
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
