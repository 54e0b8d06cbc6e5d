"""app.py: start-up paths (import loads nothing, bad models, bad devices, thread count, serving as Spaces does)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from app_helpers import REPO, free_port, run_python, wait_until_served


def test_import_app_loads_nothing_and_demo_is_built_from_the_environment(model_dirs, onepass_dir, monkeypatch):
    import gradio as gr

    import app

    vars(app).pop("demo", None)
    assert "demo" not in vars(app)  # importing did not build (or load) anything
    monkeypatch.setenv("SNAPFUSION_TEACHER", model_dirs[0])
    monkeypatch.setenv("SNAPFUSION_STUDENT", model_dirs[1])
    monkeypatch.setenv("SNAPFUSION_ONEPASS", onepass_dir)
    demo = app.demo  # PEP 562: built on first access, as gradio's reload mode does
    try:
        assert isinstance(demo, gr.Blocks) and app.demo is demo
        assert demo.snapfusion.sides["right"].source == model_dirs[1]
        assert demo.snapfusion.right_models["onepass"].source == onepass_dir
    finally:
        vars(app).pop("demo", None)
    with pytest.raises(AttributeError):
        app.not_there  # noqa: B018


def test_bad_model_path_at_start_up_is_one_line_and_exit_code_2(tmp_path, model_dirs):
    proc = run_python(["app.py", "--teacher", str(tmp_path / "missing"), "--student", model_dirs[1]])
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: --teacher: {str(tmp_path / 'missing')!r} is neither an existing folder nor a Hugging Face Hub id of "
        "the form 'owner/name'."
    ]


def test_bad_model_path_from_the_environment(tmp_path, model_dirs, monkeypatch, capsys):
    import app

    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("SNAPFUSION_TEACHER", model_dirs[0])
    monkeypatch.setenv("SNAPFUSION_STUDENT", str(tmp_path / "empty"))
    assert app.main([]) == 2
    err = capsys.readouterr().err  # loading the teacher may print progress bars before the error
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        f"error: --student: {tmp_path / 'empty'} is not a diffusers pipeline folder: it has no model_index.json."
    )


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a CUDA device")
def test_a_device_this_machine_lacks_names_the_flag_and_the_devices_it_has(model_dirs, capsys):
    import app
    from pipelines.devices import available_devices

    assert app.main(["--teacher", model_dirs[0], "--student", model_dirs[1], "--device", "cuda"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: --device: device 'cuda' is not available on this machine; choose one of "
        f"{', '.join(available_devices())}."
    ]
    assert app.main(["--teacher", model_dirs[0], "--student", model_dirs[1], "--dtype", "fp8"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: --dtype: dtype 'fp8' is not supported; choose one of fp32, fp16, bf16."
    ]


@pytest.mark.slow
def test_python_app_py_serves_on_gradio_server_name_and_port(model_dirs, onepass_dir):
    """What Spaces does: `python app.py` with GRADIO_SERVER_NAME / GRADIO_SERVER_PORT set and models from env."""
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False",
               GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port), SNAPFUSION_TEACHER=model_dirs[0],
               SNAPFUSION_STUDENT=model_dirs[1], SNAPFUSION_ONEPASS=onepass_dir,
               SNAPFUSION_NUM_THREADS="1")  # fmt: skip
    proc = subprocess.Popen([sys.executable, "app.py", "--no-warmup"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        config = wait_until_served(proc, port)
        api_names = {d.get("api_name") for d in config["dependencies"]}
        assert {"compare", "export", "left", "right"} <= api_names
        radio = next(c for c in config["components"] if c.get("props", {}).get("elem_id") == "right-model")
        assert radio["props"]["visible"] is True
        assert [value for _, value in radio["props"]["choices"]] == ["student", "onepass"]
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0]
    assert out.splitlines()[0] == "torch threads: 1"  # SNAPFUSION_NUM_THREADS, the same rule as the CLI's
    assert f"loading right, one-pass student: {onepass_dir}" in out.splitlines()


def test_the_one_pass_student_is_bundle_onepass_when_that_folder_exists(tmp_path, monkeypatch):
    import app
    from snapfusion_app import loading

    for var in ("SNAPFUSION_ONEPASS", "SNAPFUSION_NO_ONEPASS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(loading, "DEFAULT_ONEPASS", str(tmp_path / "onepass"))
    assert app.parse_args([]).onepass is None  # no such folder: the app runs without it
    (tmp_path / "onepass").mkdir()
    assert app.parse_args([]).onepass == str(tmp_path / "onepass")  # picked up once the folder exists
    assert app.parse_args(["--no-onepass"]).onepass is None
    assert app.parse_args(["--onepass", "x/y", "--no-onepass"]).onepass is None
    monkeypatch.setenv("SNAPFUSION_ONEPASS", "owner/model")
    assert app.parse_args([]).onepass == "owner/model"
    monkeypatch.setenv("SNAPFUSION_NO_ONEPASS", "1")
    assert app.parse_args([]).onepass is None


def test_a_bad_one_pass_model_is_one_line_and_exit_code_2(tmp_path, model_dirs, capsys):
    import app

    args = ["--teacher", model_dirs[0], "--student", model_dirs[1], "--no-warmup"]
    assert app.main([*args, "--onepass", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: --onepass: {str(tmp_path / 'missing')!r} is neither an existing folder nor a Hugging Face Hub id of "
        "the form 'owner/name'. Start with --no-onepass to run without it."
    )
    assert app.main([*args, "--onepass", model_dirs[1]]) == 2  # the SnapFusion student: CFG, not one pass
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: --onepass: {model_dirs[1]} is not a one-pass model: its UNet does not take the guidance scale as an "
        "input (no time_cond_proj_dim in unet/config.json)."
    )
