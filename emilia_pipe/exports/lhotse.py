"""``lhotse``: Recording / SupervisionSegment / Cut manifests, and the same cuts as Lhotse Shar.

One Recording per clip (its MP3, by absolute path into the build), one supervision covering it (text,
language, speaker, scores in ``custom``, word alignment when the build has word timestamps), one MonoCut.
``recordings.jsonl.gz`` + ``supervisions.jsonl.gz`` load with ``lhotse.load_manifest``, ``cuts.jsonl.gz``
with ``CutSet.from_file``. ``shar/`` holds ``cuts.NNNNNN.jsonl.gz`` + ``recording.NNNNNN.tar`` (the MP3
bytes, not re-encoded) for ``CutSet.from_shar(in_dir=...)``. Written without importing lhotse: these are
its documented JSON forms (``to_dict``). Why not lhotse's own writers: lhotse is no dependency of the
product (the tests read these files back with it), and its Recording builder would probe every MP3 again."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

from emilia_pipe.exports.common import read_bytes, refuse_unholdable
from emilia_pipe.exports.tarshards import ShardedTar

NAME = "lhotse"
HELP = "Lhotse recordings/supervisions/cuts manifests (jsonl.gz) and Lhotse Shar"
SCORES = ("dnsmos", "dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl", "language_prob", "avg_logprob", "source", "start", "end")


def check_paths(build_dir: Path, dest: Path) -> None:
    """Recordings name each MP3 by its path in the build, in UTF-8 JSON."""
    refuse_unholdable(build_dir, NAME, "build", "", "")


def recording(row: dict, sample_rate: int, source: dict) -> dict:
    return {"id": row["id"], "sources": [{"type": source["type"], "channels": [0], "source": source["source"]}],
            "sampling_rate": sample_rate, "num_samples": round(row["duration"] * sample_rate),
            "duration": row["duration"], "channel_ids": [0]}


def supervision(row: dict) -> dict:
    sup = {"id": row["id"], "recording_id": row["id"], "start": 0.0, "duration": row["duration"], "channel": 0,
           "text": row["text"], "language": row["language"], "speaker": row["speaker"],
           "custom": {k: row.get(k) for k in SCORES}}
    if row.get("words"):  # lhotse AlignmentItem: (symbol, start, duration, score)
        sup["alignment"] = {"word": [[w["word"].strip(), w["start"], round(w["end"] - w["start"], 3), None]
                                     for w in row["words"]]}
    return sup


def cut(row: dict, rec: dict) -> dict:
    return {"id": row["id"], "start": 0.0, "duration": row["duration"], "channel": 0,
            "supervisions": [supervision(row)], "recording": rec, "type": "MonoCut"}


def _jsonl(fh, obj: dict) -> None:
    fh.write(json.dumps(obj, ensure_ascii=False) + "\n")


def export(build, dest: Path, options: dict, progress) -> dict:
    sr, per_shard = build.sample_rate, options["clips_per_shard"]
    (dest / "shar").mkdir()
    audio = ShardedTar(dest / "shar" / "recording.%06d.tar", per_shard)
    shar_cuts = None
    with gzip.open(dest / "recordings.jsonl.gz", "wt", encoding="utf-8") as recs, \
            gzip.open(dest / "supervisions.jsonl.gz", "wt", encoding="utf-8") as sups, \
            gzip.open(dest / "cuts.jsonl.gz", "wt", encoding="utf-8") as cuts:
        for n, row in enumerate(build.clips()):
            rec = recording(row, sr, {"type": "file", "source": row["audio"]})
            _jsonl(recs, rec)
            _jsonl(sups, supervision(row))
            _jsonl(cuts, cut(row, rec))
            # Shar: the cut keeps a placeholder recording; the tar beside it carries the audio, in cut order
            if n % per_shard == 0:
                if shar_cuts is not None:
                    shar_cuts.close()
                shar_cuts = gzip.open(dest / "shar" / f"cuts.{n // per_shard:06d}.jsonl.gz", "wt", encoding="utf-8")
            placeholder = recording(row, sr, {"type": "shar", "source": ""})
            _jsonl(shar_cuts, cut(row, placeholder))
            audio.write([(f"{row['id']}.mp3", read_bytes(row["audio"])),
                         (f"{row['id']}.json", json.dumps(placeholder).encode("utf-8"))])
            progress.step()
    if shar_cuts is not None:
        shar_cuts.close()
    audio.close()
    return {"clips": progress.done, "shar_shards": len(audio.paths)}
