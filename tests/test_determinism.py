"""A clip's transcript and scores depend on the clip alone: not on the batch it shares, its position in the
batch, or what the worker ran before (needed when clips are spread over workers). Real lite models."""
import pytest

from emilia_pipe.config import load_config
from emilia_pipe.media.audio import decode
from emilia_pipe.records import ANALYSIS_RATE, Clip

pytestmark = pytest.mark.integration

FILES = ["asr/en/en_jfk_inaugural.flac", "asr/de/de_picovoice_test_de.wav", "asr/fr/fr_picovoice_test_fr.wav"]
FIELDS = ("text", "language", "language_prob", "avg_logprob", "no_speech_prob", "temperature",
          "dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl")


@pytest.fixture(scope="module")
def audio(sample_dir):
    return [decode(sample_dir / f, ANALYSIS_RATE).samples for f in FILES]


def _clips(audio, order):
    return [Clip(source_id=f"src{i}", index=0, start=1.5, end=1.5 + audio[i].size / ANALYSIS_RATE,
                 speaker="SPEAKER_00", audio_16k=audio[i]) for i in order]


def _process(stages, audio, order, batch_size):
    transcriber, scorer = stages
    transcriber.cfg.batch_size = batch_size
    clips = scorer.run(transcriber.run(_clips(audio, order)))
    return {c.source_id: tuple(getattr(c, f) for f in FIELDS) for c in clips}


def _stages(overrides=()):
    from emilia_pipe.stages.score import Scorer
    from emilia_pipe.stages.transcribe import Transcriber

    cfg = load_config(overrides=["run.runner=local", *overrides])
    return Transcriber(cfg), Scorer(cfg)


# every attempt fails (log-prob < 0 always), so each clip goes through the sampled decodes
SAMPLED = ["transcribe.temperatures=[0.8, 1.0]", "transcribe.log_prob_threshold=0.0"]


def test_results_do_not_depend_on_the_batch(audio):
    # the default recipe: beam search at T=0, which passes on clean speech
    stages = _stages()
    together = _process(stages, audio, [0, 1, 2], batch_size=16)
    shuffled = _process(stages, audio, [2, 0, 1], batch_size=16)  # other positions, after a first run
    alone = _process(stages, audio, [1, 2, 0], batch_size=1)  # each clip in its own batch
    assert together["src0"][1] == "en" and together["src1"][1] == "de"
    assert shuffled == together and alone == together


def test_sampled_fallbacks_repeat_in_a_fresh_run(audio):
    first = _process(_stages(SAMPLED), audio, [0, 1, 2], batch_size=16)
    again = _process(_stages(SAMPLED), audio, [0, 1, 2], batch_size=16)
    assert {c[5] for c in first.values()} <= {0.8, 1.0}  # the transcripts are samples
    assert again == first


@pytest.mark.xfail(strict=True, reason="CTranslate2 (4.8) seeds a worker thread's RNG once, at its first sampled "
                   "decode; set_random_seed cannot re-seed it per clip, so a sample depends on what the worker "
                   "sampled before")
def test_sampled_fallbacks_do_not_depend_on_the_batch(audio):
    stages = _stages(SAMPLED)
    together = _process(stages, audio, [0, 1, 2], batch_size=16)
    alone = _process(stages, audio, [2, 1, 0], batch_size=1)
    assert alone == together
