"""Stage 6a: quality scores. DNSMOS P.835 (``sig_bak_ovr.onnx`` on onnxruntime) gives SIG, BAK and OVRL
by the published computation (DNS-Challenge ``dnsmos_local.py``, which the reference runs unchanged):
16 kHz, 9.01 s windows with a 1 s hop, short clips tiled by repeating themselves, the non-personalised
polynomial fit, mean over windows. Each clip's windows are one onnxruntime run of their own, so a score
never depends on the batch. Also counts characters for the per-character-duration rule, and stores the
scores of the non-speech and hallucination rules (:mod:`emilia_pipe.guards`)."""
from __future__ import annotations

import re
import time

import numpy as np

from emilia_pipe.audio import ANALYSIS_RATE
from emilia_pipe.filtering import language_rejected
from emilia_pipe.guards import SpeechProbability, repeated_ngram_fraction
from emilia_pipe.models import dnsmos_onnx_path, silero_vad_onnx_path
from emilia_pipe.records import Clip
from emilia_pipe.stages import Stage

SCORE_RATE = ANALYSIS_RATE
# DNSMOS P.835 calibration polynomials (non-personalised), highest power first.
POLY_SIG = np.poly1d([-0.08397278, 1.22083953, 0.0052439])
POLY_BAK = np.poly1d([-0.13166888, 1.60915514, -0.39604546])
POLY_OVR = np.poly1d([-0.06766283, 1.11546468, 0.04602535])

# Characters the reference deletes before counting (ASCII and CJK punctuation, quotes, spaces).
_NOT_COUNTED = re.compile(r"[,.!?\"'，。！？“”‘’\s]")


def char_count(text: str | None) -> int:
    return len(_NOT_COUNTED.sub("", text or ""))


def dnsmos_windows(audio_16k: np.ndarray, window_s: float, hop_s: float) -> np.ndarray:
    """(n_windows, window_len) float32 array of the windows DNSMOS scores for one clip, as the published
    code picks them: the window count comes from the whole seconds of the (tiled) clip, and a window the
    float arithmetic of its end makes one sample short is skipped (at a 1 s hop: every window starting at
    7..23 s, since (7 + 9.01) = 16.009999999999998), so clips of up to 30 s are scored on 0..16.01 s."""
    win = int(window_s * SCORE_RATE)
    audio = np.asarray(audio_16k, dtype=np.float32)
    if audio.size == 0:
        audio = np.zeros(SCORE_RATE, np.float32)
    while audio.size < win:  # tile short clips by repetition
        audio = np.concatenate([audio, audio])
    n_hops = int((np.floor(audio.size / SCORE_RATE) - window_s) / hop_s) + 1
    windows = [audio[int(i * hop_s * SCORE_RATE) : int((i * hop_s + window_s) * SCORE_RATE)] for i in range(n_hops)]
    return np.stack([w[:win] for w in windows if w.size >= win])


class Scorer(Stage):
    name = "score"
    batched = True

    def __init__(self, config):
        import onnxruntime as ort

        self.cfg = config.score
        self.filter = config.filter
        opts = ort.SessionOptions()
        if self.cfg.onnx_threads:
            opts.intra_op_num_threads = self.cfg.onnx_threads
        # onnxruntime's arena keeps the largest batch it ever saw and grows with varied shapes (measured
        # +0.3-0.6 GiB per file); one window costs ~270 ms, so plain allocation is free by comparison
        opts.enable_cpu_mem_arena = False
        self.session = ort.InferenceSession(
            str(dnsmos_onnx_path(config.models.dnsmos)), sess_options=opts, providers=["CPUExecutionProvider"]
        )
        self.input_name = self.session.get_inputs()[0].name
        self.vad = SpeechProbability(silero_vad_onnx_path(config.models.vad))

    def clip_scores(self, audio_16k: np.ndarray) -> tuple[float, float, float]:
        """(SIG, BAK, OVRL) of one clip. A clip shorter than the window is scored at
        ``short_clip_offsets`` start offsets spread over 10 ms and the scores averaged: on a tiled clip
        the model's verdict swings with sub-frame shifts (a 1 ms later start moved OVRL by up to 0.3)."""
        offsets, limit = [0], None
        if audio_16k.size < int(self.cfg.window_s * SCORE_RATE):
            n = self.cfg.short_clip_offsets
            offsets = [round(k * 0.010 * SCORE_RATE / n) for k in range(n)]
            limit = self.cfg.short_clip_windows or None
        return tuple(float(v) for v in np.mean([self.window_scores(audio_16k[d:], limit) for d in offsets], axis=0))

    def window_scores(self, audio_16k: np.ndarray, limit: int | None = None) -> tuple[float, float, float]:
        """Mean (SIG, BAK, OVRL) over the clip's windows (the first ``limit``); runs per clip, whatever the batch."""
        windows = dnsmos_windows(audio_16k, self.cfg.window_s, self.cfg.hop_s)[:limit]
        raw = np.concatenate([self.session.run(None, {self.input_name: windows[i : i + self.cfg.batch_windows]})[0]
                              for i in range(0, len(windows), self.cfg.batch_windows)])
        return (float(np.mean(POLY_SIG(raw[:, 0]))), float(np.mean(POLY_BAK(raw[:, 1]))),
                float(np.mean(POLY_OVR(raw[:, 2]))))

    def run(self, clips: list[Clip]) -> list[Clip]:
        t0 = time.perf_counter()
        for clip in clips:
            # the language rule rejects these anyway: DNSMOS would be wasted work (scores stay None)
            if not (self.cfg.skip_language_rejected and language_rejected(clip.language, clip.language_prob, self.filter)):
                sig, bak, ovrl = self.clip_scores(clip.audio_16k)
                clip.dnsmos_sig, clip.dnsmos_bak, clip.dnsmos_ovrl = round(sig, 4), round(bak, 4), round(ovrl, 4)
            clip.speech_prob = round(self.vad.mean(clip.audio_16k), 4)  # cheap: scored even when language-rejected
            clip.repeat_ngram_frac = round(repeated_ngram_fraction(clip.text), 4)
            clip.chars = char_count(clip.text)
            clip.sec_per_char = round(clip.duration / clip.chars, 5) if clip.chars else None
        self.last_seconds = time.perf_counter() - t0
        return clips
