"""Keep torch's thread count under our control (some imports, e.g. silero_vad, change it globally)."""
from __future__ import annotations

import contextlib
import os


def set_torch_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads if threads > 0 else max(1, len(os.sched_getaffinity(0))))


@contextlib.contextmanager
def restore_torch_threads(threads: int):
    try:
        yield
    finally:
        set_torch_threads(threads)
