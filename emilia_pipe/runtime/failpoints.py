"""Crash injection for the exactly-once tests: ``EMILIA_PIPE_CRASH_AT=point:n`` makes the process
SIGKILL itself the n-th time it passes ``point`` (1 = the first). Points: ``transcribe`` (a batch is
about to be transcribed), ``mp3`` (an MP3 was just written), ``commit`` (between a writer's clips part
and its sources part), ``manifest`` (a manifest was just written). Unset, it costs one dict lookup."""
from __future__ import annotations

import os
import signal

_counts: dict[str, int] = {}
_target = os.environ.get("EMILIA_PIPE_CRASH_AT", "")


def hit(point: str) -> None:
    if not _target:
        return
    name, _, n = _target.partition(":")
    if name != point:
        return
    _counts[point] = _counts.get(point, 0) + 1
    if _counts[point] >= int(n or 1):
        os.kill(os.getpid(), signal.SIGKILL)
