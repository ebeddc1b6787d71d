"""Randomly initialised models of the production architectures, for benchmarks/gpu/full_profile.py ONLY
(the product never loads them): htdemucs and Whisper large-v3 weights cannot be fetched offline, and
their compute does not depend on the weight values.

This module must be importable by the Ray workers (full_profile.py puts its folder on PYTHONPATH): the
Demucs file pickles :class:`BenchHTDemucs` by reference."""
from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import torch
from demucs.htdemucs import HTDemucs


class BenchHTDemucs(HTDemucs):
    """HT-Demucs that runs its whole forward pass, then puts the input mix in the vocals slot: random
    weights would hand the later stages noise, and VAD would then find no speech to transcribe."""

    def forward(self, mix):
        out = super().forward(mix)
        out[:, self.sources.index("vocals")] = mix.to(out.dtype)
        return out


def save_htdemucs(path: Path) -> dict:
    """A .th file that demucs.states.load_model reads (what models.separation may point at)."""
    torch.manual_seed(0)
    # the architecture benchmarks/gpu/torch_stages.py measured: HTDemucs defaults, htdemucs' 7.8 s segment
    model = BenchHTDemucs(sources=["drums", "bass", "other", "vocals"], segment=Fraction(39, 5))
    args, kwargs = model._init_args_kwargs
    torch.save({"klass": BenchHTDemucs, "args": args, "kwargs": kwargs, "state": model.state_dict()}, path)
    return {"stage": "separate", "architecture": "demucs.htdemucs.HTDemucs (vocals output = input mix)",
            "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1), "path": str(path)}


def large_v3_tokenizer(base_tokenizer: Path, dest: Path) -> None:
    """Whisper large-v3's tokenizer from the multilingual base one: large-v3 adds <|yue|> after the 99
    languages (id 50358), which moves every later special token up by one (vocabulary 51866), and calls
    <|nocaptions|> <|nospeech|>."""
    data = json.loads(base_tokenizer.read_text())
    for tok in data["added_tokens"]:
        if tok["id"] >= 50358:
            tok["id"] += 1
        if tok["content"] == "<|nocaptions|>":  # large-v3's name for it
            tok["content"] = "<|nospeech|>"
    data["added_tokens"].append({"id": 50358, "content": "<|yue|>", "single_word": False, "lstrip": False,
                                 "rstrip": False, "normalized": False, "special": True})
    data["added_tokens"].sort(key=lambda t: t["id"])
    dest.write_text(json.dumps(data, ensure_ascii=False))


def save_whisper_large_v3(folder: Path, base_tokenizer: Path) -> dict:
    """A transformers folder (config.json, safetensors in float16, tokenizer.json) of a randomly
    initialised Whisper large-v3: 32 + 32 layers, d_model 1280, 20 heads, 128 mel bins, 51866 tokens."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    config = WhisperConfig(vocab_size=51866, num_mel_bins=128, d_model=1280, encoder_layers=32, decoder_layers=32,
                           encoder_attention_heads=20, decoder_attention_heads=20, encoder_ffn_dim=5120,
                           decoder_ffn_dim=5120, max_source_positions=1500, max_target_positions=448,
                           decoder_start_token_id=50258, bos_token_id=50257, eos_token_id=50257, pad_token_id=50256)
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config)  # on CPU: the benchmark process never holds GPU memory
    folder.mkdir(parents=True, exist_ok=True)
    model.half().save_pretrained(folder)
    large_v3_tokenizer(base_tokenizer, folder / "tokenizer.json")
    params = sum(p.numel() for p in model.parameters())
    del model
    return {"stage": "transcribe", "architecture": "transformers WhisperForConditionalGeneration, large-v3 shape",
            "params_m": round(params / 1e6, 1), "path": str(folder)}
