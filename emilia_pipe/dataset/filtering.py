"""Verdicts from stored scores: a pure function of the clip table and :class:`FilterConfig`.

The run and ``emilia-pipe refilter`` both call :func:`filter_frame` on the whole clip table (pandas,
vectorised: a million clips take seconds), so changing a threshold never needs a model. Every rule a
clip fails is listed in ``reasons`` (not just the first)."""
from __future__ import annotations

from typing import Optional

import numpy as np
import pandas as pd

from emilia_pipe.config import FilterConfig

# in the order they are listed on a clip
REASONS = (
    "too_short", "too_long", "language_not_allowed", "language_prob_low", "dnsmos_low",
    "too_few_chars", "no_text", "sec_per_char_outlier",
    "non_speech", "no_speech_prob_high", "compression_ratio_high", "avg_logprob_low", "chars_per_s_out_of_range",
    "repeated_ngrams", "overlapping_speech",
)
_SCOPE_KEYS = {"file": ["source_index"], "speaker": ["source_index", "speaker"], "language": ["language"]}


def _num(df: pd.DataFrame, col: str) -> pd.Series:
    return pd.to_numeric(df[col], errors="coerce").astype("float64") if col in df else pd.Series(np.nan, index=df.index)


def filter_frame(df: pd.DataFrame, cfg: FilterConfig, bounds: Optional[dict] = None) -> pd.DataFrame:
    """Return ``df`` with ``kept`` (bool) and ``reasons`` (list of rule names) columns. ``bounds``: the
    build-wide quartiles of ``iqr_scope: language`` (:class:`LanguageQuartiles`), when ``df`` is one bucket
    of the build; without them the groups are taken from ``df`` itself."""
    df = df.copy()
    flags, language_ok = _own_flags(df, cfg)
    decided = _any(flags, df.index)
    ovrl = _num(df, "dnsmos_ovrl")
    # a clip another rule rejects may never have been scored (score.skip_rejected): that is not a low score
    flags["dnsmos_low"] = (ovrl < cfg.dnsmos_min) | (ovrl.isna() & ~decided)
    flags["sec_per_char_outlier"] = _sec_per_char_outliers(df, cfg, language_ok, bounds)

    matrix = np.column_stack([flags[r].to_numpy(dtype=bool) for r in REASONS]) if len(df) else np.zeros((0, len(REASONS)), bool)
    df["kept"] = ~matrix.any(axis=1)
    names = np.array(REASONS, dtype=object)
    df["reasons"] = [list(names[row]) if not k else [] for row, k in zip(matrix, df["kept"].to_numpy())]
    return df


def rejected_before_scoring(records: list[dict], cfg: FilterConfig) -> list[bool]:
    """Per record: whether a rule that needs neither DNSMOS nor the other clips (every rule but dnsmos_low
    and sec_per_char_outlier) already rejects it, so that scoring it would be wasted work."""
    if not records:
        return []
    df = pd.DataFrame(records)
    flags, _ = _own_flags(df, cfg)
    return _any(flags, df.index).tolist()


def _any(flags: dict[str, pd.Series], index) -> pd.Series:
    out = pd.Series(False, index=index)
    for f in flags.values():
        out |= f.fillna(False).astype(bool)
    return out


def _own_flags(df: pd.DataFrame, cfg: FilterConfig) -> tuple[dict[str, pd.Series], pd.Series]:
    """The rules that judge a clip by its own fields, without DNSMOS; and whether its language passes."""
    dur = _num(df, "duration")
    lang = df["language"].astype("object")
    lang_allowed = lang.isin(list(cfg.languages))
    lang_prob_ok = _num(df, "language_prob").fillna(0.0) > cfg.language_prob_min  # the reference keeps prob > min
    chars = _num(df, "chars").fillna(0.0)
    has_text = df["text"].astype("object").fillna("").astype(str).str.len() > 0
    few = chars < cfg.min_chars
    flags = {
        "too_short": dur < cfg.min_duration_s,
        "too_long": dur > cfg.max_duration_s,
        "language_not_allowed": ~lang_allowed,
        "language_prob_low": lang_allowed & ~lang_prob_ok,
        "too_few_chars": few & has_text,
        "no_text": few & ~has_text,
    }
    flags.update(_guard_flags(df, cfg, dur, chars))
    return flags, lang_allowed & lang_prob_ok


def _sec_per_char_outliers(df: pd.DataFrame, cfg: FilterConfig, language_ok: pd.Series,
                           bounds: Optional[dict] = None) -> pd.Series:
    spc = _num(df, "sec_per_char")
    outlier = pd.Series(False, index=df.index)
    if cfg.iqr_scope == "language" and bounds is not None and len(df):
        judged = spc.notna() & language_ok
        lang = df["language"].astype("object")
        q1, q3, size = (lang.map({k: v[i] for k, v in bounds.items()}).astype("float64") for i in range(3))
        iqr = q3 - q1
        out = judged & (size >= cfg.iqr_min_clips) & ((spc < q1 - cfg.iqr_k * iqr) | (spc > q3 + cfg.iqr_k * iqr))
        return out.fillna(False).astype(bool)
    if cfg.iqr_scope != "none" and len(df):
        # Seconds per character against the clips of the same file (reference) / speaker / language,
        # counting only clips in an accepted language: wrong-language clips must not widen the bounds.
        judged = spc.notna() & language_ok
        keys = [df[k].astype("object") for k in _SCOPE_KEYS[cfg.iqr_scope]]
        sub = pd.DataFrame({f"k{i}": k[judged] for i, k in enumerate(keys)})
        sub["v"] = spc[judged]
        grouped = sub.groupby([c for c in sub.columns if c != "v"], dropna=False, sort=False)["v"]
        q1 = grouped.transform("quantile", 0.25)
        q3 = grouped.transform("quantile", 0.75)
        size = grouped.transform("size")
        iqr = q3 - q1
        out = (size >= cfg.iqr_min_clips) & ((sub["v"] < q1 - cfg.iqr_k * iqr) | (sub["v"] > q3 + cfg.iqr_k * iqr))
        outlier.loc[out.index] = out.to_numpy()
    return outlier


class LanguageQuartiles:
    """``iqr_scope: language`` over a whole build read bucket by bucket: the seconds per character of the
    clips in an accepted language, gathered per language (8 bytes a clip, the one build-wide state a
    publish keeps), then each language's quartiles as :func:`filter_frame` computes them."""

    def __init__(self, cfg: FilterConfig):
        self.cfg = cfg
        self.langs: list[np.ndarray] = []
        self.values: list[np.ndarray] = []

    def add(self, clips: pd.DataFrame) -> None:
        if not len(clips):
            return
        lang = clips["language"].astype("object")
        language_ok = lang.isin(list(self.cfg.languages)) & (_num(clips, "language_prob").fillna(0.0)
                                                             > self.cfg.language_prob_min)
        spc = _num(clips, "sec_per_char")
        judged = (spc.notna() & language_ok).to_numpy()
        self.langs.append(clips["language"].astype("object").to_numpy()[judged])
        self.values.append(spc.to_numpy()[judged])

    def bounds(self) -> dict:
        """Language -> (q1, q3, clips)."""
        if not self.values:
            return {}
        sub = pd.DataFrame({"k": pd.Categorical(np.concatenate(self.langs)), "v": np.concatenate(self.values)})
        grouped = sub.groupby("k", observed=True, sort=False)["v"]
        q1, q3, size = grouped.quantile(0.25), grouped.quantile(0.75), grouped.size()
        return {str(k): (float(q1[k]), float(q3[k]), int(size[k])) for k in q1.index}


def _guard_flags(df: pd.DataFrame, cfg: FilterConfig, dur: pd.Series, chars: pd.Series) -> dict[str, pd.Series]:
    """Hallucination and non-speech rules; a missing score (NaN) or a rule set to None never fires."""
    def above(col, limit):
        return _num(df, col) > limit if limit is not None else pd.Series(False, index=df.index)

    def below(values, limit):
        return values < limit if limit is not None else pd.Series(False, index=df.index)

    cps = (chars / dur).where(chars >= max(cfg.min_chars, 1))  # too little text is no_text / too_few_chars
    return {
        "non_speech": below(_num(df, "speech_prob"), cfg.speech_prob_min),
        "no_speech_prob_high": above("no_speech_prob", cfg.no_speech_prob_max),
        "compression_ratio_high": above("compression_ratio", cfg.compression_ratio_max),
        "avg_logprob_low": below(_num(df, "avg_logprob"), cfg.avg_logprob_min),
        "chars_per_s_out_of_range": below(cps, cfg.chars_per_s_min) | (
            cps > cfg.chars_per_s_max if cfg.chars_per_s_max is not None else False),
        "repeated_ngrams": above("repeat_ngram_frac", cfg.repeat_ngram_max),
        "overlapping_speech": above("overlap_frac", cfg.overlap_max),
    }


def apply_filters(records: list[dict], cfg: FilterConfig) -> list[dict]:
    """Record-list form of :func:`filter_frame`: sets ``kept`` and ``reasons`` on each dict in place.
    Records carry ``source_id`` (or ``source_index``) to group by file."""
    if not records:
        return records
    df = pd.DataFrame(records)
    if "source_index" not in df:
        df["source_index"] = df["source_id"]
    for col in ("language", "language_prob", "dnsmos_ovrl", "chars", "text", "sec_per_char", "speaker", "speech_prob",
                "no_speech_prob", "compression_ratio", "avg_logprob", "repeat_ngram_frac"):
        if col not in df:
            df[col] = None
    judged = filter_frame(df, cfg)
    for rec, kept, reasons in zip(records, judged["kept"], judged["reasons"]):
        rec["kept"], rec["reasons"] = bool(kept), list(reasons)
    return records
