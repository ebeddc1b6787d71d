"""A small build made of synthetic ledger rows, committed through the real ledger API as writers do: many
shards, every kind of source (done, duplicate content, non-audio input, withdrawn, failed, no speaker
turn), clips in several languages with missing scores, empty texts and clips without audio. No model
runs; finalize, refilter and status read it like any build. Used by the streaming-publish tests."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from emilia_pipe.config import load_config
from emilia_pipe.dataset.build import Build
from emilia_pipe.dataset.layout import clip_audio, held_root, lang_folder, primary_language
from emilia_pipe.dataset.ledger import Ledger, part_name
from emilia_pipe.records import ClipId

LANGS = ("en", "en", "zh", "de", "fr", "ja", "xx")
RULES = ("too_short", "too_long", "no_speech")


def config(*overrides: str):
    return load_config(overrides=["output.sources_per_shard=3", *overrides])


def make_build(out: Path, n_sources: int = 40, seed: int = 0, first: int = 0, cfg=None, run: int = 0) -> None:
    """Sources ``first`` .. ``first + n_sources - 1`` committed in parts of up to 5 sources."""
    cfg = cfg or config()
    with Build(out, cfg, log=lambda m: None):
        pass
    ledger = Ledger(out)
    rng = np.random.default_rng(seed + first)
    per_shard = cfg.output.sources_per_shard
    held = held_root(out)
    indices = list(range(first, first + n_sources))
    ledger.append_plan(run, [{"index": i, "path": f"/data/raw/{i:05d}.mp3", "size": 1000 + i, "mtime_ns": 0, "run": run}
                             for i in indices])
    failures = []
    for start in range(0, n_sources, 5):
        sources, clips = [], []
        for i in indices[start:start + 5]:
            kind = ("fail" if i % 11 == 7 else "skip" if i % 13 == 5 else "dup" if i % 9 == 4 and i > 9
                    else "empty" if i % 10 == 3 else "done")
            if kind == "fail":
                failures.append({"index": i, "path": f"/data/raw/{i:05d}.mp3", "stage": "standardize",
                                 "error": f"cannot decode ({i})\nmore", "error_type": "DecodeError", "run": run,
                                 "time": float(i)})
                continue
            row = {"index": i, "status": "done", "source_id": f"{i:016x}", "path": f"/data/raw/{i:05d}.mp3",
                   "sha256": f"{(i if kind != 'dup' else i - 9):064x}", "duration": float(rng.uniform(60, 900)),
                   "orig_sample_rate": 44100, "orig_channels": 2, "codec": "mp3", "container": "mp3",
                   "gain_db": float(rng.uniform(-6, 6)), "separated": bool(i % 2), "run": run,
                   "timings": json.dumps({"standardize": 0.5 + i / 100, "diarize": 1.25, "segment": 0.125}),
                   "nonfinite_samples": 0}
            if kind == "skip":
                sources.append({"index": i, "status": "skipped", "path": row["path"], "note": "not an audio file",
                                "run": run})
                continue
            n = 0 if kind == "empty" else int(rng.integers(1, 12))
            b, s = divmod(i, per_shard)
            src_clips = []
            for w in range(n):
                lang = LANGS[int(rng.integers(0, len(LANGS)))]
                dur = float(np.round(rng.uniform(2.5, 31), 3))
                text = "" if rng.random() < 0.03 else "wörd ünï cöde " * max(1, int(dur * rng.uniform(0.5, 1.6)))
                chars = len(text.replace(" ", ""))
                scored = rng.random() > 0.05
                cid = ClipId(lang_folder(lang), b, s, w)
                has_audio = rng.random() > 0.1
                src_clips.append({
                    "source_index": i, "clip_index": w, "source_id": row["source_id"], "start": float(w * 40),
                    "end": float(w * 40) + dur, "speaker": f"SPEAKER_{int(rng.integers(0, 3)):02d}", "text": text,
                    "language": lang, "language_prob": float(np.round(rng.uniform(0.72, 1), 4)),
                    "avg_logprob": float(rng.uniform(-1.1, 0)), "no_speech_prob": float(rng.uniform(0, 0.55)),
                    "compression_ratio": float(rng.uniform(1, 2.5)), "temperature": 0.0,
                    "dnsmos_sig": float(rng.uniform(2, 4)) if scored else None,
                    "dnsmos_bak": float(rng.uniform(2, 4)) if scored else None,
                    "dnsmos_ovrl": float(np.round(rng.uniform(2.7, 4), 4)) if scored else None,
                    "chars": chars, "sec_per_char": round(dur / chars, 5) if chars else None,
                    "speech_prob": float(rng.uniform(0.45, 1)), "repeat_ngram_frac": float(rng.uniform(0, 0.3)),
                    "overlap_frac": float(rng.uniform(0, 0.3)), "id": str(cid),
                    "wav": f"{cid.shard_name}/{cid.source_name}/mp3/{cid}.mp3" if has_audio else None,
                    "duration": dur})
            main = primary_language(src_clips)
            for c in src_clips:
                c["speaker_id"] = f"{main}_B{b:05d}_S{s:05d}_P{int(c['speaker'][-2:]):02d}"
                if c["wav"]:
                    path = held / clip_audio(c["id"])
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(b"mp3")
            dropped = [{"start": 10.0 + k, "end": 11.5 + k, "speaker": "SPEAKER_00", "reason": RULES[k % 3],
                        "speech_s": 0.75 + k} for k in range(i % 3)]
            row.update({"clips": n, "primary_language": main, "speech_turn_seconds": row["duration"] * 0.8,
                        "turns": json.dumps([] if kind == "empty" else [{"start": 0.0, "end": 30.0, "speaker": "SPEAKER_00"}]),
                        "dropped_segments": json.dumps(dropped),
                        "speech_yield": json.dumps({"vad_speech_s": 100.0 + i, "speech_in_turns_s": 90.0 + i,
                                                    "speech_in_clips_s": 80.0 + i / 2}) if i % 17 else None})
            sources.append(row)
            clips += src_clips
        if sources:
            ledger.commit(part_name(run, "w0-test"), sources, clips)
    ledger.record_failures(part_name(run, "d"), failures)
    gone = [i for i in indices if i % 23 == 20]
    ledger.withdraw(run, [{"index": i, "reason": "changed", "run": run, "time": 1.0} for i in gone])


def outputs(out: Path) -> dict[str, str]:
    """Every published file (manifests and the build's top files) by path relative to OUT: its sha256."""
    import hashlib

    found = {}
    for p in sorted(Path(out).rglob("*")):
        rel = p.relative_to(out).as_posix()
        if p.is_file() and not rel.startswith(".emilia") and not rel.endswith(".mp3"):
            found[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return found


def published_audio(out: Path) -> list[str]:
    return sorted(p.relative_to(out).as_posix() for p in Path(out).rglob("*.mp3") if ".emilia" not in p.parts)
