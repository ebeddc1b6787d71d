"""Ledger at scale: `refilter` and `status` on N synthetic clip records from M sources, a run that adds one
source to that build (`incremental`), and the driver's peak memory while it runs M sources.

The orchestration figures use stand-in stages (no model: each "file" yields two silent clips with fixed
scores) and the real driver, scheduler, writer, ledger and publish; they measure bookkeeping, not models.

    python benchmarks/bench_ledger.py [--clips 1000000] [--sources 100000] [--out FILE]

Writes benchmarks/results/ledger.json."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


RUN_OVERRIDES = ["run.runner=local", "transcribe.batch_size=64", "run.max_files_in_flight=64", "run.max_open_sources=256",
                 "run.commit_every_sources=1000", "output.sources_per_shard=1000"]


def make_ledger(out: Path, n_clips: int, n_sources: int, per_part: int = 64) -> None:
    """A build folder whose ledger holds ``n_clips`` clips of ``n_sources`` sources, committed in parts as
    writers do and compacted as a run does (every 64 parts, and at its end)."""
    import numpy as np
    import pyarrow as pa

    from emilia_pipe.config import load_config
    from emilia_pipe.dataset.build import Build
    from emilia_pipe.dataset.compaction import compact
    from emilia_pipe.dataset.ledger import SOURCE_SCHEMA, Ledger, bucket_width, clip_schema
    from emilia_pipe.runtime.files import write_table_atomic

    cfg = load_config(overrides=RUN_OVERRIDES)
    with Build(out, cfg, log=lambda m: None):
        pass
    ledger = Ledger(out)
    clips_per_source = max(1, n_clips // n_sources)
    width = bucket_width(cfg.output.sources_per_shard)
    rng = np.random.default_rng(0)
    langs = np.array(["en", "zh", "de", "fr", "ja", "ko", "es"])
    schema = clip_schema()
    for part, first in enumerate(range(0, n_sources, per_part)):
        idx = np.arange(first, min(first + per_part, n_sources))
        n = len(idx) * clips_per_source
        src = np.repeat(idx, clips_per_source)
        w = np.tile(np.arange(clips_per_source), len(idx))
        lang = langs[rng.integers(0, len(langs), n)]
        dur = rng.uniform(3, 30, n).round(3)
        chars = rng.integers(5, 300, n)
        b, s = src // 1000, src % 1000
        ids = [f"{l.upper()}_B{bb:05d}_S{ss:05d}_W{ww:06d}" for l, bb, ss, ww in zip(lang, b, s, w)]
        cols = {
            "source_index": src, "clip_index": w, "source_id": [f"{i:016x}" for i in src],
            "start": np.zeros(n), "end": dur, "speaker": ["SPEAKER_00"] * n, "text": ["some words " * 3] * n,
            "language": lang, "language_prob": rng.uniform(0.5, 1, n).round(4), "avg_logprob": rng.uniform(-1, 0, n),
            "no_speech_prob": rng.uniform(0, 0.2, n), "compression_ratio": rng.uniform(1, 2.5, n),
            "temperature": np.zeros(n), "dnsmos_sig": rng.uniform(2, 4, n), "dnsmos_bak": rng.uniform(2, 4, n),
            "dnsmos_ovrl": rng.uniform(2, 4, n).round(4), "chars": chars, "sec_per_char": (dur / chars).round(5),
            "id": ids, "wav": [f"{i.split('_')[0]}_B{i.split('_')[1][1:]}/{i[:-8]}/mp3/{i}.mp3" for i in ids],
            "speaker_id": [i[:-8] + "_P00" for i in ids], "duration": dur,
        }
        table = pa.Table.from_pydict({f.name: cols.get(f.name, [None] * n) for f in schema}, schema=schema)
        write_table_atomic(ledger.dir / f"clips-000000-w0-{part:06d}.parquet", table, ledger.tmp)
        srows = {f.name: [None] * len(idx) for f in SOURCE_SCHEMA}
        srows.update({"index": idx, "status": ["done"] * len(idx), "source_id": [f"{i:016x}" for i in idx],
                      "path": [f"/data/raw/{i:07d}.mp3" for i in idx], "sha256": [f"{i:064x}" for i in idx],
                      "duration": np.full(len(idx), 1800.0), "speech_turn_seconds": np.full(len(idx), 1500.0),
                      "separated": [False] * len(idx), "primary_language": ["EN"] * len(idx),
                      "clips": np.full(len(idx), clips_per_source), "turns": ["[]"] * len(idx),
                      "dropped_segments": ["[]"] * len(idx), "timings": ["{}"] * len(idx), "run": np.zeros(len(idx))})
        write_table_atomic(ledger.dir / f"sources-000000-w0-{part:06d}.parquet",
                           pa.Table.from_pydict(srows, schema=SOURCE_SCHEMA), ledger.tmp)
        if part % 64 == 63:  # as the driver does while writers commit
            compact(ledger, width, min_parts=64, final=False)
    plan = {"index": np.arange(n_sources), "path": [f"/data/raw/{i:07d}.mp3" for i in range(n_sources)],
            "size": np.full(n_sources, 30_000_000), "mtime_ns": np.zeros(n_sources, dtype=np.int64),
            "run": np.zeros(n_sources, dtype=np.int64)}
    from emilia_pipe.dataset.ledger import PLAN_SCHEMA

    plan.update({f.name: np.full(n_sources, -1, dtype=np.int64) for f in PLAN_SCHEMA if f.name not in plan})
    write_table_atomic(ledger.dir / "plan-000000.parquet", pa.Table.from_pydict(plan, schema=PLAN_SCHEMA), ledger.tmp)
    compact(ledger, width)


# peak RSS of this process (kB): VmHWM, not ru_maxrss, which a child inherits from the benchmark's own peak
HWM = "hwm = [int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')][0]"


def timed_cli(*args) -> dict:
    """Run the CLI in a fresh process; wall time and that process's peak RSS."""
    code = ("import resource, sys, time; from emilia_pipe.cli import main; t=time.perf_counter(); rc=main(sys.argv[1:]); "
            f"{HWM}; print('BENCH', rc, time.perf_counter()-t, hwm, "
            "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, cwd=ROOT)
    line = [l for l in proc.stderr.splitlines() if l.startswith("BENCH")][-1].split()
    # worker processes (the publish's): the largest one's peak, an upper bound (a child starts from its parent's)
    return {"exit": int(line[1]), "seconds": round(float(line[2]), 2), "peak_rss_mib": round(int(line[3]) / 1024, 1),
            "worker_peak_rss_mib": round(int(line[4]) / 1024, 1)}


def driver_memory(n_sources: int, work: Path, out: Path | None = None) -> dict:
    """Peak RSS of the driver process while it plans, schedules, writes and finalizes n_sources (into
    ``out``: a new build, or an existing one they are added to)."""
    out = out or work / "out"
    code = f"""
import resource, sys, time
sys.path.insert(0, {str(ROOT)!r}); sys.path.insert(0, {str(ROOT / 'tests')!r})
from pathlib import Path
from emilia_pipe.config import load_config
from emilia_pipe.runners.driver import run_pipeline
from test_driver import ScriptedExecutor

class NoAudio(ScriptedExecutor):  # the writer's bookkeeping only: no MP3 encoding in this figure
    def get(self, handle):
        if handle.kind == "write":
            self.live_writes.discard(handle)  # (the stand-in's own record of writes in flight)
            return self.writer.write(handle.value[0], None)
        return super().get(handle)
inp = Path({str(work)!r}) / "in"
inp.mkdir(parents=True, exist_ok=True)
for i in range({n_sources}):
    (inp / f"f{{i:07d}}.wav").write_bytes(b"x")
cfg = load_config(overrides={RUN_OVERRIDES!r})
t = time.perf_counter()
s = run_pipeline([inp], Path({str(out)!r}), cfg, allow_config_change=True, executor_factory=lambda c, st, o, r: NoAudio(c, o, r),
                 log=lambda m: None)
{HWM}
print("BENCH", time.perf_counter() - t, hwm, s["files"]["ok"], s["clips"]["total"], file=sys.stderr)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    line = [l for l in proc.stderr.splitlines() if l.startswith("BENCH")]
    if not line:
        raise RuntimeError(proc.stderr[-3000:])
    _, secs, rss, ok, clips = line[-1].split()
    return {"sources": int(ok), "clips": int(clips), "seconds": round(float(secs), 1), "driver_peak_rss_mib": round(int(rss) / 1024, 1),
            "stand_in_stages": True}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", type=int, default=1_000_000)
    ap.add_argument("--sources", type=int, default=100_000)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/ledger.json"))
    ap.add_argument("--tmp", default=None, help="folder for the builds (default: the system's temporary folder)")
    ap.add_argument("--only", choices=["ledger", "driver"], default=None,
                    help="run one half; the other half's figures already in --out are kept")
    args = ap.parse_args()
    result = {"machine": f"{__import__('os').cpu_count()} cores"}
    if args.only and Path(args.out).exists():
        result = json.loads(Path(args.out).read_text())
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        if args.only == "driver":
            result["driver"] = driver_memory(args.sources, Path(tmp) / "drv")
            Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
            print(json.dumps(result, indent=2))
            return
        out = Path(tmp) / "ledger-build"
        t = time.perf_counter()
        make_ledger(out, args.clips, args.sources)
        result["ledger"] = {"clips": args.clips, "sources": args.sources,
                            "build_seconds": round(time.perf_counter() - t, 1)}
        # the publish that ends the run which made them: a refilter then works on a published build
        result["publish"] = timed_cli("refilter", out)
        result["refilter"] = timed_cli("refilter", out, "--set", "filter.dnsmos_min=3.1")
        result["refilter_again"] = timed_cli("refilter", out, "--set", "filter.dnsmos_min=3.0")
        result["refilter_unchanged"] = timed_cli("refilter", out, "--set", "filter.dnsmos_min=3.0")
        result["status"] = timed_cli("status", out)
        result["ledger"]["files_in_ledger"] = len(list((out / ".emilia/ledger").iterdir()))
        print(json.dumps(result, indent=2), flush=True)
        # a run adding one source to the N-clip build (its own planning, scheduling, commit and publish)
        result["incremental"] = driver_memory(1, Path(tmp) / "one", out)
        result["ledger"]["files_after_incremental"] = len(list((out / ".emilia/ledger").iterdir()))
        print(json.dumps(result, indent=2), flush=True)
        if args.only != "ledger":
            result["driver"] = driver_memory(args.sources, Path(tmp) / "drv")
    print(json.dumps(result, indent=2))
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
