"""Stage 6a: quality scores. DNSMOS P.835 (``sig_bak_ovr.onnx`` on onnxruntime) gives SIG, BAK and OVRL
the way the reference computes them: 16 kHz, 9.01 s windows with a 1 s hop, short clips tiled by
repeating themselves, the non-personalised polynomial fit, mean over windows. Windows of a whole batch
of clips (from any sources) run through the model together. Also counts characters for the
per-character-duration rule."""
from __future__ import annotations

import re
import time

import numpy as np

from emilia_pipe.audio import ANALYSIS_RATE
from emilia_pipe.models import dnsmos_onnx_path
from emilia_pipe.records import Clip
from emilia_pipe.stages import Stage

SCORE_RATE = ANALYSIS_RATE
# DNSMOS P.835 calibration polynomials (non-personalised), highest power first.
POLY_SIG = np.poly1d([-0.08397278, 1.22083953, 0.0028434])
POLY_BAK = np.poly1d([-0.13166888, 1.60915514, -0.39604546])
POLY_OVR = np.poly1d([-0.06766283, 1.11546468, 0.04602535])

# Characters the reference deletes before counting (ASCII and CJK punctuation, quotes, spaces).
_NOT_COUNTED = re.compile(r"[,.!?\"'，。！？“”‘’\s]")


def char_count(text: str | None) -> int:
    return len(_NOT_COUNTED.sub("", text or ""))


def dnsmos_windows(audio_16k: np.ndarray, window_s: float, hop_s: float) -> np.ndarray:
    """(n_windows, window_len) float32 array of the windows DNSMOS scores for one clip."""
    win = int(window_s * SCORE_RATE)
    audio = np.asarray(audio_16k, dtype=np.float32)
    if audio.size == 0:
        audio = np.zeros(SCORE_RATE, np.float32)
    while audio.size < win:  # tile short clips by repetition
        audio = np.concatenate([audio, audio])
    hop = int(hop_s * SCORE_RATE)
    n = int(np.floor(audio.size / SCORE_RATE - window_s)) + 1
    n = max(n, 1)
    starts = [i * hop for i in range(n) if i * hop + win <= audio.size] or [0]
    return np.stack([audio[s : s + win] for s in starts])


class Scorer(Stage):
    name = "score"
    batched = True

    def __init__(self, config):
        import onnxruntime as ort

        self.cfg = config.score
        opts = ort.SessionOptions()
        if self.cfg.onnx_threads:
            opts.intra_op_num_threads = self.cfg.onnx_threads
        self.session = ort.InferenceSession(
            str(dnsmos_onnx_path(config.models.dnsmos)), sess_options=opts, providers=["CPUExecutionProvider"]
        )
        self.input_name = self.session.get_inputs()[0].name

    def raw_scores(self, windows: np.ndarray) -> np.ndarray:
        out = []
        for i in range(0, len(windows), self.cfg.batch_windows):
            out.append(self.session.run(None, {self.input_name: windows[i : i + self.cfg.batch_windows]})[0])
        return np.concatenate(out, axis=0)

    def run(self, clips: list[Clip]) -> list[Clip]:
        t0 = time.perf_counter()
        per_clip = [dnsmos_windows(c.audio_16k, self.cfg.window_s, self.cfg.hop_s) for c in clips]
        if per_clip:
            raw = self.raw_scores(np.concatenate(per_clip, axis=0))
            offset = 0
            for clip, windows in zip(clips, per_clip):
                r = raw[offset : offset + len(windows)]
                offset += len(windows)
                clip.dnsmos_sig = round(float(np.mean(POLY_SIG(r[:, 0]))), 4)
                clip.dnsmos_bak = round(float(np.mean(POLY_BAK(r[:, 1]))), 4)
                clip.dnsmos_ovrl = round(float(np.mean(POLY_OVR(r[:, 2]))), 4)
        for clip in clips:
            clip.chars = char_count(clip.text)
            clip.sec_per_char = round(clip.duration / clip.chars, 5) if clip.chars else None
        self.last_seconds = time.perf_counter() - t0
        return clips
