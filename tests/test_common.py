"""training/common.py: the live-run lock on output folders (a second run on a folder a live run writes is refused)."""

import os
import socket
import subprocess
import sys
from argparse import Namespace

import pytest
from training_helpers import ENV, ROOT, run

from training.common import LOCK_FILE, StageError, claim_output, live_holder, prepare_output, release_output

HOLD = ("import sys, time; from training.common import claim_output; claim_output(sys.argv[1]); "
        "print('ready', flush=True); time.sleep(600)")


@pytest.fixture
def holder(tmp_path):
    """Another live process holding the lock of tmp_path/run (started here, ended by its pid)."""
    folder = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                            text=True)  # fmt: skip
    assert proc.stdout.readline().strip() == "ready"
    yield folder, proc
    proc.kill()
    proc.wait()


def _listing(folder):
    return sorted((str(p.relative_to(folder)), p.stat().st_mtime_ns) for p in folder.rglob("*"))


def test_a_live_run_refuses_a_second_one_naming_it_and_a_dead_one_blocks_nothing(holder):
    folder, proc = holder
    (folder / "teacher").mkdir()
    before = _listing(folder)
    with pytest.raises(StageError, match="another live run") as e:
        claim_output(folder)
    msg = str(e.value)
    assert f"pid {proc.pid} on host {socket.gethostname()}" in msg and "started 20" in msg and "-c" in msg
    with pytest.raises(StageError, match=r"is inside .*run, which another live run is writing"):
        claim_output(folder / "teacher")  # a stage inside a live recipe's folder
    args = Namespace(output=str(folder / "teacher"), overwrite=True, resume=None)
    with pytest.raises(StageError, match=f"pid {proc.pid}"):
        prepare_output(args)  # every stage's first step: refused before --overwrite deletes anything
    assert _listing(folder) == before and live_holder(folder).startswith(f"pid {proc.pid}")

    proc.kill()  # the holder dies without releasing: its lock file stays, but blocks nothing
    proc.wait()
    assert (folder / LOCK_FILE).exists() and live_holder(folder) is None
    claim_output(folder)
    assert f'"pid": {os.getpid()}' in (folder / LOCK_FILE).read_text()
    claim_output(folder)  # taken again by the same process: fine
    claim_output(folder / "teacher")  # a stage inside this process's own recipe folder: fine
    release_output(folder / "teacher")
    release_output(folder)
    assert not (folder / LOCK_FILE).exists()


def test_a_completed_stage_releases_its_folder(tmp_path):
    from training.common import mark_complete

    args = Namespace(output=str(tmp_path / "stage"), overwrite=False, resume=None)
    out = prepare_output(args)
    assert (out / LOCK_FILE).exists()
    mark_complete(out, {"stage": "x"})
    assert not (out / LOCK_FILE).exists() and (out / "stage_complete.json").exists()
    # a lock file left by a crashed run is not a stray file of an otherwise empty folder
    (tmp_path / "crashed").mkdir()
    (tmp_path / "crashed" / LOCK_FILE).write_text('{"pid": 1}')
    assert prepare_output(Namespace(output=str(tmp_path / "crashed"), overwrite=False, resume=None))
    release_output(tmp_path / "crashed")


def test_recipe_and_stage_clis_refuse_a_folder_a_live_run_writes(holder):
    folder, proc = holder
    before = _listing(folder)
    r = run("training.recipe", "--preset", "smoke", "--output", str(folder), timeout=300)
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]  # (libraries may warn too)
    assert r.returncode == 2 and len(errors) == 1 and r.stderr.rstrip().endswith(errors[0]), r.stderr
    assert f"pid {proc.pid}" in errors[0] and "Traceback" not in r.stderr
    r = run("training.train_teacher", "--model-preset", "smoke", "--output", str(folder / "teacher"), "--overwrite",
            timeout=300)  # fmt: skip
    assert r.returncode == 2 and f"pid {proc.pid}" in r.stderr and "is inside" in r.stderr, r.stderr
    assert _listing(folder) == before


def test_recipe_refuses_while_a_stage_of_it_is_written_by_another_run(tmp_path):
    stage = tmp_path / "runs" / "teacher_v"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(stage)], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                            text=True)  # fmt: skip
    try:
        assert proc.stdout.readline().strip() == "ready"
        r = run("training.recipe", "--preset", "smoke", "--output", str(tmp_path / "runs"), timeout=300)
        assert r.returncode == 2 and "teacher_v" in r.stderr and f"pid {proc.pid}" in r.stderr, r.stderr
        assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["teacher_v"]
    finally:
        proc.kill()
        proc.wait()


def test_a_stage_that_cannot_fit_says_how_much_it_needs_before_starting(tmp_path, monkeypatch):
    import argparse

    import torch

    from training import common
    from training.common import add_common_args
    from training.loop import TrainLoop, make_optimizer

    args = add_common_args(argparse.ArgumentParser()).parse_args(
        ["--output", str(tmp_path / "out"), "--log-with", "none", "--ema-decay", "0.9"])  # fmt: skip
    loop = TrainLoop(args, "big_stage")
    model = torch.nn.Linear(1000, 1000)  # 1.001M parameters: 16 bytes each with AdamW and the EMA
    monkeypatch.setattr(common, "available_memory_gb", lambda device: 0.01)
    with pytest.raises(StageError, match=r"big_stage: training 1M parameters needs 0\.0 GB more .*EMA.* only 0\.0 GB"):
        loop.prepare(model, make_optimizer(model.parameters(), args))
    assert loop.optimizer is None  # refused before accelerate prepared anything
    monkeypatch.setattr(common, "available_memory_gb", lambda device: 100.0)
    assert common.check_training_memory("s", model.parameters(), "cpu", ema=True) == pytest.approx(0.016016)
    assert common.available_memory_gb("cpu") > 0 and common.peak_memory_gb() > 0
