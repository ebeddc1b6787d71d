"""Throughput and memory of the pipeline on sample_data/ (or any inputs).

Reports audio-hours per hour end to end and per stage (input audio hours divided by the seconds that
stage spent, i.e. one worker's throughput), plus peak memory of the whole process tree (Ray workers
included), sampled every 0.2 s. Writes a JSON report.

    python benchmarks/bench_pipeline.py                     # the default run (runner auto), lite profile
    python benchmarks/bench_pipeline.py --runner ray
    python benchmarks/bench_pipeline.py --set transcribe.batch_size=32 --out benchmarks/results/b32.json
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from emilia_pipe.config import load_config  # noqa: E402
from emilia_pipe.runners.choice import restart_tuned_if_local
from emilia_pipe.runners.driver import run_pipeline
from peak_memory import PeakMemory  # noqa: E402  (bench_long.py imports it from here)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("inputs", nargs="*", default=[str(ROOT / "sample_data")])
    ap.add_argument("--runner", choices=("auto", "local", "ray"), default="auto", help="auto = the default run")
    ap.add_argument("--profile", choices=("lite", "full"), default="lite")
    ap.add_argument("--set", action="append", default=[], dest="overrides")
    ap.add_argument("--out", default=None, help="JSON report (default benchmarks/results/pipeline-<runner>.json)")
    args = ap.parse_args()

    config = load_config(overrides=[f"run.runner={args.runner}", *args.overrides], profile=args.profile)
    restart_tuned_if_local(config, [str(Path(__file__).resolve()), *sys.argv[1:]])  # as emilia-pipe does
    work = Path(tempfile.mkdtemp(prefix="emilia-bench-"))
    mem = PeakMemory()
    mem.start()
    t0 = time.perf_counter()
    try:
        summary = run_pipeline(args.inputs, work / "out", config)
    finally:
        wall = time.perf_counter() - t0
        peak = mem.stop()
    shutil.rmtree(work, ignore_errors=True)

    hours_in = summary["hours"]["input"]
    per_stage = {
        stage: {"seconds": sec, "audio_hours_per_hour": round(hours_in * 3600 / sec, 2) if sec else None}
        for stage, sec in summary["stage_seconds"].items()
    }
    report = {
        "runner": args.runner,
        "profile": args.profile,
        "overrides": args.overrides,
        "audio_hours_in": hours_in,
        "wall_seconds": round(wall, 2),
        "end_to_end_audio_hours_per_hour": round(hours_in * 3600 / wall, 3),
        "real_time_factor": round(wall / (hours_in * 3600), 4),
        "per_stage": per_stage,
        "peak_rss_gib": round(peak / 2**30, 3),
        "cpu_seconds": round(mem.cpu_seconds, 1),
        "clips": summary["clips"],
        "hours": summary["hours"],
        "cpu_count": psutil.cpu_count(),
    }
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"pipeline-{args.runner}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"\n{'stage':<12}{'seconds':>10}{'audio-h/h':>12}")
    for stage, v in per_stage.items():
        print(f"{stage:<12}{v['seconds']:>10.1f}{(v['audio_hours_per_hour'] or 0):>12.1f}")
    print(f"{'end to end':<12}{wall:>10.1f}{report['end_to_end_audio_hours_per_hour']:>12.2f}")
    print(f"peak RSS (process tree): {report['peak_rss_gib']:.2f} GiB   CPU: {report['cpu_seconds']:.0f} s   report: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
