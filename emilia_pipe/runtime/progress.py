"""The one progress reporter: a line on stderr every few seconds and at the end of any long pass (a run's
files, an export's clips), so that work of hours shows it is alive and how long it has left."""
from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, label: str, total: int, unit: str, every_s: float = 2.0, stream=None):
        self.label, self.total, self.unit, self.every = label, total, unit, every_s
        self.stream = stream
        self.t0 = time.perf_counter()
        self.last = 0.0
        self.done = self.failed = 0
        self.audio_s = 0.0  # audio seconds behind ``done`` (shown with its rate when non-zero)

    def step(self, n: int = 1, audio_s: float = 0.0, failed: bool = False) -> None:
        self.done += n
        self.audio_s += audio_s
        self.failed += n if failed else 0
        self.update()

    def update(self, force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self.last < self.every:
            return
        self.last = now
        print(self.line(now), file=self.stream or sys.stderr, flush=True)

    def line(self, now: float) -> str:
        elapsed = now - self.t0
        parts = [f"[emilia-pipe] {self.label}: {self.unit} {self.done}/{self.total}"
                 + (f" ({self.failed} failed)" if self.failed else "")]
        if self.audio_s:
            rate = self.audio_s / elapsed if elapsed > 0 else 0.0
            parts.append(f"{self.audio_s / 3600:.3f} audio-h | {rate:.1f} audio-h/h")
        left = elapsed / self.done * (self.total - self.done) if self.done else None
        parts.append(f"elapsed {elapsed:.0f}s | ETA " + ("?" if left is None else time.strftime("%H:%M:%S", time.gmtime(left))))
        return " | ".join(parts)

    def finish(self) -> None:
        self.update(force=True)
