"""What a run reads: local files and folders, globs, list files (``@list.txt``) and fsspec URLs.

Inputs are found once, before any model loads. A name on the command line that matches nothing is a
usage error (:class:`InputError`, exit 2). Anything found that cannot be an audio file (a FIFO or
device, a dangling link, a symlink loop, an unreadable file) becomes an :class:`InputProblem`: the
build records it (stage ``input``) and never opens it, so a special file can never hang the run.

Symlinks to files are followed (once: a file reached under two names is read once); symlinks to
folders are never followed, so a walk cannot loop or leave the given trees."""
from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Optional

from emilia_pipe.media.audio import AUDIO_EXTENSIONS
from emilia_pipe.records import STATE_DIR

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_SPECIAL = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
            (stat.S_ISBLK, "a block device"))


class InputError(ValueError):
    """An input argument that cannot be used at all (missing, unreadable list, unknown URL scheme)."""


class OutputError(ValueError):
    """The output folder cannot be used (a file, read-only)."""


@dataclass(frozen=True)
class InputProblem:
    path: str
    reason: str
    failed: bool = True  # True: a failure (failures.jsonl, exit 1); False: skipped (skipped.jsonl)


@dataclass
class Inputs:
    files: list[str] = field(default_factory=list)  # absolute local paths and URLs, sorted
    problems: list[InputProblem] = field(default_factory=list)


def is_url(path: str | Path) -> bool:
    return isinstance(path, str) and _URL.match(path) is not None and not path.startswith("file://")


def is_audio_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in AUDIO_EXTENSIONS


def read_list(path: str | Path) -> list[str]:
    """One path or URL a line; blank lines and ``#`` comments ignored; relative paths are relative to
    the list file's folder (so a list works from any working directory)."""
    p = Path(path).expanduser()
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise InputError(f"cannot read input list {path}: {exc.strerror or exc}; check the path after @ or "
                         "--inputs-from") from None
    items = []
    for line in lines:
        line = line.strip()
        if line and not line.startswith("#"):
            items.append(line if is_url(line) or os.path.isabs(line) else str(p.parent / line))
    return items


def _kind(path: Path) -> tuple[str, str]:
    """('file' | 'dir' | 'problem', reason) for one path, following a link once; never opens it."""
    try:
        st = os.stat(path)
    except OSError as exc:
        if os.path.islink(path):
            if exc.errno == errno.ELOOP:
                return "problem", f"{path} is a symlink loop"
            return "problem", f"{path} is a dangling symlink (to {os.readlink(path)!r}, which does not exist)"
        return "problem", f"cannot stat {path}: {exc.strerror}"
    if stat.S_ISDIR(st.st_mode):
        return "dir", ""
    if stat.S_ISREG(st.st_mode):
        if not os.access(path, os.R_OK):
            return "problem", f"{path} is not readable (permission denied)"
        return "file", ""
    what = next((name for test, name in _SPECIAL if test(st.st_mode)), "not a regular file")
    return "problem", f"{path} is {what}, not a regular file: never opened"


def _walk(root: Path, skip: list[Path], out: Inputs) -> None:
    """Audio files under ``root`` (recursive, sorted); never follows a link to a folder."""
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError as exc:
            out.problems.append(InputProblem(str(folder), f"cannot list folder {folder}: {exc.strerror}"))
            continue
        for e in entries:
            p = Path(e.path)
            if e.name == STATE_DIR or any(p == s for s in skip):
                continue
            link = e.is_symlink()
            kind, reason = _kind(p)
            if kind == "dir":
                if link:
                    out.problems.append(InputProblem(str(p), f"{p} is a symlink to a folder: not followed (give the "
                                                             "folder itself as an input to include it)", failed=False))
                    continue
                if is_audio_name(e.name):  # a folder named like audio: say why no file of that name is read
                    out.problems.append(InputProblem(str(p), f"{p} is a folder, not an audio file (its contents "
                                                             "are searched)", failed=False))
                stack.append(p)
            elif is_audio_name(e.name):
                if kind == "file":
                    out.files.append(str(p))
                else:
                    out.problems.append(InputProblem(str(p), reason))


def _remote(url: str, out: Inputs) -> None:
    import fsspec

    try:
        fs, root = fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as exc:
        raise InputError(f"cannot read {url}: {exc} (install the fsspec backend for this scheme, e.g. "
                         "pip install s3fs, gcsfs or aiohttp)") from None
    try:
        if glob.has_magic(root):
            found = [p for m in fs.glob(root) for p in (fs.find(m) if fs.isdir(m) else [m])]
            found = [p for p in found if is_audio_name(p)]
        elif fs.isdir(root):
            found = [p for p in fs.find(root) if is_audio_name(p)]
        elif fs.isfile(root):
            found = [root]
        else:
            raise InputError(f"input not found: {url}")
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - network, credentials...: one line, not a traceback
        raise InputError(f"cannot list {url}: {type(exc).__name__}: {exc}") from None
    if not found:
        raise InputError(f"no audio files found in {url}")
    out.files.extend(fs.unstrip_protocol(p) for p in found)


def expand_inputs(items: Iterable[str | Path], exclude: Iterable[str | Path] = ()) -> Inputs:
    """Files as given (any name), audio files under folders (recursive), glob matches, the lines of
    ``@list`` files, and URLs. Anything under ``exclude`` (the output folder) is never an input."""
    skip = [Path(os.path.abspath(e)) for e in exclude]
    found = Inputs()
    queue = [str(i) for i in items]
    while queue:
        item = queue.pop(0)
        if item.startswith("@") and not os.path.lexists(item):
            queue[:0] = read_list(item[1:])
            continue
        if is_url(item):
            _remote(item, found)
            continue
        if item.startswith("file://"):
            item = item[len("file://"):]
        p = Path(os.path.abspath(os.path.expanduser(item)))  # abspath also folds '..' of list files
        if not os.path.lexists(p):
            matches = sorted(glob.glob(str(p), recursive=True)) if glob.has_magic(str(p)) else []
            if not matches:
                raise InputError(f"input not found: {item} (check the path; quote globs: 'data/**/*.wav')")
            queue[:0] = matches
            continue
        kind, reason = _kind(p)
        if kind == "dir":
            if not any(p == s for s in skip):
                _walk(p, skip, found)
        elif kind == "file":
            found.files.append(str(p))
        else:
            found.problems.append(InputProblem(str(p), reason))
    found.files = [f for f in found.files if is_url(f) or not any(Path(f).is_relative_to(s) for s in skip)]
    found.files, same = _one_name_per_file(sorted(set(found.files)))
    found.problems = sorted({pr.path: pr for pr in found.problems + same}.values(), key=lambda pr: pr.path)
    return found


def _one_name_per_file(files: list[str]) -> tuple[list[str], list[InputProblem]]:
    """A file reached under two names (a link to it, a hard link) is read once: under its own name if
    that is an input, else under the first name; the others are recorded as skipped."""
    by_inode: dict[tuple[int, int], list[str]] = {}
    keep = []
    for f in files:
        if is_url(f):
            keep.append(f)
            continue
        try:
            st = os.stat(f)
        except OSError:  # gone since it was found: its read fails and is recorded
            keep.append(f)
            continue
        by_inode.setdefault((st.st_dev, st.st_ino), []).append(f)
    skipped = []
    for names in by_inode.values():
        first = next((n for n in names if not os.path.islink(n)), names[0])
        keep.append(first)
        skipped += [InputProblem(n, f"{n} is the same file as {first}: read once", failed=False)
                    for n in names if n != first]
    return sorted(keep), skipped


def input_identity(path: str) -> tuple[int, int, int, int, int]:
    """What a cheap ``stat`` says of an input: (size, mtime_ns, ctime_ns, inode, device), -1 where unknown
    (a URL has only size and time). Content rewritten in place with its size and mtime restored (``cp -p``,
    ``rsync -t``, ``touch -r``) still changes ctime, which no user can set; a file replaced by another
    changes inode. Never opens the file."""
    if is_url(path):
        return (*input_stat(path), -1, -1, -1)
    try:
        st = os.stat(path)
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
    try:
        st = os.stat(path)
    except OSError:
        try:
            st = os.lstat(path)
        except OSError:
            return -1, -1
    return st.st_size, st.st_mtime_ns


@contextlib.contextmanager
def local_copy(path: str, stage_dir: Optional[str | Path]) -> Iterator[tuple[str, Optional[str]]]:
    """A local file to decode and, for a URL, its sha256: the URL is copied (streamed, hashed on the
    way) into ``stage_dir`` (``OUT/.emilia/tmp``) and the copy deleted afterwards, so each worker
    holds at most one staged file. A local path is yielded as it is, with no hash."""
    if not is_url(path):
        yield path, None
        return
    import tempfile

    import fsspec

    digest = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(prefix=".stage-", suffix=os.path.splitext(path)[1], dir=stage_dir)
    try:
        with os.fdopen(fd, "wb") as dst, fsspec.open(path, "rb") as src:
            while block := src.read(1 << 20):
                digest.update(block)
                dst.write(block)
        yield tmp, digest.hexdigest()
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
