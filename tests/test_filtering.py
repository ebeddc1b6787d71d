from emilia_pipe.config import FilterConfig
from emilia_pipe.dataset.filtering import apply_filters


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
        clip(duration=2.0, chars=20, text="x" * 20, sec_per_char=0.1),
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
    (kept, reasons), = verdict([clip(duration=2.0, chars=20, text="x" * 20, language="es", dnsmos_ovrl=1.0)], iqr_scope="none")
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


def test_thresholds_move_verdicts():
    recs = [clip(dnsmos_ovrl=v) for v in (2.5, 2.9, 3.1, 3.5)]
    assert sum(r["kept"] for r in apply_filters(recs, FilterConfig(iqr_scope="none"))) == 2
    assert sum(r["kept"] for r in apply_filters(recs, FilterConfig(iqr_scope="none", dnsmos_min=2.4))) == 4


# A normal clip as Whisper and the score stage leave it (values of a kept sample_data clip).
GUARDED = dict(speech_prob=0.93, no_speech_prob=0.04, compression_ratio=1.1, avg_logprob=-0.22, repeat_ngram_frac=0.0)


def test_each_guard_fires_on_its_record_and_not_on_a_normal_one():
    cases = {  # reason -> the one score that makes a normal clip fail it
        "non_speech": dict(speech_prob=0.3),
        "no_speech_prob_high": dict(no_speech_prob=0.7),
        "compression_ratio_high": dict(compression_ratio=2.6),
        "avg_logprob_low": dict(avg_logprob=-1.2),
        "chars_per_s_out_of_range": dict(chars=4, text="abcd", sec_per_char=1.5),  # 4 chars in 6 s: 0.67/s
        "repeated_ngrams": dict(repeat_ngram_frac=0.6),
    }
    recs = [clip(**GUARDED)] + [clip(**{**GUARDED, **change}) for change in cases.values()]
    recs.append(clip(**{**GUARDED, "chars": 180, "text": "x" * 180, "sec_per_char": 6 / 180}))  # 30 chars/s
    out = verdict(recs, iqr_scope="none")
    assert out[0] == (True, [])
    assert out[1:-1] == [(False, [reason]) for reason in cases]
    assert out[-1] == (False, ["chars_per_s_out_of_range"])
    # at the threshold the clip is kept, and None switches a rule off
    edge = clip(**{**GUARDED, "speech_prob": 0.5, "no_speech_prob": 0.5, "compression_ratio": 2.4, "avg_logprob": -1.0,
                   "repeat_ngram_frac": 0.4})
    assert verdict([edge], iqr_scope="none") == [(True, [])]
    off = dict(speech_prob_min=None, no_speech_prob_max=None, compression_ratio_max=None, avg_logprob_min=None,
               chars_per_s_min=None, chars_per_s_max=None, repeat_ngram_max=None)
    assert all(k for k, _ in verdict([clip(**{**GUARDED, **c}) for c in cases.values()], iqr_scope="none", **off))


def test_missing_guard_scores_do_not_reject():
    # an older build's ledger has no speech_prob / repeat_ngram_frac: those rules cannot judge it
    assert verdict([clip(speech_prob=None, repeat_ngram_frac=None)], iqr_scope="none") == [(True, [])]


def test_guard_thresholds_are_validated():
    import pytest

    from emilia_pipe.config import ConfigError, load_config

    for bad, words in (("filter.speech_prob_min=.nan", "filter.speech_prob_min"),
                       ("filter.no_speech_prob_max=1.5", "less than or equal to 1"),
                       ("filter.avg_logprob_min=0.5", "filter.avg_logprob_min"),
                       ("filter.repeat_ngram_max=-0.1", "greater than or equal to 0"),
                       ("filter.chars_per_s_min=30", "chars_per_s_min must be below")):
        with pytest.raises(ConfigError, match=words) as err:
            load_config(overrides=[bad])
        assert "\n" not in str(err.value)
    assert load_config(overrides=["filter.speech_prob_min=null"]).filter.speech_prob_min is None


def test_repeated_ngram_fraction_and_speech_probability(sample_dir):
    import numpy as np
    import soundfile as sf
    import torch
    from silero_vad.utils_vad import OnnxWrapper

    from emilia_pipe.models.guards import SpeechProbability, repeated_ngram_fraction
    from emilia_pipe.models.refs import PKG_SILERO
    from emilia_pipe.models.registry import silero_vad_onnx_path

    assert repeated_ngram_fraction("and so my fellow americans ask not what your country can do for you") == 0.0
    assert repeated_ngram_fraction("Thank you. Thank you. Thank you. Thank you.") == 4 / 6
    assert repeated_ngram_fraction("我们我们我们我们") == 4 / 6  # characters are the tokens of Chinese
    assert repeated_ngram_fraction("") == 0.0
    # the numpy driver gives the silero-vad package's own frame probabilities
    speech, sr = sf.read(sample_dir / "asr/en/en_cmu_arctic_us_aew_a0002.wav", dtype="float32")
    assert sr == 16000
    path = silero_vad_onnx_path(PKG_SILERO)
    ours = SpeechProbability(path).frame_probs(speech)
    theirs = OnnxWrapper(str(path), force_onnx_cpu=True).audio_forward(torch.from_numpy(speech), 16000)[0].numpy()
    assert np.allclose(ours, theirs[: ours.size], atol=1e-5)
    # measured: this clip 0.97 mean speech probability; white noise at the same level 0.0x
    noise = np.random.default_rng(0).normal(0, speech.std(), speech.size).astype(np.float32)
    assert SpeechProbability(path).mean(speech) > 0.8 > 0.2 > SpeechProbability(path).mean(noise)
