"""training/data.py: the --data sources (folder, webdataset, Hugging Face datasets, the toy world by name)."""

import PIL.Image
import pytest

from training.common import StageError


def test_caption_folder_and_missing_captions(tmp_path):
    from training.data import make_dataset, read_prompts

    for i in range(2):
        PIL.Image.new("RGB", (40, 30), (i * 100, 0, 0)).save(tmp_path / f"{i}.png")
        (tmp_path / f"{i}.txt").write_text(f"caption {i}")
    ds = make_dataset(f"folder:{tmp_path}", 16)
    item = ds[1]
    assert item["pixel_values"].shape == (3, 16, 16) and item["caption"] == "caption 1"
    assert -1.0 <= item["pixel_values"].min() <= item["pixel_values"].max() <= 1.0
    (tmp_path / "1.txt").unlink()
    with pytest.raises(StageError, match="no caption file"):
        make_dataset(f"folder:{tmp_path}", 16)
    with pytest.raises(StageError, match="does not exist"):
        make_dataset(f"folder:{tmp_path / 'missing'}", 16)
    with pytest.raises(StageError, match="empty"):
        make_dataset("", 16)
    with pytest.raises(StageError, match="unknown"):
        make_dataset("s3:bucket", 16)
    empty = tmp_path / "prompts.txt"
    empty.write_text("\n\n")
    with pytest.raises(StageError, match="holds no prompts"):
        read_prompts(str(empty))


def _jpeg(i):
    import io

    buf = io.BytesIO()
    PIL.Image.new("RGB", (20, 20), (i * 80, 10, 10)).save(buf, format="JPEG")
    return buf.getvalue()


def test_webdataset_and_hf_sources(tmp_path):
    import io
    import tarfile

    import datasets

    from training.data import make_dataset

    shard = tmp_path / "000.tar"
    with tarfile.open(shard, "w") as tar:
        for i in range(3):
            for ext, data in (("jpg", _jpeg(i)), ("txt", f"caption {i}".encode())):
                info = tarfile.TarInfo(f"{i:05d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    items = list(make_dataset(f"wds:{shard}", 16))
    assert [x["caption"] for x in items] == ["caption 0", "caption 1", "caption 2"]
    ds = datasets.Dataset.from_dict({"image": [PIL.Image.new("RGB", (8, 8))] * 2, "text": ["a", "b"]})
    ds = ds.cast_column("image", datasets.Image())
    ds.save_to_disk(str(tmp_path / "hf"))
    hf = make_dataset(f"hf:{tmp_path / 'hf'}", 16)
    assert len(hf) == 2 and hf[1]["caption"] == "b"
    with pytest.raises(StageError, match="no 'caption' column"):
        make_dataset(f"hf:{tmp_path / 'hf'}", 16, caption_column="caption")


def test_toy_data_is_found_by_name():
    from training.data import DATA_PLUGINS, make_dataset, vocabulary
    from training.toy.world import VOCABULARY, ToyWorld

    ds = make_dataset("toy:seed=3", 32, seed=0, offset=5)
    assert ds[0]["caption"] == ToyWorld(3).sample(5).caption and ds[0]["pixel_values"].shape == (3, 32, 32)
    assert make_dataset("toy", 32, seed=3)[5]["caption"] == ds[0]["caption"]
    with pytest.raises(StageError, match="toy:seed=N"):
        make_dataset("toy:3", 32)
    assert vocabulary("toy:seed=3") == VOCABULARY and list(DATA_PLUGINS) == ["toy"]
    with pytest.raises(StageError, match="own vocabulary"):
        vocabulary("folder:x")
