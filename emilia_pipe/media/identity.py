"""What a cheap ``stat`` (or a remote object's ``info``) says of an input, for many inputs at once: how a
build recognises an input it already holds without reading it (:mod:`emilia_pipe.dataset.planning`)."""
from __future__ import annotations

import os

import numpy as np

from emilia_pipe.media.inputs import METADATA_THREADS, is_url, local_path
from emilia_pipe.runtime.pool import chunks, ordered_map


def input_identities(paths: list[str], threads: int = METADATA_THREADS) -> np.ndarray:
    """:func:`input_identity` of each path, one row each (n x 5), ``threads`` stats or ``info`` calls at
    once: on a network filesystem or an object store each waits a round trip. Paths go to the threads in
    small runs (a thread per stat would cost more than a local stat)."""
    def run(part: list[str]) -> np.ndarray:
        rows = [input_identity(p) for p in part]
        try:
            return np.array(rows, dtype=np.int64).reshape(-1, 5)
        except OverflowError:  # a device number over 2**63 (never seen): kept exact
            return np.array(rows, dtype=object).reshape(-1, 5)

    size = max(1, min(256, len(paths) // (4 * max(1, threads))))
    parts = list(ordered_map(run, chunks(paths, size), threads))
    return np.concatenate(parts) if parts else np.zeros((0, 5), dtype=np.int64)


def input_identity(path: str) -> tuple[int, int, int, int, int]:
    """What a cheap ``stat`` says of an input: (size, mtime_ns, ctime_ns, inode, device), -1 where unknown
    (a URL has only size and time). Content rewritten in place with its size and mtime restored (``cp -p``,
    ``rsync -t``, ``touch -r``) still changes ctime, which no user can set; a file replaced by another
    changes inode. Never opens the file."""
    if is_url(path):
        return (*input_stat(path), -1, -1, -1)
    try:
        st = os.stat(local_path(path))
    except OSError:
        return -1, -1, -1, -1, -1
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev


def input_stat(path: str) -> tuple[int, int]:
    """(size, modification time in ns) of an input, -1 where unknown; never opens it."""
    if is_url(path):
        try:
            import fsspec

            fs, root = fsspec.core.url_to_fs(path)
            info = fs.info(root)
        except Exception:  # noqa: BLE001 - the read will fail and be recorded
            return -1, -1
        when = next((info[k] for k in ("mtime", "LastModified", "last_modified", "updated", "created") if info.get(k)), None)
        if hasattr(when, "timestamp"):
            when = when.timestamp()
        try:
            mtime = int(float(when) * 1e9) if when is not None else -1
        except (TypeError, ValueError):
            mtime = -1
        return int(info.get("size") or -1), mtime
    path = local_path(path)
    try:
        st = os.stat(path)
    except OSError:
        try:
            st = os.lstat(path)
        except OSError:
            return -1, -1
    return st.st_size, st.st_mtime_ns
