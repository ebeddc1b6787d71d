"""glibc's allocator, set for this workload: reuse freed memory instead of handing it back to the kernel.

CTranslate2 and torch allocate and free tensors of hundreds of MB many times a second (the Whisper
encoder's attention scores). glibc serves each of those with a fresh mmap and unmaps it on free, so every
use faults its pages in again, and the kernel time shows. One arena, no mmap and a trim threshold keep
such blocks in the heap for the next tensor, with bit-equal results (figures in docs/performance.md).
The heap gives memory back once more than ``top_mb`` lies free at its top, and after a stage call once
the process has grown ``keep_free_mb`` since the last full trim (HeapTrimmer).

One arena only helps when set before any thread allocates: a thread that did (numpy's OpenBLAS, pyarrow)
keeps an arena of its own, and threads started later (CTranslate2's workers) share it, where blocks over
64 MB are always mmapped afresh. mallopt from Python comes too late for that, so the ``emilia-pipe``
command starts itself again with the settings as glibc tunables (``restart_tuned``)."""
from __future__ import annotations

import ctypes
import os
import sys
import threading

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


def tune_malloc(top_mb: int) -> bool:
    """Set glibc's allocator as above for this process (threads that start later share one arena, unless an
    earlier thread made another). Returns False, changing nothing, where the C library is not glibc."""
    if _LIBC is None:
        return False
    return bool(_LIBC.mallopt(M_ARENA_MAX, 1) and _LIBC.mallopt(M_MMAP_MAX, 0)
                and _LIBC.mallopt(M_TRIM_THRESHOLD, min(top_mb, 2047) << 20))


TUNED_MARK = "EMILIA_PIPE_MALLOC_TUNED"  # set in a process that started with the tunables below


def glibc_tunables(top_mb: int) -> str:
    """``tune_malloc``'s settings as a GLIBC_TUNABLES value, which glibc applies before the first allocation."""
    return f"glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold={min(top_mb, 2047) << 20}"


def tuned_env(top_mb: int) -> dict[str, str]:
    """Environment variables that start a process with ``tune_malloc``'s settings from its first allocation
    (after any GLIBC_TUNABLES already set here)."""
    tunables = ":".join(filter(None, [os.environ.get("GLIBC_TUNABLES"), glibc_tunables(top_mb)]))
    return {"GLIBC_TUNABLES": tunables, TUNED_MARK: "1"}


def restart_tuned(python_args: list[str], top_mb: int) -> None:
    """Replace this process (exec: same pid, same streams) by ``python *python_args`` started with the
    tunables (fewer page faults and less kernel time, measured: docs/performance.md). Returns, doing
    nothing, where the C library is not glibc or when this process already is the restarted one."""
    if _LIBC is None or os.environ.get(TUNED_MARK) or not sys.executable:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, [sys.executable, *python_args], {**os.environ, **tuned_env(top_mb)})
    except OSError:  # e.g. an interpreter that cannot be run again: go on with mallopt's late tuning
        return


def trim_heap() -> None:
    """Hand the heap's free pages back to the system (glibc's malloc_trim); nothing elsewhere."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


class HeapTrimmer:
    """Trims the heap after a stage call only once resident memory has grown ``slack_mb`` past what it was
    after the last trim. malloc_trim also releases free pages in the middle of the heap, so trimming after
    every call made the next large tensor fault all its pages in again, while never trimming let the peak
    grow (figures in docs/performance.md)."""

    def __init__(self, slack_mb: int = 256):
        self.slack = slack_mb << 20
        self.after_last_trim = 0
        self.trims = 0
        self._lock = threading.Lock()

    def maybe_trim(self) -> bool:
        if _LIBC is None or resident_bytes() <= self.after_last_trim + self.slack:
            return False
        if not self._lock.acquire(blocking=False):  # another thread is trimming this very heap
            return False
        try:
            trim_heap()
            self.after_last_trim = resident_bytes()
            self.trims += 1
            return True
        finally:
            self._lock.release()


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident_bytes() -> int:
    """This process's resident memory (Linux /proc; 0 elsewhere, where nothing is trimmed anyway)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:
        return 0


HEAP = HeapTrimmer()


def setup_heap(tune: bool, keep_free_mb: int, top_mb: int) -> bool:
    """This process's allocator policy from the run settings: the trim slack always, the glibc tuning
    (``tune_malloc``) when asked for. Returns whether the tuning was applied."""
    HEAP.slack = keep_free_mb << 20
    return tune_malloc(top_mb) if tune else False
