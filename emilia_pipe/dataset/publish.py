"""Output: the released Emilia layout, written so that nothing is half-written, lost or duplicated.

Two halves:

- :class:`SourceWriter` runs where a source finishes (a Ray writer actor, or the local process): it
  names the source's clips from its planned place, encodes and writes their MP3s, and commits the
  source's records to the ledger in batches (:mod:`emilia_pipe.dataset.ledger`). Audio never travels further.
- :func:`finalize` (end of a run, and ``emilia-pipe refilter``) reads the ledger with pandas, applies
  the filter config to every clip at once and publishes, as one generation, the manifests
  ``OUT/<LANG>/<LANG>_B#####.jsonl`` (kept clips) with their MP3s beside them, ``rejected.jsonl`` (every
  rejected clip and dropped segment, with reasons; their MP3s stay in ``OUT/.emilia/audio/<LANG>/``),
  ``failures.jsonl``, ``skipped.jsonl``, ``sources.jsonl``, ``summary.json`` and ``datacard.html``.

Ids are fixed by the plan, not by the order in which work finishes: a source's plan index ``i`` gives
its shard ``B = i // output.sources_per_shard`` and its place ``S = i % sources_per_shard``; a clip's
``W`` is its index within the source. So ``EN_B00000_S00003_W000012`` = language EN, shard 0, source 3
of the shard, clip 12 of the source, whatever the number of workers or interruptions. Speakers are
``<L>_B#####_S#####_P##`` where ``L`` is the source's main language, so one speaker keeps one id across
the languages of its source."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import numpy as np

from emilia_pipe.config import PipelineConfig
from emilia_pipe.dataset.datacard import render as render_datacard
from emilia_pipe.dataset.generation import DROPPED, HELD, PUBLISHED, Stager, apply, current
from emilia_pipe.dataset.layout import manifest_name
from emilia_pipe.dataset.ledger import SOURCE_JSON_COLUMNS, Ledger, json_column_default
from emilia_pipe.dataset.planning import missing_report
from emilia_pipe.dataset.summary import build_summary
from emilia_pipe.records import ClipId

MANIFEST_COLUMNS = [  # (output key, clip-table column)
    ("id", "id"), ("wav", "wav"), ("text", "text"), ("duration", "duration"), ("speaker", "speaker_id"),
    ("language", "language"), ("dnsmos", "dnsmos_ovrl"), ("start", "start"), ("end", "end"),
    ("source", "path"), ("source_sha256", "sha256"), ("language_prob", "language_prob"),
    ("dnsmos_sig", "dnsmos_sig"), ("dnsmos_bak", "dnsmos_bak"), ("dnsmos_ovrl", "dnsmos_ovrl"),
    ("chars", "chars"), ("sec_per_char", "sec_per_char"), ("avg_logprob", "avg_logprob"),
    ("no_speech_prob", "no_speech_prob"), ("compression_ratio", "compression_ratio"), ("separated", "separated"),
    ("speech_prob", "speech_prob"), ("repeat_ngram_frac", "repeat_ngram_frac"), ("overlap_frac", "overlap_frac"),
]


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


AUDIO_NOT_KEPT = "audio_not_kept"  # kept by the filters, but its audio was not kept when it was written


def finalize(out_dir: str | Path, config: PipelineConfig, run_info: dict[str, Any] | None = None) -> dict:
    """(Re)write every manifest, report and the summary from the ledger, and move the clips' audio where
    their verdicts say, all as one generation (:mod:`emilia_pipe.dataset.generation`). The caller holds
    the build lock."""
    import pandas as pd

    from emilia_pipe.dataset.filtering import filter_frame

    out = Path(out_dir)
    ledger = Ledger(out)
    apply(out)  # a publish a kill interrupted is completed first
    previous = current(out)
    sources = ledger.sources()
    withdrawn = ledger.withdrawn()  # inputs changed or dropped: their clips leave the release
    gone_sources = sources["index"].isin(list(withdrawn))
    sources, withdrawn_sources = sources[~gone_sources], sources[gone_sources]
    done = sources[sources["status"] == "done"]
    # the same content under two names: the earliest place in the plan is published, the others skipped;
    # inputs that are not audio files (a folder named x.wav, a second name of one file) are skipped too
    dup = done["sha256"].duplicated(keep="first")
    skipped = pd.concat([sources[sources["status"].isin(["duplicate", "skipped"])], done[dup]])
    skipped = skipped.sort_values("index", kind="stable")  # whichever copy finished first
    if len(skipped):
        first_by_sha = done[~dup].set_index("sha256")["index"]
        skipped = skipped.assign(duplicate_of=skipped["sha256"].map(first_by_sha).astype("Int64"))
    published = done[~dup]

    all_clips = ledger.clips()
    # duplicates found only after both were written, and withdrawn sources: their audio goes
    dropped = all_clips[all_clips["source_index"].isin([*skipped["index"], *withdrawn_sources["index"]])
                        & all_clips["id"].notna() & all_clips["wav"].notna()]["id"]
    clips = all_clips[all_clips["source_index"].isin(published["index"])]
    meta = published.set_index("index")[["path", "sha256", "separated"]]
    clips = clips.join(meta, on="source_index")
    judged = filter_frame(clips, config.filter)
    # a clip the filters keep now but whose MP3 was never written (output.keep_rejected_audio=false and
    # rejected when it was written, e.g. before a refilter) cannot be published: say so instead
    no_audio = judged["kept"] & judged["wav"].isna()
    if no_audio.any():
        judged.loc[no_audio, "kept"] = False
        judged.loc[no_audio, "reasons"] = pd.Series([[AUDIO_NOT_KEPT]] * int(no_audio.sum()),
                                                    index=judged.index[no_audio])
    kept = judged[judged["kept"]].copy()
    rejected = judged[~judged["kept"]]
    stager = Stager(out, previous.number + 1)

    # kept clips, one manifest per language and shard, lines in id order
    words = config.transcribe.word_timestamps
    if len(kept):
        ids = kept["id"].map(ClipId.parse)
        kept["_lang"] = ids.map(lambda i: i.language)
        kept["_shard"] = ids.map(lambda i: i.shard)
        for (lang, shard), rows in kept.sort_values("id").groupby(["_lang", "_shard"], sort=True):
            stager.manifest(manifest_name(lang, int(shard)), _jsonl(_manifest_rows(rows, words)))
    stager.audio(kept["id"].tolist(), _audio_moves(previous.kept, judged, dropped.tolist()))

    # rejected.jsonl: filtered clips, then segments too short to be clips and files with no speaker turn
    parts = [_jsonl(_manifest_rows(rejected, words), {"stage": ["filter"] * len(rejected), "reasons": rejected["reasons"].tolist()})]
    source_rows = []
    for rec in published.to_dict("records"):
        src = _source_record(rec)
        source_rows.append(src)
        for seg in src["dropped_segments"]:
            parts.append(json.dumps({"id": None, "wav": None, "source": src["path"], "source_sha256": src["sha256"],
                                     "start": seg["start"], "end": seg["end"],
                                     "duration": round(seg["end"] - seg["start"], 3), "speaker": seg["speaker"],
                                     "stage": "segment", "reasons": [seg["reason"]]}, ensure_ascii=False) + "\n")
        if not src["turns"]:
            parts.append(json.dumps({"id": None, "wav": None, "source": src["path"], "source_sha256": src["sha256"],
                                     "start": 0.0, "end": src["duration"], "duration": src["duration"],
                                     "speaker": None, "stage": "diarize", "reasons": ["no_speaker_turns"]},
                                    ensure_ascii=False) + "\n")
    stager.file("rejected.jsonl", "".join(parts))
    failures = ledger.failures(done=[*sources["index"].tolist(), *withdrawn_sources["index"].tolist()])
    failure_rows = [{k: rec[k] for k in ("path", "stage", "error", "error_type")} for rec in failures.to_dict("records")]
    stager.file("failures.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in failure_rows))
    path_of = dict(zip(sources["index"].tolist(), sources["path"].tolist()))
    skipped_rows = [{"path": r["path"], "sha256": r["sha256"] if r["status"] != "skipped" else None,
                     "stage": "input" if r["status"] == "skipped" else "standardize",
                     "reason": r["note"] if r["status"] == "skipped" else "duplicate",
                     "duplicate_of": _path_of(path_of, r["duplicate_of"]) if r["status"] != "skipped" else None}
                    for r in skipped.to_dict("records")]
    stager.file("skipped.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in skipped_rows))
    stager.file("sources.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in source_rows))

    summary = build_summary(published, judged, rejected, source_rows, failures, len(skipped), config, run_info or {})
    away = missing_report(ledger)
    summary["inputs"] = {"missing": len(away["missing"]), "missing_published": len(away["published"]),
                         "withdrawn": {r: sum(1 for v in withdrawn.values() if v == r) for r in sorted(set(withdrawn.values()))}}
    stager.file("datacard.html", render_datacard(summary, judged, failures))
    stager.file("summary.json", json.dumps(summary, indent=2, ensure_ascii=False))
    stager.commit(previous)
    return summary


def _audio_moves(was_kept: Optional[set[str]], judged, dropped: list[str]) -> dict[str, str]:
    """Clip id -> where its MP3 goes: published (kept), held (rejected) or dropped (a duplicate source).
    Only the clips whose verdict changed since the last generation; every clip with audio when that
    generation's kept list is not known (a build made before generations)."""
    audible = judged[judged["wav"].notna()]
    kept = set(audible.loc[audible["kept"], "id"].tolist())
    if was_kept is None:
        moves = {i: (PUBLISHED if k else HELD) for i, k in zip(audible["id"].tolist(), audible["kept"].tolist())}
    else:
        moves = {i: PUBLISHED for i in kept - was_kept}
        moves.update({i: HELD for i in was_kept - kept})
    moves.update({i: DROPPED for i in dropped})
    return moves


def _path_of(path_of: dict, index) -> Optional[str]:
    import pandas as pd

    return None if index is None or pd.isna(index) else path_of.get(int(index))


def _source_record(rec: dict) -> dict:
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
