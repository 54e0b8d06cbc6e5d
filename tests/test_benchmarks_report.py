"""benchmarks/report.py: the headline table and benchmarks.md, from section JSON files built here."""

import json

from benchmarks import report

UNET = {
    "image": [512, 512],
    "batch": 2,
    "mode": "full",
    "models": {
        "sd15": {"latency": {"median_ms": 200.0}, "ratio_to_sd15": 1.0},
        "snapfusion": {"latency": {"median_ms": 150.0}, "ratio_to_sd15": 0.75},
        "extra:evo": {"label": "evo (evolved)", "ratio_to_sd15": 0.6},
    },
    "target": {"snapfusion_over_sd15_max": 0.7, "met": False},
}
VAE = {
    "image": [512, 512],
    "mode": "quick",
    "speedup": 3.25,
    "decoders": {"sd15": {"params": 49_490_000}, "pruned": {"params": 12_400_000}},
    "target": {"speedup_min": 3.0, "met": True},
}


def _write(out, name, data):
    (out / "benchmarks").mkdir(exist_ok=True)
    (out / "benchmarks" / f"{name}.json").write_text(json.dumps(data))


def test_headline_rows_from_known_numbers(tmp_path):
    _write(tmp_path, "unet_step", UNET)
    _write(tmp_path, "vae_decoder", VAE)
    assert report.headline_rows(str(tmp_path)) == [
        [
            "UNet per step, SnapFusion preset / SD-v1.5 (512px, batch 2)",
            "0.750x (150 vs 200 ms)",
            "<= 0.7x",
            "**missed** (by 0.0500)",
            "0.51x (A100, TensorRT); 0.135x (iPhone 14 Pro)",
            "full",
        ],
        ["UNet per step, evo (evolved) / SD-v1.5", "0.600x", "-", "-", "-", "full"],
        [
            "VAE decoder speed-up, pruned vs SD-v1.5 (512px)",
            "3.25x (12.4M vs 49.5M params)",
            ">= 3x",
            "met",
            "3.2x; 50M -> 13M params",
            "quick",
        ],
    ]


def test_end_to_end_row_says_when_the_total_is_composed(tmp_path):
    sd = {"steps": 50, "total_ms": 90_000.0, "total_kind": "composed from measured components"}
    sf = {"steps": 8, "total_ms": 10_000.0, "total_kind": "measured (full loop)"}
    e2e = {
        "image": [512, 512],
        "mode": "full",
        "speedup": 9.0,
        "pipelines": {"sd15": sd, "snapfusion": sf},
        "target": {"speedup_min": 10.0, "met": False},
        "bundle": {"skipped": True},
    }
    _write(tmp_path, "end_to_end", e2e)
    (row,) = report.headline_rows(str(tmp_path))
    assert row[1:4] == ["9.0x (10.0 s vs 90.0 s, SD total composed)", ">= 10x", "**missed** (1.0x short)"]


def test_assemble_orders_sections_and_names_the_missing_ones(tmp_path):
    _write(tmp_path, "vae_decoder", VAE)
    (tmp_path / "benchmarks" / "vae_decoder.md").write_text("## VAE decoder\n\nbody\n")
    (tmp_path / "benchmarks" / "unet_step.md").write_text("## UNet\n")
    text = open(report.assemble(str(tmp_path))).read()
    assert text.index("## Headline") < text.index("## UNet") < text.index("## VAE decoder\n\nbody")
    assert "## quality\n\nNot run yet: `python -m benchmarks.quality`." in text
    assert "**Quick mode**" in text  # one headline row is from a --quick run
