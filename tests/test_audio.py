"""Decoding every common container/codec, loudness, and MP3 writing."""
import io

import av
import numpy as np
import pytest

from emilia_pipe.config import PipelineConfig
from emilia_pipe.media.audio import AudioDecodeError, dbfs, decode, normalize_loudness
from emilia_pipe.media.mp3 import encode_mp3
from emilia_pipe.stages.standardize import Standardizer

JFK = "asr/en/en_jfk_inaugural.flac"  # 11 s, 44.1 kHz stereo FLAC


def _encode(samples: np.ndarray, rate: int, path, fmt: str, codec: str, video: str | None = None):
    """Write a test file with PyAV: audio (stereo) and optionally a small video stream."""
    with av.open(str(path), "w", format=fmt) as out:
        a = out.add_stream(codec, rate=rate, layout="stereo")
        v = None
        if video:
            v = out.add_stream(video, rate=10)
            v.width, v.height, v.pix_fmt = 64, 48, "yuv420p"
        stereo = np.stack([samples, samples * 0.5]).astype(np.float32)
        frame_size = a.codec_context.frame_size or 1024
        fmt_name = a.codec_context.format.name if a.codec_context.format else "fltp"
        for i in range(0, stereo.shape[1] - frame_size + 1, frame_size):
            chunk = stereo[:, i : i + frame_size]
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format="fltp", layout="stereo")
            frame.sample_rate = rate
            frame.pts = i
            if fmt_name not in ("fltp",):
                frame = av.AudioResampler(format=fmt_name, layout="stereo", rate=rate).resample(frame)[0]
            for p in a.encode(frame):
                out.mux(p)
        for p in a.encode(None):
            out.mux(p)
        if v is not None:
            for i in range(int(stereo.shape[1] / rate * 10)):
                img = av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24").reformat(format="yuv420p")
                img.pts = i
                for p in v.encode(img):
                    out.mux(p)
            for p in v.encode(None):
                out.mux(p)


@pytest.fixture(scope="module")
def jfk_48k(sample_dir):
    return decode(sample_dir / JFK, 48000).samples


@pytest.mark.parametrize("suffix,fmt,codec,video", [
    (".wav", "wav", "pcm_s16le", None),
    (".flac", "flac", "flac", None),
    (".mp3", "mp3", "libmp3lame", None),
    (".ogg", "ogg", "libopus", None),
    (".opus", "opus", "libopus", None),
    (".m4a", "ipod", "aac", None),
    (".mp4", "mp4", "aac", "mpeg4"),
    (".webm", "webm", "libopus", "libvpx"),
])
def test_decodes_common_formats_to_mono_24k(tmp_path, jfk_48k, suffix, fmt, codec, video):
    path = tmp_path / f"jfk{suffix}"
    _encode(jfk_48k, 48000, path, fmt, codec, video)
    cfg = PipelineConfig()
    src = Standardizer(cfg).run(path)
    assert src.sample_rate == 24000 and src.audio.ndim == 1 and src.audio.dtype == np.float32
    assert abs(src.duration - 11.0) < 0.15, src.duration
    assert src.orig_channels == 2 and src.orig_sample_rate == 48000
    assert src.audio_16k.size == pytest.approx(src.audio.size * 2 / 3, abs=2)
    assert len(src.sha256) == 64 and src.source_id == src.sha256[:16]
    assert np.max(np.abs(src.audio)) == pytest.approx(1.0, abs=1e-3)  # peak-normalised


def test_source_metadata_of_original(sample_dir):
    src = Standardizer(PipelineConfig()).run(sample_dir / JFK)
    assert (src.orig_sample_rate, src.orig_channels, src.codec) == (44100, 2, "flac")


def test_loudness_gain_is_clamped_then_peak_normalised():
    quiet = (0.001 * np.sin(np.linspace(0, 2000, 48000))).astype(np.float32)  # about -63 dBFS
    out, gain = normalize_loudness(quiet, "reference", -20.0, 3.0)
    assert gain == 3.0
    assert np.max(np.abs(out)) == pytest.approx(1.0)
    loud = np.clip(np.random.default_rng(0).normal(0, 0.5, 48000), -1, 1).astype(np.float32)
    _, gain = normalize_loudness(loud, "reference", -20.0, 3.0)
    assert gain == -3.0
    near = quiet * np.float32(10 ** ((-21.0 - dbfs(quiet)) / 20))
    _, gain = normalize_loudness(near, "reference", -20.0, 3.0)
    assert gain == pytest.approx(1.0, abs=0.01)
    same, gain = normalize_loudness(quiet, "none", -20.0, 3.0)
    assert gain == 0.0 and same is quiet


def test_bad_inputs_raise_clear_errors(tmp_path):
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"this is not audio at all" * 100)
    with pytest.raises(AudioDecodeError, match="junk.wav"):
        decode(junk, 24000)
    empty = tmp_path / "empty.mp3"
    empty.write_bytes(b"")
    with pytest.raises(AudioDecodeError):
        decode(empty, 24000)
    with pytest.raises(AudioDecodeError, match="longer than"):
        decode(_long_wav(tmp_path), 24000, max_duration_s=1.0)


def _long_wav(tmp_path):
    import soundfile as sf

    p = tmp_path / "long.wav"
    sf.write(p, np.zeros(16000 * 3, np.float32), 16000)
    return p


def test_mp3_has_explicit_bitrate_and_decodes_to_its_duration():
    tone = (0.5 * np.sin(2 * np.pi * 440 * np.arange(24000 * 5) / 24000)).astype(np.float32)
    for kbps in (48, 96):
        data = encode_mp3(tone, 24000, kbps)
        with av.open(io.BytesIO(data)) as f:
            s = f.streams.audio[0]
            assert s.codec_context.sample_rate == 24000 and s.codec_context.channels == 1
            assert abs(s.codec_context.bit_rate - kbps * 1000) <= 1000
        back = decode(io.BytesIO(data), 24000)
        assert abs(back.samples.size / 24000 - 5.0) < 0.03
    assert len(encode_mp3(tone, 24000, 96)) > 1.8 * len(encode_mp3(tone, 24000, 48))
