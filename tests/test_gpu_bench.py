"""Pieces of benchmarks/gpu/full_profile.py that run without a GPU (the run itself: see its docstring)."""
import json
import sys
from pathlib import Path

import pytest
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


def test_token_cap_is_realistic():
    cap = full_profile.token_cap()
    assert 40 <= cap <= 224  # 2.5 tokens per word of the longest reference used (tens of words)


def test_bench_demucs_passes_the_mix_as_vocals():
    model = random_models.BenchHTDemucs(sources=["drums", "bass", "other", "vocals"], audio_channels=2, channels=8,
                                        depth=3, t_layers=1, nfft=512, segment=2, samplerate=16000).eval()
    mix = torch.randn(1, 2, 32000)
    with torch.inference_mode():
        out = model(mix)
    assert torch.equal(out[:, 3], mix) and not torch.equal(out[:, 0], mix)


def test_large_v3_tokenizer_ids(tmp_path):
    from emilia_pipe.models import cache_dir, whisper_base_from_wheels

    base = whisper_base_from_wheels(cache_dir()) / "tokenizer.json"
    random_models.large_v3_tokenizer(base, tmp_path / "tokenizer.json")
    ids = {t["content"]: t["id"] for t in json.loads((tmp_path / "tokenizer.json").read_text())["added_tokens"]}
    # large-v3's ids (openai/whisper-large-v3 tokenizer)
    assert ids["<|startoftranscript|>"] == 50258 and ids["<|yue|>"] == 50358
    assert ids["<|translate|>"] == 50359 and ids["<|nospeech|>"] == 50363 and ids["<|notimestamps|>"] == 50364
    assert len(set(ids.values())) == len(ids)
