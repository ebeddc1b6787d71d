"""Stage 1: decode any input to mono float32 at the working rate, apply the reference loudness,
and keep a 16 kHz view for the analysis stages (VAD, diarization, ASR, DNSMOS). An input longer than
``long_input.chunk_s`` is decoded to disk (:class:`~emilia_pipe.media.disk.DiskAudio`), never whole in memory."""
from __future__ import annotations

import os
import stat
import tempfile
import time
import uuid
from pathlib import Path

from emilia_pipe.media.audio import AudioDecodeError, Spill, decode, loudness_scale, normalize_loudness, resample
from emilia_pipe.media.disk import DiskAudio, spill_path
from emilia_pipe.media.inputs import is_url
from emilia_pipe.media.remote import local_copy
from emilia_pipe.records import Source
from emilia_pipe.runtime.files import sha256_of
from emilia_pipe.stages import Stage


class Standardizer(Stage):
    name = "standardize"

    def __init__(self, config):
        self.cfg = config.standardize
        self.long = config.long_input
        self.inputs = config.inputs

    def run(self, item) -> Source:
        """``item``: a path or URL, or a task with ``path``, ``index`` and ``stage_dir`` (where a URL is
        staged and a long input's audio is kept while it is processed)."""
        t0 = time.perf_counter()
        path = str(getattr(item, "path", item))
        stage_dir = getattr(item, "stage_dir", None)
        index = 0 if isinstance(item, (str, Path)) else item.index
        # outside a build (a direct call), a long input goes to the system's temporary folder, uniquely named
        where, suffix = (stage_dir, "") if stage_dir else (tempfile.gettempdir(), f"-{uuid.uuid4().hex[:12]}")
        spill = Spill(self.long.chunk_s, spill_path(where, index, "working" + suffix),
                      spill_path(where, index, "analysis" + suffix))
        with local_copy(path, stage_dir, int(self.inputs.remote_max_mb * 2**20), self.inputs.remote_stall_timeout_s,
                        int(self.inputs.remote_min_free_mb * 2**20)) as (local, digest):
            if not is_url(path):
                _check_regular(local, path)
            decoded = decode(local, self.cfg.sample_rate, self.cfg.max_duration_s, spill, self.cfg.audio_stream,
                             name=path)
            try:
                digest = digest or sha256_of(local)  # after decoding: a file over the cap is never read whole
            except BaseException:
                _discard(decoded)
                raise
        if decoded.input_samples and decoded.nonfinite_samples > self.cfg.max_nonfinite_fraction * decoded.input_samples:
            _discard(decoded)
            raise AudioDecodeError(
                f"{path}: {decoded.nonfinite_samples} of {decoded.input_samples} samples are NaN/Inf, more than "
                f"standardize.max_nonfinite_fraction={self.cfg.max_nonfinite_fraction:g}")
        if isinstance(decoded.samples, DiskAudio):  # long input: the gain is applied on every read
            samples, analysis = decoded.samples, decoded.analysis
            scale, gain_db = loudness_scale(decoded.sumsq, samples.size, decoded.peak, self.cfg.loudness,
                                            self.cfg.target_dbfs, self.cfg.max_gain_db)
            samples.scale = analysis.scale = scale
        else:
            samples, gain_db = normalize_loudness(
                decoded.samples, self.cfg.loudness, self.cfg.target_dbfs, self.cfg.max_gain_db
            )
            analysis = resample(samples, self.cfg.sample_rate, self.cfg.analysis_rate)
        source = Source(
            source_id=digest[:16],
            path=path,
            sha256=digest,
            duration=samples.size / self.cfg.sample_rate,
            orig_sample_rate=decoded.orig_sample_rate,
            orig_channels=decoded.orig_channels,
            codec=decoded.codec,
            container=decoded.container,
            gain_db=gain_db,
            sample_rate=self.cfg.sample_rate,
            audio=samples,
            audio_16k=analysis,
            decode_errors=decoded.decode_errors,
            nonfinite_samples=decoded.nonfinite_samples,
            audio_stream=decoded.audio_stream,
            audio_streams=decoded.audio_streams,
        )
        source.timings[self.name] = time.perf_counter() - t0
        return source


def _discard(decoded) -> None:
    for audio in (decoded.samples, decoded.analysis):
        if isinstance(audio, DiskAudio):
            audio.remove()


def _check_regular(path: str | Path, name: str) -> None:
    """Never open a FIFO or device (it can block forever); say plainly when a file is empty."""
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise AudioDecodeError(f"{name} is not a regular file: never opened")
    if st.st_size == 0:
        raise AudioDecodeError(f"{name} is empty (0 bytes)")
