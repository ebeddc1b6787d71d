"""Pieces of benchmarks/gpu/full_profile.py that run without a GPU (the run itself: see its docstring)."""
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT / "benchmarks" / "gpu")]

import full_profile  # noqa: E402
import random_models  # noqa: E402


def test_report_counts_gpu_seconds_by_share():
    summary = {"hours": {"input": 0.5}, "stage_seconds": {"separate": 100.0, "transcribe": 200.0, "segment": 50.0}}
    r = full_profile.report(summary, wall_s=900.0, n_gpus=1, shares={"separate": 0.25, "transcribe": 0.4})
    assert r["gpu_seconds_per_audio_hour"] == {"separate": 50.0, "transcribe": 160.0}
    assert r["audio_hours_per_gpu_hour"] == 2.0 and r["audio_hours_per_hour"] == 2.0
    assert r["stage_seconds_per_audio_hour"]["segment"] == 100.0
    cpu = full_profile.report(summary, wall_s=900.0, n_gpus=0, shares={})
    assert cpu["gpu_seconds_per_audio_hour"] is None and cpu["audio_hours_per_gpu_hour"] is None


def test_token_cap_is_realistic(tmp_path, sample_dir):
    import speech

    turns = speech.export_turns(sample_dir, tmp_path / "turns")
    cap = full_profile.token_cap(tmp_path / "turns")
    assert 40 <= cap <= 224  # 2.5 tokens per word of the longest reference used (tens of words)
    assert len(turns["turns"]["a"]) == 8 and turns["sources"]["b-00.wav"] == "en_jfk_inaugural.flac"


def test_the_conversation_alternates_real_turns_into_input_files(tmp_path, sample_dir):
    import soundfile as sf
    import speech

    speech.export_turns(sample_dir, tmp_path / "turns")
    paths = speech.write_inputs(tmp_path / "turns", tmp_path / "inputs", minutes=1.5, file_minutes=1)
    info = [sf.info(p) for p in paths]
    durations = [i.duration for i in info]  # 1 min files; the last turn may run past 1.5 min (turns are <= 12 s)
    assert len(paths) == 2 and durations[0] == 60 and 90 <= sum(durations) < 102
    assert {i.samplerate for i in info} == {16000}
    audio = speech.conversation(tmp_path / "turns", 20)
    first = sf.read(tmp_path / "turns" / "a-00.wav", dtype="float32")[0]
    assert np.array_equal(audio[: first.size], first)  # LJSpeech's reader opens, then 0.8 s of silence
    assert not audio[first.size: first.size + 12800].any() and audio[first.size + 12800:].any()


def test_bench_demucs_passes_the_mix_as_vocals():
    model = random_models.BenchHTDemucs(sources=["drums", "bass", "other", "vocals"], audio_channels=2, channels=8,
                                        depth=3, t_layers=1, nfft=512, segment=2, samplerate=16000).eval()
    mix = torch.randn(1, 2, 32000)
    with torch.inference_mode():
        out = model(mix)
    assert torch.equal(out[:, 3], mix) and not torch.equal(out[:, 0], mix)


def test_large_v3_tokenizer_ids(tmp_path):
    from emilia_pipe.models.registry import cache_dir, whisper_base_from_wheels

    base = whisper_base_from_wheels(cache_dir()) / "tokenizer.json"
    random_models.large_v3_tokenizer(base, tmp_path / "tokenizer.json")
    ids = {t["content"]: t["id"] for t in json.loads((tmp_path / "tokenizer.json").read_text())["added_tokens"]}
    # large-v3's ids (openai/whisper-large-v3 tokenizer)
    assert ids["<|startoftranscript|>"] == 50258 and ids["<|yue|>"] == 50358
    assert ids["<|translate|>"] == 50359 and ids["<|nospeech|>"] == 50363 and ids["<|notimestamps|>"] == 50364
    assert len(set(ids.values())) == len(ids)


def test_random_whisper_runs_on_the_torch_backend(tmp_path, sample_dir):
    """The benchmark's random-Whisper path (--asr large-v3-random) end to end through the transcribe stage, in
    the tiny layer sizes (--whisper-arch tiny): its own model folder and overrides, backend=torch, the token cap
    and no temperature fallback. Random weights never stop on their own: the cap must bound every transcript."""
    from faster_whisper.tokenizer import _LANGUAGE_CODES

    from emilia_pipe.config import load_config
    from emilia_pipe.media.audio import decode
    from emilia_pipe.records import Clip
    from emilia_pipe.stages.transcribe import Transcriber

    entry, asr_overrides = full_profile.random_whisper(tmp_path / "whisper-tiny-random", "tiny")
    assert entry["stage"] == "transcribe" and 30 < entry["params_m"] < 45  # tiny's layers, large-v3's vocabulary
    cap = 12  # the benchmark's is full_profile.token_cap(); a small one keeps the test short
    config = load_config(overrides=[*asr_overrides, *full_profile.decode_overrides(cap), "transcribe.device=cpu"])
    stage = Transcriber(config)
    model = stage.model
    assert type(model).__name__ == "TorchWhisper" and stage.n_mels == 128 and stage.multilingual
    assert len(model.lang_ids) == 100 and model.no_speech == 50363  # large-v3: <|yue|> and <|nospeech|>
    assert 50363 in model.suppress and model.suppress_begin == [220, 50257]  # openai/whisper-large-v3's lists
    decoded, temperatures = [], []
    generate = model.generate

    def spy(enc, prompts, temperature, beam_size, best_of, max_new_tokens):
        temperatures.append(temperature)
        out = generate(enc, prompts, temperature, beam_size, best_of, max_new_tokens)
        decoded.extend(tokens for tokens, _, _ in out)
        return out

    model.generate = spy
    clips = []
    for i, name in enumerate(("asr/en/en_jfk_inaugural.flac", "asr/en/en_cmu_arctic_us_aew_a0001.wav")):
        audio = decode(sample_dir / name, 16000).samples
        clips.append(Clip(source_id=f"s{i}", index=0, start=0.0, end=audio.size / 16000, speaker="S", audio_16k=audio))
    stage.run(clips)
    assert temperatures == [0.0]  # one decode of the batch: no fallback
    assert len(decoded) == 2 and all(0 < len(t) <= cap for t in decoded)
    for clip in clips:
        assert clip.language in _LANGUAGE_CODES and 0.0 <= clip.language_prob <= 1.0
        assert clip.temperature == 0.0 and isinstance(clip.text, str)
        assert clip.avg_logprob <= 0.0 and 0.0 <= clip.no_speech_prob <= 1.0
