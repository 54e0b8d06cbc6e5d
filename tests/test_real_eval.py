"""training/real_eval.py + training/coco.py: FID and CLIP score on a COCO-format folder, with random-weight
feature extractors in the real formats (torch-fidelity's Inception-v3 state dict, a transformers CLIP folder)."""

import importlib.util
import json
import os
import shutil
from unittest import mock

import numpy as np
import PIL.Image
import pytest
import torch
from training_helpers import ENV, ROOT, saved, tiny_pipe_at

from training import evaluate
from training.common import StageError

if importlib.util.find_spec("torch_fidelity") is None:
    pytest.skip("torch-fidelity is not installed: pip install --no-deps torch-fidelity==0.4.0",
                allow_module_level=True)  # fmt: skip
from training.real_eval import _import_torch_fidelity_inception  # before torchmetrics: see there

_import_torch_fidelity_inception()

CAPTIONS = ["a red circle", "a big blue square", "a small green triangle", "a yellow circle left of a square",
            "two blue squares", "a big red triangle", "a green circle on gray", "a small yellow square"]  # fmt: skip
N = 8  # images in the generated COCO folder


@pytest.fixture(scope="module")
def inception(tmp_path_factory):
    """A random-weight Inception-v3 in torch-fidelity's weights format (its real file name), in a folder."""
    from training.real_eval import INCEPTION_FILE, _import_torch_fidelity_inception

    _import_torch_fidelity_inception()
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    torch.manual_seed(0)
    with mock.patch.object(FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None), \
            mock.patch("torch.load", lambda *a, **k: {}):  # fmt: skip
        net = FeatureExtractorInceptionV3("inception-v3-compat", ["64"], feature_extractor_weights_path="none")
    folder = tmp_path_factory.mktemp("inception")
    torch.save(net.state_dict(), folder / INCEPTION_FILE)
    return str(folder)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """A tiny random-weight transformers CLIP folder: model, tokenizer and image processor (save_pretrained)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from pipelines.tokenizer import build_clip_tokenizer

    folder = tmp_path_factory.mktemp("clip")
    words = sorted({w for c in CAPTIONS for w in c.split()})
    tokenizer = build_clip_tokenizer(words, str(folder / "tok"), model_max_length=16)
    vocab = len(tokenizer.get_vocab())
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=16, bos_token_id=vocab - 2,
                         eos_token_id=vocab - 1, pad_token_id=vocab - 1),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16,
    )  # fmt: skip
    CLIPModel(config).save_pretrained(folder)
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                                 crop_size={"height": 32, "width": 32}),
                              tokenizer=tokenizer)  # fmt: skip
    processor.save_pretrained(folder)
    shutil.rmtree(folder / "tok")
    return str(folder)


def make_coco(root, n=N, captions_per_image=2):
    """A COCO 2014 captions folder: annotations/captions_val2014.json and val2014/COCO_val2014_%012d.jpg."""
    rng = np.random.default_rng(0)
    (root / "val2014").mkdir(parents=True)
    (root / "annotations").mkdir()
    images, annotations = [], []
    for k in range(n):
        image_id = 1000 + 7 * k
        name = f"COCO_val2014_{image_id:012d}.jpg"
        size = (48 + 8 * (k % 3), 40)  # not square: center-cropped like the generated images' size
        PIL.Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(root / "val2014" / name)
        images.append({"id": image_id, "file_name": name, "width": size[0], "height": size[1]})
        for j in range(captions_per_image):
            annotations.append({"id": 10 * k + j, "image_id": image_id, "caption": CAPTIONS[(k + j) % len(CAPTIONS)]})
    (root / "annotations" / "captions_val2014.json").write_text(
        json.dumps({"info": {}, "images": images, "annotations": annotations}))  # fmt: skip
    return root


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    return make_coco(tmp_path_factory.mktemp("data") / "coco2014")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return saved(tiny_pipe_at(16), tmp_path_factory.mktemp("model"))  # 32x32 images


def _argv(model, coco, inception, clip, out, *extra):
    return ["--model", model, "--data", f"coco:{coco}", "--inception-weights", inception, "--clip-model", clip,
            "--fid-feature", "64", "--num-images", str(N), "--steps", "2", "--guidance", "1.5,4", "--batch-size", "3",
            "--out", str(out), *extra]  # fmt: skip


def _cli_error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        evaluate.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    return err


def test_coco_eval_matches_the_library_and_a_direct_clip_score_and_resumes(tmp_path, model, coco, inception, clip):
    from torchmetrics.image.fid import FrechetInceptionDistance
    from transformers import CLIPModel, CLIPProcessor

    from training.coco import load_coco
    from training.real_eval import INCEPTION_FILE, image_path, load_real

    out = tmp_path / "eval"
    assert evaluate.main(_argv(model, coco, inception, clip, out)) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["format"] == "snapfusion-real-eval/1" and res["num_images"] == N and res["x_metric"] == "clip_score"
    assert [r["guidance"] for r in res["results"]] == [1.5, 4.0] and res["resolution"] == 32
    assert (out / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pairs = load_coco(str(coco), N, seed=0)
    real = torch.stack([load_real(p, 32) for p, _ in pairs])
    # FID: the same number as a direct call of torchmetrics on the same images and weights (1e-4)
    for row in res["results"]:
        fake = torch.stack([torch.from_numpy(np.array(PIL.Image.open(image_path(out / "images", row["guidance"], i))))
                            .permute(2, 0, 1) for i in range(N)])  # fmt: skip
        assert fake.shape == (N, 3, 32, 32) and fake.dtype == torch.uint8
        fid = FrechetInceptionDistance(feature=64, feature_extractor_weights_path=os.path.join(inception,
                                       INCEPTION_FILE), antialias=False)  # fmt: skip
        fid.update(real, real=True)
        fid.update(fake, real=False)
        assert row["fid"] == pytest.approx(float(fid.compute()), abs=1e-4) and row["fid"] > 0
        # CLIP score: a direct computation with the CLIP folder (cosine of the projected embeddings, >= 0)
        m, proc = CLIPModel.from_pretrained(clip).eval(), CLIPProcessor.from_pretrained(clip)
        with torch.no_grad():
            inputs = proc(text=[c for _, c in pairs], images=[PIL.Image.fromarray(x.permute(1, 2, 0).numpy())
                          for x in fake], return_tensors="pt", padding=True)  # fmt: skip
            o = m(**inputs)
        cos = torch.nn.functional.cosine_similarity(o.image_embeds, o.text_embeds).clamp(min=0).mean()
        assert row["clip_score"] == pytest.approx(float(cos), abs=1e-5)
    assert res["results"][0]["fid"] != res["results"][1]["fid"]

    # resumable: delete two cached images of one scale; a rerun makes only those, and the same numbers
    for i in (2, 5):
        image_path(out / "images", 4.0, i).unlink()
    before = image_path(out / "images", 1.5, 0).stat().st_mtime_ns
    os.remove(out / "results.json")  # as an interrupted run leaves it: no results yet
    os.remove(out / "curve.png")
    assert evaluate.main(_argv(model, coco, inception, clip, out)) == 0
    again = json.loads((out / "results.json").read_text())
    assert [r["fid"] for r in again["results"]] == pytest.approx([r["fid"] for r in res["results"]], abs=1e-4)
    assert image_path(out / "images", 1.5, 0).stat().st_mtime_ns == before
    assert again["results"][0]["seconds_per_image"] is None and again["results"][1]["seconds_per_image"] > 0


def test_bad_inputs_are_one_line_errors(tmp_path, capsys, model, coco, inception, clip):
    out = tmp_path / "o"
    err = _cli_error(_argv(model, coco, str(tmp_path / "nowhere"), clip, out), capsys)
    assert "--inception-weights" in err and str(tmp_path / "nowhere") in err and "weights-inception-2015" in err
    err = _cli_error(_argv(model, coco, inception, str(tmp_path / "noclip"), out), capsys)
    assert "--clip-model" in err and "noclip" in err
    argv = _argv(model, coco, inception, clip, out)
    argv[argv.index("--num-images") + 1] = "9"
    assert "--num-images 9 is more than the 8 captioned images" in _cli_error(argv, capsys)
    # a missing image: the first missing file of the evaluated set is named
    broken = make_coco(tmp_path / "broken")
    from training.coco import load_coco

    first = load_coco(str(broken), N)[0][0]
    first.unlink()
    err = _cli_error(_argv(model, broken, inception, clip, out), capsys)
    assert f"image {first} is missing" in err
    # an image without a caption, and no captions file at all
    data = json.loads((broken / "annotations" / "captions_val2014.json").read_text())
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] != 1007]
    (broken / "annotations" / "captions_val2014.json").write_text(json.dumps(data))
    assert "COCO_val2014_000000001007.jpg (id 1007) has no caption" in _cli_error(
        _argv(model, broken, inception, clip, out), capsys)  # fmt: skip
    os.remove(broken / "annotations" / "captions_val2014.json")
    assert "captions_val2014.json" in _cli_error(_argv(model, broken, inception, clip, out), capsys)
    bad = list(_argv(model, coco, inception, clip, out))
    bad[bad.index("--data") + 1] = "laion:/x"
    assert "coco:PATH or folder:PATH" in _cli_error(bad, capsys)
    assert not out.exists()  # nothing written by any refused run
    # a weights file of another format is named, not a stack trace
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    torch.save({"x": torch.zeros(1)}, wrong / "weights-inception-2015-12-05-6726825d.pth")
    with pytest.raises(StageError, match="not torch-fidelity's Inception"):
        from training.real_eval import make_fid

        make_fid(str(wrong / "weights-inception-2015-12-05-6726825d.pth"), 64)


def test_folder_data_takes_the_first_k_captioned_images(tmp_path):
    from training.coco import load_eval_set

    for i in range(3):
        PIL.Image.new("RGB", (8, 8)).save(tmp_path / f"{i}.png")
        (tmp_path / f"{i}.txt").write_text(CAPTIONS[i])
    pairs = load_eval_set(f"folder:{tmp_path}", 2)
    assert [(p.name, c) for p, c in pairs] == [("0.png", CAPTIONS[0]), ("1.png", CAPTIONS[1])]
    with pytest.raises(StageError, match="--num-images 4 is more than the 3"):
        load_eval_set(f"folder:{tmp_path}", 4)
    os.remove(tmp_path / "2.txt")
    with pytest.raises(StageError, match="2.png needs 2.txt"):
        load_eval_set(f"folder:{tmp_path}", 2)


@pytest.mark.slow
def test_accelerate_launch_splits_the_images_and_gives_the_same_numbers(tmp_path, model, coco, inception, clip):
    import subprocess
    import sys

    single = tmp_path / "single"
    assert evaluate.main(_argv(model, coco, inception, clip, single)) == 0
    split = tmp_path / "split"
    env = dict(ENV, ACCELERATE_USE_CPU="true")
    r = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                        "-m", "training.evaluate", *_argv(model, coco, inception, clip, split)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=900)  # fmt: skip
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "made by process 1" in r.stdout
    a, b = (json.loads((d / "results.json").read_text()) for d in (single, split))
    assert b["processes"] == 2
    for x, y in zip(a["results"], b["results"]):
        assert y["fid"] == pytest.approx(x["fid"], abs=1e-4) and y["clip_score"] == pytest.approx(x["clip_score"])
