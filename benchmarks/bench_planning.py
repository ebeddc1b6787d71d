"""Planning at scale: finding and placing 1,000,000 local paths given in an ``@list``, and 100,000 remote
objects on a filesystem whose every metadata call waits (an fsspec memory filesystem with an artificial
latency, default 2 ms a call, standing in for S3 or GCS).

Each scenario runs in its own process, so its peak RSS is its own; it reports the seconds of each phase
and the process's peak RSS after it (cumulative) over the RSS after imports:
- ``expand``: :func:`expand_inputs` (list parsing, stats, symlink and same-file checks; remote listings)
- ``place``: :func:`place_inputs` into an empty build (each input's identity: a stat, or an ``info`` call)
- ``append_plan``: the plan rows written (the ledger's code, shown for scale)
- ``resume``: :func:`place_inputs` again with every input planned (what every later run does)

The local files are empty files on disk (planning stats them; it never opens them), made once in
``--data`` (default /tmp/emilia-bench-planning) and reused.

    python benchmarks/bench_planning.py [--local 1000000] [--remote 100000] [--remote-list 10000]
        [--latency-ms 2] [--label after]

Writes (merges into) benchmarks/results/planning.json under ``--label``. Run the code under test with
PYTHONPATH pointing at its tree (the "before" figures came from the parent commit's tree)."""
from __future__ import annotations

import argparse
import functools
import inspect
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "planning.json"


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_local(data: Path, n: int) -> Path:
    """``n`` empty .wav files in folders of 1,000, and a list file naming them (absolute paths)."""
    listing = data / f"local-{n}.txt"
    if listing.exists():
        return listing
    root = data / "files"
    with open(str(listing) + ".tmp", "w") as fh:
        for i in range(n):
            folder = root / f"{i // 1000:05d}"
            if i % 1000 == 0:
                folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{i:07d}.wav"
            if not path.exists():
                path.touch()
            fh.write(f"{path}\n")
    os.replace(str(listing) + ".tmp", listing)
    return listing


def slow_memory_fs():
    """A memory filesystem (protocol ``slowmem``, its own store) whose ``info`` and listings wait
    ``latency_s`` each (set after the store is filled), and whose ``info`` of a file is a dictionary look-up
    (fsspec's own scans the whole store for every call)."""
    import fsspec
    from fsspec.implementations.memory import MemoryFileSystem

    class SlowMemory(MemoryFileSystem):
        protocol = "slowmem"
        store: dict = {}
        pseudo_dirs = [""]
        latency_s = 0.0

        @classmethod
        def _strip_protocol(cls, path):
            return super()._strip_protocol(str(path).removeprefix("slowmem://"))

        def info(self, path, **kwargs):
            time.sleep(self.latency_s)
            path = self._strip_protocol(path)
            if path in self.store:
                f = self.store[path]
                return {"name": path, "size": f.size, "type": "file", "created": f.created}
            return super().info(path, **kwargs)

        def ls(self, path, detail=True, **kwargs):
            time.sleep(self.latency_s)
            return super().ls(path, detail=detail, **kwargs)

    fsspec.register_implementation("slowmem", SlowMemory, clobber=True)
    return SlowMemory


def _place(ledger, paths, metadata_threads):
    from emilia_pipe.dataset.planning import place_inputs

    kw = {}
    if "metadata_threads" in inspect.signature(place_inputs).parameters:
        kw["metadata_threads"] = metadata_threads
    return place_inputs(ledger, paths, 0, lambda m: None, **kw)


def _expand(items, metadata_threads):
    from emilia_pipe.media.inputs import expand_inputs

    kw = {}
    if "metadata_threads" in inspect.signature(expand_inputs).parameters:
        kw["metadata_threads"] = metadata_threads
    return expand_inputs(items, **kw)


def scenario(kind: str, n: int, data: Path, latency_ms: float, threads: int) -> dict:
    """One scenario in this process: seconds per phase and peak RSS over the RSS after imports."""
    import emilia_pipe.dataset.planning  # noqa: F401 - imports before the baseline
    from emilia_pipe.dataset.ledger import Ledger

    if kind == "local":
        items = ["@" + str(make_local(data, n))]
    else:
        from fsspec.implementations.memory import MemoryFile

        cls = slow_memory_fs()
        for i in range(n):
            name = f"/corpus/{i // 1000:03d}/{i:07d}.wav"
            cls.store[name] = MemoryFile(None, name, b"RIFF")
        for d in range((n + 999) // 1000):
            cls.pseudo_dirs.append(f"/corpus/{d:03d}")
        cls.pseudo_dirs.append("/corpus")
        cls.latency_s = latency_ms / 1000
        if kind == "remote":
            items = ["slowmem:///corpus"]
        else:  # remote_list: every object named in a list file
            listing = data / f"remote-{n}.txt"
            listing.write_text("".join(f"slowmem://{p}\n" for p in sorted(cls.store)))
            items = ["@" + str(listing)]
    base = _rss_mib()
    out: dict = {"inputs": n, "baseline_rss_mib": round(base, 1)}

    def phase(name, fn):
        t = time.perf_counter()
        value = fn()
        out[name] = {"seconds": round(time.perf_counter() - t, 2), "peak_rss_over_baseline_mib": round(_rss_mib() - base, 1)}
        print(f"  {kind} {name}: {out[name]}", file=sys.stderr, flush=True)
        return value

    found = phase("expand", lambda: _expand(items, threads))
    assert len(found.files) == n, (len(found.files), n)
    with tempfile.TemporaryDirectory(dir=data) as build:
        ledger = Ledger(Path(build))
        ledger.ensure()
        ledger.tmp.mkdir(parents=True, exist_ok=True)
        paths = sorted(found.files)
        placed = phase("place", lambda: _place(ledger, paths, threads))
        assert len(placed.index) == n and len(placed.rows) == n
        phase("append_plan", functools.partial(ledger.append_plan, 0, placed.rows))
        del placed
        again = phase("resume", lambda: _place(ledger, paths, threads))
        assert len(again.index) == n and not again.rows, len(again.rows)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--local", type=int, default=1_000_000)
    ap.add_argument("--remote", type=int, default=100_000)
    ap.add_argument("--remote-list", type=int, default=10_000)
    ap.add_argument("--latency-ms", type=float, default=2.0)
    ap.add_argument("--threads", type=int, default=16, help="inputs.metadata_threads (where the code has it)")
    ap.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "emilia-bench-planning")
    ap.add_argument("--label", default="after")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per scenario")
    ap.add_argument("--scenario", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.data.mkdir(parents=True, exist_ok=True)
    if args.scenario:  # the child
        print("RESULT " + json.dumps(scenario(args.scenario, args.n, args.data, args.latency_ms, args.threads)))
        return
    report = {"latency_ms": args.latency_ms, "metadata_threads": args.threads, "cpus": os.cpu_count()}
    for kind, n in (("local", args.local), ("remote", args.remote), ("remote_list", args.remote_list)):
        if n <= 0:
            continue
        cmd = [sys.executable, __file__, "--scenario", kind, "--n", str(n), "--data", str(args.data),
               "--latency-ms", str(args.latency_ms), "--threads", str(args.threads)]
        t = time.perf_counter()
        try:
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, timeout=args.timeout)
            line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            report[kind] = json.loads(line[-1][7:]) if line else {"inputs": n, "error": f"exit {proc.returncode}"}
        except subprocess.TimeoutExpired:
            report[kind] = {"inputs": n, "error": f"not done after {args.timeout:.0f} s"}
        report[kind]["total_seconds"] = round(time.perf_counter() - t, 1)
        print(kind, json.dumps(report[kind]), flush=True)
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results[args.label] = report
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS} [{args.label}]")


if __name__ == "__main__":
    main()
