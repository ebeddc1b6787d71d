"""Where a source's clips live in the build folder: language folders, shards of ``output.sources_per_shard``
sources, one folder per source and language."""
from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path
from typing import Optional

from emilia_pipe.records import ClipId

_LANG_DIR = re.compile(r"^[A-Z]{1,8}$")


def lang_folder(language: Optional[str]) -> str:
    code = re.sub(r"[^a-z]", "", (language or "xx").lower()) or "xx"
    return code.upper()


def place(index: int, sources_per_shard: int) -> tuple[int, int]:
    return index // sources_per_shard, index % sources_per_shard


def language_dirs(out: Path) -> list[str]:
    try:
        return sorted(e.name for e in os.scandir(out) if e.is_dir() and _LANG_DIR.match(e.name))
    except FileNotFoundError:
        return []


def source_dirs(out: Path, b: int, s: int, langs: Optional[list[str]] = None) -> list[Path]:
    """Every folder holding MP3s of the source at shard ``b``, place ``s`` (one per language)."""
    found = []
    for lang in language_dirs(out) if langs is None else langs:
        place_id = ClipId(lang, b, s)
        d = out / lang / place_id.shard_name / place_id.source_name
        if d.is_dir():
            found.append(d)
    return found


def primary_language(clips: list[dict]) -> str:
    """The language with the most clip seconds in a source (ties: alphabetical)."""
    seconds: Counter = Counter()
    for c in clips:
        seconds[lang_folder(c.get("language"))] += c["end"] - c["start"]
    if not seconds:
        return "XX"
    return sorted(seconds.items(), key=lambda kv: (-round(kv[1], 3), kv[0]))[0][0]
