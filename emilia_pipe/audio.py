"""Audio I/O: decode anything ffmpeg reads (through PyAV), resample, loudness, MP3 encode."""
from __future__ import annotations

import hashlib
import io
import math
from dataclasses import dataclass
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


@dataclass
class DecodedAudio:
    samples: np.ndarray  # float32 mono
    sample_rate: int
    orig_sample_rate: int
    orig_channels: int
    codec: str
    container: str


def sha256_of(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def decode(path: "str | Path | io.IOBase", sample_rate: int, max_duration_s: float | None = None) -> DecodedAudio:
    """Decode the first audio stream to float32 mono at ``sample_rate`` (ffmpeg's resampler)."""
    import av  # imported here so stages that only resample never need PyAV

    try:
        container = av.open(path if hasattr(path, "read") else str(path))
    except (av.error.FFmpegError, OSError) as exc:
        raise AudioDecodeError(f"cannot open {path}: {exc}") from exc
    with container:
        streams = container.streams.audio
        if not streams:
            raise AudioDecodeError(f"{path} has no audio stream")
        stream = streams[0]
        ctx = stream.codec_context
        orig_rate = int(ctx.sample_rate or 0)
        orig_channels = int(ctx.channels or (ctx.layout.nb_channels if ctx.layout else 0) or 0)
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        chunks: list[np.ndarray] = []
        total = 0
        limit = None if max_duration_s is None else int(max_duration_s * sample_rate)
        try:
            for frame in container.decode(stream):
                frame.pts = None  # let the resampler run on sample counts; some containers have bad pts
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
        raise AudioDecodeError(f"{path} decoded to zero samples")
    if not np.isfinite(samples).all():
        samples = np.nan_to_num(samples, nan=0.0, posinf=0.0, neginf=0.0)
    return DecodedAudio(samples, sample_rate, orig_rate, orig_channels, codec, fmt)


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
