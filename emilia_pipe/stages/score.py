"""Stage 6a: quality scores. DNSMOS P.835 (``sig_bak_ovr.onnx`` on onnxruntime) gives SIG, BAK and OVRL
by the published computation (DNS-Challenge ``dnsmos_local.py``, which the reference runs unchanged):
16 kHz, 9.01 s windows with a 1 s hop, short clips tiled by repeating themselves, the non-personalised
polynomial fit, mean over windows. On CPU each clip's windows are onnxruntime runs of their own, so a
score never depends on the batch; on CUDA the windows of all clips in a batch share runs (a GPU needs
hundreds of windows per run to be busy). Also counts characters for the per-character-duration rule, and stores the
scores of the non-speech and hallucination rules (:mod:`emilia_pipe.models.guards`)."""
from __future__ import annotations

import re
import time

import numpy as np

from emilia_pipe.dataset.filtering import rejected_before_scoring
from emilia_pipe.models.guards import SpeechProbability, repeated_ngram_fraction
from emilia_pipe.models.registry import dnsmos_onnx_path, silero_vad_onnx_path
from emilia_pipe.records import ANALYSIS_RATE, Clip
from emilia_pipe.runtime.devices import DeviceError, gpu_count, note, onnx_providers
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


def tiled(audio_16k: np.ndarray, window_s: float) -> np.ndarray:
    """The clip as float32, a clip shorter than one window repeated until it is not (as published)."""
    audio = np.asarray(audio_16k, dtype=np.float32)
    if audio.size == 0:
        audio = np.zeros(SCORE_RATE, np.float32)
    while audio.size < int(window_s * SCORE_RATE):
        audio = np.concatenate([audio, audio])
    return audio


def window_starts(n_samples: int, window_s: float, hop_s: float) -> list[int]:
    """First samples of the windows DNSMOS scores in a (tiled) clip, as the published code picks them: the
    window count comes from the whole seconds of the clip, and a window the float arithmetic of its end
    makes one sample short is skipped (at a 1 s hop: every window starting at 7..23 s, since
    (7 + 9.01) = 16.009999999999998), so clips of up to 30 s are scored on 0..16.01 s."""
    win = int(window_s * SCORE_RATE)
    n_hops = int((np.floor(n_samples / SCORE_RATE) - window_s) / hop_s) + 1
    spans = [(int(i * hop_s * SCORE_RATE), int((i * hop_s + window_s) * SCORE_RATE)) for i in range(n_hops)]
    return [a for a, b in spans if min(b, n_samples) - a >= win]


def dnsmos_windows(audio_16k: np.ndarray, window_s: float, hop_s: float) -> np.ndarray:
    """(n_windows, window_len) float32 array of the windows DNSMOS scores for one clip."""
    audio, win = tiled(audio_16k, window_s), int(window_s * SCORE_RATE)
    return np.stack([audio[a : a + win] for a in window_starts(audio.size, window_s, hop_s)])


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
        # +0.3-0.6 GiB per file), so it is on only for runs of one window, whose shape never varies: there
        # it stays at ~36 MiB and saves the page faults of ~110 MB fresh memory per window (~0.06 CPU-s)
        opts.enable_cpu_mem_arena = self.cfg.batch_windows == 1
        gpus = gpu_count() if self.cfg.device != "cpu" else 0
        providers, why_cpu = onnx_providers(self.cfg.device, ort.get_available_providers(), gpus)
        self.session = ort.InferenceSession(str(dnsmos_onnx_path(config.models.dnsmos)), sess_options=opts,
                                            providers=providers)
        # onnxruntime falls back to CPU by itself when the CUDA provider cannot load (missing CUDA/cuDNN)
        self.on_gpu = "CUDAExecutionProvider" in self.session.get_providers()
        if why_cpu is None and not self.on_gpu:
            why_cpu = "onnxruntime's CUDAExecutionProvider failed to load (see its message above)"
            if self.cfg.device == "cuda":
                raise DeviceError(f"score.device is cuda but {why_cpu}")
        if why_cpu and self.cfg.device == "auto" and gpus:  # without a GPU, CPU is no news
            note(f"score: DNSMOS runs on CPU: {why_cpu}")
        self.input_name = self.session.get_inputs()[0].name
        self.shared = None  # score.share_window_convolutions: the model cut in two (models/dnsmos.py)
        if self.cfg.share_window_convolutions and not self.on_gpu:
            from emilia_pipe.models.dnsmos import CannotShare, SharedWindowDNSMOS

            try:
                self.shared = SharedWindowDNSMOS(str(dnsmos_onnx_path(config.models.dnsmos)), self.cfg.onnx_threads)
            except CannotShare as exc:
                note(f"score: each DNSMOS window runs the whole model ({exc})")
        self.vad = SpeechProbability(silero_vad_onnx_path(config.models.vad))

    def clip_scores(self, audio_16k: np.ndarray) -> tuple[float, float, float]:
        """(SIG, BAK, OVRL) of one clip. A clip shorter than the window is scored at
        ``short_clip_offsets`` start offsets spread over 10 ms and the scores averaged: on a tiled clip
        the model's verdict swings with sub-frame shifts (docs/performance.md, DNSMOS of short clips).
        The first offset (0: the published computation) goes first; the others only where ``_refine``
        says the verdict depends on them."""
        offsets, limit = self._offsets(audio_16k)
        scores = [self.window_scores(audio_16k[offsets[0]:], limit)]
        if self._refine(scores[0], len(offsets)):
            scores += [self.window_scores(audio_16k[d:], limit) for d in offsets[1:]]
        return _mean(scores)

    def _offsets(self, audio_16k: np.ndarray) -> tuple[list[int], int | None]:
        """Start offsets (samples) a clip is scored at, and the windows taken per offset (None = all)."""
        if audio_16k.size >= int(self.cfg.window_s * SCORE_RATE):
            return [0], None
        n = self.cfg.short_clip_offsets
        return [round(k * 0.010 * SCORE_RATE / n) for k in range(n)], self.cfg.short_clip_windows or None

    def _refine(self, first: tuple[float, float, float], n_offsets: int) -> bool:
        """Whether a clip's other offsets are scored: always without a margin, else only when the first
        offset's OVRL is within ``short_clip_refine_margin`` of ``filter.dnsmos_min``. Further away the
        other offsets cannot move the verdict (their measured effect: docs/performance.md)."""
        margin = self.cfg.short_clip_refine_margin
        return n_offsets > 1 and (margin is None or abs(first[2] - self.filter.dnsmos_min) < margin)

    def batch_scores(self, audios: list[np.ndarray]) -> list[tuple[float, float, float]]:
        """``clip_scores`` of many clips with their windows in shared runs of up to ``gpu_batch_windows``
        (the CUDA path): every clip's first offset, then the other offsets of the clips ``_refine`` picks."""
        plans = [self._offsets(audio) for audio in audios]
        first = self._group_scores([audio[offsets[0]:] for audio, (offsets, _) in zip(audios, plans)],
                                   [limit for _, limit in plans])
        rest = [(i, d) for i, (offsets, _) in enumerate(plans) if self._refine(first[i], len(offsets))
                for d in offsets[1:]]
        more = self._group_scores([audios[i][d:] for i, d in rest], [plans[i][1] for i, _ in rest])
        per_clip = [[f] for f in first]
        for (i, _), scores in zip(rest, more):
            per_clip[i].append(scores)
        return [_mean(scores) for scores in per_clip]

    def _group_scores(self, audios: list[np.ndarray], limits: list[int | None]) -> list[tuple[float, float, float]]:
        """Mean (SIG, BAK, OVRL) over each audio's windows, the windows of all in runs of ``gpu_batch_windows``."""
        groups = [dnsmos_windows(audio, self.cfg.window_s, self.cfg.hop_s)[:limit] for audio, limit in zip(audios, limits)]
        if not groups:
            return []
        bounds = np.cumsum([0] + [len(g) for g in groups])
        step = self.cfg.gpu_batch_windows
        raw = np.concatenate([self.session.run(None, {self.input_name: _rows(groups, bounds, lo, lo + step)})[0]
                              for lo in range(0, int(bounds[-1]), step)])
        return [_calibrated(raw[bounds[k]:bounds[k + 1]]) for k in range(len(groups))]

    def window_scores(self, audio_16k: np.ndarray, limit: int | None = None) -> tuple[float, float, float]:
        """Mean (SIG, BAK, OVRL) over the clip's windows (the first ``limit``); runs per clip, whatever the batch."""
        audio = tiled(audio_16k, self.cfg.window_s)
        starts = window_starts(audio.size, self.cfg.window_s, self.cfg.hop_s)[:limit]
        if self.shared is not None:  # every window through the cut model: one memory arena, not two
            raw = self.shared.raw(audio, starts)
        else:
            win, step = int(self.cfg.window_s * SCORE_RATE), self.cfg.batch_windows
            windows = np.stack([audio[a : a + win] for a in starts])
            raw = np.concatenate([self.session.run(None, {self.input_name: windows[i : i + step]})[0]
                                  for i in range(0, len(windows), step)])
        return _calibrated(raw)

    def run(self, clips: list[Clip]) -> list[Clip]:
        t0 = time.perf_counter()
        for clip in clips:  # the cheap scores first: the rules that use them decide what DNSMOS need not see
            clip.speech_prob = round(self.vad.mean(clip.audio_16k), 4)
            clip.repeat_ngram_frac = round(repeated_ngram_fraction(clip.text), 4)
            clip.chars = char_count(clip.text)
            clip.sec_per_char = round(clip.duration / clip.chars, 5) if clip.chars else None
        scored = clips
        if self.cfg.skip_rejected:  # rejected anyway: DNSMOS would be wasted work (scores stay None)
            rejected = rejected_before_scoring([c.to_record() for c in clips], self.filter)
            scored = [c for c, r in zip(clips, rejected) if not r]
        audios = [c.audio_16k for c in scored]
        scores = self.batch_scores(audios) if self.on_gpu else [self.clip_scores(a) for a in audios]
        for clip, (sig, bak, ovrl) in zip(scored, scores):
            clip.dnsmos_sig, clip.dnsmos_bak, clip.dnsmos_ovrl = round(sig, 4), round(bak, 4), round(ovrl, 4)
        self.last_seconds = time.perf_counter() - t0
        return clips


def _calibrated(raw: np.ndarray) -> tuple[float, float, float]:
    """Mean (SIG, BAK, OVRL) of raw model outputs, one row per window, through the P.835 polynomials."""
    return (float(np.mean(POLY_SIG(raw[:, 0]))), float(np.mean(POLY_BAK(raw[:, 1]))),
            float(np.mean(POLY_OVR(raw[:, 2]))))


def _mean(scores: list[tuple[float, float, float]]) -> tuple[float, float, float]:
    """Mean over a clip's offsets of their (SIG, BAK, OVRL)."""
    return tuple(float(v) for v in np.mean(scores, axis=0))


def _rows(groups: list[np.ndarray], bounds: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Rows lo..hi of the groups stacked one after another (without stacking all of them)."""
    parts = []
    for k, g in enumerate(groups):
        a, b = max(lo, bounds[k]), min(hi, bounds[k + 1])
        if a < b:
            parts.append(g[a - bounds[k]: b - bounds[k]])
    return np.concatenate(parts)
