"""TODO docstring."""
from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total_files: int, stream=sys.stderr, every_s: float = 2.0):
        self.total, self.stream, self.every = total_files, stream, every_s
        self.t0 = time.perf_counter()
        self.last = 0.0
        self.files_done = self.failed = 0
        self.audio_s = 0.0

    def update(self, force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self.last < self.every:
            return
        self.last = now
        elapsed = now - self.t0
        rate = self.audio_s / elapsed if elapsed > 0 else 0.0
        eta = elapsed / self.files_done * (self.total - self.files_done) if self.files_done else float("nan")
        eta_s = "?" if eta != eta else time.strftime("%H:%M:%S", time.gmtime(eta))
        print(f"[emilia-pipe] files {self.files_done}/{self.total} ({self.failed} failed) | "
              f"{self.audio_s / 3600:.3f} audio-h | {rate:.1f} audio-h/h | elapsed {elapsed:.0f}s | ETA {eta_s}",
              file=self.stream, flush=True)
