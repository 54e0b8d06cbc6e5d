"""snapfusion_app/sides.py (what each side is and is called) and snapfusion_app/models_tab.py (the Model tab)."""

from __future__ import annotations

import json
import urllib.request

import pytest


def test_model_tab_shows_both_architectures_and_bundle_results(served):
    from snapfusion_app.models_tab import eval_files, model_summary

    app_ = served[1].snapfusion
    stage_rows, total_rows = model_summary(app_.sides)
    rows = {r[0]: r for r in stage_rows}
    # [stage, resolution, left CA, left RB, right CA, right RB, left params, right params]
    assert rows["Down-1"][2:6] == [2, 2, 0, 2]  # SD-1.x layout vs paper Table 3: CA 2 -> 0
    assert rows["Mid"][2:6] == [1, 7, 1, 4]
    assert rows["Up-1"][2:6] == [3, 3, 6, 2]
    totals = {r[0]: r[1:] for r in total_rows}
    assert totals["default steps"] == [50, 8]
    left_params = sum(r[6] for r in stage_rows)
    assert left_params == pytest.approx(totals["UNet params (M)"][0], rel=1e-2)
    assert totals["UNet GFLOPs per step (CFG, batch 2)"][0] > totals["UNet GFLOPs per step (CFG, batch 2)"][1] > 0
    pngs, jsons = eval_files(app_.sides)
    assert [p.name for p in pngs] == ["fid_vs_clip.png"] and [j.name for j in jsons] == ["metrics.json"]
    assert (app_.workdir / "architecture.png").stat().st_size > 1000
    config = json.loads(urllib.request.urlopen(served[0] + "config").read())
    markdown = " ".join(str(c.get("props", {}).get("value", "")) for c in config["components"])
    assert "Tiny student" in markdown and "A model card." in markdown  # the student's model card
    assert "the text encoder reads only the first 16 tokens of a prompt" in markdown  # from the tokenizers
    assert "77 tokens" not in markdown and "300 characters" not in markdown


def test_model_names_come_from_the_model_card_or_folder(model_dirs):
    from snapfusion_app.sides import model_display_name

    teacher, student = model_dirs
    assert model_display_name(student).startswith("Tiny student (") and model_display_name(student).endswith(
        "/student)"
    )
    assert model_display_name(teacher).endswith("teacher") and "SD" not in model_display_name(teacher)
    assert not model_display_name(teacher).startswith("/")  # never the server's absolute path
    hub_id = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert model_display_name(hub_id) == hub_id


def test_front_matter_and_card_title(tmp_path):
    from snapfusion_app.sides import card_title, split_front_matter

    assert split_front_matter("---\nmodel_name: x\n---\n\n# T\nbody") == ("model_name: x", "# T\nbody")
    assert split_front_matter("# T\nbody") == ("", "# T\nbody")
    (tmp_path / "README.md").write_text("---\nmodel_name: 'Named'\n---\n# Heading\n")
    assert card_title(tmp_path / "README.md") == "Named"
    (tmp_path / "README.md").write_text("no title\n# Heading\n")
    assert card_title(tmp_path / "README.md") == "Heading"
    assert card_title(tmp_path / "missing.md") is None


def test_models_are_described_from_their_modules():
    from pipelines import SnapFusionPipeline
    from pipelines.tiny import tiny_components, tiny_efficient_unet
    from snapfusion_app.sides import describe

    stock = SnapFusionPipeline(**tiny_components(0, unet="stock"))
    assert describe(stock) == "diffusers UNet2DConditionModel, full VAE decoder"
    sd_layout_efficient = SnapFusionPipeline(**dict(tiny_components(0), unet=tiny_efficient_unet(0, preset="sd15")))
    assert describe(sd_layout_efficient) == "UNet with SD-v1.5's block layout, full VAE decoder"
    student = SnapFusionPipeline(**tiny_components(0, unet="efficient", compressed_decoder=True))
    assert describe(student) == "efficient UNet, compressed decoder"
