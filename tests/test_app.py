"""The Gradio app, end to end through gradio_client on tiny models (32x32 images), plus its start-up paths."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
STEPS = {"left_steps": 4, "left_guidance": 7.5, "right_steps": 2, "right_guidance": 4.5}  # few steps: fast tests


# ------------------------------------------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_model_dirs(root: Path) -> tuple[str, str]:
    """Tiny teacher (stock UNet, SD-1.x layout, recommends 50 steps / 7.5) and tiny student (efficient UNet,
    compressed decoder, recommends 8 steps / 4.5), saved as diffusers folders like the bundle's."""
    from pipelines import SnapFusionPipeline
    from pipelines.tiny import tiny_components

    teacher = SnapFusionPipeline(**tiny_components(0, unet="stock"))
    teacher.save_pretrained(root / "teacher", safe_serialization=True)
    student = SnapFusionPipeline(**tiny_components(1, unet="efficient", compressed_decoder=True),
                                 default_num_inference_steps=8, default_guidance_scale=4.5)  # fmt: skip
    student.save_pretrained(root / "student", safe_serialization=True)
    (root / "student" / "README.md").write_text("---\nlicense: mit\n---\n# Tiny student\n\nA model card.\n")
    (root / "eval").mkdir()
    (root / "eval" / "metrics.json").write_text(json.dumps({"fid": 12.5, "clip": 0.29}))
    Image.new("RGB", (8, 8), "red").save(root / "eval" / "fid_vs_clip.png")
    return str(root / "teacher"), str(root / "student")


def launch(demo) -> str:
    from snapfusion_app.ui import launch_kwargs

    port = free_port()
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True, **launch_kwargs())
    return f"http://127.0.0.1:{port}/"


def pixels(path: str) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def compare(client, prompt="a big red circle", seed=3, negative="", randomize=False, **over):
    """The /compare endpoint called with keyword arguments, as docs/app.md shows."""
    return client.predict(prompt=prompt, negative_prompt=negative, seed=seed, randomize_seed=randomize,
                          **dict(STEPS, **over), api_name="/compare")  # fmt: skip


# ------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    return make_model_dirs(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def served(model_dirs):
    """(url, demo) of the app on the tiny models, launched the way tests of gradio apps are."""
    import app

    demo = app.create_demo(*model_dirs)
    url = launch(demo)
    yield url, demo
    demo.close()


@pytest.fixture(scope="module")
def client(served):
    from gradio_client import Client

    return Client(served[0], verbose=False)


# ------------------------------------------------------------------------------------------------- compare


def test_compare_returns_both_images_with_measured_timings(client):
    l_img, l_text, r_img, r_text, banner, seed, data = compare(client, seed=3)
    assert pixels(l_img).shape == (32, 32, 3) and pixels(r_img).shape == (32, 32, 3)
    assert seed == 3 and data["seed"] == 3
    for side, steps in (("left", STEPS["left_steps"]), ("right", STEPS["right_steps"])):
        t = data[side]
        assert t["steps_run"] == steps and len(t["unet_ms_per_step"]) == steps
        for key in ("text_encoder_ms", "unet_ms_total", "decoder_ms", "total_ms"):
            assert t[key] > 0, (side, key, t[key])
        assert t["total_ms"] >= t["unet_ms_total"] + t["text_encoder_ms"] + t["decoder_ms"]
        assert t["cfg"] is True and t["device"] == "cpu"
    assert data["speedup"]["total"] == pytest.approx(data["left"]["total_ms"] / data["right"]["total_ms"])
    assert data["speedup"]["unet"] == pytest.approx(data["left"]["unet_ms_total"] / data["right"]["unet_ms_total"])
    for text, steps in ((l_text, 4), (r_text, 2)):
        assert f"{steps} steps" in text and "Measured on cpu" in text and "ms/step" in text
    assert "Right side is" in banner and ("faster" in banner or "slower" in banner)
    assert f"{data['speedup']['total']:.1f}×" in banner or f"{data['speedup']['total']:.0f}×" in banner or (
        f"{1 / data['speedup']['total']:.1f}×" in banner
    )


def test_same_seed_same_image_and_sides_agree_with_single_runs(client):
    first = compare(client, seed=11)
    again = compare(client, seed=11)
    other = compare(client, seed=12)
    np.testing.assert_array_equal(pixels(first[0]), pixels(again[0]))
    np.testing.assert_array_equal(pixels(first[2]), pixels(again[2]))
    assert not np.array_equal(pixels(first[2]), pixels(other[2]))
    assert not np.array_equal(pixels(first[0]), pixels(first[2]))  # two different models
    # one side alone gives the same image as that side of a comparison
    right = client.predict("a big red circle", "", 11, False, STEPS["right_steps"], STEPS["right_guidance"],
                           api_name="/right")  # fmt: skip
    np.testing.assert_array_equal(pixels(right[0]), pixels(first[2]))
    assert "Run the left side" in right[2]  # no left run with this prompt and seed in this session yet... but:
    left = client.predict("a big red circle", "", 11, False, STEPS["left_steps"], STEPS["left_guidance"],
                          api_name="/left")  # fmt: skip
    np.testing.assert_array_equal(pixels(left[0]), pixels(first[0]))
    assert "Right side is" in left[2] and "run separately" in left[2]
    assert set(left[4]) == {"seed", "left", "speedup"}


def test_randomized_seed_is_reported_and_reproducible(client):
    out = compare(client, seed=0, randomize=True)
    seed = out[5]
    assert isinstance(seed, int) and 0 <= seed < 2**32 and out[6]["seed"] == seed
    again = compare(client, seed=seed)
    np.testing.assert_array_equal(pixels(out[2]), pixels(again[2]))


def test_four_concurrent_clients_get_their_own_results(served):
    from gradio_client import Client

    seeds = [21, 22, 23, 24]
    results, errors = {}, []

    def worker(seed):
        try:
            results[seed] = compare(Client(served[0], verbose=False), seed=seed)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(s,)) for s in seeds]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not errors and sorted(results) == seeds
    images = {s: pixels(results[s][2]) for s in seeds}
    assert all(not np.array_equal(images[a], images[b]) for a in seeds for b in seeds if a < b)
    for s in seeds:  # each matches a serial run with the same seed
        assert results[s][5] == s
        serial = compare(Client(served[0], verbose=False), seed=s)
        np.testing.assert_array_equal(pixels(serial[2]), images[s])
        np.testing.assert_array_equal(pixels(serial[0]), pixels(results[s][0]))


# ------------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "override, expected",
    [
        ({"left_steps": 500}, ["steps (left)", "[1, 100]", "500"]),
        ({"right_steps": 0}, ["steps (right)", "[1, 100]", "got 0"]),
        ({"right_steps": 2.5}, ["steps (right)", "integer", "2.5"]),
        ({"left_steps": "many"}, ["steps (left)", "'many'"]),
        ({"left_guidance": "abc"}, ["guidance (left)", "[1, 20]", "'abc'"]),
        ({"right_guidance": 100.0}, ["guidance (right)", "[1, 20]", "100.0"]),
        ({"seed": -1}, ["seed", "[0, 2^32)", "-1"]),
        ({"seed": 2**32}, ["seed", "[0, 2^32)", "4294967296"]),
        ({"seed": "x"}, ["seed", "'x'"]),
        ({"prompt": "a red circle " * 800}, ["prompt", "10,400 characters", "limit is 1,000"]),
        ({"prompt": 123}, ["prompt must be text", "int"]),
        ({"negative": "x" * 2000}, ["negative prompt", "2,000 characters"]),
        ({"randomize": "yes"}, ["randomize seed", "true or false"]),
    ],
)
def test_bad_input_gets_a_message_naming_the_value(client, override, expected):
    from gradio_client.exceptions import AppError

    kwargs = {"prompt": "a red circle", "seed": 1}
    kwargs.update(override)
    with pytest.raises(AppError) as info:
        compare(client, **kwargs)
    message = str(info.value)
    assert all(e in message for e in expected), message
    assert "Traceback" not in message


def test_empty_prompt_is_unconditional_and_long_prompt_is_truncated_visibly(client):
    out = compare(client, prompt="")
    assert "unconditional" in out[1] and "unconditional" in out[3]
    long = " ".join(["a big red circle on the left of a small blue square"] * 3)  # > 16 tokens, < 1,000 chars
    out = compare(client, prompt=long)
    assert "Prompt truncated" in out[1] and "Prompt truncated" in out[3]


def test_unexpected_errors_reach_the_visitor_as_a_short_message(served, client, monkeypatch):
    from gradio_client.exceptions import AppError

    app_ = served[1].snapfusion
    monkeypatch.setattr(app_.sides["right"].pipe, "decode_latents", lambda latents: 1 / 0)
    with pytest.raises(AppError) as info:
        compare(client)
    assert str(info.value) == "Unexpected error (ZeroDivisionError); the details are in the server log."


def test_cancel_stops_this_visitors_run_after_the_current_step(served):
    from snapfusion_app.ui import Cancelled

    app_ = served[1].snapfusion

    class Request:  # what gradio passes: only the session matters here
        session_hash = "cancel-test"

    steps_seen = []
    gen = app_.compare("a red circle", "", 1, False, 50, 7.5, 8, 4.5, request=Request())
    with pytest.raises(Cancelled):
        for update in gen:
            readout = update[3] if isinstance(update[3], str) else ""
            if readout.startswith("**Running: step"):
                steps_seen.append(readout)
                if "step 0/" not in readout:
                    app_.cancel(Request())  # another session's cancel would not touch this run
    assert steps_seen and all("/8**" in s for s in steps_seen)  # stopped in the right side, before the left began
    # the app still works afterwards
    out = list(app_.compare("a red circle", "", 1, False, 2, 7.5, 2, 4.5, request=Request()))[-1]
    assert out[6]["left"]["steps_run"] == 2


# ------------------------------------------------------------------------------------------------- model tab


def test_model_tab_shows_both_architectures_and_bundle_results(served, model_dirs):
    from snapfusion_app.ui import eval_files, model_summary

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


def test_model_names_come_from_the_model_card_or_folder(model_dirs):
    from snapfusion_app.ui import model_display_name

    teacher, student = model_dirs
    assert model_display_name(student).startswith("Tiny student (")
    assert model_display_name(teacher).endswith("teacher") and "SD" not in model_display_name(teacher)
    hub_id = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert model_display_name(hub_id) == hub_id


# ------------------------------------------------------------------------------------------------- export


class FakeReport:
    def __init__(self, kwargs):
        self.kwargs = kwargs

    def to_markdown(self):
        return f"| component | PSNR |\n|---|---|\n| unet | 48.0 dB |\n\nfake export {self.kwargs['quantize']}"

    def to_dict(self):
        return {"psnr_db": {"unet": 48.0}, "quantize": self.kwargs["quantize"]}


@pytest.fixture
def fake_export(monkeypatch):
    """The export library's API (export_pipeline, zip_export, ExportError) with a fake conversion."""
    import shutil

    from snapfusion_app import ui

    class ExportError(ValueError):
        pass

    calls = []

    def export_pipeline(pipe, out_dir, components=("text_encoder", "unet", "vae_decoder"), precision="fp16",
                        quantize="none", attention="original", height=None, width=None, overwrite=False,
                        latency_table=None, progress=None):  # fmt: skip
        if quantize == "4":
            raise ExportError("4-bit palettization fails the PSNR check (31.2 dB < 35 dB).")
        calls.append({"components": components, "precision": precision, "quantize": quantize, "attention": attention})
        os.makedirs(out_dir)
        for i, c in enumerate(components):
            Path(out_dir, f"{c}.mlpackage").write_bytes(b"x" * 1000)
            progress((i + 1) / len(components), f"converted {c}")
        return FakeReport(calls[-1])

    def zip_export(out_dir):
        return shutil.make_archive(out_dir, "zip", out_dir)

    monkeypatch.setattr(ui, "export_library", lambda: (export_pipeline, zip_export, ExportError))
    return calls


def test_export_serves_a_zip_with_the_report_and_keeps_only_the_newest(served, client, fake_export):
    from gradio_client.exceptions import AppError

    app_ = served[1].snapfusion
    for bits in ("8", "6", "none", "8"):
        path, report, data = client.predict("right", ["unet", "vae_decoder"], "fp16", bits, "split_einsum",
                                            api_name="/export")  # fmt: skip
        assert sorted(zipfile.ZipFile(path).namelist()) == ["unet.mlpackage", "vae_decoder.mlpackage"]
        assert f"fake export {bits}" in report and "MB** zip" in report and "48.0 dB" in report
        assert data["quantize"] == bits and data["model"] == "right" and data["zip_bytes"] > 0
    assert fake_export[-1] == {"components": ("unet", "vae_decoder"), "precision": "fp16", "quantize": "8",
                               "attention": "split_einsum"}  # fmt: skip
    assert len(app_.exports.folders()) == app_.exports.keep == 3  # older exports were deleted
    with pytest.raises(AppError, match="Export failed: 4-bit palettization fails the PSNR check"):
        client.predict("left", ["unet"], "fp32", "4", "original", api_name="/export")
    assert len(app_.exports.folders()) == 3  # the failed export left nothing behind
    bad_inputs = [
        (("/etc", ["unet"], "fp16", "8", "original"), "model must be one of left, right"),
        (("left", [], "fp16", "8", "original"), "components must be a non-empty list"),
        (("left", ["unet", "safety_checker"], "fp16", "8", "original"), "component must be one of"),
        (("left", ["unet"], "fp16", "3", "original"), "palettization bits must be one of none, 8, 6, 4"),
        (("left", ["unet"], "int8", "8", "original"), "precision must be one of fp16, fp32"),
        (("left", ["unet"], "fp16", "8", "flash"), "attention must be one of original, split_einsum"),
    ]
    for bad, match in bad_inputs:
        with pytest.raises(AppError, match=match):
            client.predict(*bad, api_name="/export")


def _export_ready() -> bool:
    try:
        from export import export_pipeline  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _export_ready(), reason="export.export_pipeline is not available yet")
def test_real_core_ml_export_of_the_tiny_student(served, client):
    served_app = served[1].snapfusion
    path, report, data = client.predict(model="right", components=["vae_decoder"], precision="fp32", quantize="none",
                                        attention="original", api_name="/export")  # fmt: skip
    names = zipfile.ZipFile(path).namelist()
    assert "coreml/manifest.json" in names and "coreml/VAEDecoder.mlpackage/Manifest.json" in names, names
    assert "MB** zip" in report and "VAEDecoder.mlpackage" in report and "dB (pass)" in report, report
    assert str(served_app.workdir) not in report and data["out_dir"] == "coreml" and data["model"] == "right"


# ------------------------------------------------------------------------------------------------- start-up


def test_import_app_loads_nothing_and_demo_is_built_from_the_environment(model_dirs, monkeypatch):
    import gradio as gr

    import app

    vars(app).pop("demo", None)
    assert "demo" not in vars(app)  # importing did not build (or load) anything
    monkeypatch.setenv("SNAPFUSION_TEACHER", model_dirs[0])
    monkeypatch.setenv("SNAPFUSION_STUDENT", model_dirs[1])
    demo = app.demo  # PEP 562: built on first access, as gradio's reload mode does
    try:
        assert isinstance(demo, gr.Blocks) and app.demo is demo
        assert demo.snapfusion.sides["right"].source == model_dirs[1]
    finally:
        vars(app).pop("demo", None)
    with pytest.raises(AttributeError):
        app.not_there  # noqa: B018


def _run_app(args, env_extra, timeout=600):  # generous: a loaded CI machine imports torch slowly
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False", **env_extra)
    return subprocess.run([sys.executable, "app.py", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


def test_bad_model_path_at_start_up_is_one_line_and_exit_code_2(tmp_path, model_dirs):
    proc = _run_app(["--teacher", str(tmp_path / "missing"), "--student", model_dirs[1]], {})
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: --teacher: {str(tmp_path / 'missing')!r} is neither an existing folder nor a Hub id of the form "
        "'owner/name'."
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


def test_python_app_py_serves_on_gradio_server_name_and_port(model_dirs):
    """What Spaces does: `python app.py` with GRADIO_SERVER_NAME / GRADIO_SERVER_PORT set and models from env."""
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False",
               GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port), SNAPFUSION_TEACHER=model_dirs[0],
               SNAPFUSION_STUDENT=model_dirs[1])  # fmt: skip
    proc = subprocess.Popen([sys.executable, "app.py", "--no-warmup"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        deadline = time.time() + 600
        while True:
            try:
                config = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=5).read())
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise AssertionError(f"app did not serve on port {port}:\n{proc.stdout.read()}") from None
                time.sleep(1)
        api_names = {d.get("api_name") for d in config["dependencies"]}
        assert {"compare", "export", "left", "right"} <= api_names
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# ------------------------------------------------------------------------------------------------- pure helpers


def test_banner_says_slower_when_the_right_side_is_slower():
    from snapfusion_app.ui import speedup_html

    def t(total, unet, steps):
        return {"total_ms": total, "unet_ms_total": unet, "steps_run": steps, "device": "cpu"}

    faster = speedup_html(t(1000.0, 900.0, 50), t(100.0, 90.0, 8))
    assert "Right side is 10× faster" in faster and "UNet part 10× faster" in faster and "#16a34a" in faster
    slower = speedup_html(t(100.0, 60.0, 50), t(170.0, 120.0, 8))
    assert "Right side is 1.7× slower" in slower and "UNet part 2.0× slower" in slower and "#d97706" in slower


def test_models_are_described_from_their_modules():
    from pipelines import SnapFusionPipeline
    from pipelines.tiny import tiny_components, tiny_efficient_unet
    from snapfusion_app.ui import describe

    stock = SnapFusionPipeline(**tiny_components(0, unet="stock"))
    assert describe(stock) == "diffusers UNet2DConditionModel, full VAE decoder"
    sd_layout_efficient = SnapFusionPipeline(**dict(tiny_components(0), unet=tiny_efficient_unet(0, preset="sd15")))
    assert describe(sd_layout_efficient) == "UNet with SD-v1.5's block layout, full VAE decoder"
    student = SnapFusionPipeline(**tiny_components(0, unet="efficient", compressed_decoder=True))
    assert describe(student) == "efficient UNet, compressed decoder"
