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

import concurrent.futures as cf
import errno
import glob
import os
import re
import stat
import urllib.parse
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from emilia_pipe.config import InputsConfig
from emilia_pipe.media.audio import AUDIO_EXTENSIONS
from emilia_pipe.records import STATE_DIR
from emilia_pipe.runtime.userfiles import kind_of, read_user_file, shown

METADATA_THREADS = InputsConfig().metadata_threads
# the characters str.splitlines breaks lines at; a list's lines are the runs of anything else
_LINE = re.compile("[^\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]+")

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
    return list(list_items(path, max_bytes))


def list_items(path: str | Path, max_bytes: int = 256 << 20) -> Iterator[str]:
    """:func:`read_list`'s items one by one: the file is read (and refused) at once, its lines are split as
    they are taken, so a million-line list is never held as a list of lines."""
    p = Path(path).expanduser()
    text = read_user_file(p, "input list", max_bytes, InputError, "inputs.max_list_mb")

    def items():
        for match in _LINE.finditer(text):
            line = match.group().strip()
            if line and not line.startswith("#"):
                yield line if is_url(line) or os.path.isabs(line) else str(p.parent / line)
    return items()


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

    def holds(self, path: str, link: bool) -> bool:
        """Whether the file lies in an output folder, through its own name or, for a link, its target."""
        if not self.ids:
            return False
        names = [path, os.path.realpath(path)] if link else [path]
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


class _Found:
    """Local files and problems as they are found. Files that another name may reach (a symlink, a file
    with hard links) are noted by device and inode, so that only those are compared later."""

    def __init__(self, outputs: _Outputs):
        self.outputs = outputs
        self.files: list[str] = []
        self.problems: list[InputProblem] = []
        self.shared: set[tuple[int, int]] = set()

    def file(self, path: str, st: os.stat_result, link: bool) -> None:
        if self.outputs.holds(path, link):
            return
        self.files.append(path)
        if link or st.st_nlink > 1:
            self.shared.add((st.st_dev, st.st_ino))


def _walk(root: str, found: _Found) -> None:
    """Audio files under ``root`` (recursive); never follows a link to a folder, never enters an output
    folder. One folder's entries are held at a time."""
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError as exc:
            found.problems.append(InputProblem(folder, f"cannot list folder {shown(folder)}: {exc.strerror}"))
            continue
        for e in entries:
            if e.name == STATE_DIR:
                continue
            audio = is_audio_name(e.name)
            if not audio and not e.is_dir():  # not audio and no folder to search: no stat needed
                continue
            p = e.path
            link = e.is_symlink()
            kind, reason, st = _kind(p)
            if kind == "dir":
                if found.outputs.is_output(st):
                    continue
                if link:
                    found.problems.append(InputProblem(p, f"{shown(p)} is a symlink to a folder: not followed "
                                                          "(give the folder itself as an input to include it)",
                                                       failed=False))
                    continue
                if audio:  # a folder named like audio: say why no file of that name is read
                    found.problems.append(InputProblem(p, f"{shown(p)} is a folder, not an audio file (its "
                                                          "contents are searched)", failed=False))
                stack.append(p)
            elif audio:
                if kind == "file":
                    found.file(p, st, link)
                else:
                    found.problems.append(InputProblem(p, reason))


def _remote(url: str) -> list[str]:
    """The audio objects a URL names (itself, or those under it or matching it)."""
    import fsspec

    try:
        fs, root = fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as exc:
        raise InputError(f"cannot read {url}: {exc} (install the fsspec backend for this scheme, e.g. "
                         "pip install s3fs, gcsfs or aiohttp)") from None
    try:
        if glob.has_magic(root):
            # with details, a match says whether it is a folder: no metadata call per match
            matches = fs.glob(root, detail=True)
            found = [p for m, info in matches.items()
                     for p in (fs.find(m) if (info.get("type") == "directory" if "type" in info else fs.isdir(m))
                               else [m])]
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
    return [fs.unstrip_protocol(p) for p in found]


class _RemoteLookups:
    """Remote inputs looked up ``threads`` at once (each costs a few round trips), at most ``2 * threads``
    waiting; :meth:`settle` raises the first one's error in the order they were given, as if they had been
    looked up one after another."""

    def __init__(self, threads: int):
        self.threads = max(1, threads)
        self.pool: cf.ThreadPoolExecutor | None = None
        self.pending: deque[cf.Future] = deque()
        self.found: list[str] = []
        self.failed = False

    def add(self, url: str) -> None:
        if self.pool is None:
            self.pool = cf.ThreadPoolExecutor(self.threads)
        self.pending.append(self.pool.submit(_remote, url))
        while len(self.pending) > 2 * self.threads:
            self._take()

    def settle(self) -> None:
        while self.pending and not self.failed:
            self._take()

    def _take(self) -> None:
        try:
            self.found += self.pending.popleft().result()
        except BaseException:
            self.failed = True  # the later ones were given after it: their errors never come first
            raise

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


def expand_inputs(items: Iterable[str | Path], exclude: Iterable[str | Path] = (),
                  max_list_bytes: int = 256 << 20, metadata_threads: int = METADATA_THREADS) -> Inputs:
    """Files as given (any name), audio files under folders (recursive), glob matches, the lines of
    ``@list`` files, and URLs (looked up ``metadata_threads`` at once). Anything in ``exclude`` (the output
    folder) is never an input. Local paths come back as :func:`path_text` gives them."""
    outputs = _Outputs([os.path.abspath(e) for e in exclude])
    found = _Found(outputs)
    remote = _RemoteLookups(metadata_threads)
    # a stack of iterators: a list's or a glob's items are taken where it stood, each once (no list shifting)
    stack: list[Iterator[str]] = [iter([os.fsdecode(i) if isinstance(i, bytes) else str(i) for i in items])]
    try:
        while stack:
            item = next(stack[-1], None)
            if item is None:
                stack.pop()
                continue
            if item.startswith("@") and not os.path.lexists(item):
                stack.append(list_items(item[1:], max_list_bytes))
                continue
            if is_url(item):
                remote.add(item)
                continue
            p = os.path.abspath(os.path.expanduser(local_path(item)))  # abspath also folds '..' of list files
            try:
                link = stat.S_ISLNK(os.lstat(p).st_mode)
            except OSError:
                matches = sorted(glob.glob(p, recursive=True)) if glob.has_magic(p) else []
                if not matches:
                    raise InputError(f"input not found: {shown(item)} (check the path; quote globs: "
                                     "'data/**/*.wav')") from None
                stack.append(iter(matches))
                continue
            kind, reason, st = _kind(p)
            if kind == "dir":
                if not outputs.is_output(st):
                    _walk(p, found)
            elif kind == "file":
                found.file(p, st, link)
            else:
                found.problems.append(InputProblem(p, reason))
        remote.settle()
    except InputError:
        remote.settle()  # an earlier remote input's error comes first, as when inputs were looked up in turn
        raise
    finally:
        remote.close()
    files = _sorted_unique(found.files)
    del found.files
    files, same = _one_name_per_file(files, found.shared)
    files += _sorted_unique(remote.found)
    files.sort()
    problems = {path_text(pr.path): InputProblem(path_text(pr.path), pr.reason, pr.failed)
                for pr in found.problems + same}
    return Inputs(files=[f if is_url(f) else path_text(f) for f in files],
                  problems=sorted(problems.values(), key=lambda pr: pr.path))


def _sorted_unique(names: list[str]) -> list[str]:
    names.sort()
    return [n for i, n in enumerate(names) if i == 0 or n != names[i - 1]]


def _one_name_per_file(files: list[str], shared: set[tuple[int, int]]) -> tuple[list[str], list[InputProblem]]:
    """A file reached under two names (a link to it, a hard link) is read once: under its own name if
    that is an input, else under the first name; the others are recorded as skipped. ``files`` are local
    and sorted; ``shared``: the device and inode of every file found through a link or with hard links
    (only such a file can have two names: with none, nothing is compared)."""
    if not shared:
        return files, []
    by_inode: dict[tuple[int, int], list[str]] = {}
    keep = []
    for f in files:
        try:
            st = os.stat(f)
        except OSError:  # gone since it was found: its read fails and is recorded
            keep.append(f)
            continue
        key = (st.st_dev, st.st_ino)
        if key in shared:
            by_inode.setdefault(key, []).append(f)
        else:
            keep.append(f)
    skipped = []
    for names in by_inode.values():
        first = next((n for n in names if not os.path.islink(n)), names[0])
        keep.append(first)
        skipped += [InputProblem(n, f"{shown(n)} is the same file as {shown(first)}: read once", failed=False)
                    for n in names if n != first]
    return sorted(keep), skipped
