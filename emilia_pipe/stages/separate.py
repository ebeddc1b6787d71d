"""Stage 2: keep the vocals stem of a Demucs model (htdemucs by default), back at the working rate.

The model is named by ``models.separation``: a Demucs name (``htdemucs``, downloaded by
``emilia-pipe models fetch``, then read from torch's hub cache) or a local serialized ``.th`` model.
``separate.enabled: false`` (the lite profile, since no Demucs weights ship on PyPI) passes audio through
and every record says separation did not run."""
from __future__ import annotations

import contextlib
import time

import numpy as np

from emilia_pipe.media.audio import resample
from emilia_pipe.media.disk import DiskAudio, chunk_cores
from emilia_pipe.models.demucs import load_separation_model, separation_model_location
from emilia_pipe.models.refs import ModelUnavailableError
from emilia_pipe.records import ANALYSIS_RATE, Source
from emilia_pipe.runtime.devices import note, torch_device
from emilia_pipe.stages import Stage


class Separator(Stage):
    name = "separate"
    uses_gpu = True

    def __init__(self, config):
        import torch

        self.cfg = config.separate
        self.long = config.long_input
        ref = config.models.separation
        if ref is None:
            raise ModelUnavailableError("separation is enabled but models.separation names no model; set one "
                                        "(e.g. htdemucs) or --set separate.enabled=false")
        separation_model_location(ref, config)  # clear error before any download attempt
        try:
            self.model = load_separation_model(ref)
        except Exception as exc:
            raise ModelUnavailableError(f"separation model '{ref}' could not be loaded: {exc}") from exc
        self.device = torch_device(self.cfg.device, "separate")
        self.model.to(self.device)
        self.autocast = None  # dtype of torch autocast, CUDA only
        if self.cfg.precision != "float32":
            if self.device == "cuda":
                self.autocast = getattr(torch, self.cfg.precision)
            else:
                note(f"separate: precision {self.cfg.precision} applies on CUDA only; Demucs runs float32 on CPU")
        if "vocals" not in self.model.sources:
            raise ModelUnavailableError(f"separation model '{ref}' has no 'vocals' source (has {self.model.sources})")
        self.vocals = self.model.sources.index("vocals")

    def vocals_of(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        import torch
        from demucs.apply import apply_model

        rate = self.model.samplerate
        mix = torch.from_numpy(resample(audio, sample_rate, rate)).expand(self.model.audio_channels, -1).contiguous()
        # Demucs expects roughly unit-variance input; undo the scaling on the output.
        mean, std = mix.mean(), mix.std().clamp_min(1e-8)
        mix = ((mix - mean) / std)[None]
        half = (torch.autocast("cuda", dtype=self.autocast) if self.autocast is not None
                else contextlib.nullcontext())
        with torch.inference_mode(), half:
            if self.cfg.batch_size == 1 or self.cfg.shifts:
                out = apply_model(self.model, mix, shifts=self.cfg.shifts, split=True, overlap=self.cfg.overlap,
                                  progress=False, device=self.device, segment=self.cfg.segment_s)
            else:
                out = apply_batched(self.model, mix, self.cfg.overlap, self.cfg.segment_s, self.cfg.batch_size,
                                    self.device)
        vocals = (out[0, self.vocals] * std + mean).mean(0).cpu().numpy().astype(np.float32)
        return resample(vocals, rate, sample_rate)[: audio.size]

    def _separate_on_disk(self, source: Source) -> None:
        """A long source, chunk by chunk: each chunk is separated with ``long_input.overlap_s / 2`` of context
        on both sides that is then dropped, so no chunk edge reaches the output; vocals go to new files."""
        mix, sr = source.audio, source.sample_rate
        vocals = DiskAudio.create(_derived(mix.path), sr)
        vocals_16k = DiskAudio.create(_derived(source.audio_16k.path), ANALYSIS_RATE)
        margin = int(self.long.overlap_s / 2 * sr)
        try:
            for core_start, core_end in chunk_cores(mix.size / sr, self.long.chunk_s):
                a, b = int(round(core_start * sr)), int(round(core_end * sr))
                lo, hi = max(0, a - margin), min(mix.size, b + margin)
                out = self.vocals_of(mix.read(lo, hi), sr)
                vocals.append(out[a - lo: b - lo])
                to16 = lambda i: int(round(i * ANALYSIS_RATE / sr))  # noqa: E731
                vocals_16k.append(resample(out, sr, ANALYSIS_RATE)[to16(a) - to16(lo): to16(b) - to16(lo)])
        except BaseException:
            vocals.remove()
            vocals_16k.remove()
            raise
        mix.remove()
        source.audio_16k.remove()
        source.audio, source.audio_16k = vocals, vocals_16k

    def run(self, source: Source) -> Source:
        t0 = time.perf_counter()
        if isinstance(source.audio, DiskAudio):
            self._separate_on_disk(source)
        else:
            vocals = self.vocals_of(source.audio, source.sample_rate)
            source.audio = vocals
            source.audio_16k = resample(vocals, source.sample_rate, ANALYSIS_RATE)
        source.separated = True
        source.timings[self.name] = time.perf_counter() - t0
        return source


def _derived(path: str) -> str:
    """The vocals' file next to the mix's (same source index, so the same clean-up finds it)."""
    return path[: -len(".f32")] + "-vocals.f32"


def apply_batched(model, mix, overlap: float, segment: float | None, batch_size: int, device):
    """demucs.apply.apply_model(split=True, shifts=0) with ``batch_size`` segments per forward pass: the
    same segments (padded with their neighbouring audio), the same triangular overlap-add weights and
    the same weighting of a bag's models, so the output equals apply_model's up to float rounding."""
    import torch
    from demucs.apply import BagOfModels, TensorChunk
    from demucs.utils import center_trim

    models, weights = (model.models, model.weights) if isinstance(model, BagOfModels) else ([model], [None])
    estimates, totals = 0.0, [0.0] * len(model.sources)
    length = mix.shape[-1]
    for sub, sub_weights in zip(models, weights):
        sub.to(device)
        seg = segment if segment is not None else sub.segment
        seg_len = int(sub.samplerate * seg)
        stride = int((1 - overlap) * seg_len)
        weight = torch.cat([torch.arange(1, seg_len // 2 + 1), torch.arange(seg_len - seg_len // 2, 0, -1)]).float()
        weight = weight / weight.max()
        out = torch.zeros(mix.shape[0], len(sub.sources), mix.shape[1], length)
        sum_weight = torch.zeros(length)
        chunks = [TensorChunk(mix, offset, seg_len) for offset in range(0, length, stride)]
        for i in range(0, len(chunks), batch_size):
            group = chunks[i:i + batch_size]
            # what apply_model pads each segment to (HTDemucs: its training length)
            padded = [c.padded(_valid_length(sub, segment, c.length)) for c in group]
            if len({p.shape[-1] for p in padded}) == 1:
                results = list(sub(torch.cat(padded).to(device)).float().split(mix.shape[0]))
            else:  # models whose padding depends on the length (not HTDemucs): one at a time
                results = [sub(p.to(device)).float() for p in padded]
            for c, y in zip(group, results):
                y = center_trim(y, c.length).cpu()
                n = y.shape[-1]
                out[..., c.offset:c.offset + n] += weight[:n] * y
                sum_weight[c.offset:c.offset + n] += weight[:n]
        out /= sum_weight
        for k, w in enumerate(sub_weights or [1.0] * len(sub.sources)):
            out[:, k] *= w
            totals[k] += w
        estimates = estimates + out
    for k in range(len(model.sources)):
        estimates[:, k] /= totals[k]
    return estimates


def _valid_length(model, segment: float | None, length: int) -> int:
    """The length apply_model pads a segment to before the forward pass (its own rule)."""
    from demucs.htdemucs import HTDemucs

    if isinstance(model, HTDemucs) and segment is not None:
        return int(segment * model.samplerate)
    return model.valid_length(length) if hasattr(model, "valid_length") else length
