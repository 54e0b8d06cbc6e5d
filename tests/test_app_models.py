"""snapfusion_app/sides.py (what each side is and is called) and snapfusion_app/models_tab.py (the Model tab)."""

from __future__ import annotations

import json
import urllib.request

import pytest


def test_model_tab_shows_all_architectures_and_bundle_results(served):
    from snapfusion_app.models_tab import eval_files, model_summary, stage_headers, totals_headers

    app_ = served[1].snapfusion
    assert list(app_.models) == ["left", "right", "onepass"]  # the one-pass student is loaded: a third column
    stage_rows, total_rows = model_summary(app_.models)
    assert stage_headers(app_.models) == [
        "stage", "resolution", "left CA", "left RB", "right CA", "right RB", "one-pass CA", "one-pass RB",
        "left params (M)", "right params (M)", "one-pass params (M)",
    ]  # fmt: skip
    assert totals_headers(app_.models)[3].startswith("one-pass: Tiny one-pass student (")
    rows = {r[0]: r for r in stage_rows}
    assert rows["Down-1"][2:8] == [2, 2, 0, 2, 0, 2]  # SD-1.x layout vs paper Table 3: CA 2 -> 0
    assert rows["Mid"][2:8] == [1, 7, 1, 4, 1, 4]
    assert rows["Up-1"][2:8] == [3, 3, 6, 2, 6, 2]
    totals = {r[0]: r[1:] for r in total_rows}
    assert totals["default steps"] == [50, 8, 4]
    left_params = sum(r[8] for r in stage_rows)
    assert left_params == pytest.approx(totals["UNet params (M)"][0], rel=1e-2)
    # counted per pass, then x passes per step: 2 with CFG (one batch of 2), 1 with the guidance as an input
    assert totals["UNet passes per step (default guidance)"] == ["2 (CFG)", "2 (CFG)", "1 (guidance as input)"]
    per_pass, per_step = totals["UNet GFLOPs per pass (batch 1)"], totals["UNet GFLOPs per step (× passes)"]
    assert per_pass[0] > per_pass[1] > 0 and per_pass[2] == pytest.approx(per_pass[1], rel=1e-2)  # same layout
    assert per_step == pytest.approx([2 * per_pass[0], 2 * per_pass[1], per_pass[2]], rel=1e-3)
    assert totals["UNet evaluations per image (× default steps)"] == [100, 16, 4]
    assert totals["UNet GFLOPs per image (× default steps)"] == pytest.approx(
        [50 * per_step[0], 8 * per_step[1], 4 * per_step[2]], rel=1e-3
    )
    pngs, jsons = eval_files(app_.models)
    assert [p.name for p in pngs] == ["fid_vs_clip.png"] and [j.name for j in jsons] == ["metrics.json"]
    assert (app_.workdir / "architecture.png").stat().st_size > 1000
    config = json.loads(urllib.request.urlopen(served[0] + "config").read())
    markdown = " ".join(str(c.get("props", {}).get("value", "")) for c in config["components"])
    assert "Tiny student" in markdown and "A model card." in markdown  # the student's model card
    assert "Tiny one-pass student" in markdown and "Its model card." in markdown  # and the one-pass student's
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
    onepass = SnapFusionPipeline(**tiny_components(0, compressed_decoder=True, time_cond_proj_dim=8))
    assert describe(onepass) == ("efficient UNet with the guidance scale as an input (one pass per step), "
                                 "compressed decoder")
