"""benchmarks/quality.py: evaluation files read defensively, and the table built from them."""

import json

import pytest

from benchmarks import quality


def test_quality_reads_defensively(tmp_path):
    good = tmp_path / "a.json"
    good.write_text(json.dumps({"2.5": {"alignment": 0.3, "fid": 9.0, "fid_floor": 1.0}, "note": "x"}))
    m = quality.read_eval(str(good))
    assert m["rows"] == [{"guidance": 2.5, "alignment": 0.3, "fid": 9.0, "fid_floor": 1.0, "seconds_per_image": None}]
    bad = tmp_path / "b.json"
    bad.write_text(json.dumps({"results": [{"guidance": 2.5, "fid": 1.0}]}))
    with pytest.raises(ValueError, match="alignment"):
        quality.read_eval(str(bad))


def test_table_marks_the_best_fid_and_names_ignored_files(tmp_path):
    rows = [{"guidance": g, "clip_score": a, "fid": f} for g, a, f in ((7.5, 0.31, 6.0), (2.5, 0.28, 4.25))]
    data = {"label": "student", "steps": 8, "fid_floor": 1.5, "results": rows}
    (tmp_path / "student.json").write_text(json.dumps(data))
    (tmp_path / "broken.json").write_text("{")
    files = [str(tmp_path / "student.json"), str(tmp_path / "broken.json")]
    args = quality.parse_args(["--eval-json", files[0], "--eval-json", files[1]])
    res = quality.run(args)
    assert [r["guidance"] for r in res["models"][0]["rows"]] == [2.5, 7.5]  # sorted by guidance
    assert res["ignored"][0]["file"] == str(tmp_path / "broken.json")
    md = quality.markdown(res, quality.common.Outputs(str(tmp_path), quality.NAME))
    assert "| student | 8 | 2.5 | 0.2800 | 4.250 (best) | 1.500 |" in md
    assert "| student | 8 | 7.5 | 0.3100 | 6.000 | 1.500 |" in md
    assert f"Ignored `{tmp_path / 'broken.json'}`: cannot read it" in md


def test_steps_curve_plots_best_quality_against_unet_evaluations(tmp_path):
    steps_dir = tmp_path / "bundle" / "eval" / "steps"
    steps_dir.mkdir(parents=True)
    for name, steps, fid in (("onepass", 4, 240.0), ("onepass", 1, 300.0), ("teacher", 2, 400.0)):
        rows = [{"guidance": 2.0, "alignment": 0.8, "fid": fid}, {"guidance": 3.0, "alignment": 0.9, "fid": fid + 5}]
        (steps_dir / f"{name}_{steps}.json").write_text(json.dumps({"label": name, "steps": steps, "results": rows}))
    (steps_dir / "teacher_x.json").write_text("{")
    (steps_dir.parent / "onepass.json").write_text((steps_dir / "onepass_4.json").read_text())  # a step count seen
    rows = [{"guidance": 2.5, "alignment": 0.95, "fid": 200.0}]
    (steps_dir.parent / "teacher.json").write_text(json.dumps({"label": "t", "steps": 50, "results": rows}))
    out = tmp_path / "docs"
    assert quality.main(["--bundle", str(tmp_path / "bundle"), "--out-dir", str(out)]) == 0
    data = json.loads((out / "benchmarks" / "quality.json").read_text())
    curve = data["steps_curve"]
    assert [p["steps"] for p in curve["onepass"]] == [1, 4] and curve["teacher"][0]["unet_evaluations"] == 4
    teacher = [(p["steps"], p["unet_evaluations"], p["fid"]) for p in curve["teacher"]]
    assert teacher == [(2, 4, 400.0), (50, 100, 200.0)]  # teacher.json: its own point, at 50 steps
    assert curve["onepass"][1] | {"file": None} == {"file": None, "steps": 4, "unet_evaluations": 4, "fid": 240.0,
                                                    "fid_guidance": 2.0, "alignment": 0.9, "alignment_guidance": 3.0}
    assert (out / "benchmarks" / "quality_steps.png").stat().st_size > 0
    md = (out / "benchmarks" / "quality.md").read_text()
    assert "| teacher, plain DDIM with CFG | 2 | 4 | 400.0 (CFG 2) | 0.9000 (CFG 3) |" in md
    assert "teacher_x.json" in md  # the unreadable file is named
