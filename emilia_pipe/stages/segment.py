"""Stage 4: cut speaker turns into 3-30 s clips at silences found by Silero VAD (ONNX).

Rules follow the reference recipe: a turn that ends inside the previous one is skipped (its speech lies
in the enclosing turn); long turns are split at their largest VAD silence until each piece is shorter
than ``turn_split_s``; a piece still longer than ``max_clip_s`` (one unbroken speech run) is cut at its
least speech-like VAD frame rather than blindly at 30 s; a piece shorter than ``min_clip_s`` merges into
the previous piece of the same speaker when the gap is under ``merge_gap_s`` and the result stays within
``max_clip_s``, or else into the next one on the same terms; what is still too short is dropped. Every
dropped segment is recorded with its reason and the seconds of speech it lost, and every source with where
its VAD speech went (:func:`~emilia_pipe.stages.speech_time.speech_yield`); the build's summary adds them up.
"""
from __future__ import annotations

import bisect
import time

import numpy as np

from emilia_pipe.media.disk import DiskAudio, read_span
from emilia_pipe.models.guards import SpeechProbability
from emilia_pipe.models.registry import silero_vad_onnx_path
from emilia_pipe.records import ANALYSIS_RATE, Clip, Source, Turn
from emilia_pipe.runtime.threads import restore_torch_threads
from emilia_pipe.stages import Stage
from emilia_pipe.stages.speech_time import speech_yield

VAD_RATE = ANALYSIS_RATE
VAD_FRAME = 512  # samples per Silero frame at 16 kHz (32 ms)
SEAM_JOIN_S = 0.25  # speech spans this close to a VAD chunk edge on both sides are one span cut by it


Piece = Turn  # a span of one speaker, as cutting goes on


def skip_contained_turns(turns: list[Turn]) -> list[Turn]:
    """Drop turns that end before the previous kept turn ends (the reference's overlap rule)."""
    kept: list[Turn] = []
    for turn in sorted(turns, key=lambda t: (t.start, t.end)):
        if kept and turn.end <= kept[-1].end:
            continue
        kept.append(turn)
    return kept


def speech_within(spans: list[tuple[float, float]], start: float, end: float) -> list[tuple[float, float]]:
    out = []
    for s, e in spans:
        s, e = max(s, start), min(e, end)
        if e > s:
            out.append((s, e))
    return out


def split_at_largest_gaps(spans: list[tuple[float, float]], limit: float) -> list[tuple[float, float]]:
    """Group speech spans, splitting recursively at the widest silence until each group spans < limit."""
    if not spans:
        return []
    if spans[-1][1] - spans[0][0] < limit or len(spans) == 1:
        return [(spans[0][0], spans[-1][1])]
    gaps = [spans[i + 1][0] - spans[i][1] for i in range(len(spans) - 1)]
    cut = int(np.argmax(gaps)) + 1
    return split_at_largest_gaps(spans[:cut], limit) + split_at_largest_gaps(spans[cut:], limit)


def force_cut(start: float, end: float, max_len: float, frame_probs: np.ndarray | None) -> list[tuple[float, float]]:
    """Cut one unbroken speech run into pieces <= max_len, each cut at the frame of lowest speech
    probability in the second half of the allowed window (a breath is likelier there than a word)."""
    pieces = []
    frame_s = VAD_FRAME / VAD_RATE
    while end - start > max_len:
        lo, hi = start + max_len / 2, start + max_len
        cut = hi
        if frame_probs is not None and frame_probs.size:
            a, b = int(lo / frame_s), min(int(hi / frame_s), frame_probs.size)
            if b > a:
                cut = (a + int(np.argmin(frame_probs[a:b]))) * frame_s
                cut = min(max(cut, lo), hi)
        pieces.append((start, cut))
        start = cut
    pieces.append((start, end))
    return pieces


def merge_short(pieces: list[Piece], min_len: float, max_len: float, max_gap: float) -> tuple[list[Piece], list[Piece]]:
    """Merge each piece shorter than ``min_len`` into the previous piece when that one is of the same
    speaker, under ``max_gap`` away and the result stays within ``max_len`` (the reference's rule); when it
    cannot, into the next piece on the same terms (the first words of a file or of a speaker have no
    previous piece, and a clip that starts one sentence early is ordinary training data). Only a piece
    that can join neither is returned as dropped. Neighbours are the adjacent pieces in time, so a piece
    never joins across another speaker's piece, kept or dropped."""
    def joinable(first: Piece, second: Piece) -> bool:
        return (first.speaker == second.speaker and second.start - first.end < max_gap
                and second.end - first.start <= max_len)

    seq: list[Piece] = []  # every piece in time order, short ones merged into their previous piece
    for piece in sorted(pieces, key=lambda p: p.start):
        if seq and piece.duration < min_len and joinable(seq[-1], piece):
            seq[-1].end = max(seq[-1].end, piece.end)
        else:
            seq.append(Piece(piece.start, piece.end, piece.speaker))
    kept: list[Piece] = []
    dropped: list[Piece] = []
    for i, piece in enumerate(seq):
        if piece.duration >= min_len:
            kept.append(piece)
        elif i + 1 < len(seq) and joinable(piece, seq[i + 1]):
            seq[i + 1].start = piece.start  # the next piece is not short (it would have joined this one)
        else:
            dropped.append(piece)
    return kept, dropped


def widen_edges(pieces: list[Piece], turns: list[Turn], duration: float, pad: float, max_len: float) -> list[Piece]:
    """Move each clip edge ``pad`` seconds outward: Silero marks speech late at a word's unvoiced onset
    and at the very start of a file (its state starts cold), and early at a fading word end, so a clip
    cut at the VAD edge loses the first or last sounds of its words. An edge never moves past the midpoint
    of the gap to the neighbouring clip, into a turn of another speaker, outside the audio, or so far that
    the clip exceeds ``max_len``."""
    pieces = sorted(pieces, key=lambda p: p.start)
    turns = sorted(turns, key=lambda t: t.start)
    starts = [t.start for t in turns]
    longest = max((t.end - t.start for t in turns), default=0.0)
    out = []
    for i, p in enumerate(pieces):
        lo = (pieces[i - 1].end + p.start) / 2 if i else 0.0
        hi = (p.end + pieces[i + 1].start) / 2 if i + 1 < len(pieces) else duration
        # only turns that can reach this piece's neighbourhood (sorted by start; none is longer than `longest`)
        for t in turns[bisect.bisect_left(starts, p.start - pad - longest) : bisect.bisect_right(starts, p.end + pad)]:
            if t.speaker != p.speaker:
                if t.start < p.start:
                    lo = max(lo, min(t.end, p.start))
                if t.end > p.end:
                    hi = min(hi, max(t.start, p.end))
        before = max(p.start - max(lo, p.start - pad), 0.0)
        after = max(min(hi, p.end + pad) - p.end, 0.0)
        spare = max(max_len - (p.end - p.start), 0.0)
        if before + after > spare:  # share what may be added between the two edges
            before = min(before, max(spare / 2, spare - after))
            after = min(after, spare - before)
        out.append(Piece(p.start - before, p.end + after, p.speaker))
    return out


def overlap_fraction(turns: list[Turn], start: float, end: float) -> float:
    """Share of [start, end] where two or more diarization turns are active (overlapping speech)."""
    edges = []
    for t in turns:
        s, e = max(t.start, start), min(t.end, end)
        if e > s:
            edges += [(s, 1), (e, -1)]
    edges.sort()
    active, last, overlapped = 0, start, 0.0
    for t, step in edges:
        if active >= 2:
            overlapped += t - last
        active, last = active + step, t
    return round(overlapped / (end - start), 4) if end > start else 0.0


def clip_span(audio, start: int, stop: int):
    """A clip's samples: a copy of an in-memory span, or a lazy span of a long source's DiskAudio."""
    return audio.lazy(start, stop) if isinstance(audio, DiskAudio) else audio[start:stop].copy()


def _segment(span: Turn, reason: str) -> dict:
    return {"start": span.start, "end": span.end, "speaker": span.speaker, "reason": reason}


class LazyFrameProbs:
    """Silero frame probabilities of long audio, computed for just the frames asked for (by slice)."""

    def __init__(self, segmenter: "Segmenter", audio_16k):
        self.segmenter, self.audio = segmenter, audio_16k
        self.size = audio_16k.size // VAD_FRAME

    def __getitem__(self, key: slice) -> np.ndarray:
        start, stop, _ = key.indices(self.size)
        return self.segmenter.frame_probs(read_span(self.audio, start * VAD_FRAME, stop * VAD_FRAME))


class Segmenter(Stage):
    name = "segment"

    def __init__(self, config):
        self.cfg = config.segment
        self.models = config.models
        self.chunk_s = config.long_input.chunk_s
        # Importing silero_vad sets torch to one thread for the whole process: restore it.
        with restore_torch_threads(config.run.torch_threads):
            from silero_vad.utils_vad import get_speech_timestamps_from_probs

        self._timestamps_from_probs = get_speech_timestamps_from_probs
        # Silero's ONNX model driven with numpy, as silero's OnnxWrapper does it but without torch work per
        # 32 ms frame (that was half the stage's CPU time); silero-vad's own rules turn the probabilities
        # into spans, so the spans are the ones get_speech_timestamps gives.
        self.vad = SpeechProbability(silero_vad_onnx_path(config.models.vad))

    def speech_spans(self, audio_16k) -> list[tuple[float, float]]:
        """Silero speech spans (seconds) of an array or DiskAudio; long audio is read a chunk at a time and
        a span broken by a chunk edge is joined again."""
        step = int(self.chunk_s * VAD_RATE)
        if not isinstance(audio_16k, DiskAudio) and audio_16k.size <= step:
            return self._spans(audio_16k)
        spans: list[tuple[float, float]] = []
        for offset in range(0, audio_16k.size, step):
            edge = offset / VAD_RATE
            for s, e in self._spans(read_span(audio_16k, offset, offset + step)):
                s, e = s + edge, e + edge
                if spans and offset and spans[-1][1] >= edge - SEAM_JOIN_S and s <= edge + SEAM_JOIN_S:
                    spans[-1] = (spans[-1][0], e)
                else:
                    spans.append((s, e))
        return spans

    def _spans(self, audio_16k: np.ndarray) -> list[tuple[float, float]]:
        if audio_16k.size < VAD_FRAME:
            return []
        # silero pads the last partial frame with zeros
        padded = np.pad(np.asarray(audio_16k, dtype=np.float32), (0, -audio_16k.size % VAD_FRAME))
        stamps = self._timestamps_from_probs(
            self.vad.frame_probs(padded).tolist(),
            threshold=self.cfg.vad_threshold,
            sampling_rate=VAD_RATE,
            min_silence_duration_ms=self.cfg.vad_min_silence_ms,
            min_speech_duration_ms=self.cfg.vad_min_speech_ms,
            speech_pad_ms=self.cfg.vad_speech_pad_ms,
            return_seconds=False,
            audio_length_samples=audio_16k.size,
        )
        return [(s["start"] / VAD_RATE, s["end"] / VAD_RATE) for s in stamps]

    def frame_probs(self, audio_16k: np.ndarray) -> np.ndarray:
        return self.vad.frame_probs(audio_16k)

    def cut(self, turns: list[Turn], spans: list[tuple[float, float]], audio_16k: np.ndarray) -> tuple[list[Piece], list[dict], dict]:
        """Clips of a source, the segments the cutting rules dropped (with their reason and the seconds of
        speech each lost) and the source's speech yield (:func:`speech_yield`)."""
        cfg = self.cfg
        pieces: list[Piece] = []
        dropped: list[dict] = []
        probs: np.ndarray | None = None
        kept_turns = skip_contained_turns(turns)
        kept_ids = {id(t) for t in kept_turns}
        dropped += [_segment(t, "inside_previous_turn") for t in turns if id(t) not in kept_ids]
        for turn in kept_turns:
            speech = speech_within(spans, turn.start, turn.end)
            if not speech:
                dropped.append(_segment(turn, "no_speech_in_turn"))
                continue
            for start, end in split_at_largest_gaps(speech, cfg.turn_split_s):
                if end - start > cfg.max_clip_s:
                    if probs is None:  # long audio: only the frames a cut needs, computed when asked
                        probs = (LazyFrameProbs(self, audio_16k) if isinstance(audio_16k, DiskAudio)
                                 or audio_16k.size > self.chunk_s * VAD_RATE else self.frame_probs(audio_16k))
                    parts = force_cut(start, end, cfg.max_clip_s, probs)
                else:
                    parts = [(start, end)]
                pieces.extend(Piece(s, e, turn.speaker) for s, e in parts)
        kept, short = merge_short(pieces, cfg.min_clip_s, cfg.max_clip_s, cfg.merge_gap_s)
        dropped += [_segment(p, "too_short") for p in short]
        if cfg.edge_pad_s:
            kept = widen_edges(kept, turns, audio_16k.size / VAD_RATE, cfg.edge_pad_s, cfg.max_clip_s)
        yields = speech_yield(spans, turns, kept, dropped)
        for d in dropped:
            d["start"], d["end"] = round(d["start"], 3), round(d["end"], 3)
        return kept, dropped, yields

    def run(self, source: Source) -> Source:
        t0 = time.perf_counter()
        spans = self.speech_spans(source.audio_16k)
        pieces, dropped, yields = self.cut(source.turns, spans, source.audio_16k)
        sr = source.sample_rate
        clips = []
        for i, p in enumerate(sorted(pieces, key=lambda p: p.start)):
            clips.append(
                Clip(
                    source_id=source.source_id,
                    index=i,
                    start=round(p.start, 3),
                    end=round(p.end, 3),
                    speaker=p.speaker,
                    audio=clip_span(source.audio, int(p.start * sr), int(p.end * sr)),
                    audio_16k=clip_span(source.audio_16k, int(p.start * VAD_RATE), int(p.end * VAD_RATE)),
                )
            )
        for clip in clips:
            clip.overlap_frac = overlap_fraction(source.turns, clip.start, clip.end)
        source.clips = clips
        source.dropped_segments = dropped
        source.speech_yield = yields
        source.timings[self.name] = time.perf_counter() - t0
        return source
