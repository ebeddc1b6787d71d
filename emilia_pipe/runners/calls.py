"""The calls every executor makes on a stage, with failures turned into records. The same functions
run in-process (local executor) and inside Ray actors, so both behave alike."""
from __future__ import annotations

import contextlib
import signal
import threading
import time
from typing import Any, Optional, Union

import numpy as np

from emilia_pipe.media.disk import DiskAudio
from emilia_pipe.records import ClipAudio, Failure, FileTask, Source, split_audio
from emilia_pipe.runtime import failpoints
from emilia_pipe.runtime.files import DISK_FULL, output_fault
from emilia_pipe.runtime.heap import HEAP
from emilia_pipe.stages import Stage


class BatchFailure(Exception):
    def __init__(self, stage: str, error: str):
        super().__init__(f"{stage}: {error}")
        self.stage, self.error = stage, error


# Ray's errors for work lost with its process or node (matched by name: this module never imports Ray)
_LOST = {"RayActorError", "ActorDiedError", "ActorUnavailableError", "ActorUnschedulableError", "WorkerCrashedError",
         "NodeDiedError", "ObjectLostError", "OwnerDiedError", "ObjectReconstructionFailedError",
         "ObjectFetchTimedOutError", "LocalRayletDiedError", "WriterLostError", "WriterRetiredError"}


class WriterLostError(RuntimeError):
    """A local writer was given up on (it hung past its deadline) with work it had acknowledged."""


def worker_lost(exc: BaseException) -> bool:
    """Whether ``exc`` says the work died with its worker (to be done again), not that it failed."""
    return any(t.__name__ in _LOST for t in type(exc).__mro__)


def restarting_error(exc: Optional[BaseException]) -> bool:
    """Ray says the actor is restarting (the task may not have run): worth sending again shortly."""
    return exc is not None and any(t.__name__ == "ActorUnavailableError" for t in type(exc).__mro__)


def release_memory() -> None:
    """Hand freed heap back to the OS after a stage once the process has grown by ``run.malloc_keep_free_mb``
    since the last trim: glibc keeps it otherwise, and a worker holding every model about doubled over three
    files (docs/performance.md); trimming after every call costs CPU instead (runtime.heap.HeapTrimmer)."""
    HEAP.maybe_trim()


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:2000]


def run_file_stage(stage: Stage, item: Union[FileTask, Source, Failure]) -> Union[Source, Failure]:
    """One per-file stage; a failure upstream passes through, an exception here becomes a Failure."""
    if isinstance(item, Failure):
        return item
    path = item.path
    try:
        if isinstance(item, FileTask):  # the first stage (standardize) reads the input
            source = stage.run(item)
            source.index = item.index
            return source
        return stage.run(item)
    except Exception as exc:  # noqa: BLE001 - any error in one file must not stop the run
        discard_disk_audio(item)
        fault = output_fault(exc)
        if fault is not None and fault.errno in DISK_FULL:  # not this file's fault: every next one would fail too
            raise fault from None
        return Failure(path=path, stage=stage.name, error=_error(exc), error_type=type(exc).__name__)
    finally:
        release_memory()


def discard_disk_audio(item) -> None:
    """A long source that failed: its audio on disk is of no more use."""
    for audio in (getattr(item, "audio", None), getattr(item, "audio_16k", None)):
        if isinstance(audio, DiskAudio):
            audio.remove()


def finish_file(item: Union[Source, Failure]) -> tuple[Union[Source, Failure], Optional[ClipAudio]]:
    """End of the per-file chain: the small record (for the driver) and the clip audio (for workers)."""
    if isinstance(item, Failure):
        return item, None
    return split_audio(item)


def clip_spans(keys: list[tuple[int, int]], sources: list[int], *analysis: list) -> dict[tuple[int, int], Any]:
    """What a batch is sent: the analysis-rate audio of just its clips, keyed (source index, clip index),
    picked from ``analysis``, the per-clip analysis audio of each of ``sources`` (their other clips and
    their working-rate audio stay behind)."""
    by_source = dict(zip(sources, analysis))
    return {(s, i): by_source[s][i] for s, i in keys}


def batch_keys(clips) -> list[tuple[int, int]]:
    return [(c.source_index, c.index) for c in clips]


def run_batch_stage(stage: Stage, item, spans: dict[tuple[int, int], Any]):
    """One batched stage on light clips: attach their analysis audio (``spans``, from :func:`clip_spans`),
    run, detach. Returns the clips and the accumulated per-stage seconds, or a BatchFailure (passed
    through from an earlier stage too)."""
    if isinstance(item, BatchFailure):
        return item
    clips, seconds = item if isinstance(item, tuple) else (item, {})
    t0 = time.perf_counter()
    try:
        for c in clips:
            c.audio_16k = np.asarray(spans[(c.source_index, c.index)])  # (a long source's: read from disk now)
        failpoints.hit(stage.name)
        clips = stage.run(clips)
    except Exception as exc:  # noqa: BLE001
        return BatchFailure(stage.name, _error(exc))
    finally:
        for c in clips:
            c.audio = c.audio_16k = None
        release_memory()
    return clips, {**seconds, stage.name: time.perf_counter() - t0}


def task_deadline_s(run_config, audio_s: float) -> float:
    """Seconds a task on ``audio_s`` seconds of audio may take: run.task_timeout_s plus
    run.task_timeout_per_audio_hour_s per audio-hour."""
    return run_config.task_timeout_s + run_config.task_timeout_per_audio_hour_s * max(audio_s, 0.0) / 3600.0


class Deadline:
    """The running deadline of :func:`deadline`; ``extend_to`` moves it later (never earlier)."""

    def __init__(self, seconds: Optional[float], armed: bool):
        self.seconds, self.armed, self.start = seconds, armed, time.monotonic()

    def extend_to(self, seconds: float) -> None:
        if not self.armed or self.seconds is None or seconds <= self.seconds:
            return
        self.seconds = seconds
        signal.setitimer(signal.ITIMER_REAL, max(self.start + seconds - time.monotonic(), 0.001))


@contextlib.contextmanager
def deadline(seconds: Optional[float]):
    """Raise TimeoutError in this (main) thread after ``seconds``: a blocking system call is interrupted
    at once, Python code at its next bytecode. Used where no other process can kill the work. Yields a
    :class:`Deadline` (to extend it once a task's length is known)."""
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield Deadline(seconds, armed=False)
        return
    timer = Deadline(seconds, armed=True)

    def _expired(signum, frame):
        raise TimeoutError(f"task took longer than its deadline of {timer.seconds:g} s (run.task_timeout_s + "
                           "run.task_timeout_per_audio_hour_s per hour of its audio)")

    previous = signal.signal(signal.SIGALRM, _expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield timer
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
