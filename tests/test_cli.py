"""snapfusion_app/cli.py: `python -m snapfusion_app generate`: fast --help and flag errors (nothing heavy imported),
one line `error: ...` naming the flag with exit code 2, an image and the timings when all is well."""

from __future__ import annotations

import time

import pytest
from app_helpers import run_python

FAST_S = 3.0  # --help and flag errors import no torch / diffusers (those take 6-17 s on a loaded 2-core machine)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from pipelines.tiny import tiny_pipeline

    path = tmp_path_factory.mktemp("cli") / "model"
    tiny_pipeline(0).save_pretrained(path)
    return str(path)


def cli(*args, **env):
    return run_python(["-m", "snapfusion_app", *args], env)


def main(argv, capsys) -> tuple[int, str, str]:
    """``cli.main(argv)`` in this process (as ``python -m snapfusion_app`` runs it, without a new interpreter):
    (exit code, stdout, stderr)."""
    from snapfusion_app import cli as cli_module

    try:
        code = cli_module.main(argv)
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def one_line(code: int, err: str) -> str:
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def one_error_line(proc) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def test_help_and_flag_errors_are_fast_and_import_nothing_heavy(tmp_path):
    code = ("import sys\nfrom snapfusion_app import cli\ncli.parse_args(['generate', '--prompt', 'x'])\n"
            "heavy = sorted(m for m in ('torch', 'diffusers', 'transformers', 'gradio') if m in sys.modules)\n"
            "print(heavy)")  # fmt: skip
    assert run_python(["-c", code]).stdout.strip() == "[]"
    start = time.perf_counter()
    proc = cli("generate", "--help")
    assert time.perf_counter() - start < FAST_S and proc.returncode == 0 and "--steps" in proc.stdout
    for bad, line in [
        (["--seed", "-1"], "error: --seed must be an integer in [0, 2^32) = [0, 4294967295]; got -1."),
        (["--seed", str(10**400)], "error: --seed must be an integer in [0, 2^32) = [0, 4294967295]; got an integer "
                                   "of 401 digits."),
        (["--steps", "0"], "error: --steps must be an integer in [1, 1000000]; got 0."),
        (["--height", "0"], "error: --height must be a positive number of pixels; got 0."),
        (["--guidance", "nan"], "error: --guidance must be a finite number; got nan."),
        (["--threads", "0"], "error: --threads must be >= 1; got 0."),
        (["--out", str(tmp_path / "x.jpg")], f"error: --out must end in .png; got {tmp_path / 'x.jpg'}."),
    ]:
        start = time.perf_counter()
        proc = cli("generate", "--prompt", "x", "--out", str(tmp_path / "a.png"), *bad)
        assert time.perf_counter() - start < FAST_S, bad
        assert one_error_line(proc) == line


def test_generate_writes_the_image_and_prints_the_timings(model, tmp_path):
    out = tmp_path / "img.png"
    r = cli("generate", "--model", model, "--prompt", "a red circle", "--steps", "2", "--guidance", "7.5",
            "--seed", "0", "--out", str(out), "--threads", "1")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert out.exists() and "UNet:" in r.stdout and "decoder:" in r.stdout and "torch threads: 1" in r.stdout
    again = cli("generate", "--model", model, "--prompt", "x", "--out", str(out))
    assert one_error_line(again) == f"error: {out} exists; pass --overwrite to replace it."


def test_library_errors_name_the_flags(model, tmp_path, capsys):
    args = ["generate", "--model", model, "--prompt", "x", "--out", str(tmp_path / "b.png"), "--threads", "1"]
    line = one_line(*main([*args, "--steps", "5000"], capsys)[::2])
    assert line == "error: --steps must be <= 1000 (training timesteps); got 5000." and "num_inference" not in line
    line = one_line(*main([*args, "--height", "30"], capsys)[::2])
    assert line.startswith("error: --height must be a positive multiple of ") and line.endswith("got 30.")
    assert one_line(*main([*args[:2], str(tmp_path / "missing"), *args[3:]], capsys)[::2]) == (
        f"error: --model: {str(tmp_path / 'missing')!r} is neither an existing folder nor a Hugging Face Hub id of "
        "the form 'owner/name'."
    )


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a CUDA device")
def test_a_device_this_machine_lacks_is_one_line_naming_the_devices_it_has(model, tmp_path, capsys):
    from pipelines.devices import available_devices

    proc = cli("generate", "--model", model, "--prompt", "x", "--out", str(tmp_path / "c.png"), "--device", "cuda")
    assert one_error_line(proc) == (
        f"error: --device: device 'cuda' is not available on this machine; choose one of "
        f"{', '.join(available_devices())}."
    )
    code, _, err = main(["generate", "--model", model, "--prompt", "x", "--out", str(tmp_path / "c.png"), "--dtype",
                         "fp8"], capsys)  # fmt: skip
    assert one_line(code, err) == "error: --dtype: dtype 'fp8' is not supported; choose one of fp32, fp16, bf16."


def test_a_long_prompt_is_generated_with_a_note_quoting_the_ignored_words(model, tmp_path, capsys):
    code, out, err = main(["generate", "--model", model, "--prompt",
                           "ein großer roter Kreis über einem kleinen blauen Quadrat", "--steps", "1", "--out",
                           str(tmp_path / "d.png"), "--threads", "1"], capsys)  # fmt: skip
    assert code == 0, err
    assert ("note: --prompt truncated: the text encoder reads 16 tokens; 31 tokens were ignored: "
            "'Kreis über einem kleinen blauen Quadrat'") in out  # fmt: skip


def test_thread_choice(monkeypatch):
    import torch

    from pipelines.devices import set_num_threads

    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        monkeypatch.delenv("SNAPFUSION_NUM_THREADS", raising=False)
        monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
        monkeypatch.setattr("os.getloadavg", lambda: (3.2, 1.0, 1.0))
        assert set_num_threads() == 1 and torch.get_num_threads() == 1  # 4 cores, 3.2 busy: 1 idle
        monkeypatch.setattr("os.getloadavg", lambda: (0.4, 1.0, 1.0))
        assert set_num_threads() == 4
        monkeypatch.setattr("os.getloadavg", lambda: (9.0, 1.0, 1.0))
        assert set_num_threads() == 1  # never 0
        monkeypatch.setenv("SNAPFUSION_NUM_THREADS", "2")
        assert set_num_threads() == 2 and set_num_threads(3) == 3  # the flag, then the environment
        monkeypatch.setenv("SNAPFUSION_NUM_THREADS", "two")
        with pytest.raises(ValueError, match="SNAPFUSION_NUM_THREADS must be a positive integer; got 'two'"):
            set_num_threads()
        monkeypatch.delenv("SNAPFUSION_NUM_THREADS")
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        torch.set_num_threads(1)
        assert set_num_threads() == 1  # OMP_NUM_THREADS set: torch already follows it
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def onepass(tmp_path_factory):
    """A tiny one-pass student: guidance as a UNet input, trained range [1, 8], 4 steps by default."""
    from pipelines.tiny import tiny_pipeline

    pipe = tiny_pipeline(0, time_cond_proj_dim=8)
    pipe.register_to_config(guidance_scale_range=[1.0, 8.0], default_num_inference_steps=4)
    path = tmp_path_factory.mktemp("cli") / "onepass"
    pipe.save_pretrained(path)
    return str(path)


def test_generate_with_the_one_pass_student_and_its_refusals(onepass, tmp_path, capsys):
    args = ["generate", "--model", onepass, "--prompt", "a red circle", "--threads", "1"]
    code, out, err = main([*args, "--guidance", "4.5", "--out", str(tmp_path / "e.png")], capsys)
    assert code == 0, err
    assert "x 4 steps" in out and "(one pass, guidance as input)" in out and "CFG" not in out
    assert (tmp_path / "e.png").exists()
    code, _, err = main([*args, "--guidance", "9", "--out", str(tmp_path / "f.png")], capsys)
    assert one_line(code, err) == ("error: --guidance 9 is outside the range this guidance-embedded model was trained "
                                   "on, [1, 8].")  # fmt: skip
    code, _, err = main([*args, "--negative-prompt", "blurry", "--out", str(tmp_path / "f.png")], capsys)
    assert one_line(code, err) == (
        "error: --negative-prompt has no effect on this model: it takes the guidance scale as an input and runs one "
        "UNet pass per step, with no unconditional branch. Leave it empty."
    )
    assert not (tmp_path / "f.png").exists()
