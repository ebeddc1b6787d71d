"""Audio I/O: decode anything ffmpeg reads (through PyAV), resample, loudness, MP3 encode."""
from __future__ import annotations

import contextlib
import hashlib
import io
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# The rate of every clip's and source's ``audio_16k`` view. VAD, diarization, Whisper and DNSMOS were all
# trained on 16 kHz audio, so this is fixed; the config validates ``standardize.analysis_rate`` against it.
ANALYSIS_RATE = 16000

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
    samples: np.ndarray  # float32 mono
    sample_rate: int
    orig_sample_rate: int
    orig_channels: int
    codec: str
    container: str
    decode_errors: list[str] = field(default_factory=list)  # what ffmpeg reported while decoding
    nonfinite_samples: int = 0  # NaN/Inf input samples (all channels), replaced by 0
    input_samples: int = 0  # input samples (all channels) of float streams, checked for NaN/Inf


def sha256_of(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


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


def decode(path: "str | Path | io.IOBase", sample_rate: int, max_duration_s: float | None = None) -> DecodedAudio:
    """Decode the first audio stream to float32 mono at ``sample_rate`` (ffmpeg's resampler). A file
    whose header says it is longer than ``max_duration_s`` fails before any decoding."""
    import av  # imported here so stages that only resample never need PyAV

    try:
        container = av.open(path if hasattr(path, "read") else str(path))
    except (av.error.FFmpegError, OSError) as exc:
        raise AudioDecodeError(f"cannot open {path}: {exc}") from exc
    errors: list[str] = []
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
        chunks: list[np.ndarray] = []
        total = nonfinite = checked = 0
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
                        arr = out.to_ndarray().reshape(-1)
                        chunks.append(arr)
                        total += arr.size
                    if limit is not None and total > limit:
                        raise AudioDecodeError(
                            f"{path} is longer than standardize.max_duration_s={max_duration_s:.0f} s"
                        )
                for out in resampler.resample(None):
                    chunks.append(out.to_ndarray().reshape(-1))
        except av.error.FFmpegError as exc:
            raise AudioDecodeError(f"decoding {path} failed: {exc}") from exc
        codec = ctx.name or "unknown"
        fmt = container.format.name if container.format else "unknown"
    samples = np.concatenate(chunks).astype(np.float32, copy=False) if chunks else np.zeros(0, np.float32)
    if samples.size == 0:
        raise AudioDecodeError(f"{path} decoded to zero samples" + (f" ({'; '.join(errors)})" if errors else ""))
    got = samples.size / sample_rate
    if errors and declared and got < declared - 0.05:  # say what the errors cost
        errors.append(f"decoded {got:.2f} s of the {declared:.2f} s the header declares")
    if not np.isfinite(samples).all():  # a codec we did not check: still never pass NaN on
        bad = ~np.isfinite(samples)
        nonfinite, checked = nonfinite + int(bad.sum()), max(checked, samples.size)
        samples[bad] = 0.0
    return DecodedAudio(samples, sample_rate, orig_rate, orig_channels, codec, fmt, errors, nonfinite, checked)


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


def normalize_loudness(samples: np.ndarray, mode: str, target_dbfs: float, max_gain_db: float) -> tuple[np.ndarray, float]:
    """The reference's loudness step: gain toward ``target_dbfs`` clamped to +-max_gain_db, then peak
    normalisation. Returns the new samples and the gain applied before the peak step (dB)."""
    if mode == "none":
        return samples, 0.0
    gain_db = 0.0
    out = samples
    if mode == "reference":
        level = dbfs(samples)
        if math.isfinite(level):
            gain_db = max(-max_gain_db, min(max_gain_db, target_dbfs - level))
            out = samples * np.float32(10.0 ** (gain_db / 20.0))
    peak = float(np.max(np.abs(out))) if out.size else 0.0
    if peak > 0:
        out = out / np.float32(peak)
    return out.astype(np.float32, copy=False), gain_db


def encode_mp3(samples: np.ndarray, sample_rate: int, bitrate_kbps: int) -> bytes:
    """Mono MP3 (libmp3lame via PyAV) at an explicit constant bitrate."""
    import av

    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp3") as container:
        stream = container.add_stream("libmp3lame", rate=sample_rate, layout="mono")
        stream.bit_rate = bitrate_kbps * 1000
        pcm = np.clip(samples, -1.0, 1.0).astype(np.float32).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(pcm, format="flt", layout="mono")
        frame.sample_rate = sample_rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buf.getvalue()
