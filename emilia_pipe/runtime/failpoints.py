"""Crash injection for the exactly-once tests: ``EMILIA_PIPE_CRASH_AT=point:n`` makes the process
SIGKILL itself the n-th time it passes ``point`` (1 = the first); several ``point:n`` may be given,
comma-separated. With ``EMILIA_PIPE_CRASH_ONCE=DIR`` each point fires once across all processes (a
marker file in DIR), so a restarted worker does not die again at the same place.

Points: ``transcribe`` / ``score`` (a batch is about to go through that stage), ``mp3`` (an MP3 was just
written), ``commit`` (between a writer's clips part and its sources part), ``committed`` (a writer's
commit is complete), ``manifest`` (a manifest was staged), ``publish`` (a publish is committed, before it
is applied), ``apply`` (one file of a publish was put in place), ``export`` (an export wrote a shard).
Unset, it costs one dict lookup."""
from __future__ import annotations

import os
import signal

_counts: dict[str, int] = {}
_targets = dict(t.partition(":")[::2] for t in os.environ.get("EMILIA_PIPE_CRASH_AT", "").split(",") if t)
_once_dir = os.environ.get("EMILIA_PIPE_CRASH_ONCE", "")


def hit(point: str) -> None:
    if not _targets or point not in _targets:
        return
    _counts[point] = _counts.get(point, 0) + 1
    if _counts[point] < int(_targets[point] or 1):
        return
    if _once_dir:
        try:  # the first process to get here claims the crash
            os.close(os.open(os.path.join(_once_dir, point), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
    os.kill(os.getpid(), signal.SIGKILL)


def disarm() -> None:
    """No fault fires in this process (a helper process whose work its parent's fault points stand for)."""
    _targets.clear()
