"""How often a clip edge cuts into a word, measured on sample_data's speech recordings.

Each recording up to 30 s is transcribed whole (one Whisper window) with word timestamps: those words are
the reference boundaries. Then the default stages cut it into clips, each clip is transcribed on its
own, and the report counts
- edges inside a word: a clip start or end more than ``--tolerance`` inside a whole-file word;
- edges in sound: the 20 ms of audio around a clip edge more than ``--above-floor-db`` over the
  recording's noise floor (10th percentile of its 20 ms frames), a model-free check;
- lost edge words: the whole-file word at a clip's edge (its first / last word lying mostly inside the
  clip) missing from the start / end of the clip's own transcript.
Word times from Whisper's cross-attention are approximate (tens of ms), so compare before/after on the same
machine and model rather than reading the counts as exact.

    python benchmarks/clip_edges.py                    # default settings
    python benchmarks/clip_edges.py --set segment.edge_pad_s=0   # the tight VAD edges, for comparison
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from emilia_pipe.config import load_config  # noqa: E402
from emilia_pipe.records import (
    ANALYSIS_RATE,
    Clip,  # noqa: E402
)
from emilia_pipe.stages.diarize import Diarizer  # noqa: E402
from emilia_pipe.stages.segment import Segmenter  # noqa: E402
from emilia_pipe.stages.standardize import Standardizer  # noqa: E402
from emilia_pipe.stages.transcribe import Transcriber  # noqa: E402

SPEECH = ["asr/*/*.wav", "asr/*/*.flac", "speech_untranscribed/*.ogg", "speech_untranscribed/*.wav"]


def norm(word: str) -> str:
    return re.sub(r"[^\w]", "", word.lower())


def frame_db(audio: np.ndarray, at_s: float | None = None) -> np.ndarray:
    """Level (dB) of 20 ms frames: of the whole recording, or of the one frame centred on ``at_s``."""
    n = int(0.02 * ANALYSIS_RATE)
    if at_s is not None:
        centre = int(at_s * ANALYSIS_RATE)
        audio = audio[max(centre - n // 2, 0): centre + n // 2]
    frames = audio[: audio.size // n * n].reshape(-1, n)
    return 10 * np.log10(np.mean(frames.astype(np.float64) ** 2, axis=1) + 1e-12)


def measure(overrides: list[str], tolerance: float = 0.03, above_floor_db: float = 15.0,
            patterns: list[str] = SPEECH) -> dict:
    config = load_config(overrides=["transcribe.word_timestamps=true", *overrides])
    standardize, diarize, segment = Standardizer(config), Diarizer(config), Segmenter(config)
    asr = Transcriber(config)
    files = sorted(p for pattern in patterns for p in (ROOT / "sample_data").glob(pattern))
    rows, edges, inside, loud, lost, checked = [], 0, 0, 0, 0, 0
    for path in files:
        source = segment.run(diarize.run(standardize.run(path)))
        if source.duration > 30 or not source.clips:
            continue
        whole = Clip(source.source_id, 0, 0.0, round(source.duration, 3), "all", audio_16k=np.asarray(source.audio_16k))
        asr.run([whole])
        words = [w for w in whole.words if norm(w["word"])]
        audio = np.asarray(source.audio_16k)
        floor = float(np.percentile(frame_db(audio), 10))
        asr.run(source.clips)
        for clip in source.clips:
            mine = [norm(w) for w in (clip.text or "").split() if norm(w)]
            row = {"file": path.name, "start": clip.start, "end": clip.end, "text": clip.text}
            for edge, name in ((clip.start, "start"), (clip.end, "end")):
                edges += 1
                hit = [w for w in words if w["start"] + tolerance < edge < w["end"] - tolerance]
                if hit:
                    inside += 1
                    row[f"{name}_inside"] = hit[0]["word"].strip()
                level = frame_db(audio, edge)
                if level.size and level[0] > floor + above_floor_db:
                    loud += 1
                    row[f"{name}_in_sound_db"] = round(float(level[0]) - floor, 1)
            # the whole-file words that lie mostly inside this clip: is its first / last one in the clip's text?
            within = [norm(w["word"]) for w in words
                      if min(w["end"], clip.end) - max(w["start"], clip.start) > 0.5 * (w["end"] - w["start"])]
            if within and mine and clip.language not in ("zh", "ja", "ko"):
                for name, ref, got in (("first", within[0], mine[:2]), ("last", within[-1], mine[-2:])):
                    checked += 1
                    if ref not in got:
                        lost += 1
                        row[f"lost_{name}"] = ref
            rows.append(row)
    return {"overrides": overrides, "tolerance_s": tolerance, "clips": len(rows), "edges": edges,
            "edges_inside_words": inside, "edges_in_sound": loud,
            "above_floor_db": above_floor_db, "edge_words_checked": checked, "edge_words_lost": lost, "rows": rows}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", action="append", default=[], dest="overrides")
    ap.add_argument("--tolerance", type=float, default=0.03)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    report = measure(args.overrides, args.tolerance)
    for row in report["rows"]:
        flags = {k: v for k, v in row.items() if k.endswith(("_inside", "_db")) or k.startswith("lost_")}
        print(f"{row['file'][:36]:36} {row['start']:7.3f} {row['end']:7.3f} {flags or ''}  {row['text'][:70]}")
    print(f"clips {report['clips']}: {report['edges_inside_words']} of {report['edges']} edges inside a word, "
          f"{report['edges_in_sound']} in sound, {report['edge_words_lost']} of {report['edge_words_checked']} edge words lost")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
