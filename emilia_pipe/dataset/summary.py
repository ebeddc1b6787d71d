"""``summary.json`` and the printed summary of a build: files, hours after each stage, clips, languages,
drop reasons, where the speech went (speech yield) and stage times, all added up from the tables
:func:`emilia_pipe.dataset.publish.finalize` already holds (one row per source, one per clip)."""
from __future__ import annotations

from emilia_pipe.records import CUTTING_RULES


def _hours(seconds: float) -> float:
    return round(float(seconds) / 3600.0, 6)


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
        "speech_yield": speech_yield(source_rows),
        "filter": config.filter.model_dump(mode="json"),
        "stage_seconds": {k: round(v, 3) for k, v in stage_seconds.items()},
    }
    summary.update({k: v for k, v in run_info.items() if k != "batched_stage_seconds"})
    return summary


def speech_yield(source_rows: list[dict]) -> dict:
    """Seconds of VAD speech: all of it, inside speaker turns, inside clips (kept or rejected) and lost to
    each cutting rule, added up from each source's ``speech_yield`` and its dropped segments' ``speech_s``
    (written by the segment stage). Sources committed by a version that did not record them are counted
    apart, in ``sources_without_figures``."""
    totals = {"vad_speech_s": 0.0, "speech_in_turns_s": 0.0, "speech_in_clips_s": 0.0}
    dropped = {rule: {"segments": 0, "speech_s": 0.0} for rule in CUTTING_RULES}
    missing = 0
    for src in source_rows:
        figures = src.get("speech_yield") or {}
        if not figures:
            missing += 1
            continue
        for key in totals:
            totals[key] += float(figures.get(key, 0.0))
        for seg in src["dropped_segments"]:
            rule = dropped.setdefault(seg["reason"], {"segments": 0, "speech_s": 0.0})
            rule["segments"] += 1
            rule["speech_s"] += float(seg.get("speech_s") or 0.0)
    in_turns = totals["speech_in_turns_s"]
    out = {k: round(v, 3) for k, v in totals.items()}
    out["in_clips_share"] = round(totals["speech_in_clips_s"] / in_turns, 4) if in_turns else None
    out["dropped"] = {k: {"segments": v["segments"], "speech_s": round(v["speech_s"], 3)} for k, v in dropped.items()}
    out["sources_without_figures"] = missing
    return out


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
    if "speech_yield" in summary:
        lines += format_speech_yield(summary["speech_yield"])
    gone = summary.get("inputs") or {}
    if gone.get("missing") or gone.get("missing_published"):
        lines.append(f"inputs no longer on disk: {gone['missing']} not done (missing, not pending), "
                     f"{gone['missing_published']} done (their clips stay published; --drop-missing withdraws them)")
    if gone.get("withdrawn"):
        lines.append("withdrawn from the release: " + ", ".join(f"{k} {v}" for k, v in gone["withdrawn"].items()))
    if "audio_hours_per_hour" in summary:
        lines.append(f"throughput: {summary['audio_hours_per_hour']:.2f} audio-hours per hour (wall {summary.get('wall_seconds', 0):.1f} s)")
    return "\n".join(lines)


def format_speech_yield(y: dict) -> list[str]:
    """The speech-yield lines of the printed summary."""
    base = y["speech_in_turns_s"] or 1e-12
    lines = ["speech (VAD)                          s   % of speech in turns",
             f"  {'in speaker turns':<30}{y['speech_in_turns_s']:>10.1f}  {100.0:>6.1f} %",
             f"  {'in clips (kept+rejected)':<30}{y['speech_in_clips_s']:>10.1f}  {100 * y['speech_in_clips_s'] / base:>6.1f} %"]
    for rule, v in y["dropped"].items():
        lines.append(f"  {'dropped: ' + rule:<30}{v['speech_s']:>10.1f}  {100 * v['speech_s'] / base:>6.1f} %"
                     f"  ({v['segments']} segments)")
    lines.append(f"  {'outside speaker turns':<30}{y['vad_speech_s'] - y['speech_in_turns_s']:>10.1f}")
    if y.get("sources_without_figures"):
        lines.append(f"  ({y['sources_without_figures']} sources written by an older version have no speech figures)")
    return lines
