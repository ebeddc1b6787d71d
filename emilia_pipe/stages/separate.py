"""Stage 2: keep the vocals stem of a Demucs model (htdemucs by default), back at the working rate.

The model is named by ``models.separation``: a Demucs name (``htdemucs``, downloaded by
``emilia-pipe models fetch``, then read from torch's hub cache) or a local serialized ``.th`` model.
``separate.enabled: false`` (the lite profile, since no Demucs weights ship on PyPI) passes audio through
and every record says separation did not run."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from emilia_pipe.audio import ANALYSIS_RATE, DiskAudio, chunk_cores, resample
from emilia_pipe.models import ModelUnavailableError, _is_path_ref
from emilia_pipe.records import Source
from emilia_pipe.stages import Stage


def _hub_checkpoints(name: str) -> list[Path]:
    """Files Demucs stores in torch's hub cache for a named bag of models."""
    import torch
    import yaml
    from demucs.pretrained import REMOTE_ROOT

    bag = REMOTE_ROOT / f"{name}.yaml"
    if not bag.exists():
        raise ModelUnavailableError(f"separation model '{name}' is not a Demucs model name "
                                    f"(known: {sorted(p.stem for p in REMOTE_ROOT.glob('*.yaml'))})")
    sigs = yaml.safe_load(bag.read_text())["models"]
    files = {line.strip().split("-")[0]: line.strip() for line in (REMOTE_ROOT / "files.txt").read_text().splitlines()
             if line.strip().endswith(".th")}
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    return [folder / Path(files[s]).name for s in sigs if s in files]


def separation_model_location(ref: str, config=None, download: bool = False) -> str:
    if _is_path_ref(ref):
        path = Path(ref).expanduser()
        if not path.is_file():
            raise ModelUnavailableError(f"separation model file {path} does not exist")
        return str(path)
    checkpoints = _hub_checkpoints(ref)
    if not all(p.exists() for p in checkpoints):
        if not download:
            raise ModelUnavailableError(
                f"Demucs model '{ref}' is not in the local cache ({checkpoints[0].parent}). Get it with "
                f"'emilia-pipe models fetch --profile full' (needs network), point models.separation at a "
                f"local .th file, or disable separation (--set separate.enabled=false)."
            )
        _load_model(ref)  # demucs downloads into the torch hub cache
    return str(checkpoints[0].parent)


def _load_model(ref: str):
    if _is_path_ref(ref):
        from demucs.states import load_model

        model = load_model(str(Path(ref).expanduser()))
    else:
        from demucs.pretrained import get_model

        model = get_model(ref)
    model.eval()
    return model


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
            self.model = _load_model(ref)
        except Exception as exc:
            raise ModelUnavailableError(f"separation model '{ref}' could not be loaded: {exc}") from exc
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model.to(self.device)
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
        with torch.inference_mode():
            out = apply_model(self.model, ((mix - mean) / std)[None], shifts=self.cfg.shifts, split=True,
                              overlap=self.cfg.overlap, progress=False, device=self.device,
                              segment=self.cfg.segment_s)
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
