"""The app's temporary folders (``snapfusion_app_<pid>_*`` in the system temp dir): made per app, removed when the
process exits normally, on SIGTERM (``kill``), and on the next start when a dead process left one behind."""

from __future__ import annotations

import atexit
import os
import re
import shutil
import signal
import tempfile
import threading
from pathlib import Path

PREFIX = "snapfusion_app_"
_NAME = re.compile(rf"^{PREFIX}(\d+)_")

_folders: list[Path] = []
_lock = threading.Lock()
_installed = False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale(root: str | Path | None = None) -> list[Path]:
    """Remove the folders that app processes which no longer run left in ``root`` (default: the temp dir)."""
    root = Path(root or tempfile.gettempdir())
    removed = []
    for path in root.glob(f"{PREFIX}*"):
        m = _NAME.match(path.name)
        if m and path.is_dir() and int(m.group(1)) != os.getpid() and not _alive(int(m.group(1))):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def remove_all() -> None:
    """Remove every folder this process made (atexit and SIGTERM)."""
    with _lock:
        folders, _folders[:] = list(_folders), []
    for path in folders:
        shutil.rmtree(path, ignore_errors=True)


def _on_sigterm(signum, frame, previous=signal.SIG_DFL) -> None:
    remove_all()
    if callable(previous):
        previous(signum, frame)
        return
    signal.signal(signum, signal.SIG_DFL)  # then die of SIGTERM as before (exit status -15)
    os.kill(os.getpid(), signum)


def _install() -> None:
    global _installed
    if _installed:
        return
    _installed = True
    atexit.register(remove_all)
    if threading.current_thread() is threading.main_thread():  # signal handlers can be set from the main thread only
        previous = signal.getsignal(signal.SIGTERM)
        if previous not in (signal.SIG_IGN, None):
            signal.signal(signal.SIGTERM, lambda s, f: _on_sigterm(s, f, previous))


def make_workdir() -> Path:
    """A new temporary folder for one app (served files, exports), removed at exit; stale ones are removed first."""
    remove_stale()
    path = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}_"))
    with _lock:
        _folders.append(path)
    _install()
    return path
