"""``list``: pipe-separated file lists and ``.lab`` sidecars.

``wavs/{speaker}/{id}.mp3`` (hard links into the build, copies across filesystems) with ``{id}.lab``
beside each (the transcript: Fish-Speech's layout), ``gpt_sovits.list`` (``path|speaker|language|text``,
GPT-SoVITS) and ``styletts2.txt`` (``path|text|speaker number``, StyleTTS2's train list order; StyleTTS2
trains on phonemized text, so phonemize the middle field first) with ``speakers.txt`` mapping numbers
to speaker ids. Paths are absolute, under the destination folder; a destination whose path holds '|',
a line break or bytes that are not UTF-8 is refused with one line."""
from __future__ import annotations

import os
from pathlib import Path

from emilia_pipe.exports.common import link_or_copy, one_line, refuse_unholdable

NAME = "list"
HELP = "path|speaker|language|text lists (GPT-SoVITS, StyleTTS2) and .lab sidecars (Fish-Speech)"


def check_paths(build_dir: Path, dest: Path) -> None:
    """The lists name each MP3 by its path under the destination, one clip a line, fields split at '|'."""
    refuse_unholdable(dest, NAME, "destination", "|\n\r", "a '|'-separated list of one clip a line cannot hold")


def export(build, dest: Path, options: dict, progress) -> dict:
    final = str(options["dest"])  # paths in the lists name where the files will be, not the staging folder
    staged = str(dest)
    # a speaker's number is its first appearance in the clip stream, and speakers.txt lists them all: the
    # one state that outlives a shard, one small entry per speaker (a speaker is one source's voice)
    speakers: dict[str, int] = {}
    with open(dest / "gpt_sovits.list", "w", encoding="utf-8") as sovits, \
            open(dest / "styletts2.txt", "w", encoding="utf-8") as styletts:
        for row in build.clips():
            rel = f"wavs/{row['speaker']}/{row['id']}"
            link_or_copy(row["audio"], os.path.join(staged, rel + ".mp3"))
            text = one_line(row["text"], "|")
            with open(os.path.join(staged, rel + ".lab"), "w", encoding="utf-8") as lab:
                lab.write(text)
            spk = speakers.setdefault(row["speaker"], len(speakers))
            path = os.path.join(final, rel + ".mp3")
            sovits.write(f"{path}|{row['speaker']}|{row['language']}|{text}\n")
            styletts.write(f"{path}|{text}|{spk}\n")
            progress.step()
    (dest / "speakers.txt").write_text("".join(f"{i} {s}\n" for s, i in speakers.items()), encoding="utf-8")
    return {"clips": progress.done, "speakers": len(speakers)}
