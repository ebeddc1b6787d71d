"""Audio kept on disk instead of in memory: a long input's samples (DiskAudio), read a span or a chunk at a
time, so memory stays flat however long the file is."""
from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class DiskAudio:
    """Float32 mono samples of a long source kept in a file under the build's temporary folder instead
    of memory. Slicing reads just that span; ``lazy(a, b)`` is a span read only when used (a clip's
    audio, until the writer encodes it). It pickles as its path: every worker of a build sees OUT.

    ``scale`` is applied on every read: the loudness gain of a long file is known only after decoding it
    whole, and applying it on read saves a second pass over the file."""

    dtype = np.dtype(np.float32)
    ndim = 1

    def __init__(self, path: str | Path, sample_rate: int, size: int = 0, scale: float = 1.0):
        self.path, self.sample_rate, self.size, self.scale = str(path), sample_rate, size, scale

    @classmethod
    def create(cls, path: str | Path, sample_rate: int) -> "DiskAudio":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        open(path, "wb").close()
        return cls(path, sample_rate)

    @property
    def shape(self) -> tuple[int]:
        return (self.size,)

    def __len__(self) -> int:
        return self.size

    def append(self, samples: np.ndarray) -> None:
        with open(self.path, "ab") as fh:
            fh.write(np.ascontiguousarray(samples, dtype="<f4").tobytes())
        self.size += samples.size

    def read(self, start: int, stop: int) -> np.ndarray:
        start, stop = max(0, start), min(self.size, stop)
        if stop <= start:
            return np.zeros(0, np.float32)
        with open(self.path, "rb") as fh:
            fh.seek(start * 4)
            arr = np.fromfile(fh, dtype="<f4", count=stop - start).astype(np.float32, copy=False)
        if self.scale != 1.0:
            arr *= np.float32(self.scale)
        return arr

    def __getitem__(self, key: slice) -> np.ndarray:
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("DiskAudio supports contiguous slices only")
        start, stop, _ = key.indices(self.size)
        return self.read(start, stop)

    def lazy(self, start: int, stop: int) -> "AudioSpan":
        return AudioSpan(self, max(0, start), min(self.size, stop))

    def chunks(self, samples: int):
        """(offset, array) pieces of at most ``samples`` samples, in order."""
        for offset in range(0, self.size, samples):
            yield offset, self.read(offset, offset + samples)

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self.path)


def chunk_cores(duration: float, chunk_s: float) -> list[tuple[float, float]]:
    """Equal spans tiling [0, duration], each at most ``chunk_s`` long."""
    n = max(1, math.ceil(duration / chunk_s))
    bounds = [round(duration * k / n, 3) for k in range(n + 1)]
    return list(zip(bounds, bounds[1:]))


def spill_path(directory: str | Path, index: int, tag: str) -> str:
    """Where a long source's audio lives while it is processed (``OUT/.emilia/tmp``); named by the
    source's plan index so that whoever closes the source can remove it."""
    return str(Path(directory) / f"audio-{index:09d}-{tag}.f32")


def remove_spilled(directory: str | Path, index: int) -> None:
    for path in Path(directory).glob(f"audio-{index:09d}-*.f32"):
        with contextlib.suppress(OSError):
            path.unlink()


@dataclass
class AudioSpan:
    """A span of a :class:`DiskAudio`, read when converted with ``np.asarray``."""

    audio: DiskAudio
    start: int
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start

    @property
    def nbytes(self) -> int:
        return 4 * self.size

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        arr = self.audio.read(self.start, self.stop)
        return arr if dtype is None else arr.astype(dtype, copy=False)


def read_span(audio, start: int, stop: int) -> np.ndarray:
    """Samples [start, stop) of an in-memory array or a DiskAudio, as a new array."""
    return audio.read(start, stop) if isinstance(audio, DiskAudio) else np.array(audio[max(0, start):stop])
