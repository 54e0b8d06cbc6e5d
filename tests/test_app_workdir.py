"""snapfusion_app/workdir.py: the app's temporary folders are gone after a normal exit, after `kill` (SIGTERM), and
a dead process's leftovers are removed at the next start."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from app_helpers import REPO, free_port, wait_until_served


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid  # exited and reaped: no process has this id (until the system reuses it)


@pytest.mark.slow
def test_killed_app_leaves_no_temp_folder_and_removes_a_dead_ones(model_dirs, tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    stale = tmp / f"snapfusion_app_{_dead_pid()}_old"
    (stale / "exports").mkdir(parents=True)
    (stale / "exports" / "x.zip").write_bytes(b"x" * 1000)
    alive = tmp / f"snapfusion_app_{os.getpid()}_mine"  # a live process's folder: left alone
    alive.mkdir()
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False", TMPDIR=str(tmp),
               GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port), SNAPFUSION_TEACHER=model_dirs[0],
               SNAPFUSION_STUDENT=model_dirs[1], SNAPFUSION_NO_ONEPASS="1",
               GRADIO_TEMP_DIR=str(tmp_path / "gradio"))  # fmt: skip
    proc = subprocess.Popen([sys.executable, "app.py", "--no-warmup"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        wait_until_served(proc, port)
        mine = sorted(p.name for p in tmp.glob("snapfusion_app_*"))
        assert not stale.exists() and alive.exists()
        assert len(mine) == 2 and any(name.startswith(f"snapfusion_app_{proc.pid}_") for name in mine), mine
        served = next(n for n in mine if n.startswith(f"snapfusion_app_{proc.pid}_"))
        assert (tmp / served / "architecture.png").exists()
    finally:
        proc.send_signal(signal.SIGTERM)  # what `kill PID` sends
        code = proc.wait(timeout=60)
    assert code == -signal.SIGTERM  # still dies of SIGTERM (exit status 143 in a shell)
    assert sorted(p.name for p in tmp.glob("snapfusion_app_*")) == [alive.name]


def test_folders_of_this_process_are_removed_at_exit(tmp_path):
    code = (
        "import os, tempfile, sys\n"
        "from snapfusion_app.workdir import make_workdir\n"
        "p = make_workdir(); (p / 'f').write_text('x'); print(p)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO), TMPDIR=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    made = out.stdout.strip()
    assert made.startswith(str(tmp_path / "snapfusion_app_")) and not os.path.exists(made)
