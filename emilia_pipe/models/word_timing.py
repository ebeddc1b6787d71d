"""Word start/end times for transcribed clips (``transcribe.word_timestamps``).

faster-whisper's own ``word_timestamps=True`` path: Whisper's cross-attention alignment heads
(CTranslate2 ``align``) with faster-whisper's post-processing (punctuation merged into words, long
words at pauses shortened). Our clips are already cut and decoded in mixed-language batches, so the
transcript tokens are aligned here per language (``align`` takes one start sequence for its batch),
against the clip's own encoder output. Times are seconds from the clip's start."""
from __future__ import annotations

import numpy as np

# faster-whisper's transcribe() defaults
PREPEND_PUNCTUATIONS = "\"'“¿([{-"
APPEND_PUNCTUATIONS = "\"'.。,，!！?？:：”)]}、"
FRAMES_PER_SECOND = 100  # log-mel frames


def add_word_timings(transcriber, clips, feats: np.ndarray) -> None:
    """Set ``clip.words`` for every clip of a transcribed batch (``feats``: its log-mel features).
    The final text is tokenized again (the decode returns text only); aligning a text does not depend
    on which of its tokenizations the decoder happened to emit."""
    from faster_whisper.tokenizer import Tokenizer  # its word splitting: this path is CTranslate2's only

    model = transcriber.model
    groups: dict[str, list[int]] = {}
    tokens: list[list[int]] = []
    for i, clip in enumerate(clips):
        clip.words = []
        tokens.append(transcriber.tokenizer(clip.language).encode(clip.text) if (clip.text or "").strip() else [])
        if tokens[i]:  # nothing to align in an empty transcript
            groups.setdefault(clip.language, []).append(i)
    for language, idx in groups.items():
        enc = model.encode(feats[idx])
        frames = [min(feats.shape[-1], int(round(clips[i].duration * FRAMES_PER_SECOND))) for i in idx]
        segments = [[{"tokens": tokens[i], "seek": 0, "start": 0.0, "end": clips[i].duration}] for i in idx]
        tokenizer = Tokenizer(model.hf_tokenizer, transcriber.multilingual, task="transcribe", language=language)
        model.add_word_timestamps(segments, tokenizer, enc, frames,
                                  PREPEND_PUNCTUATIONS, APPEND_PUNCTUATIONS, 0.0)
        for i, seg in zip(idx, segments):
            end = clips[i].duration
            clips[i].words = [{"word": w["word"], "start": round(min(max(float(w["start"]), 0.0), end), 3),
                               "end": round(min(max(float(w["end"]), 0.0), end), 3)}
                              for w in seg[0].get("words", [])]
