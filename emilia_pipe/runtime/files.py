"""Files written so that a reader sees the old or the new content, never a part (write to a temporary
name, fsync, rename, fsync the folder), and the one file-hashing helper."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import threading
from pathlib import Path
from typing import Optional

import pyarrow as pa
import pyarrow.parquet as pq


# errors that say the output cannot be written at all (not that one input is bad): the run stops (exit 5)
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)


def output_fault(exc: BaseException | None) -> OSError | None:
    """The OSError behind ``exc`` (itself, its cause, or what a Ray task error wraps) when it is a disk that
    is full or a folder that cannot be written, else None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in DISK_FULL + NOT_WRITABLE:
            return exc
        exc = getattr(exc, "cause", None) or exc.__cause__ or exc.__context__
    return None


def sha256_of(path: str | Path, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file's bytes, read in ``chunk``-byte blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish(path: Path, tmp_dir: Path, write, sync_dir: bool = True, exclusive: bool = False) -> None:
    """``write(tmp)`` fills a temporary file (in ``tmp_dir``: same filesystem, outside the published
    tree); it is fsynced and renamed into place, and the folder fsynced so the rename survives a power cut.
    ``exclusive``: never replace an existing file (FileExistsError instead), for files that are written once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir.mkdir(parents=True, exist_ok=True)
    tmp = tmp_dir / f".{path.name}.tmp{os.getpid()}-{threading.get_ident()}"
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        if exclusive:
            _link_new(tmp, path)
        else:
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if sync_dir:
        fsync_dir(path.parent)


def _link_new(tmp: Path, path: Path) -> None:
    """Give ``tmp`` the name ``path`` only if no file has it (a hard link fails on an existing name, where a
    rename would replace it), then drop the temporary name."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError:  # a filesystem without hard links: check, then rename (no other writer uses this name)
        if os.path.lexists(path):
            raise FileExistsError(errno.EEXIST, "a committed file has this name", str(path)) from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)


def write_atomic(path: Path, data: bytes | str, tmp_dir: Optional[Path] = None, sync_dir: bool = True) -> None:
    payload = data.encode("utf-8") if isinstance(data, str) else data
    _publish(path, tmp_dir if tmp_dir is not None else path.parent, lambda tmp: tmp.write_bytes(payload), sync_dir)


def write_table_atomic(path: Path, table: pa.Table, tmp_dir: Path, exclusive: bool = False) -> None:
    _publish(path, tmp_dir, lambda tmp: pq.write_table(table, tmp, compression="zstd"), exclusive=exclusive)
