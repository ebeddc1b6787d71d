"""Remote inputs (fsspec URLs: s3://, gs://, https://...) staged to a local file, one at a time, bounded.

A remote stream can be endless or stall: the copy stops at ``inputs.remote_max_mb``, when the disk
would keep less than ``inputs.remote_min_free_mb`` free, and when no byte arrives for
``inputs.remote_stall_timeout_s``; each fails that one input (stage ``standardize``) and the staged part
is deleted at once, so the disk keeps its space and the other inputs go on."""
from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import tempfile
import threading
from typing import Iterator, Optional

from emilia_pipe.media.inputs import is_url, local_path

BLOCK = 1 << 20
CHECK_FREE_EVERY = 64 << 20  # bytes staged between looks at the disk's free space


def _free_bytes(fd: int) -> int:
    st = os.fstatvfs(fd)
    return st.f_bavail * st.f_frsize


class RemoteInputError(RuntimeError):
    """A remote input that is too large or stopped sending."""


def _blocks(url: str, stall_s: float) -> Iterator[bytes]:
    """The bytes of ``url`` block by block; a reader thread does the opening and reading, so a stalled
    connection is given up after ``stall_s`` (the thread ends by itself once the stream yields or fails)."""
    import fsspec

    q: queue.Queue = queue.Queue(maxsize=4)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.5)
                return True
            except queue.Full:
                continue
        return False

    def pump() -> None:
        try:
            with fsspec.open(url, "rb") as src:
                while not stop.is_set():
                    block = src.read(BLOCK)
                    if not put(block) or not block:
                        return
        except BaseException as exc:  # noqa: BLE001 - handed to the reading side
            put(exc)

    threading.Thread(target=pump, name="emilia-remote-read", daemon=True).start()
    try:
        while True:
            try:
                item = q.get(timeout=stall_s)
            except queue.Empty:
                raise RemoteInputError(f"{url}: no data for inputs.remote_stall_timeout_s={stall_s:g} s; "
                                       "the connection stalled") from None
            if isinstance(item, BaseException):
                raise item
            if not item:
                return
            yield item
    finally:
        stop.set()


@contextlib.contextmanager
def local_copy(path: str, stage_dir: Optional[str | os.PathLike], max_bytes: int = 4096 << 20,
               stall_s: float = 60.0, min_free: int = 1024 << 20) -> Iterator[tuple[str, Optional[str]]]:
    """A local file to decode and, for a URL, its sha256: the URL is copied (streamed, hashed on the
    way) into ``stage_dir`` (``OUT/.emilia/tmp``) and the copy deleted afterwards, so each worker
    holds at most one staged file. A local input is yielded as its name on disk, with no hash."""
    if not is_url(path):
        yield local_path(path), None
        return
    digest = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(prefix=".stage-", suffix=os.path.splitext(path)[1][:16], dir=stage_dir)
    try:
        size = next_check = 0
        with os.fdopen(fd, "wb") as dst:
            for block in _blocks(path, stall_s):
                size += len(block)
                if size > max_bytes:
                    raise RemoteInputError(f"{path} is larger than inputs.remote_max_mb={max_bytes / 2**20:g} MiB: "
                                           "not staged further (raise the setting for larger inputs)")
                if size >= next_check:
                    next_check = size + CHECK_FREE_EVERY
                    if _free_bytes(dst.fileno()) - CHECK_FREE_EVERY < min_free:  # the next blocks must fit
                        raise RemoteInputError(f"{path}: staging it would leave less than inputs.remote_min_free_mb="
                                               f"{min_free / 2**20:g} MiB free on the output's disk: not staged "
                                               "further")
                digest.update(block)
                dst.write(block)
        yield tmp, digest.hexdigest()
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
