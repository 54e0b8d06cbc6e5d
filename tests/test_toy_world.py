"""The toy world: determinism, label correctness checked on pixels (no probe), captions and their parser."""

import itertools

import numpy as np
import pytest

from training.toy.world import (
    BACKGROUNDS,
    COLORS,
    HELDOUT_START,
    MAX_CAPTION_WORDS,
    NUM_PHRASINGS,
    POSITIONS,
    RELATIONS,
    SHAPES,
    SIZES,
    VOCABULARY,
    Labels,
    ObjectLabels,
    ToyWorld,
    attribute_names,
    caption,
    parse_caption,
    render,
    render_array,
    shape_mask,
    to_tensor,
    validation_prompts,
)  # fmt: skip

N = 300


@pytest.fixture(scope="module")
def samples():
    return ToyWorld(0).batch(0, N)


def _one(shape="circle", color="red", size="big", position="center", background="gray"):
    return Labels((ObjectLabels(shape, color, size, position),), None, background, 1)


def _inside_point(shape, p):
    """A pixel surely inside the shape (a ring has background at its center)."""
    return (p.x, p.y - int(0.8 * p.radius)) if shape == "ring" else (p.x, p.y)


def test_same_seed_and_index_give_identical_samples():
    a, b = ToyWorld(3).sample(17), ToyWorld(3).sample(17)
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert a.caption == b.caption and a.labels == b.labels and a.placements == b.placements


def test_different_index_or_seed_gives_different_samples():
    w = ToyWorld(0)
    imgs = [np.asarray(w.sample(i).image) for i in range(20)]
    assert all(not np.array_equal(a, b) for a, b in itertools.combinations(imgs, 2))
    assert not np.array_equal(np.asarray(ToyWorld(1).sample(0).image), imgs[0])


def test_batch_iterator_and_heldout_agree_with_sample():
    w = ToyWorld(0)
    it = iter(w)
    first = [next(it) for _ in range(3)]
    assert [s.caption for s in first] == [s.caption for s in w.batch(0, 3)]
    held = w.heldout(5, 2)
    assert [s.index for s in held] == [HELDOUT_START + 5, HELDOUT_START + 6]
    assert held[0].caption == w.sample(HELDOUT_START + 5).caption


def test_images_are_64x64_flat_palette_colors(samples):
    palette = {tuple(c) for c in list(COLORS.values()) + list(BACKGROUNDS.values())}
    for s in samples[:50]:
        arr = np.asarray(s.image)
        assert s.image.mode == "RGB" and arr.shape == (64, 64, 3)
        assert {tuple(c) for c in arr.reshape(-1, 3)} <= palette  # no anti-aliasing, no noise
    assert to_tensor([samples[0].image]).shape == (1, 3, 64, 64)


def test_distribution_covers_every_value(samples):
    seen = {"shape": set(), "color": set(), "size": set(), "position": set(), "bg": set(), "rel": set(), "n": set()}
    for s in samples:
        seen["bg"].add(s.labels.background)
        seen["rel"].add(s.labels.relation)
        seen["n"].add(s.labels.count)
        for o in s.labels.objects:
            seen["shape"].add(o.shape), seen["color"].add(o.color), seen["size"].add(o.size)
            if s.labels.count == 1:
                seen["position"].add(o.position)
    assert seen["shape"] == set(SHAPES) and seen["color"] == set(COLORS) and seen["size"] == set(SIZES)
    assert seen["position"] == set(POSITIONS) and seen["bg"] == set(BACKGROUNDS)
    assert seen["rel"] == set(RELATIONS) | {None} and seen["n"] == {1, 2}


def test_labeled_color_at_object_center_and_background_in_corner(samples):
    for s in samples:
        arr = np.asarray(s.image)
        assert tuple(arr[0, 0]) == BACKGROUNDS[s.labels.background]
        for obj, p in zip(s.labels.objects, s.placements):
            x, y = _inside_point(obj.shape, p)
            assert tuple(arr[y, x]) == COLORS[obj.color], (s.caption, obj)


def test_big_object_covers_more_pixels_than_small():
    for shape in SHAPES:
        bg = np.array(BACKGROUNDS["gray"])
        area = {size: int((render_array(_one(shape, size=size)) != bg).any(-1).sum()) for size in SIZES}
        assert area["big"] > 2 * area["small"] > 0, (shape, area)


def test_shapes_stay_distinct_at_small_size():
    r = SIZES["small"]
    masks = {s: shape_mask(s, 32, 32, r) for s in SHAPES}
    for a, b in itertools.combinations(SHAPES, 2):
        differ = int((masks[a] ^ masks[b]).sum())
        assert differ >= 20, (a, b, differ)


def test_colors_are_distinct_and_backgrounds_differ_from_object_colors():
    def dist(u, v):
        return float(np.linalg.norm(np.subtract(u, v)))

    cols, bgs = list(COLORS.values()), list(BACKGROUNDS.values())
    assert min(dist(u, v) for u, v in itertools.combinations(cols, 2)) > 60
    assert min(dist(u, v) for u, v in itertools.combinations(bgs, 2)) > 60
    assert min(dist(u, v) for u in cols for v in bgs) > 60


def _centroid(arr, color):
    ys, xs = np.nonzero((arr == np.array(color)).all(-1))
    return xs.mean(), ys.mean()


def test_relations_hold_in_pixel_coordinates(samples):
    checked = 0
    for s in samples:
        lab = s.labels
        if lab.count != 2 or lab.objects[0].color == lab.objects[1].color:
            continue
        arr = np.asarray(s.image)
        (ax, ay), (bx, by) = (_centroid(arr, COLORS[o.color]) for o in lab.objects)
        rel = lab.relation
        ok = {"left of": ax < bx - 20, "right of": ax > bx + 20, "above": ay < by - 20, "below": ay > by + 20}[rel]
        assert ok, (s.caption, (ax, ay), (bx, by))
        checked += 1
    assert checked > 50


def test_single_object_position_in_pixel_coordinates(samples):
    for s in samples:
        if s.labels.count != 1:
            continue
        obj = s.labels.objects[0]
        x, y = _centroid(np.asarray(s.image), COLORS[obj.color])
        ex, ey = POSITIONS[obj.position]
        assert abs(x - ex) <= 5 and abs(y - ey) <= 6, (s.caption, x, y)


def test_caption_names_every_attribute_and_parses_back(samples):
    for s in samples:
        words = s.caption.replace(",", " ").split()
        assert set(words) <= set(VOCABULARY) and len(words) <= MAX_CAPTION_WORDS
        assert s.labels.background in words
        for o in s.labels.objects:
            assert o.shape in words and o.color in words and o.size in words
        if s.labels.count == 1:
            assert all(w in words for w in s.labels.objects[0].position.split())
        else:
            assert s.labels.relation in s.caption
        assert parse_caption(s.caption) == s.labels


def test_every_phrasing_parses_back():
    lab = ToyWorld(0).sample(3).labels
    two = next(s.labels for s in ToyWorld(0).batch(0, 20) if s.labels.count == 2)
    for labels in (lab, two):
        captions = {caption(labels, k) for k in range(NUM_PHRASINGS)}
        assert len(captions) == NUM_PHRASINGS
        assert all(parse_caption(c) == labels for c in captions)
    with pytest.raises(ValueError, match="phrasing"):
        caption(lab, NUM_PHRASINGS)


def test_parse_partial_prompt_leaves_unnamed_attributes_out():
    lab = parse_caption("a red circle")
    assert lab.count == 1 and lab.background is None
    assert lab.objects[0] == ObjectLabels("circle", "red", None, None)
    assert lab.flat() == {"count": "1", "relation": "none", "obj1_shape": "circle", "obj1_color": "red",
                          "obj2_shape": "none", "obj2_color": "none", "obj2_size": "none", "obj2_position": "none"}
    assert parse_caption("on a white background").flat() == {"background": "white"}


def test_canonical_form_identifies_mirrored_captions():
    a = parse_caption("a big red circle right of a small blue square, gray background")
    b = parse_caption("gray background with a small blue square left of a big red circle")
    assert a != b and a.canonical() == b.canonical() and a.flat() == b.flat()
    assert a.flat()["obj1_shape"] == "square" and a.flat()["relation"] == "left of"
    assert Labels.from_flat(a.flat()) == b.canonical()


def test_render_is_deterministic_in_seed_and_jitter_is_small():
    lab = _one("square", "blue", "small", "top right", "white")
    assert np.array_equal(np.asarray(render(lab, 5)), np.asarray(render(lab, 5)))
    images = [np.asarray(render(lab, k)) for k in range(10)]
    assert any(not np.array_equal(images[0], im) for im in images[1:])


def test_render_rejects_bad_labels():
    with pytest.raises(ValueError, match="color"):
        render(_one(color="magenta"))
    with pytest.raises(ValueError, match="background"):
        render(_one(background="red"))
    a, b = ObjectLabels("circle", "red", "big", "left"), ObjectLabels("ring", "blue", "small", "right")
    with pytest.raises(ValueError, match="positions"):
        render(Labels((a, b), "above", "gray", 2))
    with pytest.raises(ValueError, match="index"):
        ToyWorld(0).sample(-1)


def test_validation_prompts_cover_the_grammar():
    vp = validation_prompts()
    assert len(vp) == 32 and len({p for p, _ in vp}) == 32
    assert all(parse_caption(p) == lab for p, lab in vp)
    labels = [lab for _, lab in vp]
    objs = [o for lab in labels for o in lab.objects]
    assert {o.shape for o in objs} == set(SHAPES) and {o.color for o in objs} == set(COLORS)
    assert {o.size for o in objs} == set(SIZES) and {lab.background for lab in labels} == set(BACKGROUNDS)
    assert {lab.objects[0].position for lab in labels if lab.count == 1} == set(POSITIONS)
    assert {lab.relation for lab in labels if lab.count == 2} == set(RELATIONS)
    for n in (1, 2):  # every background appears with one and with two objects
        assert {lab.background for lab in labels if lab.count == n} == set(BACKGROUNDS)


def test_vocabulary_and_attribute_names():
    assert VOCABULARY == sorted(set(VOCABULARY))
    assert set(SHAPES) | set(COLORS) | set(BACKGROUNDS) | set(SIZES) <= set(VOCABULARY)
    names = attribute_names()
    assert names[:3] == ["count", "background", "relation"] and len(names) == 11


def test_tokenizer_spells_every_word_as_one_token_and_captions_fit(samples, tmp_path):
    # Regression: merges learned for one word used to split another ("orange", "triangle"), so long captions
    # overflowed the mini preset's 24 tokens and lost their ending (usually the background).
    from pipelines.tokenizer import build_clip_tokenizer
    from training.models import MODEL_PRESETS

    max_length = MODEL_PRESETS["mini"]["max_length"]
    tok = build_clip_tokenizer(VOCABULARY, str(tmp_path), max_length)
    assert [w for w in VOCABULARY if len(tok.tokenize(w)) != 1] == []
    captions = [s.caption for s in samples] + [p for p, _ in validation_prompts()]
    longest = max(len(tok(c).input_ids) for c in captions)
    assert longest <= max_length, longest
