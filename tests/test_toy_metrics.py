"""training/toy/metrics.py: FID on known Gaussians and on probe features, alignment counts prompted attributes."""

import pytest
import torch

from training.toy.metrics import alignment_scores, fid_from_features, prompted_items
from training.toy.probe import DEFAULT_PROBE, load_probe
from training.toy.world import ATTRIBUTE_VALUES, ToyWorld, parse_caption, to_tensor


@pytest.fixture(scope="module")
def probe():
    return load_probe(DEFAULT_PROBE)


def test_fid_of_known_gaussians():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(20000, 4, generator=g)
    b = torch.randn(20000, 4, generator=g) * 2 + 1  # mean shift 1 per dim, std 2: FID = 4 + 4 * (1 + 4 - 2*2) = 8
    assert fid_from_features(a, a) == pytest.approx(0, abs=1e-6)
    assert fid_from_features(a, b) == pytest.approx(8.0, rel=0.05)
    with pytest.raises(ValueError, match="at least feature_dim"):
        fid_from_features(a[:4], b)


def test_fid_true_vs_true_is_small_and_color_shuffled_is_larger(probe):
    world = ToyWorld(0)
    a = to_tensor([s.image for s in world.heldout(0, 300)])
    b = to_tensor([s.image for s in world.heldout(300, 300)])
    shuffled = b[:, [2, 0, 1]]  # RGB -> BRG: every color off the palette
    fa = probe.features(a)
    floor = fid_from_features(probe.features(b), fa)
    off = fid_from_features(probe.features(shuffled), fa)
    assert off > 5 * floor and off > floor + 1.0, (floor, off)


def test_alignment_scores_count_prompted_attributes():
    one = parse_caption("a big red circle in the top left on a gray background")
    two = parse_caption("a small blue square right of a big green triangle, white background")
    expected = {"count", "background", "obj1_shape", "obj1_color", "obj1_size", "obj1_position"}
    assert set(prompted_items(one)) == expected
    assert len(prompted_items(two)) == 9 and "relation" in prompted_items(two)
    perfect = [{**{n: "none" for n in ATTRIBUTE_VALUES}, **lab.flat()} for lab in (one, two)]
    res = alignment_scores([one, two], perfect)
    assert res["overall"] == 1.0 and res["per_prompt"] == [1.0, 1.0]
    wrong = [dict(perfect[0], obj1_color="blue"), dict(perfect[1], obj1_shape="ring")]  # canonical obj1 = triangle
    res = alignment_scores([one, two], wrong)
    assert res["per_prompt"] == pytest.approx([5 / 6, 8 / 9])
    assert res["overall"] == pytest.approx(13 / 15)
    assert res["per_attribute"]["color"] == pytest.approx(2 / 3)
    assert res["per_attribute"]["shape"] == pytest.approx(2 / 3)
