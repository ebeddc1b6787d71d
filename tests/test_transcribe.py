"""Real Whisper base (CTranslate2, int8, from the wheels) on real recordings."""
import numpy as np
import pytest

from emilia_pipe.audio import decode
from emilia_pipe.evaluation import char_error_rate, word_error_rate
from emilia_pipe.records import Clip

pytestmark = pytest.mark.integration

# file -> (language, reference). Measured with Whisper base int8 on CPU (greedy beam 5):
# JFK WER 0.000; de WER 0.18 (2 compound-word splits of 11); fr WER 0.08; zh CER 0.08 (one character);
# ja CER 0.09; ko CER 0.14 ("이리저리" heard as "1위절이"). Bounds leave room for CPU/threading nondeterminism.
CASES = {
    "asr/en/en_jfk_inaugural.flac": ("en", 0.05),
    "asr/de/de_picovoice_test_de.wav": ("de", 0.30),
    "asr/fr/fr_picovoice_test_fr.wav": ("fr", 0.20),
    "asr/zh/zh_aishell1_BAC009S0764W0121.wav": ("zh", 0.20),
    "asr/ja/ja_picovoice_test_ja.wav": ("ja", 0.25),
    "asr/ko/ko_picovoice_test_ko.wav": ("ko", 0.30),
}


@pytest.fixture(scope="module")
def transcribed(sample_dir, sample_manifest, lite_config):
    from emilia_pipe.stages.transcribe import Transcriber

    refs = {m["file"]: m["reference_text"] for m in sample_manifest}
    clips = []
    for i, name in enumerate(CASES):
        audio = decode(sample_dir / name, 16000).samples
        clips.append(Clip(source_id=f"s{i}", index=0, start=0.0, end=audio.size / 16000, speaker="SPEAKER_00",
                          audio_16k=audio))
    Transcriber(lite_config).run(clips)  # one batch across six files, six languages
    return {name: (clip, refs[name]) for name, clip in zip(CASES, clips)}


@pytest.mark.parametrize("name", list(CASES))
def test_language_and_transcript(transcribed, name):
    clip, reference = transcribed[name]
    language, bound = CASES[name]
    assert clip.language == language
    assert clip.language_prob > 0.8
    err = char_error_rate(reference, clip.text) if language in ("zh", "ja", "ko") else word_error_rate(reference, clip.text)
    assert err <= bound, (clip.text, err)
    assert clip.avg_logprob is not None and clip.avg_logprob < 0
    assert 0.0 <= clip.no_speech_prob < 0.5


def test_noise_is_not_confident_speech(sample_dir, lite_config, transcribed):
    from emilia_pipe.stages.transcribe import Transcriber

    noise = decode(sample_dir / "nonspeech/noise_doing_the_dishes.wav", 16000).samples[: 16000 * 20]
    clip = Clip(source_id="n", index=0, start=0, end=20, speaker="S", audio_16k=noise)
    Transcriber(lite_config).run([clip])
    jfk = transcribed["asr/en/en_jfk_inaugural.flac"][0]
    # relative, not absolute: noise is far less likely to be speech than a clean speech recording
    assert clip.no_speech_prob > 5 * max(jfk.no_speech_prob, 0.01) or clip.avg_logprob < jfk.avg_logprob - 0.3
