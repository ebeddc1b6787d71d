"""``summary.json`` and the printed summary of a build: files, hours after each stage, clips, languages,
drop reasons, where the speech went (speech yield) and stage times, all added up from the tables
:func:`emilia_pipe.dataset.publish.finalize` judges one bucket at a time: each bucket's share
(:func:`summary_part`) is stored with it and the shares are added up (:func:`add_parts`), so the summary
of a build never needs its clips in memory, and a bucket that did not change is not read again."""
from __future__ import annotations

import numpy as np

from emilia_pipe.records import CUTTING_RULES


def _hours(seconds: float) -> float:
    return round(float(seconds) / 3600.0, 6)


def summary_part(published, judged, rejected, source_rows, config) -> dict:
    """One bucket's share of the summary: counts and seconds that add up across buckets."""
    fcfg = config.filter
    kept = judged[judged["kept"]]
    dur = judged["duration"].astype("float64")
    lang_ok = judged["language"].astype(object).isin(set(fcfg.languages)) & (
        judged["language_prob"].astype("float64").fillna(0.0) > fcfg.language_prob_min)
    languages = {}
    if len(kept):
        for lang, v in kept.groupby(kept["language"].astype(object))["duration"].agg(["count", "sum"]).iterrows():
            languages[str(lang)] = [int(v["count"]), float(v["sum"])]
    reasons: dict[str, list] = {}
    for rs, d in zip(rejected["reasons"].tolist(), rejected["duration"].astype("float64").tolist()):
        for r in rs:
            e = reasons.setdefault(r, [0, 0.0])
            e[0] += 1
            e[1] += d / 3600.0
    stage_seconds: dict[str, float] = {}
    for src in source_rows:
        for seg in src["dropped_segments"]:
            e = reasons.setdefault(seg["reason"], [0, 0.0])
            e[0] += 1
            e[1] += (seg["end"] - seg["start"]) / 3600.0
        if not src["turns"]:
            e = reasons.setdefault("no_speaker_turns", [0, 0.0])
            e[0] += 1
            e[1] += src["duration"] / 3600.0
        for k, v in src["timings"].items():
            stage_seconds[k] = stage_seconds.get(k, 0.0) + v
    return {"files": len(source_rows),
            "input_s": float(np.nansum(np.array([s["duration"] for s in source_rows], dtype=np.float64))),
            "turns_s": float(np.nansum(np.array([s["speech_turn_seconds"] for s in source_rows], dtype=np.float64))),
            "clips": int(len(judged)), "kept": int(len(kept)), "segmented_s": float(dur.sum()),
            "language_ok_s": float(dur[lang_ok].sum()), "kept_s": float(kept["duration"].astype("float64").sum()),
            "languages": languages, "reasons": reasons, "stage_seconds": stage_seconds,
            "speech_yield": _yield_part(source_rows)}


def add_parts(parts) -> dict:
    """The buckets' shares added up (dictionaries keep the order in which their keys first appear)."""
    total: dict = {"files": 0, "input_s": 0.0, "turns_s": 0.0, "clips": 0, "kept": 0, "segmented_s": 0.0,
                   "language_ok_s": 0.0, "kept_s": 0.0, "languages": {}, "reasons": {}, "stage_seconds": {},
                   "speech_yield": {"totals": {"vad_speech_s": 0.0, "speech_in_turns_s": 0.0, "speech_in_clips_s": 0.0},
                                    "dropped": {rule: [0, 0.0] for rule in CUTTING_RULES}, "missing": 0}}
    for part in parts:
        for key in ("files", "input_s", "turns_s", "clips", "kept", "segmented_s", "language_ok_s", "kept_s"):
            total[key] += part[key]
        for key in ("languages", "reasons"):
            for k, (n, v) in part[key].items():
                e = total[key].setdefault(k, [0, 0.0])
                e[0] += n
                e[1] += v
        for k, v in part["stage_seconds"].items():
            total["stage_seconds"][k] = total["stage_seconds"].get(k, 0.0) + v
        y, ty = part["speech_yield"], total["speech_yield"]
        for k, v in y["totals"].items():
            ty["totals"][k] += v
        for k, (n, v) in y["dropped"].items():
            e = ty["dropped"].setdefault(k, [0, 0.0])
            e[0] += n
            e[1] += v
        ty["missing"] += y["missing"]
    return total


def build_summary(total: dict, failures, n_skipped, config, run_info) -> dict:
    """summary.json from the added-up bucket shares (:func:`add_parts`) and the build's failures."""
    failed_by_stage = failures["stage"].value_counts().to_dict() if len(failures) else {}
    stage_seconds = dict(total["stage_seconds"])
    for k, v in run_info.get("batched_stage_seconds", {}).items():
        stage_seconds[k] = stage_seconds.get(k, 0.0) + v
    n_kept = total["kept"]
    summary = {
        "profile": config.profile,
        "separation": config.separation_enabled,
        "files": {"ok": total["files"], "failed": int(len(failures)), "skipped": int(n_skipped),
                  "failed_by_stage": {str(k): int(v) for k, v in sorted(failed_by_stage.items())}},
        "hours": {
            "input": _hours(total["input_s"]),
            "after_diarization": _hours(total["turns_s"]),
            "after_segmentation": _hours(total["segmented_s"]),
            "after_asr_language": _hours(total["language_ok_s"]),
            "kept": _hours(total["kept_s"]),
        },
        "clips": {"total": total["clips"], "kept": n_kept, "rejected": total["clips"] - n_kept,
                  "kept_mean_duration_s": round(total["kept_s"] / n_kept, 3) if n_kept else 0.0},
        "languages": {k: {"clips": n, "hours": round(s / 3600.0, 6)} for k, (n, s) in sorted(total["languages"].items())},
        "drop_reasons": {k: {"count": n, "hours": round(h, 6)} for k, (n, h) in sorted(total["reasons"].items())},
        "speech_yield": _yield_figures(total["speech_yield"]),
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
    return _yield_figures(_yield_part(source_rows))


def _yield_part(source_rows: list[dict]) -> dict:
    totals = {"vad_speech_s": 0.0, "speech_in_turns_s": 0.0, "speech_in_clips_s": 0.0}
    dropped: dict[str, list] = {rule: [0, 0.0] for rule in CUTTING_RULES}
    missing = 0
    for src in source_rows:
        figures = src.get("speech_yield") or {}
        if not figures:
            missing += 1
            continue
        for key in totals:
            totals[key] += float(figures.get(key, 0.0))
        for seg in src["dropped_segments"]:
            rule = dropped.setdefault(seg["reason"], [0, 0.0])
            rule[0] += 1
            rule[1] += float(seg.get("speech_s") or 0.0)
    return {"totals": totals, "dropped": dropped, "missing": missing}


def _yield_figures(part: dict) -> dict:
    totals = part["totals"]
    in_turns = totals["speech_in_turns_s"]
    out = {k: round(v, 3) for k, v in totals.items()}
    out["in_clips_share"] = round(totals["speech_in_clips_s"] / in_turns, 4) if in_turns else None
    out["dropped"] = {k: {"segments": n, "speech_s": round(v, 3)} for k, (n, v) in part["dropped"].items()}
    out["sources_without_figures"] = part["missing"]
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
