"""MP3 encoding of a clip (PyAV's LAME encoder), the format of the Emilia release."""
from __future__ import annotations

import io

import numpy as np


def encode_mp3(samples: np.ndarray, sample_rate: int, bitrate_kbps: int) -> bytes:
    """Mono MP3 (libmp3lame via PyAV) at an explicit constant bitrate."""
    import av

    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp3") as container:
        stream = container.add_stream("libmp3lame", rate=sample_rate, layout="mono")
        stream.bit_rate = bitrate_kbps * 1000
        pcm = np.clip(np.asarray(samples), -1.0, 1.0).astype(np.float32).reshape(1, -1)  # a span reads here
        frame = av.AudioFrame.from_ndarray(pcm, format="flt", layout="mono")
        frame.sample_rate = sample_rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buf.getvalue()
