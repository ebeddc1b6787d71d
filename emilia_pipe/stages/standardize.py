"""Stage 1: decode any input to mono float32 at the working rate, apply the reference loudness,
and keep a 16 kHz view for the analysis stages (VAD, diarization, ASR, DNSMOS)."""
from __future__ import annotations

import time
from pathlib import Path

from emilia_pipe.audio import decode, normalize_loudness, resample, sha256_of
from emilia_pipe.records import Source
from emilia_pipe.stages import Stage


class Standardizer(Stage):
    name = "standardize"

    def __init__(self, config):
        self.cfg = config.standardize

    def run(self, path: str | Path) -> Source:
        t0 = time.perf_counter()
        path = Path(path)
        digest = sha256_of(path)
        decoded = decode(path, self.cfg.sample_rate, self.cfg.max_duration_s)
        samples, gain_db = normalize_loudness(
            decoded.samples, self.cfg.loudness, self.cfg.target_dbfs, self.cfg.max_gain_db
        )
        source = Source(
            source_id=digest[:16],
            path=str(path),
            sha256=digest,
            duration=samples.size / self.cfg.sample_rate,
            orig_sample_rate=decoded.orig_sample_rate,
            orig_channels=decoded.orig_channels,
            codec=decoded.codec,
            container=decoded.container,
            gain_db=gain_db,
            sample_rate=self.cfg.sample_rate,
            audio=samples,
            audio_16k=resample(samples, self.cfg.sample_rate, self.cfg.analysis_rate),
        )
        source.timings[self.name] = time.perf_counter() - t0
        return source
