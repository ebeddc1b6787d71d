"""What every export shares: reading a finished build as a stream, a staging folder published by one
rename, hard links for MP3s.

The source of truth is the build's published manifests (``LANG/LANG_B*.jsonl``, kept clips only, the
verdict of the last run or refilter). They are read line by line, so memory does not grow with the build.
A clip's paths are plain strings (``os.path``): on Python 3.11 every ``pathlib`` path interns its parts for
the life of the process, so one ``Path`` per clip would grow the process by each clip's file name.
"""
from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
from itertools import groupby
from pathlib import Path
from typing import Iterator

from emilia_pipe.config import ConfigError
from emilia_pipe.dataset.ledger import read_build_info
from emilia_pipe.records import STATE_DIR
from emilia_pipe.runtime import failpoints
from emilia_pipe.runtime.userfiles import shown


class ExportError(ConfigError):
    """A bad export invocation (exit 2, one line)."""


class PublishedBuild:
    """A finished build folder as its readers see it: a stream of the kept clips of the manifests its
    published generation lists (never a file that only looks like one). Made under the build's lock."""

    def __init__(self, out: str | Path):
        from emilia_pipe.dataset.generation import apply, current

        self.out = Path(os.path.abspath(out))  # not resolved: a link to the build names it in the exports
        info = read_build_info(self.out)
        if info is None:
            raise ExportError(f"{out} is not a dataset written by emilia-pipe (no {STATE_DIR}/build.json)")
        apply(self.out)  # a publish a kill interrupted: completed first, so one generation is read
        generation = current(self.out)
        summary = self.out / "summary.json"
        if not summary.exists():
            raise ExportError(f"{out} is not finished (nothing published yet): run or resume the build first")
        self.config = info["config"]
        self.sample_rate = int(self.config["standardize"]["sample_rate"])
        self.kept = int(json.loads(summary.read_text())["clips"]["kept"])
        self._manifests = sorted(self.out / m for m in generation.manifests)

    def manifests(self) -> list[Path]:
        return list(self._manifests)

    def clips(self) -> Iterator[dict]:
        """Kept clips in (language, shard, id) order, each manifest line plus ``audio`` (absolute MP3 path)."""
        for manifest in self.manifests():
            yield from self._read(manifest)

    @staticmethod
    def _read(manifest: Path) -> Iterator[dict]:
        failpoints.hit("export")
        folder = str(manifest.parent)
        with open(manifest, encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    row = json.loads(line)
                    row["audio"] = os.path.join(folder, row["wav"])
                    yield row

    def shards(self) -> Iterator[list[dict]]:
        """All kept clips of one B shard (every language), by source then start: at most
        ``sources_per_shard`` sources at a time, so a source whose clips span languages is seen whole."""
        by_shard: dict[str, list[Path]] = {}
        for m in self.manifests():
            by_shard.setdefault(m.stem.split("_", 1)[1], []).append(m)
        for shard in sorted(by_shard):
            rows = [row for m in by_shard[shard] for row in self._read(m)]
            yield sorted(rows, key=lambda r: (r["source"], r["start"]))

    @staticmethod
    def by_source(rows: list[dict]) -> Iterator[tuple[str, list[dict]]]:
        for src, group in groupby(rows, key=lambda r: r["source"]):
            yield src, list(group)


@contextlib.contextmanager
def staging(dest: Path) -> Iterator[Path]:
    """A sibling folder (same filesystem) that becomes ``dest`` by one rename when the export succeeds,
    and is removed when it fails: a reader never sees half an export."""
    dest = Path(dest).resolve()
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ExportError(f"{dest} exists and is not empty; choose a new destination or remove it")
    dest.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{dest.name}.export-tmp"
    for old in dest.parent.glob(glob.escape(prefix) + "*"):  # staging folders of killed exports to dest
        pid = old.name[len(prefix):]
        if pid.isdigit() and not _alive(int(pid)) and old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
    tmp = dest.parent / f"{prefix}{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if dest.exists():
            dest.rmdir()  # empty (checked above)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def refuse_unholdable(path: Path, fmt: str, what: str, forbidden: str, why: str) -> None:
    """Raise ExportError (one line) when ``path``, written into the export's text files, holds a character
    those files cannot (``forbidden``) or bytes that are not UTF-8."""
    text = str(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ExportError(f"{fmt}: the path of the {what} ({shown(text)}) is not valid UTF-8, which the export's "
                          "files must be; use a path with a UTF-8 name") from None
    bad = sorted({c for c in text if c in forbidden})
    if bad:
        names = ", ".join({" ": "a space", "\t": "a tab", "\n": "a line break", "\r": "a carriage return",
                           "|": "'|'"}.get(c, repr(c)) for c in bad)
        raise ExportError(f"{fmt}: the path of the {what} ({shown(text)!r}) holds {names}, which {why}; use a path "
                          f"without {names} (a link to it will do)")
def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_bytes(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def link_or_copy(src: str, dst: str) -> None:
    """A hard link when the build and the export share a filesystem (no extra space), else a copy."""
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def one_line(text: str, forbidden: str = "") -> str:
    """Text on one line (list and table formats are line-based), without the format's separator."""
    text = " ".join((text or "").split())
    for ch in forbidden:
        text = text.replace(ch, " ")
    return text


def emilia_json(row: dict) -> dict:
    """The per-clip record of the Emilia release: its fields, then ours (no local paths)."""
    return {k: v for k, v in row.items() if k not in ("audio", "source")}
