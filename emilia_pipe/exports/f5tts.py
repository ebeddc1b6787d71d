"""``f5tts``: the Emilia layout that F5-TTS's ``src/f5_tts/train/datasets/prepare_emilia.py`` reads.

That script walks ``dataset_dir/{ZH,EN,...}/``; for every sub-folder ``LANG_B00000/`` it reads the
sibling ``LANG_B00000.jsonl`` line by line and takes ``text``, ``language``, ``duration`` and ``wav``
(audio at ``LANG/`` + ``wav``; ``wav.split("/")[1]`` is the source folder, matched against its
exclusion lists). This export writes exactly that, kept clips only: the manifests, and the MP3s as hard
links into the build (copies across filesystems). Set ``dataset_dir`` to the destination and ``langs``
to the language folders it holds."""
from __future__ import annotations

import json
import os
from pathlib import Path

from emilia_pipe.exports.common import emilia_json, link_or_copy

NAME = "f5tts"
HELP = "F5-TTS prepare_emilia.py input: LANG/LANG_B00000.jsonl + LANG/LANG_B00000/.../mp3/*.mp3"


def export(build, dest: Path, options: dict, progress) -> dict:
    manifests = 0
    for manifest in build.manifests():
        lang = manifest.parent.name
        out = dest / lang / manifest.name
        out.parent.mkdir(parents=True, exist_ok=True)
        (dest / lang / manifest.stem).mkdir(exist_ok=True)  # the shard folder the script iterates
        with open(out, "w", encoding="utf-8") as fh:
            for row in build._read(manifest):
                link_or_copy(row["audio"], os.path.join(str(dest), lang, row["wav"]))
                fh.write(json.dumps(emilia_json(row), ensure_ascii=False) + "\n")
                progress.step()
        manifests += 1
    return {"clips": progress.done, "manifests": manifests}
