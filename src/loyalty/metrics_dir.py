"""The directory where `loyalty serve`'s workers keep their metrics (prometheus_client's
multiprocess mode): a fresh private one per run, named in PROMETHEUS_MULTIPROC_DIR before
any worker starts, so every worker inherits it.

Outside the metrics package on purpose: importing that package imports prometheus_client,
which reads the variable once, when first imported, so this must run before.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
_PREFIX = "loyalty-metrics-"


def fresh() -> str:
    """A new directory (mode 0700, in the system's temporary directory) named in the
    environment; what earlier runs that were killed left behind is removed first."""
    _remove_abandoned()
    path = tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-")
    os.environ[VARIABLE] = path
    return path


def remove(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _remove_abandoned() -> None:
    """A server killed with SIGKILL cannot remove its directory; the next start does, once
    the process that made it (its pid is in the name) is gone."""
    for path in Path(tempfile.gettempdir()).glob(f"{_PREFIX}*-*"):
        pid = path.name.removeprefix(_PREFIX).split("-", 1)[0]
        if not pid.isdigit() or alive(int(pid)):
            continue
        try:
            mine = path.is_dir() and path.stat().st_uid == os.getuid()
        except OSError:
            continue
        if mine:
            remove(str(path))


def alive(pid: int) -> bool:
    """Whether a process `pid` is running (one of another user's counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
