"""Audio I/O: decode anything ffmpeg reads (through PyAV), resample, loudness, MP3 encode."""
from __future__ import annotations

import contextlib
import io
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from emilia_pipe.media.disk import DiskAudio
from emilia_pipe.records import ANALYSIS_RATE

AUDIO_EXTENSIONS = {
    ".wav", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".m4a", ".aac", ".mp4", ".m4v", ".mov",
    ".webm", ".mkv", ".wma", ".aif", ".aiff", ".caf", ".ac3", ".amr",
}


class AudioDecodeError(RuntimeError):
    """The file has no decodable audio stream."""


# The highest rate real recorders use; a header claiming more is corrupt (and would make the resampler
# try to allocate gigabytes).
MAX_PLAUSIBLE_RATE = 768_000


@dataclass
class DecodedAudio:
    samples: "np.ndarray | DiskAudio"  # float32 mono
    sample_rate: int
    orig_sample_rate: int
    orig_channels: int
    codec: str
    container: str
    decode_errors: list[str] = field(default_factory=list)  # what ffmpeg reported while decoding
    nonfinite_samples: int = 0  # NaN/Inf input samples (all channels), replaced by 0
    input_samples: int = 0  # input samples (all channels) of float streams, checked for NaN/Inf
    # set when the input went to disk (samples is then a DiskAudio): the 16 kHz copy and level statistics
    analysis: Optional["DiskAudio"] = None
    sumsq: float = 0.0
    peak: float = 0.0


def declared_duration(container, stream) -> float | None:
    """Seconds the container says the stream lasts (None when it does not say)."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / 1_000_000  # AV_TIME_BASE
    return None


@contextlib.contextmanager
def _ffmpeg_errors(into: list[str]):
    """Collect ffmpeg's error messages of this thread (PyAV drops them unless a level is set), so a
    corrupt frame becomes a recorded note instead of a bare stderr line or nothing."""
    import av.logging

    previous = av.logging.get_level()
    av.logging.set_level(av.logging.ERROR)
    try:
        with av.logging.Capture() as logs:
            yield
    finally:
        av.logging.set_level(previous)
        seen = Counter(f"{name}: {msg.strip()}" for level, name, msg in logs if level <= av.logging.ERROR)
        into.extend(f"{m} (x{n})" if n > 1 else m for m, n in list(seen.items())[:20])


def _finite(frame, av) -> tuple[object, int]:
    """The frame with NaN/Inf samples zeroed (before the resampler smears them), and how many there were."""
    arr = frame.to_ndarray()
    bad = ~np.isfinite(arr)
    n = int(bad.sum())
    if not n:
        return frame, 0
    arr[bad] = 0
    clean = av.AudioFrame.from_ndarray(arr, format=frame.format.name, layout=frame.layout.name)
    clean.sample_rate = frame.sample_rate
    return clean, n


@dataclass(frozen=True)
class Spill:
    """Where decoding moves a long input: once the output passes ``after_s`` seconds, the samples go to
    a DiskAudio at ``working_path`` and a 16 kHz copy (ffmpeg's resampler, streamed) to ``analysis_path``,
    so memory stays flat however long the file is."""

    after_s: float
    working_path: str
    analysis_path: str


class _Sink:
    """Collects decoded samples: in memory, then (past the spill point) on disk with a 16 kHz copy and the
    level statistics the loudness step needs."""

    def __init__(self, rate: int, spill: Optional[Spill]):
        self.rate, self.spill = rate, spill
        self.chunks: list[np.ndarray] = []
        self.total = 0
        self.disk = self.analysis = None
        self._to_analysis = None
        self.sumsq = self.peak = 0.0
        self.nonfinite = 0

    def add(self, arr: np.ndarray) -> None:
        self.total += arr.size
        if self.disk is not None:
            self._write(arr)
            return
        self.chunks.append(arr)
        if self.spill is not None and self.total > self.spill.after_s * self.rate:
            import av

            self.disk = DiskAudio.create(self.spill.working_path, self.rate)
            self.analysis = DiskAudio.create(self.spill.analysis_path, ANALYSIS_RATE)
            self._to_analysis = av.AudioResampler(format="flt", layout="mono", rate=ANALYSIS_RATE)
            chunks, self.chunks = self.chunks, []
            for c in chunks:
                self._write(c)

    def _write(self, arr: np.ndarray) -> None:
        import av

        bad = ~np.isfinite(arr)  # a codec we did not check: never pass NaN on
        if bad.any():
            arr = np.where(bad, np.float32(0), arr)
            self.nonfinite += int(bad.sum())
        self.sumsq += float(np.dot(arr.astype(np.float64), arr))
        self.peak = max(self.peak, float(np.abs(arr).max(initial=0.0)))
        self.disk.append(arr)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(arr, np.float32).reshape(1, -1), format="flt",
                                           layout="mono")
        frame.sample_rate = self.rate
        self._resample_analysis(frame)

    def _resample_analysis(self, frame) -> None:
        for out in self._to_analysis.resample(frame):
            self.analysis.append(out.to_ndarray().reshape(-1))

    def finish(self) -> "np.ndarray | DiskAudio":
        if self.disk is not None:
            self._resample_analysis(None)
            return self.disk
        return np.concatenate(self.chunks).astype(np.float32, copy=False) if self.chunks else np.zeros(0, np.float32)

    def discard(self) -> None:
        for d in (self.disk, self.analysis):
            if d is not None:
                d.remove()


def decode(path: "str | Path | io.IOBase", sample_rate: int, max_duration_s: float | None = None,
           spill: Optional[Spill] = None) -> DecodedAudio:
    """Decode the first audio stream to float32 mono at ``sample_rate`` (ffmpeg's resampler). A file
    whose header says it is longer than ``max_duration_s`` fails before any decoding; past
    ``spill.after_s`` seconds the samples go to disk (see :class:`Spill`)."""
    import av  # imported here so stages that only resample never need PyAV

    try:
        container = av.open(path if hasattr(path, "read") else str(path))
    except (av.error.FFmpegError, OSError) as exc:
        raise AudioDecodeError(f"cannot open {path}: {exc}") from exc
    errors: list[str] = []
    sink = _Sink(sample_rate, spill)
    try:
        with container:
            streams = container.streams.audio
            if not streams:
                raise AudioDecodeError(f"{path} has no audio stream")
            stream = streams[0]
            ctx = stream.codec_context
            orig_rate = int(ctx.sample_rate or 0)
            orig_channels = int(ctx.channels or (ctx.layout.nb_channels if ctx.layout else 0) or 0)
            if orig_channels <= 0:
                raise AudioDecodeError(f"{path}: its audio stream has no channels (corrupt header)")
            if not 0 < orig_rate <= MAX_PLAUSIBLE_RATE:
                raise AudioDecodeError(f"{path}: sample rate {orig_rate} Hz is not plausible (corrupt header)")
            declared = declared_duration(container, stream)
            if max_duration_s is not None and declared is not None and declared > max_duration_s:
                raise AudioDecodeError(f"{path} is {declared:.0f} s long (container header), longer than "
                                       f"standardize.max_duration_s={max_duration_s:.0f} s")
            check_finite = (ctx.name or "").startswith("pcm_f")  # only float PCM can carry NaN/Inf
            resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
            nonfinite = checked = 0
            limit = None if max_duration_s is None else int(max_duration_s * sample_rate)
            try:
                with _ffmpeg_errors(errors):
                    for frame in container.decode(stream):
                        frame.pts = None  # let the resampler run on sample counts; some containers have bad pts
                        if check_finite:
                            checked += frame.samples * orig_channels
                            frame, n = _finite(frame, av)
                            nonfinite += n
                        for out in resampler.resample(frame):
                            sink.add(out.to_ndarray().reshape(-1))
                        if limit is not None and sink.total > limit:
                            raise AudioDecodeError(
                                f"{path} is longer than standardize.max_duration_s={max_duration_s:.0f} s"
                            )
                    for out in resampler.resample(None):
                        sink.add(out.to_ndarray().reshape(-1))
            except av.error.FFmpegError as exc:
                raise AudioDecodeError(f"decoding {path} failed: {exc}") from exc
            codec = ctx.name or "unknown"
            fmt = container.format.name if container.format else "unknown"
        samples = sink.finish()
    except BaseException:
        sink.discard()
        raise
    if sink.total == 0:
        raise AudioDecodeError(f"{path} decoded to zero samples" + (f" ({'; '.join(errors)})" if errors else ""))
    got = sink.total / sample_rate
    if errors and declared and got < declared - 0.05:  # say what the errors cost
        errors.append(f"decoded {got:.2f} s of the {declared:.2f} s the header declares")
    if sink.nonfinite:
        nonfinite, checked = nonfinite + sink.nonfinite, max(checked, sink.total)
    elif isinstance(samples, np.ndarray) and not np.isfinite(samples).all():  # a codec we did not check
        bad = ~np.isfinite(samples)
        nonfinite, checked = nonfinite + int(bad.sum()), max(checked, samples.size)
        samples[bad] = 0.0
    return DecodedAudio(samples, sample_rate, orig_rate, orig_channels, codec, fmt, errors, nonfinite, checked,
                        sink.analysis, sink.sumsq, sink.peak)


def resample(samples: np.ndarray, orig_rate: int, new_rate: int) -> np.ndarray:
    if orig_rate == new_rate:
        return samples.astype(np.float32, copy=False)
    from scipy.signal import resample_poly

    g = math.gcd(orig_rate, new_rate)
    return resample_poly(samples, new_rate // g, orig_rate // g).astype(np.float32)


def dbfs(samples: np.ndarray) -> float:
    """RMS level relative to full scale (a full-scale square wave is 0 dBFS)."""
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64)))) if samples.size else 0.0
    return -math.inf if rms <= 0 else 20.0 * math.log10(rms)


def reference_gain_db(level_dbfs: float, target_dbfs: float, max_gain_db: float) -> float:
    """The reference's gain toward ``target_dbfs``, clamped to +-max_gain_db (none for silence)."""
    return max(-max_gain_db, min(max_gain_db, target_dbfs - level_dbfs)) if math.isfinite(level_dbfs) else 0.0


def loudness_scale(sumsq: float, n: int, peak: float, mode: str, target_dbfs: float,
                   max_gain_db: float) -> tuple[float, float]:
    """:func:`normalize_loudness` from level statistics, for audio on disk: the factor to apply on read,
    and the gain (dB). Gain then peak normalisation is one factor."""
    if mode == "none":
        return 1.0, 0.0
    rms = math.sqrt(sumsq / n) if n else 0.0
    gain_db = reference_gain_db(20.0 * math.log10(rms) if rms > 0 else -math.inf, target_dbfs, max_gain_db) \
        if mode == "reference" else 0.0
    gain = 10.0 ** (gain_db / 20.0)
    return (gain / (peak * gain) if peak > 0 else 1.0), gain_db


def normalize_loudness(samples: np.ndarray, mode: str, target_dbfs: float, max_gain_db: float) -> tuple[np.ndarray, float]:
    """The reference's loudness step: gain toward ``target_dbfs`` clamped to +-max_gain_db, then peak
    normalisation. Returns the new samples and the gain applied before the peak step (dB)."""
    if mode == "none":
        return samples, 0.0
    gain_db = reference_gain_db(dbfs(samples), target_dbfs, max_gain_db) if mode == "reference" else 0.0
    out = samples * np.float32(10.0 ** (gain_db / 20.0)) if gain_db else samples
    peak = float(np.max(np.abs(out))) if out.size else 0.0
    if peak > 0:
        out = out / np.float32(peak)
    return out.astype(np.float32, copy=False), gain_db
