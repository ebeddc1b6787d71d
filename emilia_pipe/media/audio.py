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
    audio_stream: int = 0  # which of the file's audio streams was decoded (0 = the first)
    audio_streams: int = 1  # how many audio streams the file has
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


PROGRESS_AFTER_S = 600.0  # decoding an input at least this long (as its header states) reports progress


def choose_stream(streams, choice: "int | str" = "auto", path: object = "") -> int:
    """Which audio stream to decode: ``auto`` = the one the file marks as default (the stream a player
    starts with), else the first; a number = that audio stream (counting from 0)."""
    if choice == "auto":
        import av

        flagged = [i for i, s in enumerate(streams) if s.disposition & av.stream.Disposition.default]
        return flagged[0] if flagged else 0
    if not 0 <= int(choice) < len(streams):
        raise AudioDecodeError(f"{path} has {len(streams)} audio stream(s): no stream {choice} "
                               "(standardize.audio_stream counts from 0)")
    return int(choice)


def decode(path: "str | Path | io.IOBase", sample_rate: int, max_duration_s: float | None = None,
           spill: Optional[Spill] = None, stream_choice: "int | str" = "auto", name: Optional[str] = None,
           progress_after_s: Optional[float] = PROGRESS_AFTER_S) -> DecodedAudio:
    """Decode one audio stream (:func:`choose_stream`) to float32 mono at ``sample_rate`` (ffmpeg's
    resampler). A file whose header says it is longer than ``max_duration_s`` fails before any decoding;
    past ``spill.after_s`` seconds the samples go to disk (see :class:`Spill`). ``name`` is the input as
    messages show it (default: ``path``); an input whose header states at least ``progress_after_s``
    seconds reports its progress on stderr."""
    import av  # imported here so stages that only resample never need PyAV

    label = name or path
    try:
        container = av.open(path if hasattr(path, "read") else str(path))
    except (av.error.FFmpegError, OSError) as exc:
        raise AudioDecodeError(f"cannot open {label}: {exc}") from exc
    errors: list[str] = []
    sink = _Sink(sample_rate, spill)
    progress = None
    path = label  # every message below names the input as the user knows it
    try:
        with container:
            streams = container.streams.audio
            if not streams:
                raise AudioDecodeError(f"{path} has no audio stream")
            chosen = choose_stream(streams, stream_choice, path)
            stream = streams[chosen]
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
            if progress_after_s is not None and declared is not None and declared >= progress_after_s:
                from emilia_pipe.runtime.progress import Progress

                progress = Progress(f"decode {_short(path)}", int(declared), "audio-s", every_s=10.0)
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
                        if progress is not None:
                            progress.done = sink.total // sample_rate
                            progress.update()
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
            n_streams = len(streams)
        samples = sink.finish()
        if progress is not None:
            progress.finish()
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
    return DecodedAudio(samples, sample_rate, orig_rate, orig_channels, codec, fmt, errors, chosen, n_streams,
                        nonfinite, checked, sink.analysis, sink.sumsq, sink.peak)


def _short(path: object, keep: int = 60) -> str:
    text = str(path)
    return text if len(text) <= keep else "..." + text[-keep:]


def declared_seconds(path: str) -> Optional[float]:
    """The duration a local file's container states (its header only, nothing decoded), or None."""
    import os
    import stat

    import av

    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO or device is never opened
            return None
        with av.open(path) as container:
            streams = container.streams.audio
            return declared_duration(container, streams[0]) if streams else None
    except Exception:  # noqa: BLE001 - unreadable or not audio: its decode fails and is recorded
        return None


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
