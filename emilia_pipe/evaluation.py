"""Small evaluation helpers used by tests and benchmarks (WER with light normalisation)."""
from __future__ import annotations

import re
import unicodedata


def normalize_words(text: str) -> list[str]:
    text = unicodedata.normalize("NFKC", text).lower()
    text = re.sub(r"[^\w\s']", " ", text)
    return text.split()


def edit_distance(ref: list, hyp: list) -> int:
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


def word_error_rate(reference: str, hypothesis: str) -> float:
    ref, hyp = normalize_words(reference), normalize_words(hypothesis)
    return edit_distance(ref, hyp) / max(len(ref), 1)


def char_error_rate(reference: str, hypothesis: str) -> float:
    """For languages written without spaces (zh, ja): edit distance over characters, punctuation removed."""
    clean = lambda s: [c for c in unicodedata.normalize("NFKC", s) if c.isalnum()]  # noqa: E731
    ref, hyp = clean(reference), clean(hypothesis)
    return edit_distance(ref, hyp) / max(len(ref), 1)
