"""Output: the released Emilia layout, written so that nothing is half-written or lost.

During a run, :class:`DatasetWriter.commit_source` is called once per finished source: it gives each
clip its Emilia id, encodes its MP3 and writes the source's full record (metadata, every clip with all
scores) to ``OUT/.emilia/sources/<source_id>.json``. Every file goes to a temporary name first and is
renamed into place, so a crash leaves either the old state or the new one.

:func:`finalize` (end of a run, and ``emilia-pipe refilter``) reads those records, applies the filter
config, and rewrites the manifests: ``OUT/<LANG>/<LANG>_B#####.jsonl`` (kept clips),
``rejected.jsonl`` (every rejected clip and dropped segment, with reasons), ``failures.jsonl``,
``sources.jsonl`` and ``summary.json``. Clip ids never change when thresholds do: a clip's MP3 is
written once (also for soft-rejected clips when ``output.keep_rejected_audio``), and refilter only moves
its line between manifests.

Id scheme (Emilia): ``EN_B00000_S00003_W000012`` = language EN, shard 0, source 3 of that shard, clip
12 of that source in that language. Speakers: ``EN_B00000_S00003_P01`` (diarized speaker 1 of the
source), unique across the build."""
from __future__ import annotations

import hashlib
import json
import os
import re
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

from emilia_pipe.audio import encode_mp3
from emilia_pipe.config import PipelineConfig
from emilia_pipe.filtering import apply_filters
from emilia_pipe.records import Clip, Failure, Source

WORK_DIR = ".emilia"
MANIFEST_FIELDS = ("id", "wav", "text", "duration", "speaker", "language", "dnsmos")


def write_atomic(path: Path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data.encode("utf-8") if isinstance(data, str) else data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_jsonl_atomic(path: Path, rows: Iterable[dict]) -> None:
    write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def lang_folder(language: str | None) -> str:
    code = re.sub(r"[^a-z]", "", (language or "xx").lower()) or "xx"
    return code.upper()


class DatasetWriter:
    def __init__(self, out_dir: str | Path, config: PipelineConfig):
        self.out = Path(out_dir)
        self.cfg = config
        self.work = self.out / WORK_DIR
        (self.work / "sources").mkdir(parents=True, exist_ok=True)
        (self.work / "failures").mkdir(parents=True, exist_ok=True)
        write_atomic(self.work / "config.json", json.dumps(config.model_dump(mode="json"), indent=2))
        # lang -> [shard index, clips in shard, sources in shard]; rebuilt from what is on disk
        self.shards: dict[str, list[int]] = {}
        for rec in self.committed_sources():
            for clip in rec["clips"]:
                m = re.match(r"([A-Z]+)_B(\d+)_S(\d+)_W", clip["id"] or "")
                if not m:
                    continue
                lang, b, s = m.group(1), int(m.group(2)), int(m.group(3))
                cur = self.shards.get(lang, [0, 0, 0])
                if b > cur[0]:
                    cur = [b, 0, 0]
                if b == cur[0]:
                    cur[1] += 1
                    cur[2] = max(cur[2], s + 1)
                self.shards[lang] = cur

    # --- during the run ------------------------------------------------------------------
    def committed_sources(self) -> list[dict]:
        return [json.loads(p.read_text()) for p in sorted((self.work / "sources").glob("*.json"))]

    def is_committed(self, source_id: str) -> bool:
        return (self.work / "sources" / f"{source_id}.json").exists()

    def _allocate(self, lang: str, n_clips: int) -> tuple[int, int]:
        b, count, sources = self.shards.get(lang, [0, 0, 0])
        if count and count + n_clips > self.cfg.output.shard_max_clips:
            b, count, sources = b + 1, 0, 0
        self.shards[lang] = [b, count + n_clips, sources + 1]
        return b, sources

    def commit_source(self, source: Source, clips: list[Clip]) -> dict:
        """Assign ids, write MP3s, then the source record (last, so its presence means 'done')."""
        by_lang: dict[str, list[Clip]] = defaultdict(list)
        for clip in sorted(clips, key=lambda c: c.index):
            by_lang[lang_folder(clip.language)].append(clip)
        # when rejected audio is not wanted, a provisional verdict (this source alone) decides which MP3s to write
        keep_all = self.cfg.output.keep_rejected_audio
        provisional = {} if keep_all else {
            c.index: r["kept"] for c, r in zip(clips, apply_filters([c.to_record() for c in clips], self.cfg.filter))}
        speakers = sorted({c.speaker for c in clips})
        for lang, lang_clips in by_lang.items():
            b, s = self._allocate(lang, len(lang_clips))
            prefix = f"{lang}_B{b:05d}_S{s:05d}"
            for w, clip in enumerate(lang_clips):
                clip.id = f"{prefix}_W{w:06d}"
                clip.speaker_id = f"{prefix}_P{speakers.index(clip.speaker):02d}"
                clip.wav = f"{lang}_B{b:05d}/{prefix}/mp3/{clip.id}.mp3"
                if keep_all or provisional[clip.index]:
                    mp3 = encode_mp3(clip.audio, source.sample_rate, self.cfg.output.mp3_bitrate_kbps)
                    write_atomic(self.out / lang / clip.wav, mp3)
                else:
                    clip.wav = None
        record = {
            "source": source.metadata(),
            "clips": [c.to_record() for c in sorted(clips, key=lambda c: c.index)],
        }
        write_atomic(self.work / "sources" / f"{source.source_id}.json", json.dumps(record, ensure_ascii=False))
        self.clear_failure(source.path)
        return record

    def _failure_file(self, path: str) -> Path:
        return self.work / "failures" / f"{hashlib.sha1(path.encode()).hexdigest()[:16]}.json"

    def record_failure(self, failure: Failure) -> None:
        write_atomic(self._failure_file(failure.path), json.dumps(failure.to_record(), ensure_ascii=False))

    def clear_failure(self, path: str) -> None:
        """A file that failed in an earlier run and went through now is no longer a failure."""
        self._failure_file(path).unlink(missing_ok=True)


# --- manifests and summary -------------------------------------------------------------------

def manifest_line(clip: dict, source: dict) -> dict:
    line = {
        "id": clip["id"],
        "wav": clip["wav"],
        "text": clip["text"],
        "duration": clip["duration"],
        "speaker": clip["speaker_id"],
        "language": clip["language"],
        "dnsmos": clip["dnsmos_ovrl"],
    }
    line.update({
        "start": clip["start"], "end": clip["end"],
        "source": source["path"], "source_sha256": source["sha256"],
        "language_prob": clip["language_prob"],
        "dnsmos_sig": clip["dnsmos_sig"], "dnsmos_bak": clip["dnsmos_bak"], "dnsmos_ovrl": clip["dnsmos_ovrl"],
        "chars": clip["chars"], "sec_per_char": clip["sec_per_char"],
        "avg_logprob": clip["avg_logprob"], "no_speech_prob": clip["no_speech_prob"],
        "compression_ratio": clip["compression_ratio"], "separated": source["separated"],
    })
    return line


def _hours(seconds: float) -> float:
    return round(seconds / 3600.0, 6)


def finalize(out_dir: str | Path, config: PipelineConfig, run_info: dict[str, Any] | None = None) -> dict:
    """(Re)write every manifest and the summary from the stored source records."""
    out = Path(out_dir)
    work = out / WORK_DIR
    sources = [json.loads(p.read_text()) for p in sorted((work / "sources").glob("*.json"))]
    failures = [json.loads(p.read_text()) for p in sorted((work / "failures").glob("*.json"))]
    records = [(clip, s["source"]) for s in sources for clip in s["clips"]]
    apply_filters([c for c, _ in records], config.filter)

    # kept clips, grouped into their shard manifests
    shards: dict[Path, list[dict]] = defaultdict(list)
    rejected: list[dict] = []
    for clip, src in records:
        if clip["kept"]:
            lang = clip["id"].split("_", 1)[0]
            shard = "_".join(clip["id"].split("_")[:2])
            shards[out / lang / f"{shard}.jsonl"].append(manifest_line(clip, src))
        else:
            row = manifest_line(clip, src)
            row.update(stage="filter", reasons=clip["reasons"])
            rejected.append(row)
    for src in (s["source"] for s in sources):
        for seg in src["dropped_segments"]:
            rejected.append({"id": None, "wav": None, "source": src["path"], "source_sha256": src["sha256"],
                             "start": seg["start"], "end": seg["end"], "duration": round(seg["end"] - seg["start"], 3),
                             "speaker": seg["speaker"], "stage": "segment", "reasons": [seg["reason"]]})
        if not src["turns"]:
            rejected.append({"id": None, "wav": None, "source": src["path"], "source_sha256": src["sha256"],
                             "start": 0.0, "end": src["duration"], "duration": src["duration"], "speaker": None,
                             "stage": "diarize", "reasons": ["no_speaker_turns"]})
    # remove manifests that a stricter refilter emptied
    for old in out.glob("*/*_B*.jsonl"):
        if old not in shards:
            old.unlink()
    for path, rows in shards.items():
        write_jsonl_atomic(path, sorted(rows, key=lambda r: r["id"]))
    write_jsonl_atomic(out / "rejected.jsonl", rejected)
    write_jsonl_atomic(out / "failures.jsonl", failures)
    write_jsonl_atomic(out / "sources.jsonl", [s["source"] for s in sources])

    summary = build_summary(sources, records, rejected, failures, config, run_info or {})
    write_atomic(out / "summary.json", json.dumps(summary, indent=2, ensure_ascii=False))
    return summary


def build_summary(sources, records, rejected, failures, config, run_info) -> dict:
    allowed = set(config.filter.languages)
    fcfg = config.filter
    seconds_in = sum(s["source"]["duration"] for s in sources)
    after_diar = sum(s["source"]["speech_turn_seconds"] for s in sources)
    clips = [c for c, _ in records]
    after_seg = sum(c["duration"] for c in clips)
    after_asr = sum(c["duration"] for c in clips
                    if c["language"] in allowed and (c["language_prob"] or 0) > fcfg.language_prob_min)
    kept = [c for c in clips if c["kept"]]
    by_lang: dict[str, dict] = defaultdict(lambda: {"clips": 0, "hours": 0.0})
    for c in kept:
        by_lang[c["language"]]["clips"] += 1
        by_lang[c["language"]]["hours"] += c["duration"] / 3600.0
    reasons: dict[str, dict] = defaultdict(lambda: {"count": 0, "hours": 0.0})
    for row in rejected:
        for r in row["reasons"]:
            reasons[r]["count"] += 1
            reasons[r]["hours"] += (row["duration"] or 0) / 3600.0
    failed_by_stage: dict[str, int] = defaultdict(int)
    for f in failures:
        failed_by_stage[f["stage"]] += 1
    stage_seconds: dict[str, float] = defaultdict(float)
    for s in sources:
        for k, v in s["source"]["timings"].items():
            stage_seconds[k] += v
    for k, v in run_info.get("batched_stage_seconds", {}).items():
        stage_seconds[k] += v
    summary = {
        "profile": config.profile,
        "separation": config.separation_enabled,
        "files": {"ok": len(sources), "failed": len(failures), "failed_by_stage": dict(failed_by_stage)},
        "hours": {
            "input": _hours(seconds_in),
            "after_diarization": _hours(after_diar),
            "after_segmentation": _hours(after_seg),
            "after_asr_language": _hours(after_asr),
            "kept": _hours(sum(c["duration"] for c in kept)),
        },
        "clips": {"total": len(clips), "kept": len(kept), "rejected": len(clips) - len(kept),
                  "kept_mean_duration_s": round(sum(c["duration"] for c in kept) / len(kept), 3) if kept else 0.0},
        "languages": {k: {"clips": v["clips"], "hours": round(v["hours"], 6)} for k, v in sorted(by_lang.items())},
        "drop_reasons": {k: {"count": v["count"], "hours": round(v["hours"], 6)} for k, v in sorted(reasons.items())},
        "filter": config.filter.model_dump(mode="json"),
        "stage_seconds": {k: round(v, 3) for k, v in stage_seconds.items()},
    }
    summary.update({k: v for k, v in run_info.items() if k != "batched_stage_seconds"})
    return summary


def format_summary(summary: dict) -> str:
    h = summary["hours"]
    base = h["input"] or 1e-12
    lines = [
        f"files: {summary['files']['ok']} ok, {summary['files']['failed']} failed"
        + (f" {summary['files']['failed_by_stage']}" if summary["files"]["failed"] else ""),
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
