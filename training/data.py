"""One data interface for every stage: ``--data SPEC`` yields {"pixel_values": (3, H, W) in [-1, 1], "caption"}.

SPEC is one of:
    toy[:seed=N]            the procedural toy world (training/toy/), endless and deterministic
    folder:PATH             image files with same-name .txt captions, or a metadata.jsonl / metadata.csv
                            (Hugging Face imagefolder layout: file_name + text columns)
    hf:PATH                 a Hugging Face `datasets` data set saved with save_to_disk, or a local
                            dataset folder/script, with image and text columns (--image-column, --caption-column)
    wds:PATTERN             webdataset tar shards as LAION/COYO ship them (jpg/png/webp + txt or json caption),
                            PATTERN a brace pattern or glob, e.g. wds:/data/laion/{00000..00099}.tar
The decoder stage needs prompts only: ``read_prompts(path)`` reads a text file, one prompt per line.

Data sources that live in a part of their own (the toy world) are found by name in ``DATA_PLUGINS``: a module
with ``make_dataset(options, resolution, seed, offset)`` and, for training from scratch, ``VOCABULARY``.
"""

from __future__ import annotations

import csv
import glob
import importlib
import io
import json
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from torch.utils.data import Dataset, IterableDataset

from .common import StageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
DATA_PLUGINS = {"toy": "training.toy.dataset"}  # --data kind -> module
KINDS = "toy, folder:PATH, hf:PATH or wds:PATTERN"


def to_tensor(image: PIL.Image.Image, resolution: int) -> torch.Tensor:
    """Resize the short side to ``resolution``, center-crop, scale to [-1, 1]: (3, R, R)."""
    image = image.convert("RGB")
    w, h = image.size
    s = resolution / min(w, h)
    if (w, h) != (resolution, resolution):
        image = image.resize((max(resolution, round(w * s)), max(resolution, round(h * s))), PIL.Image.BICUBIC)
        w, h = image.size
        left, top = (w - resolution) // 2, (h - resolution) // 2
        image = image.crop((left, top, left + resolution, top + resolution))
    arr = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


class CaptionFolderDataset(Dataset):
    def __init__(self, root: str, resolution: int):
        self.root = Path(root)
        if not self.root.is_dir():
            raise StageError(f"Data folder {root} does not exist.")
        self.resolution = resolution
        self.items: list[tuple[Path, str]] = []
        meta_jsonl, meta_csv = self.root / "metadata.jsonl", self.root / "metadata.csv"
        if meta_jsonl.exists() or meta_csv.exists():
            rows = (
                [json.loads(line) for line in meta_jsonl.read_text().splitlines() if line.strip()]
                if meta_jsonl.exists()
                else list(csv.DictReader(meta_csv.open()))
            )
            for n, row in enumerate(rows):
                if "file_name" not in row or not str(row.get("text", "")).strip():
                    raise StageError(f"{meta_jsonl if meta_jsonl.exists() else meta_csv} row {n + 1} lacks "
                                     "'file_name' or a non-empty 'text'.")  # fmt: skip
                self.items.append((self.root / row["file_name"], str(row["text"])))
        else:
            images = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            missing = [p.name for p in images if not p.with_suffix(".txt").exists()]
            if missing:
                caption_file = Path(missing[0]).with_suffix(".txt").name
                raise StageError(f"{len(missing)} image(s) in {root} have no caption file (e.g. {missing[0]} needs "
                                 f"{caption_file}) and there is no metadata.jsonl.")  # fmt: skip
            self.items = [(p, p.with_suffix(".txt").read_text().strip()) for p in images]
        if not self.items:
            raise StageError(f"Data folder {root} holds no images.")

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        path, caption = self.items[i]
        with PIL.Image.open(path) as im:
            return {"pixel_values": to_tensor(im, self.resolution), "caption": caption}


class HFDataset(Dataset):
    def __init__(self, path: str, resolution: int, image_column: str, caption_column: str, split: str = "train"):
        import datasets

        try:
            ds = datasets.load_from_disk(path)
        except (FileNotFoundError, ValueError):
            try:
                ds = datasets.load_dataset(path)
            except Exception as e:  # datasets raises many types for a bad local path
                raise StageError(f"Cannot load a `datasets` data set from {path!r}: {e}") from None
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise StageError(f"Data set {path} has splits {list(ds)}; no {split!r}.")
            ds = ds[split]
        for col in (image_column, caption_column):
            if col not in ds.column_names:
                raise StageError(f"Data set {path} has columns {ds.column_names}; no {col!r} column.")
        if len(ds) == 0:
            raise StageError(f"Data set {path} is empty.")
        self.ds, self.resolution = ds, resolution
        self.image_column, self.caption_column = image_column, caption_column

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        row = self.ds[i]
        image = row[self.image_column]
        if not isinstance(image, PIL.Image.Image):
            image = PIL.Image.open(io.BytesIO(image["bytes"] if isinstance(image, dict) else image))
        return {"pixel_values": to_tensor(image, self.resolution), "caption": str(row[self.caption_column])}


class WebDatasetShards(IterableDataset):
    """webdataset tar shards: each sample's image (jpg/png/webp) and caption (txt, or json 'caption'/'text')."""

    def __init__(self, pattern: str, resolution: int, seed: int = 0):
        import webdataset as wds

        urls = sorted(glob.glob(pattern)) if any(c in pattern for c in "*?[") else wds.shardlists.expand_urls(pattern)
        urls = [u for u in urls if u.startswith(("http", "pipe:")) or Path(u).exists()]
        if not urls:
            raise StageError(f"No webdataset shards match {pattern!r}.")
        self.urls, self.resolution, self.seed = urls, resolution, seed

    def __iter__(self):
        import webdataset as wds

        info = torch.utils.data.get_worker_info()
        urls = self.urls if info is None else self.urls[info.id :: info.num_workers]
        for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode("pil"):
            image = next((sample[k] for k in ("jpg", "jpeg", "png", "webp") if k in sample), None)
            caption = sample.get("txt")
            if caption is None and "json" in sample:
                meta = sample["json"]
                caption = meta.get("caption") or meta.get("text")
            if image is None or not caption:
                continue  # LAION shards contain failed downloads: skip samples without image or caption
            yield {"pixel_values": to_tensor(image, self.resolution), "caption": str(caption)}


def make_dataset(spec: str, resolution: int, seed: int = 0, offset: int = 0, image_column: str = "image",
                 caption_column: str = "text"):  # fmt: skip
    if not spec:
        raise StageError(f"--data is empty; use {KINDS}.")
    kind, _, rest = spec.partition(":")
    if kind in DATA_PLUGINS:
        return data_plugin(spec).make_dataset(rest, resolution, seed=seed, offset=offset)
    if not rest:
        raise StageError(f"--data {spec!r} names no path.")
    if kind == "folder":
        return CaptionFolderDataset(rest, resolution)
    if kind == "hf":
        return HFDataset(rest, resolution, image_column, caption_column)
    if kind == "wds":
        return WebDatasetShards(rest, resolution, seed)
    raise StageError(f"--data kind {kind!r} is unknown; use {KINDS}.")


def data_plugin(spec: str):
    """The module of a ``DATA_PLUGINS`` source named by ``spec`` (``toy`` of ``toy:seed=3``), else None."""
    kind = spec.partition(":")[0]
    return importlib.import_module(DATA_PLUGINS[kind]) if kind in DATA_PLUGINS else None


def vocabulary(spec: str) -> list[str]:
    """The words a from-scratch tokenizer needs for the captions of ``--data spec``."""
    words = getattr(data_plugin(spec), "VOCABULARY", None)
    if words is None:
        raise StageError(f"Training from scratch builds a tokenizer from the data's own vocabulary, which --data "
                         f"{spec!r} does not have (only {', '.join(DATA_PLUGINS)}); pass --pretrained with a folder "
                         "that has a CLIP tokenizer.")  # fmt: skip
    return words


def add_data_args(parser) -> None:
    """The data options every training stage shares (``parser`` may be an argument group)."""
    parser.add_argument("--data", default="toy", help="toy | folder:PATH | hf:PATH | wds:PATTERN (training/data.py)")
    parser.add_argument("--image-column", default="image")
    parser.add_argument("--caption-column", default="text")
    parser.add_argument("--resolution", type=int, default=64)


def make_dataloader(dataset, batch_size: int, num_workers: int = 0, shuffle: bool = False):
    if isinstance(dataset, IterableDataset):
        shuffle = False
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                                       drop_last=True, persistent_workers=num_workers > 0)  # fmt: skip


def infinite(loader):
    while True:
        yield from loader


def read_prompts(path: str) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise StageError(f"Prompt file {path} does not exist.")
    prompts = [line.strip() for line in p.read_text().splitlines() if line.strip()]
    if not prompts:
        raise StageError(f"Prompt file {path} holds no prompts (one per line).")
    return prompts
