"""glibc's allocator, set for this workload: reuse freed memory instead of handing it back to the kernel.

CTranslate2 and torch allocate and free tensors of hundreds of MB many times a second (the Whisper
encoder's attention scores of 4 clips take 288 MB per layer). glibc serves each of those with a fresh
mmap and unmaps it on free, so every use faults its pages in again: measured on sample_data, 10.7 million
page faults and 22 of 165 CPU-seconds in the kernel for transcription alone. One arena, no mmap and
a trim threshold keep such blocks in the heap for the next tensor: 165 -> 132 CPU-s on one lane, bit-equal
results. The heap gives memory back once more than ``keep_free_mb`` lies free at its top."""
from __future__ import annotations

import ctypes
import sys

# mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8


def _glibc():
    """glibc loaded through ctypes, or None where the C library is something else (macOS, musl)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt, libc.malloc_trim  # noqa: B018 - both must exist
    except (OSError, AttributeError):
        return None
    libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return libc


_LIBC = _glibc()


def tune_malloc(keep_free_mb: int) -> bool:
    """Set glibc's allocator as above for this process (threads that start later share one arena).
    Returns False, changing nothing, where the C library is not glibc."""
    if _LIBC is None:
        return False
    return bool(_LIBC.mallopt(M_ARENA_MAX, 1) and _LIBC.mallopt(M_MMAP_MAX, 0)
                and _LIBC.mallopt(M_TRIM_THRESHOLD, min(keep_free_mb, 2047) << 20))


def trim_heap() -> None:
    """Hand the heap's free pages back to the system (glibc's malloc_trim); nothing elsewhere."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
