from emilia_pipe.config import FilterConfig
from emilia_pipe.filtering import apply_filters, iqr_bounds


def clip(**kw):
    rec = dict(source_id="s1", speaker="SPEAKER_00", duration=6.0, language="en", language_prob=0.95,
               dnsmos_ovrl=3.3, chars=60, text="x" * 60, sec_per_char=0.1)
    rec.update(kw)
    return rec


def verdict(records, **cfg):
    return [(r["kept"], r["reasons"]) for r in apply_filters(records, FilterConfig(**cfg))]


def test_each_rule_gives_its_reason():
    recs = [
        clip(),
        clip(duration=2.0, sec_per_char=2.0 / 60),
        clip(duration=31.0, sec_per_char=31.0 / 60),
        clip(language="es"),
        clip(language_prob=0.8),  # reference keeps only prob > 0.8
        clip(dnsmos_ovrl=2.99),
        clip(chars=1, text="a", sec_per_char=6.0),
        clip(chars=0, text="", sec_per_char=None),
    ]
    out = verdict(recs, iqr_scope="none")
    assert out[0] == (True, [])
    assert out[1] == (False, ["too_short"])
    assert out[2] == (False, ["too_long"])
    assert out[3] == (False, ["language_not_allowed"])
    assert out[4] == (False, ["language_prob_low"])
    assert out[5] == (False, ["dnsmos_low"])
    assert out[6] == (False, ["too_few_chars"])
    assert out[7] == (False, ["no_text"])


def test_all_failed_rules_are_listed():
    (kept, reasons), = verdict([clip(duration=2.0, language="es", dnsmos_ovrl=1.0)], iqr_scope="none")
    assert not kept and reasons == ["too_short", "language_not_allowed", "dnsmos_low"]


def test_iqr_rule_flags_outliers_per_file_only():
    normal = [clip(sec_per_char=v) for v in (0.09, 0.10, 0.10, 0.11, 0.10, 0.095)]
    outlier = clip(sec_per_char=0.5)
    other_file = [clip(source_id="s2", sec_per_char=v) for v in (0.45, 0.5, 0.55, 0.5, 0.48, 0.52)]
    out = verdict(normal + [outlier] + other_file)
    assert [k for k, _ in out[:6]] == [True] * 6
    assert out[6] == (False, ["sec_per_char_outlier"])
    assert all(k for k, _ in out[7:])  # 0.5 s/char is normal within s2
    # judged over the whole language instead, the file-level outlier (0.5) sits among s2's clips: kept
    out_lang = verdict(normal + [outlier] + other_file, iqr_scope="language")
    assert out_lang[6] == (True, [])
    lo, hi = iqr_bounds([0.09, 0.1, 0.1, 0.11], 1.5)
    assert lo <= 0.09 and hi >= 0.11


def test_thresholds_move_verdicts():
    recs = [clip(dnsmos_ovrl=v) for v in (2.5, 2.9, 3.1, 3.5)]
    assert sum(r["kept"] for r in apply_filters(recs, FilterConfig(iqr_scope="none"))) == 2
    assert sum(r["kept"] for r in apply_filters(recs, FilterConfig(iqr_scope="none", dnsmos_min=2.4))) == 4
