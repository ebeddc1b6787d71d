"""One bucket of a publish: the sources of whole shards (:func:`~emilia_pipe.dataset.ledger.bucket_width`)
judged and written out on their own, so a publish holds one bucket's rows at a time, however big the build.

Judging a bucket gives its shards' manifests, its pieces of ``rejected.jsonl`` and ``sources.jsonl``, its
kept clips and the aggregates the summary and the data card add up. All but the manifests are kept in
``OUT/.emilia/publish/buckets/<first source>-<digest>/``; the digest covers everything the verdicts depend
on (the bucket's ledger parts, which of its sources are published, the filter settings, any build-wide
bound), so the next publish reuses a bucket whose digest did not change and rewrites nothing of it."""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from emilia_pipe.dataset.datacard import card_part
from emilia_pipe.dataset.filtering import filter_frame
from emilia_pipe.dataset.generation import DROPPED, HELD, PUBLISHED, state_dir
from emilia_pipe.dataset.layout import UnsafePathError, check_manifest_name, manifest_name
from emilia_pipe.dataset.ledger import SOURCE_JSON_COLUMNS, Ledger, json_column_default
from emilia_pipe.dataset.summary import summary_part
from emilia_pipe.records import ClipId
from emilia_pipe.runtime import failpoints
from emilia_pipe.runtime.files import write_atomic

MANIFEST_COLUMNS = [  # (output key, clip-table column)
    ("id", "id"), ("wav", "wav"), ("text", "text"), ("duration", "duration"), ("speaker", "speaker_id"),
    ("language", "language"), ("dnsmos", "dnsmos_ovrl"), ("start", "start"), ("end", "end"),
    ("source", "path"), ("source_sha256", "sha256"), ("language_prob", "language_prob"),
    ("dnsmos_sig", "dnsmos_sig"), ("dnsmos_bak", "dnsmos_bak"), ("dnsmos_ovrl", "dnsmos_ovrl"),
    ("chars", "chars"), ("sec_per_char", "sec_per_char"), ("avg_logprob", "avg_logprob"),
    ("no_speech_prob", "no_speech_prob"), ("compression_ratio", "compression_ratio"), ("separated", "separated"),
    ("speech_prob", "speech_prob"), ("repeat_ngram_frac", "repeat_ngram_frac"), ("overlap_frac", "overlap_frac"),
]
AUDIO_NOT_KEPT = "audio_not_kept"  # kept by the filters, but its audio was not kept when it was written
PIECES = ("rejected_clips.jsonl", "rejected_other.jsonl", "sources.jsonl")  # rejected.jsonl: clips, then the rest
_DIR = re.compile(r"(\d{10})-([0-9a-f]{24})")
VERSION = "1"  # of what a bucket's stored pieces hold: a change makes every bucket judged again


@dataclass
class Bucket:
    """A bucket's inputs: sources ``lo``..``hi``, which of them are published (rows of the build-wide
    sources table) and which have their audio dropped (duplicates, withdrawn, not audio)."""

    lo: int
    hi: int
    published: pd.DataFrame  # index, path, sha256, separated
    dropped: list[int]

    def digest(self, part_names: list[str], settings: dict) -> str:
        """``part_names``: the ledger's sources parts (:meth:`Ledger.source_parts`)."""
        parts = [n for n in part_names if _spans(n, self.lo, self.hi)]
        text = json.dumps([VERSION, parts, self.published["index"].tolist(), self.dropped, settings], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:24]


def _spans(name: str, lo: int, hi: int) -> bool:
    """A sources part that may hold sources of ``lo``..``hi`` (a writer's part may hold any)."""
    m = re.fullmatch(r"bsources-(\d{10})-(\d{10})-.*", name)
    return m is None or (int(m[1]) <= hi and int(m[2]) >= lo)


def store(out: Path) -> Path:
    return state_dir(out) / "buckets"


def stored(out: Path, lo: int, digest: str) -> Optional[Path]:
    """The stored bucket for this digest, if it is there whole (a folder that cannot be read is judged
    again, never trusted)."""
    folder = store(out) / f"{lo:010d}-{digest}"
    return folder if _readable(folder) else None


def _readable(folder: Path) -> bool:
    try:
        if folder.is_symlink() or not folder.is_dir():
            return False
        data = aggregate(folder)
        pq.read_metadata(folder / "kept.parquet")
        for name in data["manifests"]:
            check_manifest_name(name)
        return all((folder / p).is_file() for p in PIECES)
    except (OSError, ValueError, TypeError, KeyError, pa.ArrowException, UnsafePathError):
        return False


def stored_folder(out: Path, name: object) -> Optional[Path]:
    """A stored bucket named by a generation's ``buckets.json`` (a name read from disk: checked first)."""
    if not isinstance(name, str) or not _DIR.fullmatch(name):
        return None
    folder = store(out) / name
    return folder if _readable(folder) else None


@dataclass
class Task:
    """A bucket to judge, as a worker process receives it. ``was``: the stored bucket of the last
    generation (its kept clips are what this bucket had published), or ``legacy_kept`` for a build
    published before buckets (None: not known, every clip's audio is moved)."""

    out: Path
    bucket: Bucket
    digest: str
    config: object
    bounds: Optional[dict]
    stage_dir: Path
    was: Optional[str] = None
    legacy_kept: Optional[set[str]] = None


def run_task(task: Task) -> tuple[str, list[str], list[str], list[str]]:
    """Judge one bucket: its manifests written into the staging folder; returns the stored folder's name,
    the manifests, and the audio moves (clip ids, places)."""
    staged, moved = [], ([], [])

    def stage(name: str, text: str) -> None:
        (task.stage_dir / name).parent.mkdir(parents=True, exist_ok=True)
        write_atomic(task.stage_dir / name, text, tmp_dir=task.stage_dir, sync_dir=False)
        staged.append(name)

    def moves(ids: list[str], places: list[str]) -> None:
        moved[0].extend(ids)
        moved[1].extend(places)

    old = stored_folder(task.out, task.was)
    was_kept = kept_ids(old) if old is not None else task.legacy_kept
    folder = judge(task.out, Ledger(task.out), task.bucket, task.config, task.bounds, task.digest, was_kept, stage,
                   moves)
    return folder.name, staged, *moved


def run_tasks(tasks: list[Task], workers: int):
    """:func:`run_task` over ``tasks``, in order, in ``workers`` processes (1: here)."""
    if workers <= 1 or len(tasks) <= 1:
        yield from map(run_task, tasks)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # spawn: the caller may hold threads (a run's executor pools); a fresh interpreter never inherits them
    # fault points stand for the publishing process, which passes "manifest" for each result
    with ProcessPoolExecutor(min(workers, len(tasks)), mp_context=multiprocessing.get_context("spawn"),
                             initializer=failpoints.disarm) as pool:
        yield from pool.map(run_task, tasks)


def judge(out: Path, ledger: Ledger, bucket: Bucket, config, bounds, digest: str, was_kept: Optional[set[str]],
          stage_manifest, moves) -> Path:
    """Judge one bucket: stage its manifests (``stage_manifest(name, text)``), hand its audio moves to
    ``moves(ids, places)`` and store its pieces; returns their folder."""
    span = range(bucket.lo, bucket.hi + 1)
    clips = ledger.clips(None, indices=span)
    gone = clips[clips["source_index"].isin(bucket.dropped) & clips["id"].notna() & clips["wav"].notna()]["id"]
    clips = clips[clips["source_index"].isin(bucket.published["index"])]
    clips = clips.join(bucket.published.set_index("index")[["path", "sha256", "separated"]], on="source_index")
    judged = filter_frame(clips, config.filter, bounds)
    # a clip the filters keep now but whose MP3 was never written (output.keep_rejected_audio=false and
    # rejected when it was written, e.g. before a refilter) cannot be published: say so instead
    no_audio = judged["kept"] & judged["wav"].isna()
    if no_audio.any():
        judged.loc[no_audio, "kept"] = False
        judged.loc[no_audio, "reasons"] = pd.Series([[AUDIO_NOT_KEPT]] * int(no_audio.sum()),
                                                    index=judged.index[no_audio])
    kept = judged[judged["kept"]].copy()
    rejected = judged[~judged["kept"]]
    words = config.transcribe.word_timestamps
    manifests = []
    if len(kept):  # one manifest per language and shard, lines in id order
        ids = kept["id"].map(ClipId.parse)
        kept["_lang"] = ids.map(lambda i: i.language)
        kept["_shard"] = ids.map(lambda i: i.shard)
        for (lang, shard), rows in kept.sort_values("id").groupby(["_lang", "_shard"], sort=True):
            name = manifest_name(lang, int(shard))
            stage_manifest(name, _jsonl(_manifest_rows(rows, words)))
            manifests.append(name)
    audible = judged[judged["wav"].notna()]
    kept_ids = audible.loc[audible["kept"], ["id", "dnsmos_ovrl"]].sort_values("id")
    moves(*_audio_moves(was_kept, audible, set(kept_ids["id"]), gone.tolist()))

    source_rows = []
    other = []
    for rec in ledger.sources(None, indices=bucket.published["index"].tolist()).to_dict("records"):
        src = source_record(rec)
        source_rows.append(src)
        other += _dropped_lines(src)
    folder = store(out) / f"{bucket.lo:010d}-{digest}"
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    rejected_lines = _jsonl(_manifest_rows(rejected, words), {"stage": ["filter"] * len(rejected),
                                                              "reasons": rejected["reasons"].tolist()})
    for name, text in zip(PIECES, (rejected_lines, "".join(other), _lines(source_rows))):
        (tmp / name).write_text(text, encoding="utf-8")
    pq.write_table(pa.table({"id": pa.array(kept_ids["id"].tolist(), pa.string()),
                             "dnsmos_ovrl": pa.array(kept_ids["dnsmos_ovrl"].astype("float64"))}), tmp / "kept.parquet")
    aggregate = {"manifests": manifests, "summary": summary_part(bucket.published, judged, rejected, source_rows,
                                                                 config), "card": card_part(judged)}
    write_atomic(tmp / "aggregate.json", json.dumps(aggregate), tmp_dir=tmp)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return folder


def kept_ids(folder: Path) -> Optional[set[str]]:
    """The clips a stored bucket published; None when its list cannot be read (then every clip's audio
    is moved where its verdict says, which is right whatever was published)."""
    try:
        return set(pq.read_table(folder / "kept.parquet", columns=["id"]).column("id").to_pylist())
    except (OSError, ValueError, pa.ArrowException):
        return None


def aggregate(folder: Path) -> dict:
    return json.loads((folder / "aggregate.json").read_text(encoding="utf-8"))


def sweep(out: Path, keep: set[str]) -> None:
    """Remove stored buckets the published generation does not use (``keep``: folder names)."""
    root = store(out)
    if not root.is_dir():
        return
    for d in root.iterdir():
        if d.name not in keep and (_DIR.fullmatch(d.name) or d.name.endswith(".tmp")) and not d.is_symlink():
            shutil.rmtree(d, ignore_errors=True)


def _audio_moves(was_kept: Optional[set[str]], audible, kept: set[str], dropped: list[str]):
    """Clip ids and where each MP3 goes: published (kept), held (rejected) or dropped (a duplicate source).
    Only the clips whose verdict changed since the last generation; every clip with audio when that
    generation's kept list is not known (a build made before generations)."""
    if was_kept is None:
        moves = {i: (PUBLISHED if k else HELD) for i, k in zip(audible["id"].tolist(), audible["kept"].tolist())}
    else:
        moves = {i: PUBLISHED for i in kept - was_kept}
        moves.update({i: HELD for i in was_kept - kept})
    moves.update({i: DROPPED for i in dropped})
    ids = sorted(moves)
    return ids, [moves[i] for i in ids]


def _column_values(series) -> list:
    """Plain Python values with None for missing (NaN / NA), for json.dumps."""
    values = series.astype(object).where(series.notna(), None).tolist()
    return [v.item() if isinstance(v, np.generic) else v for v in values]


def _jsonl(rows_by_column: dict[str, list], extra: Optional[dict[str, list]] = None) -> str:
    keys = list(rows_by_column)
    cols = [rows_by_column[k] for k in keys]
    if extra:
        keys += list(extra)
        cols += [extra[k] for k in extra]
    return "".join(json.dumps(dict(zip(keys, vals)), ensure_ascii=False) + "\n" for vals in zip(*cols))


def _lines(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def _manifest_rows(frame, words: bool = False) -> dict[str, list]:
    rows = {key: _column_values(frame[col]) for key, col in MANIFEST_COLUMNS}
    if words:  # only when asked for: default manifests keep their exact form
        rows["words"] = [_plain_words(v) for v in frame["words"].tolist()]
    return rows


def _plain_words(value) -> Optional[list]:
    """A Parquet list of word structs (read back as an array of dicts) as a JSON list."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    return [{"word": w["word"], "start": float(w["start"]), "end": float(w["end"])} for w in value]


def _dropped_lines(src: dict) -> list[str]:
    """rejected.jsonl lines of a source's segments too short to be clips, or of a file with no speaker turn."""
    lines = [json.dumps({"id": None, "wav": None, "source": src["path"], "source_sha256": src["sha256"],
                         "start": seg["start"], "end": seg["end"], "duration": round(seg["end"] - seg["start"], 3),
                         "speaker": seg["speaker"], "stage": "segment", "reasons": [seg["reason"]]},
                        ensure_ascii=False) + "\n" for seg in src["dropped_segments"]]
    if not src["turns"]:
        lines.append(json.dumps({"id": None, "wav": None, "source": src["path"], "source_sha256": src["sha256"],
                                 "start": 0.0, "end": src["duration"], "duration": src["duration"], "speaker": None,
                                 "stage": "diarize", "reasons": ["no_speaker_turns"]}, ensure_ascii=False) + "\n")
    return lines


def source_record(rec: dict) -> dict:
    """A sources.jsonl row from a ledger sources row."""
    out = {k: rec[k] for k in ("source_id", "path", "sha256", "duration", "orig_sample_rate", "orig_channels",
                               "codec", "container", "gain_db", "separated", "speech_turn_seconds")}
    nonfinite = rec.get("nonfinite_samples")
    out["nonfinite_samples"] = 0 if nonfinite is None or nonfinite != nonfinite else int(nonfinite)  # NaN: older part
    for key, older in (("audio_stream", 0), ("audio_streams", 1)):  # which audio stream of how many was used
        value = rec.get(key)
        out[key] = older if value is None or value != value else int(value)
    for k in SOURCE_JSON_COLUMNS:
        # a column an older part lacks reads back as NaN
        out[k] = json.loads(rec[k]) if isinstance(rec[k], str) and rec[k] else json_column_default(k)
    out["index"] = int(rec["index"])
    out["primary_language"] = rec["primary_language"]
    return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in out.items()}
