"""How much a short clip's DNSMOS OVRL depends on its start offset, and what score.short_clip_refine_margin costs.

Cuts short clips (3-9 s) from real speech: each input of 3-9 s whole, and 3.5-8.6 s cuts of longer ones. Each
clip is scored at 10 start shifts (0-9 ms); at every shift, OVRL at the published single offset and the mean
of the 4 offsets (0, 2.5, 5, 7.5 ms) that score.short_clip_offsets=4 takes. Reports how far the published score
is from the 4-offset mean, and for each margin: the share of clips the refinement would score at all 4
offsets, and the verdicts at filter.dnsmos_min that differ from always scoring all 4. Writes a JSON report.

    python benchmarks/dnsmos_offsets.py                       # sample_data/
    python benchmarks/dnsmos_offsets.py /data/speech --jobs 2 --out benchmarks/results/dnsmos_offsets-mine.json
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import functools
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from emilia_pipe.config import load_config  # noqa: E402
from emilia_pipe.media.audio import decode
from emilia_pipe.stages.score import SCORE_RATE, Scorer  # noqa: E402

AUDIO = {".wav", ".flac", ".ogg", ".mp3", ".m4a", ".opus"}
CUTS = [(1.0, 3.5), (5.0, 5.0), (12.0, 7.5), (20.0, 4.2), (30.0, 8.6)]  # (start, length) s in longer inputs
MARGINS = (0.1, 0.15, 0.2, 0.25, 0.3)


def short_clips(path: Path) -> list[tuple[str, np.ndarray]]:
    audio = decode(path, SCORE_RATE).samples
    seconds = audio.size / SCORE_RATE
    if seconds < 3:
        return []
    if seconds < 9:
        return [(path.name, audio)]
    return [(f"{path.name}@{a}", audio[int(a * SCORE_RATE): int((a + n) * SCORE_RATE)]) for a, n in CUTS if a + n <= seconds]


@functools.cache
def scorer() -> Scorer:
    """One Scorer per worker process (its models load once)."""
    return Scorer(load_config(overrides=["score.onnx_threads=1", "score.short_clip_offsets=4"]))


def shifted_scores(clip: tuple[str, np.ndarray]) -> dict:
    name, audio = clip
    published, four = [], []
    for shift in range(10):
        x = audio[shift * SCORE_RATE // 1000:]
        offsets, _ = scorer()._offsets(x)  # the stage's own 4 offsets (0, 2.5, 5, 7.5 ms)
        ovrl = [scorer().window_scores(x[d:], 1)[2] for d in offsets]
        published.append(ovrl[0])
        four.append(float(np.mean(ovrl)))
    return {"clip": name, "seconds": round(audio.size / SCORE_RATE, 2), "published": published, "four_offsets": four}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("inputs", nargs="*", default=[str(ROOT / "sample_data")])
    ap.add_argument("--threshold", type=float, default=3.0, help="filter.dnsmos_min")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/dnsmos_offsets.json"))
    args = ap.parse_args()
    files = sorted(p for i in args.inputs for p in ([Path(i)] if Path(i).is_file() else Path(i).rglob("*"))
                   if p.suffix.lower() in AUDIO)
    clips = [c for f in files for c in short_clips(f)]
    print(f"{len(clips)} short clips from {len(files)} files", file=sys.stderr)
    with cf.ProcessPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(shifted_scores, clips))
    pub, four = np.array([r["published"] for r in rows]), np.array([r["four_offsets"] for r in rows])
    gap = np.abs(pub - four)
    report = {
        "clips": len(rows), "shifts_per_clip": 10, "threshold": args.threshold,
        "published_vs_four_offsets": {"median": round(float(np.median(gap)), 3), "p99": round(float(np.percentile(gap, 99)), 3),
                                      "max": round(float(gap.max()), 3)},
        "spread_over_shifts_median": {"published": round(float(np.median(np.ptp(pub, 1))), 3),
                                      "four_offsets": round(float(np.median(np.ptp(four, 1))), 3)},
        "verdicts_published_vs_four_offsets_differ": int(((pub >= args.threshold) != (four >= args.threshold)).sum()),
        "margins": {},
        "rows": rows,
    }
    for m in MARGINS:
        near = np.abs(pub - args.threshold) < m
        report["margins"][str(m)] = {
            "refined_share": round(float(near.mean()), 3),
            "windows_per_short_clip": round(float(1 + 3 * near.mean()), 2),
            "verdicts_differing_from_four_offsets": int((((pub >= args.threshold) != (four >= args.threshold)) & ~near).sum()),
        }
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "rows"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
