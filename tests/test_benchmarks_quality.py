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
