"""The one command of the GPU benchmark's carry-on bundle (bundle.py copies this file in as run.py).

    python run.py --minutes 10 --out results.json          # on the GPU node, with the image's own python
    python run.py --device cpu --minutes 1                  # CPU smoke run (random Whisper in tiny's shape)

1. installs the bundle's wheels into a folder (--target, default site/ beside this file) with
   ``pip install --no-index --no-deps``: nothing is fetched, and the image's torch, transformers,
   onnxruntime, ... stay the ones used;
2. runs bench/full_profile.py on N minutes of the bundle's speech with the local runner, the bundle's real
   weights, random-weight models where the real ones do not fit (the JSON's random_weights), Whisper
   large-v3's architecture on transcribe.backend=torch, and writes the JSON report: audio-hours per
   GPU-hour per stage and end to end, GPU use, peak memory.

Needs the standard library only until the wheels are installed. Flags after ``--`` go to full_profile.py
(e.g. ``-- --set transcribe.batch_size=32``).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

BUNDLE = Path(__file__).resolve().parent


def install(target: Path) -> None:
    """The bundle's wheels into ``target``, once (a stamp names the wheels installed)."""
    wheels = sorted((BUNDLE / "wheels").glob("*.whl"))
    stamp = target / ".bundle-wheels"
    listing = "\n".join(w.name for w in wheels)
    if stamp.is_file() and stamp.read_text() == listing:
        print(f"wheels already installed in {target}", flush=True)
        return
    # pip's own configuration (find-links, indexes, constraints) stays out: the bundle is all it may use
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-index",
           "--no-deps", "--upgrade", "--find-links", str(BUNDLE / "wheels"), "--target", str(target), *map(str, wheels)]
    print(f"installing {len(wheels)} wheels into {target}", flush=True)
    subprocess.run(cmd, check=True, env=env)
    stamp.write_text(listing)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="minutes of speech (default 10)")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cuda",
                    help="cuda (default): stop at once without a CUDA GPU; cpu: a smoke run on the CPU")
    ap.add_argument("--target", default=str(BUNDLE / "site"), help="where the wheels are installed (default site/)")
    ap.add_argument("--out", default=None, help="JSON report (default results/full-profile-<device>.json here)")
    ap.add_argument("--work", default=None, help="keep the work folder here (inputs, models, run.log, output)")
    ap.add_argument("rest", nargs=argparse.REMAINDER, help="-- then more full_profile.py flags")
    args = ap.parse_args()
    target = Path(args.target).resolve()
    install(target)
    out = Path(args.out) if args.out else BUNDLE / "results" / f"full-profile-{args.device}.json"
    rest = [a for a in args.rest if a != "--"]
    cmd = [sys.executable, str(BUNDLE / "bench" / "full_profile.py"), "--minutes", str(args.minutes),
           "--device", args.device, "--runner", "local", "--asr", "large-v3-random",
           "--speech", str(BUNDLE / "speech"), "--weights", str(BUNDLE / "weights"), "--out", str(out.resolve())]
    if args.device == "cpu" and "--whisper-arch" not in rest:  # large-v3 on a CPU would take hours
        cmd += ["--whisper-arch", "tiny"]
    if args.work:
        cmd += ["--work", args.work]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(target), os.environ.get("PYTHONPATH")) if p),
               HF_HUB_OFFLINE="1", HF_HUB_DISABLE_PROGRESS_BARS="1", PYANNOTE_METRICS_ENABLED="false")
    return subprocess.run(cmd + rest, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
