"""``text``: the transcript corpus for language-model training.

``{lang}.txt``: one utterance a line (line breaks inside a transcript become spaces), in build order;
``all.tsv``: ``id<TAB>language<TAB>text`` for every kept clip."""
from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

from emilia_pipe.exports.common import one_line

NAME = "text"
HELP = "transcript corpus: {lang}.txt (one utterance a line) and all.tsv (id, language, text)"


def export(build, dest: Path, options: dict, progress) -> dict:
    with ExitStack() as stack:
        per_lang: dict = {}
        tsv = stack.enter_context(open(dest / "all.tsv", "w", encoding="utf-8"))
        for row in build.clips():
            text = one_line(row["text"], "\t")
            if row["language"] not in per_lang:
                per_lang[row["language"]] = stack.enter_context(
                    open(dest / f"{row['language']}.txt", "w", encoding="utf-8"))
            per_lang[row["language"]].write(text + "\n")
            tsv.write(f"{row['id']}\t{row['language']}\t{text}\n")
            progress.step()
    return {"clips": progress.done, "languages": len(per_lang)}
