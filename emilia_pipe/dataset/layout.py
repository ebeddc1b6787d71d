"""Where things live in the build folder, and the only paths the build ever deletes or replaces.

The published tree is the Emilia release layout and nothing else: ``OUT/<LANG>/<LANG>_B#####.jsonl``
(kept clips) beside ``OUT/<LANG>/<LANG>_B#####/<LANG>_B#####_S#####/mp3/<id>.mp3`` (their audio), shards
of ``output.sources_per_shard`` sources. Every other clip's audio (rejected, or written by a run and not
yet published) lives in the same layout under ``OUT/.emilia/audio/`` (the *held* tree), where release
readers do not look; publishing moves a clip's MP3 between the two by one rename.

Every path the build deletes or replaces is built here from a clip id, a language and a shard, and every
name read back from the build folder (a manifest list, an id) is checked against that layout first, so a
build folder from elsewhere can never make the build touch a file outside its own."""
from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path
from typing import Iterable, Optional

from emilia_pipe.dataset.errors import DamagedStateError
from emilia_pipe.records import STATE_DIR, ClipId

_LANG_DIR = re.compile(r"^[A-Z]{1,8}$")
_MANIFEST = re.compile(r"([A-Z]{1,8})/([A-Z]{1,8})_B(\d{5,})\.jsonl")
HELD = f"{STATE_DIR}/audio"  # audio that is not published, relative to OUT
# the build's own files at the top of OUT (rewritten by every publish)
TOP_FILES = ("rejected.jsonl", "failures.jsonl", "skipped.jsonl", "sources.jsonl", "summary.json", "datacard.html")


class UnsafePathError(DamagedStateError):
    """A name read from the build folder that is not one the build writes."""


def lang_folder(language: Optional[str]) -> str:
    code = re.sub(r"[^a-z]", "", (language or "xx").lower()) or "xx"
    return code.upper()


def place(index: int, sources_per_shard: int) -> tuple[int, int]:
    return index // sources_per_shard, index % sources_per_shard


def held_root(out: Path) -> Path:
    return Path(out) / HELD


def language_dirs(root: Path) -> list[str]:
    """Language folders directly under ``root`` (real folders: a link is never followed)."""
    try:
        return sorted(e.name for e in os.scandir(root) if e.is_dir(follow_symlinks=False) and _LANG_DIR.match(e.name))
    except FileNotFoundError:
        return []


def clip_audio(clip_id: str | ClipId) -> str:
    """A clip's MP3 relative to a tree's root (``EN/EN_B00000/EN_B00000_S00003/mp3/<id>.mp3``); raises
    ``UnsafePathError`` for anything that is not a clip id."""
    try:
        cid = clip_id if isinstance(clip_id, ClipId) else ClipId.parse(str(clip_id))
    except ValueError:
        raise UnsafePathError(f"not a clip id of this build: {str(clip_id)[:200]!r}") from None
    return f"{cid.language}/{cid.shard_name}/{cid.source_name}/mp3/{cid}.mp3"


def manifest_name(language: str, shard: int) -> str:
    return f"{language}/{ClipId(language, shard, 0).shard_name}.jsonl"


def check_manifest_name(name: object) -> str:
    """``name`` if it is a manifest path this build writes (``EN/EN_B00000.jsonl``), else UnsafePathError."""
    m = _MANIFEST.fullmatch(name) if isinstance(name, str) else None
    if m is None or m[1] != m[2]:
        raise UnsafePathError(f"not a manifest of this build: {str(name)[:200]!r}")
    return name


def check_top_file(name: object) -> str:
    if name not in TOP_FILES:
        raise UnsafePathError(f"not a file of this build: {str(name)[:200]!r}")
    return str(name)


def remove_source_audio(root: Path, b: int, s: int, langs: Optional[Iterable[str]] = None) -> None:
    """Delete the MP3s of the source at shard ``b``, place ``s`` under ``root`` (the published or the held
    tree), every language: only files named as that source's clips, then the folders left empty."""
    for lang in language_dirs(root) if langs is None else langs:
        where = ClipId(lang, b, s)
        folder = root / lang / where.shard_name / where.source_name
        mp3 = folder / "mp3"
        pattern = re.compile(re.escape(where.source_name) + r"_W\d{6,}\.mp3")
        try:
            names = [e.name for e in os.scandir(mp3) if e.is_file(follow_symlinks=False) and pattern.fullmatch(e.name)]
        except (FileNotFoundError, NotADirectoryError):
            continue
        for name in names:
            (mp3 / name).unlink(missing_ok=True)
        remove_empty(root, [mp3])


def remove_empty(root: Path, folders: Iterable[Path]) -> None:
    """Remove each folder and its parents up to (not including) ``root`` while they are empty."""
    root = Path(root)
    for folder in folders:
        folder = Path(folder)
        while folder != root and root in folder.parents:
            try:
                folder.rmdir()
            except OSError:  # not empty, or gone
                if folder.exists():
                    break
            folder = folder.parent


def primary_language(clips: list[dict]) -> str:
    """The language with the most clip seconds in a source (ties: alphabetical)."""
    seconds: Counter = Counter()
    for c in clips:
        seconds[lang_folder(c.get("language"))] += c["end"] - c["start"]
    if not seconds:
        return "XX"
    return sorted(seconds.items(), key=lambda kv: (-round(kv[1], 3), kv[0]))[0][0]
