"""Evaluation sets of real captioned images: ``coco:PATH`` (MS-COCO 2014 captions) and ``folder:PATH``.

``coco:PATH`` is the layout COCO ships: ``PATH/annotations/captions_val2014.json`` (or ``PATH/captions_val2014.json``)
and the images in ``PATH/val2014/`` (``COCO_val2014_%012d.jpg``, the JSON's ``file_name``). K images are drawn with
a seeded permutation and one of each image's captions with the same stream (the usual "COCO 30K": 30,000 images,
one caption each). ``folder:PATH`` is the training data's caption folder (``training/data.py``: images with
same-name ``.txt`` captions, or a ``metadata.jsonl``), its first K items in sorted order.

    pairs = load_eval_set("coco:/data/coco2014", num_images=30000, seed=0)   # [(image path, caption), ...]
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from .common import StageError

COCO_CAPTIONS = ("annotations/captions_val2014.json", "captions_val2014.json")
COCO_IMAGES = "val2014"
KINDS = "coco:PATH or folder:PATH"


def load_coco(root: str, num_images: int, seed: int = 0) -> list[tuple[Path, str]]:
    """K (image path, caption) pairs of a COCO 2014 captions folder; a ``StageError`` naming the first missing file
    (the captions JSON, an image, or an image's caption) or saying how many images there are when K is larger."""
    root_path = Path(root)
    if not root_path.is_dir():
        raise StageError(f"COCO folder {root} does not exist.")
    captions_file = next((root_path / c for c in COCO_CAPTIONS if (root_path / c).is_file()), None)
    if captions_file is None:
        raise StageError(f"COCO folder {root} has no captions file: expected {root_path / COCO_CAPTIONS[0]}.")
    try:
        data = json.loads(captions_file.read_text())
        images = {int(im["id"]): str(im["file_name"]) for im in data["images"]}
        captions: dict[int, list[str]] = {}
        for a in data["annotations"]:
            captions.setdefault(int(a["image_id"]), []).append(str(a["caption"]).strip())
    except (ValueError, KeyError, TypeError) as e:
        raise StageError(f"{captions_file} is not a COCO captions JSON ({type(e).__name__}: {e}).") from None
    for image_id in sorted(images):
        if not any(captions.get(image_id, [])):
            raise StageError(f"{captions_file}: image {images[image_id]} (id {image_id}) has no caption.")
    unknown = sorted(set(captions) - set(images))
    if unknown:
        raise StageError(f"{captions_file}: captions of image id {unknown[0]} name no entry of its 'images' list.")
    if num_images > len(images):
        raise StageError(f"--num-images {num_images} is more than the {len(images)} captioned images in "
                         f"{captions_file}.")  # fmt: skip
    rng = random.Random(seed)
    ids = sorted(images)
    rng.shuffle(ids)
    pairs = [(root_path / COCO_IMAGES / images[i], rng.choice(captions[i])) for i in ids[:num_images]]
    check_images_exist(pairs)
    return pairs


def load_folder(root: str, num_images: int) -> list[tuple[Path, str]]:
    """The first K (image path, caption) pairs, in sorted order, of a caption folder as training reads it."""
    from .data import CaptionFolderDataset

    items = CaptionFolderDataset(root, resolution=1).items  # checks captions; images are not read here
    if num_images > len(items):
        raise StageError(f"--num-images {num_images} is more than the {len(items)} captioned images in {root}.")
    pairs = sorted(items, key=lambda item: str(item[0]))[:num_images]
    check_images_exist(pairs)
    return pairs


def check_images_exist(pairs) -> None:
    missing = next((path for path, _ in pairs if not Path(path).is_file()), None)
    if missing is not None:
        raise StageError(f"image {missing} is missing (the first of the {len(pairs)} evaluated images not found).")


def load_eval_set(spec: str, num_images: int, seed: int = 0) -> list[tuple[Path, str]]:
    """``--data`` of the real-data evaluation: ``coco:PATH`` or ``folder:PATH`` -> K (image path, caption) pairs."""
    kind, _, path = str(spec).partition(":")
    if kind not in ("coco", "folder") or not path:
        raise StageError(f"--data must be {KINDS} for a real-data evaluation; got {spec!r}.")
    if num_images < 2:
        raise StageError(f"--num-images must be >= 2 for FID; got {num_images}.")
    return load_coco(path, num_images, seed) if kind == "coco" else load_folder(path, num_images)
