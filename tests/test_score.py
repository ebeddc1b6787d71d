"""DNSMOS P.835 (real ONNX model from the speechmos wheel) and character counting."""
import numpy as np
import pytest

from emilia_pipe.audio import decode
from emilia_pipe.records import Clip
from emilia_pipe.stages.score import Scorer, char_count, dnsmos_windows


def test_char_count_drops_reference_punctuation_only():
    assert char_count(" Hello, world! ") == 10
    assert char_count("甚至出现交易几乎停滞的情况。") == 13
    assert char_count("“你好”，‘世界’！？") == 4
    assert char_count("l'homme - ok") == 9  # the apostrophe goes, the hyphen stays (reference rule)
    assert char_count(None) == 0


def test_windows_tile_short_clips_and_hop_long_ones():
    # 4 s doubles to 16 s (the reference tiles by doubling), then 1 s hops: 7 windows
    assert dnsmos_windows(np.ones(16000 * 4, np.float32), 9.01, 1.0).shape == (7, 144160)
    assert dnsmos_windows(np.ones(16000 * 12, np.float32), 9.01, 1.0).shape == (3, 144160)
    assert dnsmos_windows(np.ones(16000 * 30, np.float32), 9.01, 1.0).shape == (21, 144160)


@pytest.mark.integration
def test_dnsmos_ranks_clean_above_noisy(sample_dir, lite_config):
    speech = decode(sample_dir / "asr/en/en_ljspeech_LJ001-0001.wav", 16000).samples
    noise = decode(sample_dir / "nonspeech/noise_doing_the_dishes.wav", 16000).samples[: speech.size]
    noisy = speech + 0.8 * noise * (np.std(speech) / (np.std(noise) + 1e-9))
    clips = [Clip(source_id="a", index=i, start=0, end=speech.size / 16000, speaker="S", audio_16k=a.astype(np.float32),
                  text="some words here")
             for i, a in enumerate((speech, noisy))]
    Scorer(lite_config).run(clips)
    clean, dirty = clips
    assert 2.5 < clean.dnsmos_ovrl < 4.5 and 1.0 < dirty.dnsmos_ovrl
    assert clean.dnsmos_ovrl > dirty.dnsmos_ovrl + 0.5
    assert clean.dnsmos_bak > dirty.dnsmos_bak + 0.5  # background score is what noise hurts most
    assert clean.chars == 13 and clean.sec_per_char == pytest.approx(clean.duration / 13, rel=1e-3)
