"""training/toy/evaluation.py: settings the toy evaluation refuses (image size, K, steps, guidance)."""

import pytest
from training_helpers import K, pipe_64, tiny_pipe_at

from training.toy.evaluation import check_settings
from training.toy.probe import DEFAULT_PROBE, load_probe


@pytest.fixture(scope="module")
def probe():
    return load_probe(DEFAULT_PROBE)


@pytest.fixture(scope="module")
def pipe64():
    return pipe_64()


def test_check_settings_errors(probe, pipe64):
    with pytest.raises(ValueError, match="64x64"):
        check_settings(tiny_pipe_at(16), probe, 2, [1.0], K, 8)  # 32x32 images
    with pytest.raises(ValueError, match="feature_dim"):
        check_settings(pipe64, probe, 2, [1.0], probe.config.feature_dim, 8)
    with pytest.raises(ValueError, match="steps"):
        check_settings(pipe64, probe, 0, [1.0], K, 8)
    with pytest.raises(ValueError, match="empty"):
        check_settings(pipe64, probe, 2, [], K, 8)
    check_settings(pipe64, probe, 2, [1.0, 3.0], K, 8)
