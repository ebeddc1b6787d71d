"""``webdataset``: the layout of the Emilia release on the Hub.

``LANG/LANG-B000000.tar``, ``LANG-B000001.tar``, ... each holding ``{id}.mp3`` and ``{id}.json`` (the
manifest line) for ``clips_per_shard`` clips. Read with ``webdataset.WebDataset(urls)``: one sample per
id with keys ``mp3`` and ``json``. Untarred, each shard folder is also what F5-TTS's
``prepare_emilia_v2.py`` reads (``{id}.json`` beside ``{id}.mp3``)."""
from __future__ import annotations

import json
from itertools import groupby
from pathlib import Path

from emilia_pipe.exports.common import emilia_json, read_bytes
from emilia_pipe.exports.tarshards import ShardedTar
from emilia_pipe.records import ClipId

NAME = "webdataset"
HELP = "Emilia release layout: LANG/LANG-B000000.tar with {id}.mp3 + {id}.json"


def export(build, dest: Path, options: dict, progress) -> dict:
    tars = 0
    for lang_dir, rows in groupby(build.clips(), key=lambda r: ClipId.parse(r["id"]).language):
        writer = ShardedTar(dest / lang_dir / f"{lang_dir}-B%06d.tar", options["clips_per_shard"])
        for row in rows:
            meta = {**emilia_json(row), "wav": f"{row['id']}.mp3"}
            writer.write([(f"{row['id']}.mp3", read_bytes(row["audio"])),
                          (f"{row['id']}.json", json.dumps(meta, ensure_ascii=False).encode("utf-8"))])
            progress.step()
        writer.close()
        tars += len(writer.paths)
    return {"clips": progress.done, "tars": tars}
