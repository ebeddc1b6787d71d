"""Stage 5: language ID and transcription with batched Whisper (CTranslate2 or PyTorch backend).

Clips from many sources form one batch: the backend encodes the whole batch once, the same encoder
output gives every clip its own language (top-1 and its probability), and one batched decode gives
every clip a transcript under a prompt in that clip's language. Temperature fallback follows Whisper's
rule: a clip whose text is too repetitive (compression ratio) or too unlikely (average log-prob) is
decoded again by sampling at the next temperature, unless it looks like silence (no-speech probability).

Backends (``transcribe.backend``), both behind :class:`WhisperBackend`, the fallback loop shared:
- ``ctranslate2`` (default): WhisperX's ``WhisperModel`` (faster-whisper, CTranslate2); WhisperX's own
  ``FasterWhisperPipeline`` batches VAD chunks of a single file with one language, our clips are
  already cut, so we drive its model directly. Word timestamps need this backend.
- ``torch``: transformers' ``WhisperForConditionalGeneration`` (whisper_torch.py); it needs neither
  WhisperX, faster-whisper nor CTranslate2 (the features and prompt tokens are whisper_text.py's).
"""
from __future__ import annotations

import functools
import logging
import os
import time
import zlib
from typing import Protocol

import numpy as np

from emilia_pipe.models.registry import whisper_model_path
from emilia_pipe.models.whisper_text import WhisperTokenizer, log_mel_spectrogram
from emilia_pipe.records import ANALYSIS_RATE, Clip
from emilia_pipe.stages import Stage

log = logging.getLogger(__name__)

N_SAMPLES = 30 * ANALYSIS_RATE  # one Whisper window
NO_SPEECH_THRESHOLD = 0.6
SAMPLING_SEED = 20240705
# The reference's filler-word initial prompt (Emilia-Pipe's ASR default), chosen by initial_prompt: reference.
REFERENCE_PROMPT = "um, uh, um, uh, So uhm, yeaah. Okay, ehm, uuuh."


def compression_ratio(text: str) -> float:
    """faster-whisper's get_compression_ratio, kept here: importing faster_whisper pulls in CTranslate2,
    which the torch backend must run without (and it divides by zero on empty text)."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def pick_device(requested: str, backend: str = "ctranslate2") -> str:
    """``auto`` -> cuda when the backend sees a GPU. CTranslate2 on cuda first gets its CUDA 12 cuBLAS and
    cuDNN 9 preloaded from pip packages (cuda_libs.py): a CUDA 13 system has neither."""
    device = requested
    if requested == "auto":
        if backend == "torch":
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        else:
            import ctranslate2

            device = "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
    if device == "cuda" and backend == "ctranslate2":
        from emilia_pipe.runtime.cuda_libs import preload_cuda_libs

        log.info("transcribe: %s", preload_cuda_libs().message)
    return device


class WhisperBackend(Protocol):
    """What the stage needs of a Whisper implementation. ``enc`` is the backend's own encoder output."""

    hf_tokenizer: object  # tokenizers.Tokenizer of the model
    multilingual: bool
    n_mels: int
    max_length: int  # Whisper's decoder positions (448)

    def encode(self, feats: np.ndarray): ...

    def select(self, enc, rows: list[int]):
        """The encoder output of ``rows`` alone, as ``encode(feats[rows])`` would give it, or None where
        encoding those clips again is the cheaper way."""

    def detect_languages(self, enc) -> list[tuple[str, float]]:
        """Per clip: (language code, probability) from the first decoder step, over language tokens only."""

    def generate(self, enc, prompts: list[list[int]], temperature: float, beam_size: int, best_of: int,
                 max_new_tokens: int) -> list[tuple[list[int], float, float]]:
        """Per clip: (text tokens, avg log-prob, no-speech prob). Beam search at temperature 0, else the
        best of ``best_of`` samples."""


@functools.cache
def _ct2_whisper_class():
    from whisperx.asr import WhisperModel

    class CT2Whisper(WhisperModel):
        """WhisperX's batched faster-whisper model as a WhisperBackend (word_timing.py uses it directly)."""

        @property
        def multilingual(self) -> bool:
            return self.model.is_multilingual

        @property
        def n_mels(self) -> int:
            return self.feat_kwargs.get("feature_size") or 80

        encode_batch = 0  # >0: encode this many clips at a time (CPU), see Transcriber.__init__

        def encode(self, feats):
            if not self.encode_batch or len(feats) <= self.encode_batch:
                return super().encode(feats)
            import ctranslate2

            # one clip's encoding does not depend on its batch (checked bit-equal), but the self-attention
            # scores of 16 clips take 1.4 GiB at once; 4 at a time take 0.35 GiB and slightly less CPU
            whole = super().encode  # (zero-argument super() does not work inside a comprehension)
            parts = [np.array(whole(feats[i : i + self.encode_batch])) for i in range(0, len(feats), self.encode_batch)]
            return ctranslate2.StorageView.from_array(np.concatenate(parts))

        def select(self, enc, rows):
            import ctranslate2

            if self.model.device != "cpu":  # a GPU re-encodes a few clips in no time
                return None
            # one clip's encoding does not depend on its batch (bit-equal), so the rows are what a re-encode gives
            return ctranslate2.StorageView.from_array(np.ascontiguousarray(np.asarray(enc)[rows]))

        def detect_languages(self, enc):
            return [(r[0][0][2:-2], float(r[0][1])) for r in self.model.detect_language(enc)]

        def generate(self, enc, prompts, temperature, beam_size, best_of, max_new_tokens):
            kwargs = dict(
                # CTranslate2 counts the prompt in max_length: the transcript gets max_new_tokens on top of it
                max_length=max(len(p) for p in prompts) + max_new_tokens,
                return_scores=True,
                return_no_speech_prob=True,
                suppress_blank=True,
                suppress_tokens=[-1],
            )
            if temperature == 0:
                kwargs.update(beam_size=beam_size, patience=1.0, length_penalty=1.0)
            else:
                kwargs.update(beam_size=1, num_hypotheses=best_of, sampling_temperature=temperature, sampling_topk=0)
            out = []
            for res in self.model.generate(enc, prompts, **kwargs):
                # ctranslate2 scores are summed log-probs divided by length (length_penalty 1)
                n = max(len(res.sequences_ids[0]), 1)
                out.append((res.sequences_ids[0], float(res.scores[0]) * n / (n + 1), float(res.no_speech_prob)))
            return out

    return CT2Whisper


class Transcriber(Stage):
    name = "transcribe"
    batched = True
    uses_gpu = True

    def __init__(self, config):
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        self.cfg = cfg = config.transcribe
        self.device = pick_device(cfg.device, cfg.backend)
        path = whisper_model_path(config.models.asr, config.models.cache_dir,
                                  token=os.environ.get(config.models.hf_token_env), backend=cfg.backend)
        if cfg.backend == "torch":
            from emilia_pipe.models.whisper_torch import TorchWhisper

            self.model: WhisperBackend = TorchWhisper(path, self.device, cfg.compute_type, seed=SAMPLING_SEED)
        else:
            import ctranslate2

            compute_type = cfg.compute_type
            if compute_type == "auto":
                compute_type = "float16" if self.device == "cuda" else "int8"
            # CTranslate2 seeds each worker thread's RNG once, at its first sampled decode, from this seed
            # (set_random_seed has no effect after that): a fresh run over the same clips in the same order
            # samples the same fallbacks. It cannot be re-seeded per clip (see tests/test_determinism.py).
            ctranslate2.set_random_seed(SAMPLING_SEED)
            self.model = _ct2_whisper_class()(path, device=self.device, compute_type=compute_type,
                                              cpu_threads=cfg.cpu_threads, num_workers=cfg.workers,
                                              local_files_only=True)
            if self.device == "cpu":  # a GPU has the memory for the whole batch, and gains from it
                self.model.encode_batch = cfg.encode_batch_size
        self._tokenizers: dict[str, WhisperTokenizer] = {}
        self.n_mels = self.model.n_mels
        self.multilingual = self.model.multilingual
        longest = self.max_length([self.prompt("en")])
        if longest > self.model.max_length:
            raise ValueError(f"transcribe: the prompt ({longest - cfg.max_new_tokens} tokens) plus max_new_tokens "
                             f"({cfg.max_new_tokens}) exceed Whisper's {self.model.max_length} tokens; "
                             "shorten initial_prompt or lower max_new_tokens")

    def tokenizer(self, language: str) -> WhisperTokenizer:
        if language not in self._tokenizers:
            self._tokenizers[language] = WhisperTokenizer(self.model.hf_tokenizer, self.multilingual, "transcribe",
                                                          language)
        return self._tokenizers[language]

    def prompt(self, language: str) -> list[int]:
        tok = self.tokenizer(language)
        text = REFERENCE_PROMPT if self.cfg.initial_prompt == "reference" else self.cfg.initial_prompt
        previous = tok.encode(" " + text.strip()) if text else []
        # as faster-whisper's get_prompt: the text's last max_length // 2 - 1 tokens after <|startofprev|>
        context = [tok.sot_prev, *previous[-(self.model.max_length // 2 - 1):]] if previous else []
        return context + list(tok.sot_sequence) + [tok.no_timestamps]

    def max_length(self, prompts: list[list[int]]) -> int:
        """Decoder positions the longest prompt and its transcript may use (Whisper has 448)."""
        return max(len(p) for p in prompts) + self.cfg.max_new_tokens

    def features(self, clips: list[Clip]) -> np.ndarray:
        feats = []
        for clip in clips:
            audio = np.array(clip.audio_16k[:N_SAMPLES], dtype=np.float32)  # writable copy (Ray arrays are read-only)
            mel = log_mel_spectrogram(audio, n_mels=self.n_mels, padding=N_SAMPLES - audio.size)
            feats.append(mel.numpy()[:, :3000])
        return np.stack(feats).astype(np.float32)

    def detect_languages(self, encoder_output) -> list[tuple[str, float]]:
        if not self.multilingual:
            return [("en", 1.0)] * encoder_output.shape[0]  # English-only model: no language tokens
        return self.model.detect_languages(encoder_output)

    def decode(self, encoder_output, languages: list[str], temperature: float):
        cfg = self.cfg
        prompts = [self.prompt(lang) for lang in languages]
        results = self.model.generate(encoder_output, prompts, temperature, cfg.beam_size, cfg.best_of,
                                      cfg.max_new_tokens)
        out = []
        for lang, (tokens, avg_logprob, no_speech) in zip(languages, results):
            tok = self.tokenizer(lang)
            out.append((tok.decode([t for t in tokens if t < tok.eot]), avg_logprob, no_speech))
        return out

    def needs_fallback(self, text: str, avg_logprob: float, no_speech: float) -> bool:
        if no_speech > NO_SPEECH_THRESHOLD and avg_logprob < self.cfg.log_prob_threshold:
            return False  # silence: a retry would only invent words
        return compression_ratio(text) > self.cfg.compression_ratio_threshold or avg_logprob < self.cfg.log_prob_threshold

    def run(self, clips: list[Clip]) -> list[Clip]:
        t0 = time.perf_counter()
        for i in range(0, len(clips), self.cfg.batch_size):
            self._run_batch(clips[i : i + self.cfg.batch_size])
        self.last_seconds = time.perf_counter() - t0
        return clips

    def _run_batch(self, clips: list[Clip]) -> None:
        feats = self.features(clips)
        enc = first = self.model.encode(feats)
        langs = self.detect_languages(enc)
        for clip, (lang, prob) in zip(clips, langs):
            clip.language, clip.language_prob = lang, round(prob, 4)
        temps = self.cfg.temperatures or [0.0]
        attempts: list[list[tuple]] = [[] for _ in clips]  # per clip: (text, avg_logprob, no_speech, temperature)
        pending = list(range(len(clips)))
        for step, temp in enumerate(temps):
            if step > 0:  # only the clips that need another try; their encoding is kept, not redone
                enc = self.model.select(first, rows=pending)
                if enc is None:
                    enc = self.model.encode(feats[pending])
            decoded = self.decode(enc, [clips[i].language for i in pending], temp)
            retry = []
            for i, (text, avg_lp, no_speech) in zip(pending, decoded):
                attempts[i].append((text, avg_lp, no_speech, temp))
                if self.needs_fallback(text, avg_lp, no_speech):
                    retry.append(i)
            pending = retry
            if not pending:
                break
        failed = set(pending)
        for i, clip in enumerate(clips):
            # a clip that passed keeps its last attempt; one that never passed keeps its best one
            text, avg_lp, no_speech, temp = self.best_attempt(attempts[i]) if i in failed else attempts[i][-1]
            clip.text, clip.avg_logprob, clip.no_speech_prob = text, round(avg_lp, 4), round(no_speech, 4)
            clip.compression_ratio = round(compression_ratio(text), 3)
            clip.temperature = temp
        if self.cfg.word_timestamps:  # after the text is final: alignment never changes it
            from emilia_pipe.models.word_timing import add_word_timings

            add_word_timings(self, clips, feats)

    def best_attempt(self, attempts: list[tuple]) -> tuple:
        """faster-whisper's rule when every temperature failed: the most likely attempt among those that
        pass the compression-ratio check, else the most likely of all (never simply the last, hottest one)."""
        passing = [a for a in attempts if compression_ratio(a[0]) <= self.cfg.compression_ratio_threshold]
        return max(passing or attempts, key=lambda a: a[1])
