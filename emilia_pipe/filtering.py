"""Verdicts from stored scores: a pure function of clip records and :class:`FilterConfig`.

The run and ``emilia-pipe refilter`` both call :func:`apply_filters`, so changing a threshold never
needs a model. Every rule a clip fails is listed in ``reasons`` (not just the first)."""
from __future__ import annotations

from collections import defaultdict
from typing import Iterable

import numpy as np

from emilia_pipe.config import FilterConfig

REASONS = (
    "too_short", "too_long", "no_text", "language_not_allowed", "language_prob_low",
    "dnsmos_low", "too_few_chars", "sec_per_char_outlier",
)


def _group_key(rec: dict, scope: str):
    if scope == "file":
        return rec["source_id"]
    if scope == "speaker":
        return (rec["source_id"], rec["speaker"])
    if scope == "language":
        return rec.get("language")
    return None


def iqr_bounds(values: Iterable[float], k: float) -> tuple[float, float]:
    arr = np.asarray(list(values), dtype=np.float64)
    q1, q3 = np.percentile(arr, [25, 75])
    return q1 - k * (q3 - q1), q3 + k * (q3 - q1)


def language_rejected(language: str | None, language_prob: float | None, cfg: FilterConfig) -> bool:
    """The reference's language rule: keep only allowed languages detected with prob > the minimum."""
    return language not in cfg.languages or (language_prob or 0.0) <= cfg.language_prob_min


def apply_filters(records: list[dict], cfg: FilterConfig) -> list[dict]:
    """Set ``kept`` and ``reasons`` on each clip record (in place) and return the records."""
    allowed = set(cfg.languages)
    for rec in records:
        reasons = []
        dur = rec["duration"]
        if dur < cfg.min_duration_s:
            reasons.append("too_short")
        if dur > cfg.max_duration_s:
            reasons.append("too_long")
        if rec.get("language") not in allowed:
            reasons.append("language_not_allowed")
        elif (rec.get("language_prob") or 0.0) <= cfg.language_prob_min:
            reasons.append("language_prob_low")  # the reference keeps only prob > threshold
        if rec.get("dnsmos_ovrl") is None or rec["dnsmos_ovrl"] < cfg.dnsmos_min:
            reasons.append("dnsmos_low")
        if (rec.get("chars") or 0) < cfg.min_chars:
            reasons.append("too_few_chars" if rec.get("text") else "no_text")
        rec["reasons"] = reasons

    if cfg.iqr_scope != "none":
        # Seconds per character, judged against clips of the same file (reference) / speaker / language.
        groups: dict = defaultdict(list)
        for rec in records:
            if rec.get("sec_per_char") is not None:
                groups[_group_key(rec, cfg.iqr_scope)].append(rec)
        for members in groups.values():
            if len(members) < cfg.iqr_min_clips:
                continue
            lo, hi = iqr_bounds((r["sec_per_char"] for r in members), cfg.iqr_k)
            for rec in members:
                if not lo <= rec["sec_per_char"] <= hi:
                    rec["reasons"].append("sec_per_char_outlier")

    for rec in records:
        rec["kept"] = not rec["reasons"]
    return records
