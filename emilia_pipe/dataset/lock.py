"""One writer at a time: the build's lock file (``OUT/.emilia/lock``), held by a run, refilter or
export, with the holder's host and pid so a stale lock from a dead process is taken over."""
from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Optional

from emilia_pipe.records import STATE_DIR, utf8_text
from emilia_pipe.runtime.files import NOT_WRITABLE, write_atomic


class BuildLockedError(RuntimeError):
    """Another live process is using this build folder."""


class BuildLock:
    """An exclusive ``flock`` on ``OUT/.emilia/lock``; released by the kernel when the holder dies."""

    def __init__(self, out_dir: str | Path, purpose: str = "run", reader: bool = False):
        self.state = Path(out_dir) / STATE_DIR
        self.purpose = purpose
        self.reader = reader  # only reads the build: a build it cannot write (read-only) is still read
        self.fd: Optional[int] = None

    def _open(self) -> Optional[int]:
        try:
            self.state.mkdir(parents=True, exist_ok=True)
            return os.open(self.state / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            if not self.reader or exc.errno not in NOT_WRITABLE:
                raise
        try:  # a read-only build: a lock taken on a descriptor opened for reading still keeps a run out
            return os.open(self.state / "lock", os.O_RDONLY)
        except FileNotFoundError:
            return None  # no lock file and none can be made: nobody can be writing through this folder

    def __enter__(self) -> "BuildLock":
        import fcntl

        fd = self._open()
        if fd is None:
            return self
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            info = {}
            with contextlib.suppress(Exception):
                info = json.loads((self.state / "lock.json").read_text())
            who = (f"pid {info.get('pid')} on {info.get('host')}, {info.get('purpose', 'run')} started "
                   f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(info['started']))}" if info else "another process")
            raise BuildLockedError(
                f"{self.state.parent} is in use by {who}; wait for it to finish (or stop it) and run again. "
                "A killed run releases the lock by itself.") from None
        self.fd = fd
        holder = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "purpose": self.purpose,
                             "started": time.time(), "argv": [utf8_text(a) for a in sys.argv]})
        try:
            write_atomic(self.state / "lock.json", holder)
        except OSError as exc:
            if not self.reader or exc.errno not in NOT_WRITABLE:
                os.close(fd)
                self.fd = None
                raise
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor releases the flock
            self.fd = None
