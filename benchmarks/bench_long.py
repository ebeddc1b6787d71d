"""Long inputs: wall time and peak memory (whole process tree) of one 10-minute, 1-hour and 3-hour file.

Each input is a conversation of real speech made from sample_data/ (LJSpeech, JFK and CMU Arctic turns,
alternating, 0.8 s apart: the test's builder), written as 16 kHz WAV, then run through the default
pipeline (lite profile) exactly as `emilia-pipe run` runs it. Files over long_input.chunk_s (30 min) go
the chunked, on-disk way; the 10-minute one stays in memory, for comparison.

    python benchmarks/bench_long.py                       # 600 s, 3600 s, 10800 s
    python benchmarks/bench_long.py --minutes 10 60       # a subset
    python benchmarks/bench_long.py --minutes 180 --set long_input.chunk_s=900
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]

from bench_pipeline import PeakMemory  # noqa: E402
from test_long_input import conversation  # noqa: E402

from emilia_pipe.config import load_config  # noqa: E402
from emilia_pipe.runners.choice import restart_tuned_if_local
from emilia_pipe.runners.driver import run_pipeline


def one(minutes: float, overrides: list[str], work: Path) -> dict:
    src = conversation(work / f"conversation-{minutes:g}min.wav", minutes * 60)
    config = load_config(overrides=overrides)
    mem = PeakMemory(from_now=True)  # several inputs run in this one process
    mem.start()
    t0 = time.perf_counter()
    try:
        summary = run_pipeline([str(src)], work / f"out-{minutes:g}", config, log=lambda m: None)
    finally:
        wall = time.perf_counter() - t0
        peak = mem.stop()
    hours = summary["hours"]["input"]
    row = {"minutes": minutes, "audio_hours": round(hours, 4), "chunked": minutes * 60 > config.long_input.chunk_s,
           "wall_seconds": round(wall, 1), "audio_hours_per_hour": round(hours * 3600 / wall, 2),
           "peak_rss_gib": round(peak / 2**30, 3), "cpu_seconds": round(mem.cpu_seconds, 1),
           "clips": summary["clips"], "stage_seconds": summary["stage_seconds"]}
    shutil.rmtree(work / f"out-{minutes:g}", ignore_errors=True)
    src.unlink()
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, nargs="+", default=[10, 60, 180])
    ap.add_argument("--set", action="append", default=[], dest="overrides")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "long-inputs.json"))
    args = ap.parse_args()
    config = load_config(overrides=args.overrides)
    restart_tuned_if_local(config, [str(Path(__file__).resolve()), *sys.argv[1:]])  # as emilia-pipe does
    work = Path(tempfile.mkdtemp(prefix="emilia-long-"))
    rows = []
    try:
        for minutes in args.minutes:
            rows.append(one(minutes, args.overrides, work))
            r = rows[-1]
            print(f"{minutes:>6g} min  wall {r['wall_seconds']:>8.1f} s  {r['audio_hours_per_hour']:>6.2f} audio-h/h  "
                  f"peak RSS {r['peak_rss_gib']:.2f} GiB  CPU {r['cpu_seconds']:.0f} s  chunked={r['chunked']}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"overrides": args.overrides, "runs": rows}, indent=2))
    print(f"report: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
