"""What a run reads: local files and folders, globs, list files (``@list.txt``) and fsspec URLs.

Inputs are found once, before any model loads. A name on the command line that matches nothing is a
usage error (:class:`InputError`, exit 2). Anything found that cannot be an audio file (a FIFO or
device, a dangling link, a symlink loop, an unreadable file) becomes an :class:`InputProblem`: the
build records it (stage ``input``) and never opens it, so a special file can never hang the run.

Symlinks to files are followed (once: a file reached under two names is read once); symlinks to
folders are never followed, so a walk cannot loop or leave the given trees. The output folder is never
an input, however it is reached (a link, a bind mount: folders are compared by device and inode).

Any name the OS can hold is an input. A local name that is not valid UTF-8 is carried, recorded and
published as a ``file://`` URL with its bytes %-escaped (RFC 8089; :func:`path_text`), from which
:func:`local_path` gets the exact name back; messages show such bytes as ``\\xNN`` (:func:`shown`)."""
from __future__ import annotations

import errno
import glob
import os
import re
import stat
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from emilia_pipe.media.audio import AUDIO_EXTENSIONS
from emilia_pipe.records import STATE_DIR
from emilia_pipe.runtime.userfiles import kind_of, read_user_file, shown

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


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


def path_text(path: str) -> str:
    """A local path as text that UTF-8 files (JSON, Parquet) can hold, losing nothing: the path itself
    when it is valid UTF-8, else a ``file://`` URL with the name's bytes %-escaped."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return "file://" + urllib.parse.quote(os.fsencode(path), safe="/")


def local_path(text: str) -> str:
    """The name on disk of a local input (the inverse of :func:`path_text`; ``file://`` URLs are decoded)."""
    if text.startswith("file://"):
        return os.fsdecode(urllib.parse.unquote_to_bytes(text[len("file://"):]))
    return text


def read_list(path: str | Path, max_bytes: int = 256 << 20) -> list[str]:
    """One path or URL a line; blank lines and ``#`` comments ignored; relative paths are relative to
    the list file's folder (so a list works from any working directory)."""
    p = Path(path).expanduser()
    text = read_user_file(p, "input list", max_bytes, InputError, "inputs.max_list_mb")
    items = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            items.append(line if is_url(line) or os.path.isabs(line) else str(p.parent / line))
    return items


def _kind(path: Path) -> tuple[str, str, os.stat_result | None]:
    """('file' | 'dir' | 'problem', reason, stat) for one path, following a link once; never opens it."""
    try:
        st = os.stat(path)
    except OSError as exc:
        if os.path.islink(path):
            if exc.errno == errno.ELOOP:
                return "problem", f"{shown(path)} is a symlink loop", None
            return "problem", (f"{shown(path)} is a dangling symlink (to '{shown(os.readlink(path))}', which does "
                               "not exist)"), None
        return "problem", f"cannot stat {shown(path)}: {exc.strerror}", None
    if stat.S_ISDIR(st.st_mode):
        return "dir", "", st
    if stat.S_ISREG(st.st_mode):
        if not os.access(path, os.R_OK):
            return "problem", f"{shown(path)} is not readable (permission denied)", st
        return "file", "", st
    return "problem", f"{shown(path)} is {kind_of(st.st_mode)}, not a regular file: never opened", st


class _Outputs:
    """The output folders, recognised however they are reached: by real path, and by device and inode (a
    bind mount or a link to the folder has the folder's own)."""

    def __init__(self, folders: Iterable[str | Path]):
        self.real = [Path(os.path.realpath(f)) for f in folders]
        self.ids = set()
        for f in folders:
            try:
                st = os.stat(f)
                self.ids.add((st.st_dev, st.st_ino))
            except OSError:  # not made yet: nothing can reach it
                pass
        self._dirs: dict[str, bool] = {}

    def is_output(self, st: os.stat_result | None) -> bool:
        return st is not None and (st.st_dev, st.st_ino) in self.ids

    def holds(self, path: str) -> bool:
        """Whether the file lies in an output folder, through its own name or, for a link, its target."""
        if not self.ids:
            return False
        names = [path, os.path.realpath(path)] if os.path.islink(path) else [path]
        return any(self._in_output_dir(os.path.dirname(n)) for n in names)

    def _in_output_dir(self, folder: str) -> bool:
        if folder in self._dirs:
            return self._dirs[folder]
        try:
            st = os.stat(folder)
            inside = self.is_output(st)
        except OSError:
            inside = False
        parent = os.path.dirname(folder)
        if not inside and parent != folder:
            inside = self._in_output_dir(parent)
        self._dirs[folder] = inside
        return inside


def _walk(root: Path, outputs: _Outputs, out: Inputs) -> None:
    """Audio files under ``root`` (recursive, sorted); never follows a link to a folder, never enters an
    output folder."""
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError as exc:
            out.problems.append(InputProblem(str(folder), f"cannot list folder {shown(folder)}: {exc.strerror}"))
            continue
        for e in entries:
            p = Path(e.path)
            if e.name == STATE_DIR:
                continue
            link = e.is_symlink()
            kind, reason, st = _kind(p)
            if kind == "dir":
                if outputs.is_output(st):
                    continue
                if link:
                    out.problems.append(InputProblem(str(p), f"{shown(p)} is a symlink to a folder: not followed "
                                                             "(give the folder itself as an input to include it)",
                                                     failed=False))
                    continue
                if is_audio_name(e.name):  # a folder named like audio: say why no file of that name is read
                    out.problems.append(InputProblem(str(p), f"{shown(p)} is a folder, not an audio file (its "
                                                             "contents are searched)", failed=False))
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


def expand_inputs(items: Iterable[str | Path], exclude: Iterable[str | Path] = (),
                  max_list_bytes: int = 256 << 20) -> Inputs:
    """Files as given (any name), audio files under folders (recursive), glob matches, the lines of
    ``@list`` files, and URLs. Anything in ``exclude`` (the output folder) is never an input. Local
    paths come back as :func:`path_text` gives them."""
    outputs = _Outputs([os.path.abspath(e) for e in exclude])
    found = Inputs()
    queue = [os.fsdecode(i) if isinstance(i, bytes) else str(i) for i in items]
    while queue:
        item = queue.pop(0)
        if item.startswith("@") and not os.path.lexists(item):
            queue[:0] = read_list(item[1:], max_list_bytes)
            continue
        if is_url(item):
            _remote(item, found)
            continue
        p = Path(os.path.abspath(os.path.expanduser(local_path(item))))  # abspath also folds '..' of list files
        if not os.path.lexists(p):
            matches = sorted(glob.glob(str(p), recursive=True)) if glob.has_magic(str(p)) else []
            if not matches:
                raise InputError(f"input not found: {shown(item)} (check the path; quote globs: 'data/**/*.wav')")
            queue[:0] = matches
            continue
        kind, reason, st = _kind(p)
        if kind == "dir":
            if not outputs.is_output(st):
                _walk(p, outputs, found)
        elif kind == "file":
            found.files.append(str(p))
        else:
            found.problems.append(InputProblem(str(p), reason))
    found.files = [f for f in found.files if is_url(f) or not outputs.holds(f)]
    found.files, same = _one_name_per_file(sorted(set(found.files)))
    found.files = [f if is_url(f) else path_text(f) for f in found.files]
    problems = {path_text(pr.path): InputProblem(path_text(pr.path), pr.reason, pr.failed)
                for pr in found.problems + same}
    found.problems = sorted(problems.values(), key=lambda pr: pr.path)
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
        skipped += [InputProblem(n, f"{shown(n)} is the same file as {shown(first)}: read once", failed=False)
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
