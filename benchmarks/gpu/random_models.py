"""Randomly initialised models of the production architectures, for benchmarks/gpu/full_profile.py ONLY
(the product never loads them): htdemucs and Whisper large-v3 weights cannot be fetched offline, CAM++'s
do not fit a carry-on bundle (bundle.py), and their compute does not depend on the weight values.

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


def save_campplus(path: Path) -> dict:
    """A CAM++ state_dict of random weights (the 192-dim network models.campplus loads), where the offline
    diarization recipe looks for campplus_cn_en_common.pt."""
    from emilia_pipe.models.campplus import CAMPPlus

    torch.manual_seed(0)
    model = CAMPPlus(feat_dim=80, embedding_size=192)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return {"stage": "diarize", "architecture": "CAM++ speaker embedding (emilia_pipe.models.campplus), 192-dim",
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


# Whisper architectures the benchmark can build with random weights. large-v3 is the production one;
# "tiny" (full_profile.py --whisper-arch tiny, CPU smoke runs and tests/test_gpu_bench.py only) has
# Whisper tiny's layer sizes but large-v3's 128 mel bins, 51866-token vocabulary and tokenizer, so that
# everything but the layer sizes is the large-v3 path.
WHISPER_ARCHS = {
    "large-v3": dict(d_model=1280, encoder_layers=32, decoder_layers=32, encoder_attention_heads=20,
                     decoder_attention_heads=20, encoder_ffn_dim=5120, decoder_ffn_dim=5120),
    "tiny": dict(d_model=384, encoder_layers=4, decoder_layers=4, encoder_attention_heads=6,
                 decoder_attention_heads=6, encoder_ffn_dim=1536, decoder_ffn_dim=1536),
}


def _large_v3_id(i: int) -> int:
    """A special-token id of the multilingual base vocabulary -> large-v3's (<|yue|> sits at 50358)."""
    return i + 1 if i >= 50358 else i


def save_whisper(folder: Path, base_tokenizer: Path, arch: str = "large-v3") -> dict:
    """A transformers folder (config.json, generation_config.json, safetensors in float16, tokenizer.json)
    of a randomly initialised Whisper with large-v3's vocabulary (51866 tokens), 128 mel bins, special-token
    ids and suppressed tokens, in the layer sizes of ``arch`` (WHISPER_ARCHS): what
    models.whisper_model_path(backend="torch") accepts and whisper_torch.TorchWhisper loads.

    ``base_tokenizer`` is the lite profile's Whisper base tokenizer.json (models.whisper_base_from_wheels);
    the suppress lists come from the config.json beside it (CTranslate2's suppress_ids), moved to large-v3's
    ids: the same lists as openai/whisper-large-v3's generation_config.json."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    if arch not in WHISPER_ARCHS:
        raise ValueError(f"unknown Whisper architecture {arch!r}; one of {', '.join(WHISPER_ARCHS)}")
    base_tokenizer = Path(base_tokenizer)
    config = WhisperConfig(vocab_size=51866, num_mel_bins=128, max_source_positions=1500, max_target_positions=448,
                           decoder_start_token_id=50258, bos_token_id=50257, eos_token_id=50257, pad_token_id=50256,
                           **WHISPER_ARCHS[arch])
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config)  # on CPU: the benchmark process never holds GPU memory
    ct2_config = base_tokenizer.parent / "config.json"
    if ct2_config.is_file():
        ct2 = json.loads(ct2_config.read_text())
        model.generation_config.suppress_tokens = [_large_v3_id(i) for i in ct2.get("suppress_ids") or []]
        model.generation_config.begin_suppress_tokens = [_large_v3_id(i) for i in ct2.get("suppress_ids_begin") or []]
    else:  # large-v3's own: a space and <|endoftext|> never begin a transcript
        model.generation_config.begin_suppress_tokens = [220, 50257]
    folder.mkdir(parents=True, exist_ok=True)
    model.half().save_pretrained(folder)
    large_v3_tokenizer(base_tokenizer, folder / "tokenizer.json")
    params = sum(p.numel() for p in model.parameters())
    del model
    return {"stage": "transcribe", "architecture": f"transformers WhisperForConditionalGeneration, {arch} shape"
            + ("" if arch == "large-v3" else " (smoke: large-v3 vocabulary and mel bins, not the production size)"),
            "params_m": round(params / 1e6, 1), "path": str(folder)}


def save_whisper_large_v3(folder: Path, base_tokenizer: Path) -> dict:
    """Whisper large-v3: 32 + 32 layers, d_model 1280, 20 heads, 128 mel bins, 51866 tokens."""
    return save_whisper(folder, base_tokenizer, "large-v3")
