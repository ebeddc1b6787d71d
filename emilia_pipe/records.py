"""The data records that travel between stages.

A :class:`Source` is one input file after decoding; stages add to it (turns, clips). A :class:`Clip`
is one 3-30 s span of one speaker; transcription and scoring fill its fields, filtering gives its
verdict. Audio arrays ride along only while a stage needs them and are dropped before writing.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

# The rate of every clip's and source's ``audio_16k`` view. VAD, diarization, Whisper and DNSMOS were all
# trained on 16 kHz audio, so this is fixed; the config validates ``standardize.analysis_rate`` against it.
ANALYSIS_RATE = 16000
# The segment stage's rules that drop a span of a speaker turn instead of cutting it into a clip (the
# ``reason`` of a dropped segment), in the order speech lost to more than one of them is charged to.
CUTTING_RULES = ("too_short", "no_speech_in_turn", "inside_previous_turn")


@dataclass
class Turn:
    start: float
    end: float
    speaker: str

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass
class Clip:
    source_id: str
    index: int  # order within its source
    start: float
    end: float
    speaker: str  # diarization label within the source (e.g. SPEAKER_00)
    source_index: int = -1  # the source's place in the build plan (set by the runner)
    audio: Optional[np.ndarray] = None  # working rate (24 kHz), for the MP3
    audio_16k: Optional[np.ndarray] = None  # analysis rate, for ASR and DNSMOS
    # transcription
    text: Optional[str] = None
    language: Optional[str] = None
    language_prob: Optional[float] = None
    avg_logprob: Optional[float] = None
    no_speech_prob: Optional[float] = None
    compression_ratio: Optional[float] = None
    temperature: Optional[float] = None
    words: Optional[list] = None  # [{word, start, end}] from the clip's start, when transcribe.word_timestamps
    # scores
    dnsmos_sig: Optional[float] = None
    dnsmos_bak: Optional[float] = None
    dnsmos_ovrl: Optional[float] = None
    chars: Optional[int] = None
    sec_per_char: Optional[float] = None
    speech_prob: Optional[float] = None  # mean Silero VAD speech probability (non-speech / music rule)
    repeat_ngram_frac: Optional[float] = None  # repeated word 3-grams of the text (hallucination loops)
    overlap_frac: Optional[float] = None  # share of the clip where diarization saw 2+ speakers at once
    # filter verdict (also re-derived by refilter)
    kept: Optional[bool] = None
    reasons: list[str] = field(default_factory=list)
    # assigned by the writer
    id: Optional[str] = None
    wav: Optional[str] = None
    speaker_id: Optional[str] = None

    @property
    def duration(self) -> float:
        return round(self.end - self.start, 3)

    def to_record(self) -> dict[str, Any]:
        """All scalar fields, JSON-ready (no audio)."""
        rec = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("audio", "audio_16k")}
        rec["duration"] = self.duration
        return rec


@dataclass
class Source:
    source_id: str  # first 16 hex digits of the file's sha256
    path: str
    sha256: str
    duration: float  # seconds of decoded audio
    orig_sample_rate: int
    orig_channels: int
    codec: str
    container: str
    gain_db: float = 0.0
    sample_rate: int = 24000
    # float32 mono at sample_rate and at 16 kHz: arrays, or DiskAudio for an input longer than
    # long_input.chunk_s (then stages read it a chunk at a time)
    audio: Any = None
    audio_16k: Any = None
    separated: bool = False
    turns: list[Turn] = field(default_factory=list)
    clips: list[Clip] = field(default_factory=list)
    # what the cutting rules dropped: start, end, speaker, reason, speech_s (seconds of speech lost)
    dropped_segments: list[dict[str, Any]] = field(default_factory=list)
    # where the VAD speech went: vad_speech_s, speech_in_turns_s, speech_in_clips_s (segment stage)
    speech_yield: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)  # stage -> seconds
    index: int = -1  # place in the build plan (set by the runner; fixes the source's shard and ids)
    decode_errors: list[str] = field(default_factory=list)  # what the decoder reported (corrupt frames...)
    nonfinite_samples: int = 0  # NaN/Inf samples in the input, replaced by silence
    audio_stream: int = 0  # which of the input's audio streams was used (standardize.audio_stream)
    audio_streams: int = 1  # how many audio streams the input has

    def metadata(self) -> dict[str, Any]:
        return {
            "source_id": self.source_id,
            "path": self.path,
            "sha256": self.sha256,
            "duration": round(self.duration, 3),
            "orig_sample_rate": self.orig_sample_rate,
            "orig_channels": self.orig_channels,
            "codec": self.codec,
            "container": self.container,
            "gain_db": round(self.gain_db, 3),
            "separated": self.separated,
            "speech_turn_seconds": round(sum(t.duration for t in self.turns), 3),
            "turns": [dataclasses.asdict(t) for t in self.turns],
            "dropped_segments": self.dropped_segments,
            "speech_yield": self.speech_yield,
            "timings": {k: round(v, 4) for k, v in self.timings.items()},
            "decode_errors": [utf8_text(e) for e in self.decode_errors],
            "nonfinite_samples": self.nonfinite_samples,
            "audio_stream": self.audio_stream,
            "audio_streams": self.audio_streams,
        }


@dataclass
class ClipAudio:
    """The audio of one source's clips, kept apart from the small records so that only workers ever
    hold it (on Ray it lives in the object store, referenced by the driver but never fetched there)."""

    index: int  # the source's plan index
    sample_rate: int
    # per clip: arrays, or AudioSpans of a long source's DiskAudio (read when used)
    working: list[Any]  # at the working rate (for the MP3)
    analysis: list[Any]  # at the analysis rate (for ASR and DNSMOS)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.working) + sum(a.nbytes for a in self.analysis)


def split_audio(source: Source) -> tuple[Source, ClipAudio]:
    """Detach every array from a source and its clips: a light record plus the clip audio."""
    audio = ClipAudio(source.index, source.sample_rate, [c.audio for c in source.clips],
                      [c.audio_16k for c in source.clips])
    source.audio = source.audio_16k = None
    for c in source.clips:
        c.source_index = source.index
        c.audio = c.audio_16k = None
    return source, audio


@dataclass
class Failure:
    """A file that could not go through a stage. Recorded, never fatal to the run."""

    path: str
    stage: str
    error: str
    error_type: str = ""

    def to_record(self) -> dict[str, Any]:
        return {k: utf8_text(v) for k, v in dataclasses.asdict(self).items()}


def utf8_text(text: str) -> str:
    """``text`` as valid UTF-8 (what JSON and Parquet files hold): stray surrogates, the bytes of a file
    name that is not UTF-8 quoted in a message, shown as ``\\xNN``."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        try:
            raw = text.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            raw = text.encode("utf-8", "backslashreplace")
        return raw.decode("utf-8", "backslashreplace")


STATE_DIR = ".emilia"  # the build's own folder inside OUT: ledger, lock, staging; never an input


@dataclass(frozen=True)
class FileTask:
    index: int  # place in the build plan
    path: str  # local path or URL
    stage_dir: Optional[str] = None  # OUT/.emilia/tmp: where a URL is staged and a long input's audio kept
    audio_s: float = 0.0  # its duration as its container states it (0: unknown), for its deadline


_CLIP_ID = re.compile(r"([A-Z]{1,8})_B(\d{5,})_S(\d{5,})_W(\d{6,})")


@dataclass(frozen=True, order=True)
class ClipId:
    """A clip's id, e.g. ``EN_B00000_S00003_W000012``: its language folder, its shard (B), its source's
    place within the shard (S) and its index within the source (W). The one place ids are built and read."""

    language: str
    shard: int
    source: int
    clip: int = 0

    @classmethod
    def parse(cls, text: str) -> "ClipId":
        m = _CLIP_ID.fullmatch(text)
        if m is None:
            raise ValueError(f"not a clip id: {text!r}")
        return cls(m[1], int(m[2]), int(m[3]), int(m[4]))

    @property
    def shard_name(self) -> str:
        """The shard's folder and manifest name, ``EN_B00000``."""
        return f"{self.language}_B{self.shard:05d}"

    @property
    def source_name(self) -> str:
        """The source's folder within the shard, ``EN_B00000_S00003``: unique per source and language."""
        return f"{self.shard_name}_S{self.source:05d}"

    def __str__(self) -> str:
        return f"{self.source_name}_W{self.clip:06d}"
