"""Helpers shared by the app's test files (tests/test_app_*.py, test_cli.py, test_browser.py): tiny model folders,
launching a demo the way gradio apps are tested, calling its endpoints."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
STEPS = {"left_steps": 4, "left_guidance": 7.5, "right_steps": 2, "right_guidance": 4.5}  # few steps: fast tests


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


def make_onepass_dir(root: Path) -> str:
    """Tiny one-pass student (efficient UNet with a guidance embedding: one pass per step, guidance as an input,
    trained range [1, 8]; recommends 4 steps / 4.5), saved as a diffusers folder like bundle/onepass."""
    from pipelines import SnapFusionPipeline
    from pipelines.tiny import tiny_components

    onepass = SnapFusionPipeline(**tiny_components(2, unet="efficient", compressed_decoder=True, time_cond_proj_dim=8),
                                 default_num_inference_steps=4, default_guidance_scale=4.5,
                                 guidance_scale_range=[1.0, 8.0])  # fmt: skip
    onepass.save_pretrained(root / "onepass", safe_serialization=True)
    (root / "onepass" / "README.md").write_text("# Tiny one-pass student\n\nIts model card.\n")
    return str(root / "onepass")


def launch(demo) -> str:
    from snapfusion_app.ui import launch_kwargs

    port = free_port()
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True, **launch_kwargs())
    return f"http://127.0.0.1:{port}/"


def pixels(path: str) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def compare(client, prompt="a big red circle", seed=3, negative="", randomize=False, **over):
    """The /compare endpoint called with keyword arguments, as docs/app.md shows (``right_model`` left out: the
    SnapFusion student, as for an API caller who does not know of the one-pass student)."""
    return client.predict(prompt=prompt, negative_prompt=negative, seed=seed, randomize_seed=randomize,
                          **dict(STEPS, **over), api_name="/compare")  # fmt: skip


def run_python(args: list[str], env_extra: dict | None = None, timeout: float = 600, **kwargs):
    """``python ARGS`` in the repository root with the test environment (a loaded CI machine imports torch
    slowly: generous timeout)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False",
               **(env_extra or {}))  # fmt: skip
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout, **kwargs)  # fmt: skip


def wait_until_served(proc: subprocess.Popen, port: int, timeout: float = 600) -> dict:
    """The /config of the app that ``proc`` (``python app.py``) serves on ``port``, once it answers."""
    import time
    import urllib.request

    deadline = time.time() + timeout
    while True:
        try:
            return json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=5).read())
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                raise AssertionError(f"app did not serve on port {port}:\n{proc.stdout.read()}") from None
            time.sleep(1)


# Fixtures of the app's test files (tests/conftest.py loads this module as a plugin).


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    return make_model_dirs(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def onepass_dir(model_dirs):
    return make_onepass_dir(Path(model_dirs[0]).parent)


@pytest.fixture(scope="module")
def served(model_dirs, onepass_dir):
    """(url, demo) of the app on the tiny models (with the one-pass student), launched the way tests of gradio apps
    are."""
    import app

    demo = app.create_demo(*model_dirs, onepass=onepass_dir)
    url = launch(demo)
    yield url, demo
    demo.close()


@pytest.fixture(scope="module")
def client(served):
    from gradio_client import Client

    return Client(served[0], verbose=False)
