"""Whisper's input features and prompt tokens, for both transcribe backends, with torch and tokenizers only.

- :func:`log_mel_spectrogram`: Whisper's log-Mel features (400-sample Hann STFT every 160 samples, power
  spectrum through a Slaney-style Mel filter bank, log10 floored at 1e-10, clamped to 8 below the maximum,
  then (x + 4) / 4). The filter bank is computed here from the Slaney Mel scale, the same float32 values
  as the table OpenAI ships (checked equal in tests/test_gpu_path.py).
- :class:`WhisperTokenizer`: the special tokens and text encoding a prompt needs, on the model's own
  ``tokenizers.Tokenizer``.

Neither needs WhisperX, faster-whisper or CTranslate2, so the torch backend runs without them.
"""
from __future__ import annotations

import functools

import numpy as np

SAMPLE_RATE = 16000
N_FFT = 400
HOP_LENGTH = 160


# Slaney's Mel scale: linear below 1 kHz (3 Mel per 200 Hz), logarithmic above (27 Mel per factor 6.4)
_HZ_PER_MEL = 200.0 / 3
_LOG_HZ = 1000.0
_LOG_MEL = _LOG_HZ / _HZ_PER_MEL
_LOG_STEP = np.log(6.4) / 27.0


def _hz_to_mel(hz) -> np.ndarray:
    hz = np.asanyarray(hz, dtype=np.float64)
    above = _LOG_MEL + np.log(np.maximum(hz, _LOG_HZ) / _LOG_HZ) / _LOG_STEP
    return np.where(hz >= _LOG_HZ, above, hz / _HZ_PER_MEL)


def _mel_to_hz(mel) -> np.ndarray:
    mel = np.asanyarray(mel, dtype=np.float64)
    above = _LOG_HZ * np.exp(_LOG_STEP * (mel - _LOG_MEL))
    return np.where(mel >= _LOG_MEL, above, _HZ_PER_MEL * mel)


@functools.cache
def mel_filters(n_mels: int) -> np.ndarray:
    """(n_mels, 201) float32 triangular filters over 0 .. 8 kHz, each scaled to unit area (Slaney norm)."""
    bins = np.fft.rfftfreq(n=N_FFT, d=1.0 / SAMPLE_RATE)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(SAMPLE_RATE / 2), n_mels + 2))
    widths = np.diff(edges)
    ramps = np.subtract.outer(edges, bins)
    filters = np.zeros((n_mels, bins.size), dtype=np.float32)
    for i in range(n_mels):
        rising, falling = -ramps[i] / widths[i], ramps[i + 2] / widths[i + 1]
        filters[i] = np.maximum(0, np.minimum(rising, falling))
    filters *= (2.0 / (edges[2: n_mels + 2] - edges[:n_mels]))[:, None]
    filters.setflags(write=False)
    return filters


def log_mel_spectrogram(audio: np.ndarray, n_mels: int, padding: int = 0):
    """(n_mels, frames) torch tensor of 16 kHz float32 ``audio`` followed by ``padding`` zeros."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(audio)
    if padding > 0:
        x = F.pad(x, (0, padding))
    stft = torch.stft(x, N_FFT, HOP_LENGTH, window=torch.hann_window(N_FFT), return_complex=True)
    power = stft[..., :-1].abs() ** 2
    mel = torch.from_numpy(mel_filters(n_mels).copy()) @ power
    log_spec = torch.clamp(mel, min=1e-10).log10()
    log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
    return (log_spec + 4.0) / 4.0


class WhisperTokenizer:
    """A Whisper model's tokenizer for one language and task: special-token ids, text <-> tokens."""

    def __init__(self, tokenizer, multilingual: bool, task: str = "transcribe", language: str = "en"):
        self.tokenizer = tokenizer
        token = tokenizer.token_to_id
        self.sot, self.eot = token("<|startoftranscript|>"), token("<|endoftext|>")
        self.sot_prev, self.no_timestamps = token("<|startofprev|>"), token("<|notimestamps|>")
        if multilingual:
            lang, task_id = token(f"<|{language}|>"), token(f"<|{task}|>")
            if lang is None or task not in ("transcribe", "translate"):
                raise ValueError(f"Whisper has no language {language!r} / task {task!r}")
            self.sot_sequence = [self.sot, lang, task_id]
        else:  # English-only models: no language or task tokens
            self.sot_sequence = [self.sot]

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, tokens: list[int]) -> str:
        """The text of ``tokens``, special tokens (ids from <|endoftext|> on) left out."""
        return self.tokenizer.decode([t for t in tokens if t < self.eot])
