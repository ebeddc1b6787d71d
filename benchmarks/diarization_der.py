"""Diarization error rate and speed of the diarize stage on the two AMI excerpts in sample_data.

    python benchmarks/diarization_der.py [--out benchmarks/results/der.json] [--set diarize.segmentation_step=0.2 ...]

DER is computed with pyannote.metrics at collar 0 (overlap scored) inside each file's UEM.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402
from scipy.signal import resample_poly  # noqa: E402

FILES = {"dev00": "ami_pyannote_dev00", "tst00": "ami_pyannote_tst00"}
SR = 16000


def peak_rss_mb() -> float:
    try:
        import psutil

        info = psutil.Process().memory_full_info()
        peak = getattr(info, "peak_wset", None)  # Windows only
        if peak:
            return peak / 2**20
    except Exception:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**20 if sys.platform == "darwin" else 2**10)


def load_audio(path: Path) -> np.ndarray:
    audio, sr = sf.read(str(path), dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)
    return audio if sr == SR else resample_poly(audio, SR, sr).astype(np.float32)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "der.json"))
    parser.add_argument("--data", default=str(ROOT / "sample_data" / "diarization"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, e.g. diarize.segmentation_step=0.2")
    args = parser.parse_args()

    from pyannote.core import Annotation, Segment
    from pyannote.database.util import load_rttm, load_uem
    from pyannote.metrics.diarization import DiarizationErrorRate

    from emilia_pipe.config import PipelineConfig, config_to_dict, load_config
    from emilia_pipe.stages.diarize import Diarizer

    try:
        config = load_config(overrides=args.overrides)
    except Exception:
        if args.overrides:
            raise
        config = PipelineConfig()

    t0 = time.perf_counter()
    diarizer = Diarizer(config)
    load_s = time.perf_counter() - t0
    import torch

    folder = Path(args.data)
    # Warm-up on 12 s (first-call allocations, oneDNN/cuDNN set-up) so RTF reflects steady-state throughput.
    t0 = time.perf_counter()
    diarizer.diarize(load_audio(folder / f"{FILES['dev00']}.wav")[: 12 * SR])
    warmup_s = time.perf_counter() - t0

    metric = DiarizationErrorRate(collar=0.0)
    per_file, total_audio, total_time = {}, 0.0, 0.0
    for uri, stem in FILES.items():
        audio = load_audio(folder / f"{stem}.wav")
        reference = load_rttm(str(folder / f"{stem}.rttm"))[uri]
        uem = load_uem(str(folder / f"{stem}.uem"))[uri]

        t = time.perf_counter()
        turns = diarizer.diarize(audio)
        elapsed = time.perf_counter() - t

        hypothesis = Annotation(uri=uri)
        for i, turn in enumerate(turns):
            hypothesis[Segment(turn.start, turn.end), i] = turn.speaker
        c = metric(reference, hypothesis, uem=uem, detailed=True)
        duration = len(audio) / SR
        total_audio += duration
        total_time += elapsed
        per_file[uri] = {
            "duration_s": round(duration, 3),
            "der": round(c["diarization error rate"], 4),
            "missed": round(c["missed detection"] / c["total"], 4),
            "false_alarm": round(c["false alarm"] / c["total"], 4),
            "confusion": round(c["confusion"] / c["total"], 4),
            "scored_speech_s": round(c["total"], 3),
            "speakers_ref": len(reference.labels()),
            "speakers_hyp": len(hypothesis.labels()),
            "seconds": round(elapsed, 3),
            "rtf": round(elapsed / duration, 4),
        }

    totals = metric[:]  # accumulated components over both files
    overall = {
        "der": round(abs(metric), 4),
        "missed": round(totals["missed detection"] / totals["total"], 4),
        "false_alarm": round(totals["false alarm"] / totals["total"], 4),
        "confusion": round(totals["confusion"] / totals["total"], 4),
        "rtf": round(total_time / total_audio, 4),
        "audio_hours_per_hour": round(total_audio / total_time, 2),
        "model_load_s": round(load_s, 2),
        "warmup_s": round(warmup_s, 2),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }
    report = {
        "files": per_file,
        "overall": overall,
        "collar": 0.0,
        "config": {"diarize": config_to_dict(config)["diarize"], "model": config.models.diarization},
        "device": str(diarizer.device),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
    }

    print(f"{'file':8} {'DER':>7} {'missed':>7} {'FA':>7} {'conf':>7} {'spk ref/hyp':>12} {'RTF':>7}")
    for uri, r in per_file.items():
        print(f"{uri:8} {r['der']:7.1%} {r['missed']:7.1%} {r['false_alarm']:7.1%} {r['confusion']:7.1%} "
              f"{r['speakers_ref']:>6}/{r['speakers_hyp']:<5} {r['rtf']:7.3f}")
    print(f"{'overall':8} {overall['der']:7.1%} {overall['missed']:7.1%} {overall['false_alarm']:7.1%} "
          f"{overall['confusion']:7.1%} {'':12} {overall['rtf']:7.3f}")
    print(f"speed: {overall['audio_hours_per_hour']:.1f} audio-hours/hour on {report['device']} "
          f"({report['torch_threads']} torch threads); model load {overall['model_load_s']:.1f} s; "
          f"peak RSS {overall['peak_rss_mb']:.0f} MB")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"report written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
