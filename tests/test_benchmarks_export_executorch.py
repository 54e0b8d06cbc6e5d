"""benchmarks/export_executorch.py: its summary table from a result, and an existing output folder refused."""

import pytest

from benchmarks import export_executorch


def test_markdown_summary_of_a_result():
    result = {"model": "bundle/student", "cpu": "AMD EPYC, 2 cores, Linux", "threads": 1, "torch": "2.13.0", "exports": {
        "fp32": {"export_s": 251.4, "denoiser_to_unet_size": 1.002, "min_psnr_db": 41.25, "images": [{}] * 8,
                 "runner_s_median": 0.081, "pipeline_s_median": 0.1, "ratio_runner_over_pipeline": 0.81},
        "int8": {"export_s": 120.0, "denoiser_to_unet_size": None, "min_psnr_db": 31.0, "images": [{}] * 8,
                 "runner_s_median": 0.07, "pipeline_s_median": 0.1, "ratio_runner_over_pipeline": 0.7}}}  # fmt: skip
    md = export_executorch.to_markdown(result).splitlines()
    assert md[0] == "bundle/student on AMD EPYC, 2 cores, Linux, 1 thread(s) in both runtimes, torch 2.13.0"
    assert md[4] == "| fp32 | 251 s | 1.002x | 41.2 dB over 8 images | 81 ms | 100 ms | 0.81x |"
    assert md[5].startswith("| int8 | 120 s | - | 31.0 dB")


def test_existing_output_is_refused(tmp_path):
    with pytest.raises(SystemExit) as e:
        export_executorch.main(export_executorch.parse_args(["--out", str(tmp_path)]))
    assert e.value.code == 2
