"""Peak memory and CPU time of a process tree, sampled by a thread (psutil only: the GPU benchmark's
carry-on bundle runs it in a GPU image)."""
from __future__ import annotations

import threading

import psutil


class PeakMemory(threading.Thread):
    """Peak summed RSS of this process and all its descendants, and their CPU-seconds (user + system,
    last sample of each process; a process that lives less than one sample interval is missed). This
    process's CPU counts from its start, or with ``from_now`` from here (several runs in one process)."""

    def __init__(self, every_s: float = 0.2, from_now: bool = False):
        super().__init__(daemon=True)
        self.every, self.peak, self._done = every_s, 0, threading.Event()
        self.cpu: dict[int, float] = {}
        t = psutil.Process().cpu_times()
        self.cpu_before = t.user + t.system if from_now else 0.0

    def run(self):
        me = psutil.Process()
        while not self._done.is_set():
            total = 0
            for p in [me] + me.children(recursive=True):
                try:
                    total += p.memory_info().rss
                    t = p.cpu_times()
                    self.cpu[p.pid] = t.user + t.system
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            self._done.wait(self.every)

    @property
    def cpu_seconds(self) -> float:
        return sum(self.cpu.values()) - self.cpu_before

    def stop(self) -> int:
        self._done.set()
        self.join()
        return self.peak
