"""export/bundle.py: the tokenizer files apple's Swift package reads, and the zip of an export folder."""

import json
import zipfile

import pytest
from transformers import CLIPTokenizer

from export import ExportError, zip_export
from export.bundle import write_tokenizer_files
from export.options import MANIFEST_FORMAT
from pipelines.tiny import tiny_pipeline


def test_tokenizer_files_round_trip(tmp_path):
    tokenizer = tiny_pipeline(0).tokenizer
    entry = write_tokenizer_files(tokenizer, str(tmp_path))
    merges = (tmp_path / "merges.txt").read_text().splitlines()
    assert merges[0].startswith("#version") and all(len(m.split(" ")) == 2 for m in merges[1:])
    assert entry["merges_count"] == len(merges) - 1 and entry["vocab_size"] == len(tokenizer.get_vocab())
    tok = CLIPTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"), pad_token="<|endoftext|>")
    for prompt in ("a photo of a red circle", "big blue triangle above the small square"):
        assert tok(prompt).input_ids == tokenizer(prompt).input_ids


def test_zip_export(tmp_path):
    out = tmp_path / "coreml"  # an export folder as export_pipeline leaves it (package contents stand-ins)
    (out / "Unet.mlpackage" / "Data").mkdir(parents=True)
    (out / "Unet.mlpackage" / "Manifest.json").write_text("{}")
    (out / "Unet.mlpackage" / "Data" / "weight.bin").write_bytes(b"\1" * 100)
    (out / "vocab.json").write_text("{}")
    (out / "manifest.json").write_text(json.dumps({"format": MANIFEST_FORMAT}))
    target = tmp_path / "bundle.zip"
    path = zip_export(str(out), zip_path=str(target))
    assert path == str(target)
    with zipfile.ZipFile(path) as zf:
        assert sorted(zf.namelist()) == [
            "coreml/Unet.mlpackage/Data/weight.bin", "coreml/Unet.mlpackage/Manifest.json", "coreml/manifest.json",
            "coreml/vocab.json"]  # fmt: skip
        assert zf.read("coreml/Unet.mlpackage/Data/weight.bin") == b"\1" * 100
        assert json.loads(zf.read("coreml/manifest.json"))["format"] == "snapfusion-export/2"
    with pytest.raises(ExportError, match="exists"):
        zip_export(str(out), zip_path=str(target))
    assert zip_export(str(out), zip_path=str(target), overwrite=True) == str(target)
    assert zip_export(str(out)) == f"{out}.zip"  # default: beside the folder
    with pytest.raises(ExportError, match="not an export folder"):
        zip_export(str(tmp_path))
