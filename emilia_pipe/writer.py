"""Output: the released Emilia layout, written so that nothing is half-written, lost or duplicated.

Two halves:

- :class:`SourceWriter` runs where a source finishes (a Ray writer actor, or the local process): it
  names the source's clips from its planned place, encodes and writes their MP3s, and commits the
  source's records to the ledger in batches (:mod:`emilia_pipe.ledger`). Audio never travels further.
- :func:`finalize` (end of a run, and ``emilia-pipe refilter``) reads the ledger with pandas, applies
  the filter config to every clip at once and rewrites the manifests: ``OUT/<LANG>/<LANG>_B#####.jsonl``
  (kept clips), ``rejected.jsonl`` (every rejected clip and dropped segment, with reasons),
  ``failures.jsonl``, ``skipped.jsonl``, ``sources.jsonl``, ``summary.json`` and ``datacard.html``.

Ids are fixed by the plan, not by the order in which work finishes: a source's plan index ``i`` gives
its shard ``B = i // output.sources_per_shard`` and its place ``S = i % sources_per_shard``; a clip's
``W`` is its index within the source. So ``EN_B00000_S00003_W000012`` = language EN, shard 0, source 3
of the shard, clip 12 of the source, whatever the number of workers or interruptions. Speakers are
``<L>_B#####_S#####_P##`` where ``L`` is the source's main language, so one speaker keeps one id across
the languages of its source."""
from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any, Optional

import numpy as np

from emilia_pipe import failpoints
from emilia_pipe.audio import encode_mp3, remove_spilled
from emilia_pipe.config import PipelineConfig
from emilia_pipe.datacard import render as render_datacard
from emilia_pipe.ledger import SOURCE_JSON_COLUMNS, STATE_DIR, Ledger, fsync_dir, write_atomic
from emilia_pipe.records import ClipAudio

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
        d = out / lang / f"{lang}_B{b:05d}" / f"{lang}_B{b:05d}_S{s:05d}"
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


class SourceWriter:
    """Names, encodes and commits finished sources; one per writer process. ``part`` prefixes its
    ledger parts (unique per run and writer), so writers never touch each other's files."""

    def __init__(self, out_dir: str | Path, config: PipelineConfig, part: str):
        self.out = Path(out_dir)
        self.cfg = config
        self.ledger = Ledger(self.out)
        self.ledger.ensure()
        self.part = part
        self.seq = 0
        self.sources: list[dict] = []
        self.clips: list[dict] = []
        self.dirty_dirs: set[Path] = set()
        self.last_commit = time.monotonic()

    def write(self, job: dict, audio: Optional[ClipAudio]) -> dict:
        """``job``: index, run, status, duplicate_of, source (metadata dict), clips (record dicts)."""
        index, clips = job["index"], [dict(c) for c in job["clips"]]
        b, s = place(index, self.cfg.output.sources_per_shard)
        for d in source_dirs(self.out, b, s):  # a redo after a crash: drop what the killed attempt wrote
            shutil.rmtree(d, ignore_errors=True)
        keep = self._provisional_keep(clips)
        main = primary_language(clips)
        speakers = sorted({c["speaker"] for c in clips})
        written = 0
        try:
            for c in clips:
                lang = lang_folder(c["language"])
                prefix = f"{lang}_B{b:05d}_S{s:05d}"
                c["id"] = f"{prefix}_W{c['index']:06d}"
                c["speaker_id"] = f"{main}_B{b:05d}_S{s:05d}_P{speakers.index(c['speaker']):02d}"
                c["wav"] = f"{lang}_B{b:05d}/{prefix}/mp3/{c['id']}.mp3" if keep[c["index"]] else None
                if c["wav"] and audio is not None:
                    path = self.out / lang / c["wav"]
                    mp3 = encode_mp3(audio.working[c["index"]], audio.sample_rate, self.cfg.output.mp3_bitrate_kbps)
                    write_atomic(path, mp3, tmp_dir=self.ledger.tmp, sync_dir=False)
                    self.dirty_dirs.add(path.parent)
                    written += 1
                    failpoints.hit("mp3")
                c["source_index"], c["clip_index"] = index, c.pop("index")
        except BaseException:  # e.g. disk full: no half-written source stays in the published tree
            for d in source_dirs(self.out, b, s):
                shutil.rmtree(d, ignore_errors=True)
            raise
        remove_spilled(self.ledger.tmp, index)  # a long source's audio on disk: every MP3 is written
        meta = job["source"]
        row = {**meta, "index": index, "status": job.get("status", "done"), "duplicate_of": job.get("duplicate_of"),
               "primary_language": main, "clips": len(clips), "run": job["run"]}
        for key in SOURCE_JSON_COLUMNS:
            row[key] = json.dumps(meta.get(key, [] if key != "timings" else {}), ensure_ascii=False)
        self.sources.append(row)
        self.clips.extend(clips)
        if (len(self.sources) >= self.cfg.run.commit_every_sources
                or time.monotonic() - self.last_commit >= self.cfg.run.commit_every_s):
            self.commit()
        return {"index": index, "clips": len(clips), "mp3": written}

    def _provisional_keep(self, clips: list[dict]) -> dict[int, bool]:
        if self.cfg.output.keep_rejected_audio or not clips:
            return {c["index"]: True for c in clips}
        from emilia_pipe.filtering import apply_filters

        judged = apply_filters([{**c, "source_id": "this"} for c in clips], self.cfg.filter)
        # with iqr_scope=language the outlier bounds come from the whole build, known only at finalize:
        # keep the audio of a clip that only that rule rejects here, as the final verdict may keep it
        cross_source = {"sec_per_char_outlier"} if self.cfg.filter.iqr_scope == "language" else set()
        return {c["index"]: j["kept"] or set(j["reasons"]) <= cross_source for c, j in zip(clips, judged)}

    def commit(self) -> int:
        """Make the MP3s' folder entries durable, then commit the buffered records (clips, then
        sources). Returns how many sources were committed."""
        n = len(self.sources)
        if n:
            for d in self.dirty_dirs:
                fsync_dir(d)
            self.ledger.commit(f"{self.part}-{self.seq:06d}", self.sources, self.clips)
            self.seq += 1
        self.sources, self.clips, self.dirty_dirs = [], [], set()
        self.last_commit = time.monotonic()
        return n


# --- manifests and summary -------------------------------------------------------------------

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


def _hours(seconds: float) -> float:
    return round(float(seconds) / 3600.0, 6)


AUDIO_NOT_KEPT = "audio_not_kept"  # kept by the filters, but its audio was not kept when it was written


def finalize(out_dir: str | Path, config: PipelineConfig, run_info: dict[str, Any] | None = None) -> dict:
    """(Re)write every manifest and the summary from the ledger (caller holds the build lock)."""
    import pandas as pd

    from emilia_pipe.filtering import filter_frame

    out = Path(out_dir)
    ledger = Ledger(out)
    tmp = ledger.tmp
    sources = ledger.sources()
    done = sources[sources["status"] == "done"]
    # the same content under two names: the earliest place in the plan is published, the others skipped;
    # inputs that are not audio files (a folder named x.wav, a second name of one file) are skipped too
    dup = done["sha256"].duplicated(keep="first")
    skipped = pd.concat([sources[sources["status"].isin(["duplicate", "skipped"])], done[dup]])
    if len(skipped):
        first_by_sha = done[~dup].set_index("sha256")["index"]
        skipped = skipped.assign(duplicate_of=skipped["sha256"].map(first_by_sha).astype("Int64"))
    published = done[~dup]
    per_shard = config.output.sources_per_shard
    for idx in skipped["index"].tolist():  # duplicates found only after both were written
        for d in source_dirs(out, *place(int(idx), per_shard)):
            shutil.rmtree(d, ignore_errors=True)

    clips = ledger.clips()
    clips = clips[clips["source_index"].isin(published["index"])]
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

    # kept clips, one manifest per language and shard, lines in id order
    words = config.transcribe.word_timestamps
    new_manifests: set[str] = set()
    if len(kept):
        kept["_lang"] = kept["id"].str.split("_").str[0]
        kept["_shard"] = kept["id"].str.split("_").str[:2].str.join("_")
        for (lang, shard), rows in kept.sort_values("id").groupby(["_lang", "_shard"], sort=True):
            rel = f"{lang}/{shard}.jsonl"
            write_atomic(out / rel, _jsonl(_manifest_rows(rows, words)), tmp_dir=tmp)
            new_manifests.add(rel)
            failpoints.hit("manifest")
    _remove_stale_manifests(out, new_manifests, tmp)

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
    write_atomic(out / "rejected.jsonl", "".join(parts), tmp_dir=tmp)
    failures = ledger.failures(done=sources["index"].tolist())
    failure_rows = [{k: rec[k] for k in ("path", "stage", "error", "error_type")} for rec in failures.to_dict("records")]
    write_atomic(out / "failures.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in failure_rows), tmp_dir=tmp)
    path_of = dict(zip(sources["index"].tolist(), sources["path"].tolist()))
    skipped_rows = [{"path": r["path"], "sha256": r["sha256"] if r["status"] != "skipped" else None,
                     "stage": "input" if r["status"] == "skipped" else "standardize",
                     "reason": r["note"] if r["status"] == "skipped" else "duplicate",
                     "duplicate_of": _path_of(path_of, r["duplicate_of"]) if r["status"] != "skipped" else None}
                    for r in skipped.to_dict("records")]
    write_atomic(out / "skipped.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in skipped_rows), tmp_dir=tmp)
    write_atomic(out / "sources.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in source_rows), tmp_dir=tmp)

    summary = build_summary(published, judged, rejected, source_rows, failures, len(skipped), config, run_info or {})
    write_atomic(out / "summary.json", json.dumps(summary, indent=2, ensure_ascii=False), tmp_dir=tmp)
    write_atomic(out / "datacard.html", render_datacard(summary, judged, failures), tmp_dir=tmp)
    return summary


def _path_of(path_of: dict, index) -> Optional[str]:
    import pandas as pd

    return None if index is None or pd.isna(index) else path_of.get(int(index))


def _source_record(rec: dict) -> dict:
    out = {k: rec[k] for k in ("source_id", "path", "sha256", "duration", "orig_sample_rate", "orig_channels",
                               "codec", "container", "gain_db", "separated", "speech_turn_seconds")}
    nonfinite = rec.get("nonfinite_samples")
    out["nonfinite_samples"] = 0 if nonfinite is None or nonfinite != nonfinite else int(nonfinite)  # NaN: older part
    for k in SOURCE_JSON_COLUMNS:
        # a column an older part lacks reads back as NaN
        out[k] = json.loads(rec[k]) if isinstance(rec[k], str) and rec[k] else ([] if k != "timings" else {})
    out["index"] = int(rec["index"])
    out["primary_language"] = rec["primary_language"]
    return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in out.items()}


def _remove_stale_manifests(out: Path, current: set[str], tmp: Path) -> None:
    """Delete manifests an earlier finalize wrote that are no longer wanted, and only those: the list
    of what we wrote is kept, so a user's own ``*_B*.jsonl`` in the output is never touched."""
    record = out / STATE_DIR / "manifests.json"
    previous = set(json.loads(record.read_text())) if record.exists() else set()
    for rel in sorted(previous - current):
        (out / rel).unlink(missing_ok=True)
    write_atomic(record, json.dumps(sorted(current)), tmp_dir=tmp)


def build_summary(published, judged, rejected, source_rows, failures, n_skipped, config, run_info) -> dict:
    fcfg = config.filter
    allowed = set(fcfg.languages)
    kept = judged[judged["kept"]]
    dur = judged["duration"].astype("float64")
    lang_ok = judged["language"].astype(object).isin(allowed) & (
        judged["language_prob"].astype("float64").fillna(0.0) > fcfg.language_prob_min)
    by_lang = kept.groupby(kept["language"].astype(object))["duration"].agg(["count", "sum"]) if len(kept) else None
    reasons: dict[str, dict] = {}
    for rs, d in zip(rejected["reasons"].tolist(), rejected["duration"].astype("float64").tolist()):
        for r in rs:
            e = reasons.setdefault(r, {"count": 0, "hours": 0.0})
            e["count"] += 1
            e["hours"] += d / 3600.0
    for src in source_rows:
        for seg in src["dropped_segments"]:
            e = reasons.setdefault(seg["reason"], {"count": 0, "hours": 0.0})
            e["count"] += 1
            e["hours"] += (seg["end"] - seg["start"]) / 3600.0
        if not src["turns"]:
            e = reasons.setdefault("no_speaker_turns", {"count": 0, "hours": 0.0})
            e["count"] += 1
            e["hours"] += src["duration"] / 3600.0
    failed_by_stage = failures["stage"].value_counts().to_dict() if len(failures) else {}
    stage_seconds: dict[str, float] = {}
    for src in source_rows:
        for k, v in src["timings"].items():
            stage_seconds[k] = stage_seconds.get(k, 0.0) + v
    for k, v in run_info.get("batched_stage_seconds", {}).items():
        stage_seconds[k] = stage_seconds.get(k, 0.0) + v
    n_kept = int(len(kept))
    summary = {
        "profile": config.profile,
        "separation": config.separation_enabled,
        "files": {"ok": int(len(published)), "failed": int(len(failures)), "skipped": int(n_skipped),
                  "failed_by_stage": {str(k): int(v) for k, v in sorted(failed_by_stage.items())}},
        "hours": {
            "input": _hours(published["duration"].sum()),
            "after_diarization": _hours(published["speech_turn_seconds"].sum()),
            "after_segmentation": _hours(dur.sum()),
            "after_asr_language": _hours(dur[lang_ok].sum()),
            "kept": _hours(kept["duration"].astype("float64").sum()),
        },
        "clips": {"total": int(len(judged)), "kept": n_kept, "rejected": int(len(judged)) - n_kept,
                  "kept_mean_duration_s": round(float(kept["duration"].astype("float64").mean()), 3) if n_kept else 0.0},
        "languages": {str(k): {"clips": int(v["count"]), "hours": round(float(v["sum"]) / 3600.0, 6)}
                      for k, v in (by_lang.sort_index().iterrows() if by_lang is not None else [])},
        "drop_reasons": {k: {"count": v["count"], "hours": round(v["hours"], 6)} for k, v in sorted(reasons.items())},
        "filter": config.filter.model_dump(mode="json"),
        "stage_seconds": {k: round(v, 3) for k, v in stage_seconds.items()},
    }
    summary.update({k: v for k, v in run_info.items() if k != "batched_stage_seconds"})
    return summary


def format_summary(summary: dict) -> str:
    h = summary["hours"]
    base = h["input"] or 1e-12
    f = summary["files"]
    lines = [
        f"files: {f['ok']} ok, {f['failed']} failed, {f.get('skipped', 0)} skipped (duplicates, non-audio inputs)"
        + (f" {f['failed_by_stage']}" if f["failed"] else ""),
        f"separation: {'on' if summary['separation'] else 'OFF (no separation model in this profile)'}",
        "hours                     h        % of input",
    ]
    for key in ("input", "after_diarization", "after_segmentation", "after_asr_language", "kept"):
        lines.append(f"  {key:<22}{h[key]:>10.4f}  {100 * h[key] / base:>6.1f} %")
    c = summary["clips"]
    lines.append(f"clips: {c['total']} total, {c['kept']} kept, {c['rejected']} rejected")
    for lang, v in summary["languages"].items():
        lines.append(f"  {lang}: {v['clips']} clips, {v['hours']:.4f} h")
    if summary["drop_reasons"]:
        lines.append("drop reasons: " + ", ".join(f"{k} {v['count']}" for k, v in summary["drop_reasons"].items()))
    if "audio_hours_per_hour" in summary:
        lines.append(f"throughput: {summary['audio_hours_per_hour']:.2f} audio-hours per hour (wall {summary.get('wall_seconds', 0):.1f} s)")
    return "\n".join(lines)
