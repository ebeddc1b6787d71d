"""Per-clip scores for the hallucination and non-speech rules (stored in the ledger, judged by filtering).

- ``speech_prob``: mean Silero VAD speech probability over the clip's 32 ms frames (the ONNX model the
  segment stage uses, driven here with onnxruntime and numpy exactly as ``silero_vad.OnnxWrapper`` does).
  Music, noise and most singing score low, speech high (sample_data's figures: docs/usage.md, guards).
- ``repeat_ngram_frac``: the fraction of the transcript's word 3-grams that repeat an earlier one (Whisper's
  loops: "thank you. thank you. thank you." -> 0.5); characters are the words of scripts written
  without spaces (Chinese, Japanese)."""
from __future__ import annotations

import re

import numpy as np

VAD_RATE = 16000
VAD_FRAME = 512  # samples per Silero frame at 16 kHz
_VAD_CONTEXT = 64  # samples of the previous frame the model sees
NGRAM = 3
# a CJK ideograph or kana is one token; otherwise a run of letters/digits
_TOKEN = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]|[^\W_]+")


def repeated_ngram_fraction(text: str | None, n: int = NGRAM) -> float:
    tokens = _TOKEN.findall((text or "").lower())
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return (len(grams) - len(set(grams))) / len(grams) if grams else 0.0


class SpeechProbability:
    """Silero VAD over a whole clip, one onnxruntime call per frame (state carried between frames)."""

    def __init__(self, onnx_path):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.inter_op_num_threads = opts.intra_op_num_threads = 1  # tiny model: threads cost more than they give
        opts.enable_cpu_mem_arena = False
        self.session = ort.InferenceSession(str(onnx_path), sess_options=opts, providers=["CPUExecutionProvider"])

    def frame_probs(self, audio_16k: np.ndarray) -> np.ndarray:
        audio = np.asarray(audio_16k, dtype=np.float32)
        n = audio.size // VAD_FRAME * VAD_FRAME
        state = np.zeros((2, 1, 128), np.float32)
        context = np.zeros((1, _VAD_CONTEXT), np.float32)
        sr = np.array(VAD_RATE, dtype=np.int64)
        probs = np.empty(n // VAD_FRAME, np.float32)
        for k, i in enumerate(range(0, n, VAD_FRAME)):
            x = np.concatenate([context, audio[None, i : i + VAD_FRAME]], axis=1)
            out, state = self.session.run(None, {"input": x, "state": state, "sr": sr})
            context = x[:, -_VAD_CONTEXT:]
            probs[k] = out[0, 0]
        return probs

    def mean(self, audio_16k: np.ndarray) -> float:
        probs = self.frame_probs(audio_16k)
        return float(probs.mean()) if probs.size else 0.0
