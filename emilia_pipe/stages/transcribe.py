"""Stage 5: language ID and transcription with WhisperX's batched CTranslate2 Whisper model.

Clips from many sources form one batch: WhisperX's ``WhisperModel`` encodes the whole batch once, the
same encoder output gives every clip its own language (top-1 and its probability), and one
``generate`` call decodes the batch with a per-clip prompt in that clip's language. WhisperX's own
``FasterWhisperPipeline`` batches VAD chunks of a single file with one language; our clips are
already cut, so we drive its model directly. Temperature fallback follows Whisper's rule: a clip whose
text is too repetitive (compression ratio) or too unlikely (average log-prob) is decoded again by
sampling at the next temperature, unless it looks like silence (no-speech probability).
"""
from __future__ import annotations

import os
import time
import zlib

import numpy as np

from emilia_pipe.audio import ANALYSIS_RATE
from emilia_pipe.models import whisper_model_path
from emilia_pipe.records import Clip
from emilia_pipe.stages import Stage

N_SAMPLES = 30 * ANALYSIS_RATE  # one Whisper window
NO_SPEECH_THRESHOLD = 0.6
SAMPLING_SEED = 20240705
# The reference's filler-word initial prompt (Emilia-Pipe's ASR default), chosen by initial_prompt: reference.
REFERENCE_PROMPT = "um, uh, um, uh, So uhm, yeaah. Okay, ehm, uuuh."


def compression_ratio(text: str) -> float:
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def pick_device(requested: str) -> str:
    if requested != "auto":
        return requested
    import ctranslate2

    return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"


class Transcriber(Stage):
    name = "transcribe"
    batched = True
    uses_gpu = True

    def __init__(self, config):
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        from faster_whisper.tokenizer import Tokenizer
        from whisperx.asr import WhisperModel

        self.cfg = config.transcribe
        self.device = pick_device(self.cfg.device)
        compute_type = self.cfg.compute_type
        if compute_type == "auto":
            compute_type = "float16" if self.device == "cuda" else "int8"
        import ctranslate2

        # CTranslate2 seeds each worker thread's RNG once, at its first sampled decode, from this seed
        # (set_random_seed has no effect after that): a fresh run over the same clips in the same order
        # samples the same fallbacks. It cannot be re-seeded per clip (see tests/test_determinism.py).
        ctranslate2.set_random_seed(SAMPLING_SEED)
        path = whisper_model_path(config.models.asr, config.models.cache_dir,
                                  token=os.environ.get(config.models.hf_token_env))
        self.model = WhisperModel(path, device=self.device, compute_type=compute_type,
                                  cpu_threads=self.cfg.cpu_threads, num_workers=self.cfg.workers,
                                  local_files_only=True)
        self._Tokenizer = Tokenizer
        self._tokenizers: dict[str, object] = {}
        self.n_mels = self.model.feat_kwargs.get("feature_size") or 80
        self.multilingual = self.model.model.is_multilingual
        longest = self.max_length([self.prompt("en")])
        if longest > self.model.max_length:
            raise ValueError(f"transcribe: the prompt ({longest - self.cfg.max_new_tokens} tokens) plus max_new_tokens "
                             f"({self.cfg.max_new_tokens}) exceed Whisper's {self.model.max_length} tokens; "
                             "shorten initial_prompt or lower max_new_tokens")

    def tokenizer(self, language: str):
        if language not in self._tokenizers:
            self._tokenizers[language] = self._Tokenizer(
                self.model.hf_tokenizer, self.multilingual, task="transcribe", language=language
            )
        return self._tokenizers[language]

    def prompt(self, language: str) -> list[int]:
        tok = self.tokenizer(language)
        text = REFERENCE_PROMPT if self.cfg.initial_prompt == "reference" else self.cfg.initial_prompt
        previous = tok.encode(" " + text.strip()) if text else []
        return self.model.get_prompt(tok, previous, without_timestamps=True)

    def max_length(self, prompts: list[list[int]]) -> int:
        # CTranslate2 counts the prompt in max_length: the transcript gets max_new_tokens on top of it
        return max(len(p) for p in prompts) + self.cfg.max_new_tokens

    def features(self, clips: list[Clip]) -> np.ndarray:
        from whisperx.audio import log_mel_spectrogram

        feats = []
        for clip in clips:
            audio = np.array(clip.audio_16k[:N_SAMPLES], dtype=np.float32)  # writable copy (Ray arrays are read-only)
            mel = log_mel_spectrogram(audio, n_mels=self.n_mels, padding=N_SAMPLES - audio.size)
            feats.append(mel.numpy()[:, :3000])
        return np.stack(feats).astype(np.float32)

    def detect_languages(self, encoder_output) -> list[tuple[str, float]]:
        results = self.model.model.detect_language(encoder_output)
        if not self.multilingual:
            return [("en", 1.0) for _ in results]
        return [(r[0][0][2:-2], float(r[0][1])) for r in results]

    def decode(self, encoder_output, languages: list[str], temperature: float):
        cfg = self.cfg
        prompts = [self.prompt(lang) for lang in languages]
        kwargs = dict(
            max_length=self.max_length(prompts),
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=[-1],
        )
        if temperature == 0:
            kwargs.update(beam_size=cfg.beam_size, patience=1.0, length_penalty=1.0)
        else:
            kwargs.update(beam_size=1, num_hypotheses=cfg.best_of, sampling_temperature=temperature, sampling_topk=0)
        results = self.model.model.generate(encoder_output, prompts, **kwargs)
        out = []
        for lang, res in zip(languages, results):
            tok = self.tokenizer(lang)
            tokens = [t for t in res.sequences_ids[0] if t < tok.eot]
            # ctranslate2 scores are summed log-probs divided by length (length_penalty 1)
            n = max(len(res.sequences_ids[0]), 1)
            avg_logprob = float(res.scores[0]) * n / (n + 1)
            text = tok.decode(tokens)
            out.append((text, avg_logprob, float(res.no_speech_prob)))
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
        enc = self.model.encode(feats)
        langs = self.detect_languages(enc)
        for clip, (lang, prob) in zip(clips, langs):
            clip.language, clip.language_prob = lang, round(prob, 4)
        temps = self.cfg.temperatures or [0.0]
        attempts: list[list[tuple]] = [[] for _ in clips]  # per clip: (text, avg_logprob, no_speech, temperature)
        pending = list(range(len(clips)))
        for step, temp in enumerate(temps):
            if step > 0:  # re-encode only the clips that need another try
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
            from emilia_pipe.word_timing import add_word_timings

            add_word_timings(self, clips, feats)

    def best_attempt(self, attempts: list[tuple]) -> tuple:
        """faster-whisper's rule when every temperature failed: the most likely attempt among those that
        pass the compression-ratio check, else the most likely of all (never simply the last, hottest one)."""
        passing = [a for a in attempts if compression_ratio(a[0]) <= self.cfg.compression_ratio_threshold]
        return max(passing or attempts, key=lambda a: a[1])
