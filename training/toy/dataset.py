"""``--data toy[:seed=N]``: the endless toy world as a data set, and the words a from-scratch tokenizer needs."""

from __future__ import annotations

from torch.utils.data import Dataset

from ..common import StageError
from ..data import to_tensor
from .world import VOCABULARY, ToyWorld

__all__ = ["VOCABULARY", "ToyWorldDataset", "make_dataset"]


class ToyWorldDataset(Dataset):
    """Map-style view of the endless toy world: item i is sample ``offset + i`` (deterministic; every index is
    already a fresh random scene, so it needs no shuffling)."""

    def __init__(self, seed: int = 0, resolution: int = 64, offset: int = 0, length: int = 10**9):
        self.world = ToyWorld(seed=seed)
        self.resolution, self.offset, self.length = resolution, offset, length

    def __len__(self):
        return self.length

    def __getitem__(self, i):
        s = self.world.sample(self.offset + i)
        return {"pixel_values": to_tensor(s.image, self.resolution), "caption": s.caption}


def make_dataset(options: str, resolution: int, seed: int = 0, offset: int = 0) -> ToyWorldDataset:
    """``options``: the text after ``toy:`` (empty, or ``seed=N`` to override the stage's seed)."""
    if options:
        key, _, value = options.partition("=")
        if key != "seed" or not value.isdigit():
            raise StageError(f"--data toy:{options}: the toy world takes 'toy' or 'toy:seed=N'.")
        seed = int(value)
    return ToyWorldDataset(seed=seed, resolution=resolution, offset=offset)
