"""Keep torch's thread count under our control (some imports, e.g. silero_vad, change it globally)."""
from __future__ import annotations

import contextlib
import os


def default_threads() -> int:
    """Threads a worker may use: OMP_NUM_THREADS where set (Ray sets it from an actor's num_cpus),
    else every core this process may run on. Oversubscribing matters: torch's OpenMP threads spin at
    barriers, and two of them sharing one busy core run an LSTM tens of times slower (measured)."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def set_torch_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads if threads > 0 else default_threads())


@contextlib.contextmanager
def restore_torch_threads(threads: int):
    try:
        yield
    finally:
        set_torch_threads(threads)
