"""The driver: plans the build, feeds files to an executor, regroups clips into cross-file batches for
the batched stages, sends each finished source to a writer, and finalizes the manifests.

It only ever holds small records (ids, scores, paths, counts) and handles to audio that lives with the
workers. Everything in flight is bounded: files in the per-file stages, open sources (decoded, clips not
yet written) and their audio bytes, batches, and writes. Every task has a deadline; a task past it is
cancelled and recorded as a failure. A failing batch is retried clip by clip, so one bad clip fails only
its own source."""
from __future__ import annotations

import os
import math
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from emilia_pipe.build import Build
from emilia_pipe.inputs import InputError, OutputError, expand_inputs
from emilia_pipe.config import PipelineConfig
from emilia_pipe.malloc import restart_tuned, setup_heap
from emilia_pipe.models import ModelUnavailableError, model_statuses
from emilia_pipe.records import Clip, Failure, Source
from emilia_pipe.resources import gpu_count
from emilia_pipe.runners.calls import BatchFailure, FileTask
from emilia_pipe.stages import STAGE_NAMES
from emilia_pipe.writer import finalize, format_summary


def active_stages(config: PipelineConfig) -> list[str]:
    return [s for s in STAGE_NAMES if s != "separate" or config.separation_enabled]


def choose_runner(config: PipelineConfig) -> str:
    """``run.runner: auto``: Ray for a cluster or a GPU; on a CPU machine one process with two lanes,
    which measured faster and far lighter than five Ray actor processes sharing the cores."""
    if config.run.runner != "auto":
        return config.run.runner
    return "ray" if config.run.ray_address or gpu_count() > 0 else "local"


def restart_tuned_if_local(config: PipelineConfig, python_args: list[str]) -> None:
    """Restart this process as ``python *python_args`` with glibc's malloc tuned from the first allocation
    (malloc.restart_tuned) when the run is local and tuned; Ray's workers get it through their environment.
    Returns when there is nothing to do."""
    if config.run.tune_malloc and choose_runner(config) == "local":
        restart_tuned(python_args, config.run.malloc_trim_threshold_mb)


def size_local(config: PipelineConfig) -> PipelineConfig:
    """Thread counts for the local runner: the per-file lane's libraries get half the cores, the batched
    stages run on one worker thread per core with half the cores' threads each; settings the user made
    are kept."""
    from emilia_pipe.torch_threads import default_threads

    cores = default_threads()
    overlap = config.run.local_overlap and cores >= 2
    per_lane = max(1, cores // 2) if overlap else cores
    cfg = config.model_copy(deep=True)
    cfg.run.local_overlap = overlap
    if overlap:
        # the main thread runs each file to the end: hand its clips over after every file
        cfg.run.max_files_in_flight = 1
        # one batch worker per core: when the per-file lane waits, the batched stages use every core
        cfg.run.max_batches_in_flight = max(cfg.run.max_batches_in_flight, cores)
        cfg.transcribe.workers = max(cfg.transcribe.workers, cores)
        # no object store here: memory is bounded by run.max_inflight_audio_mb, so let more sources wait
        cfg.run.max_open_sources = max(cfg.run.max_open_sources, 64)
    if cfg.run.torch_threads == 0:
        cfg.run.torch_threads = per_lane
    if cfg.transcribe.cpu_threads == 0:
        cfg.transcribe.cpu_threads = per_lane
    if cfg.score.onnx_threads == 0:
        cfg.score.onnx_threads = per_lane
    return cfg


def check_output(out_dir: str | Path) -> None:
    """Fail at once, with the fix, when the output cannot be written; creates nothing."""
    out = Path(out_dir).absolute()
    if out.exists() and not out.is_dir():
        raise OutputError(f"output {out} is a file, not a folder; give -o a new folder or an existing build")
    parent = out
    while not parent.exists():  # the nearest existing folder is where the output gets created
        parent = parent.parent
    if not os.access(parent, os.W_OK | os.X_OK):  # also false on a read-only filesystem, even for root
        raise OutputError(f"cannot write to {parent} (read-only or no permission); give -o a writable folder")


def preflight(config: PipelineConfig) -> None:
    """Fail before any work when a model the run needs is missing."""
    missing = [m for m in model_statuses(config) if not m.present]
    if missing:
        raise ModelUnavailableError("\n".join(f"{m.role}: {m.note}" for m in missing))


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


@dataclass
class _Open:
    """A decoded source whose clips are still in the batched stages."""

    source: Source
    audio: object  # handle to its ClipAudio (never fetched here)
    audio_bytes: int
    waiting: int
    done: dict[int, Clip] = field(default_factory=dict)


@dataclass
class _Task:
    kind: str  # file | batch | write
    started: float
    payload: object
    attempt: int = 1


class Scheduler:
    def __init__(self, build: Build, executor, config: PipelineConfig, entries: list[FileTask],
                 shas_done: dict[str, int], log: Callable[[str], None]):
        self.build, self.ex, self.cfg, self.log = build, executor, config, log
        self.pending = deque(entries)
        self.shas_done = shas_done  # sha256 -> lowest plan index already written
        self.tasks: dict = {}
        self.open: dict[int, _Open] = {}
        self.queue: deque[Clip] = deque()
        self.acked: set[int] = set()
        self.batched_seconds: dict[str, float] = {}
        self.progress = Progress(len(entries))
        self.failures_this_run = 0
        self.open_bytes = 0

    # --- counters ---------------------------------------------------------------------------
    def _count(self, kind: str) -> int:
        return sum(1 for t in self.tasks.values() if t.kind == kind)

    def _can_open_more(self) -> bool:
        r = self.cfg.run
        return (len(self.open) + self._count("file") < r.max_open_sources
                and self.open_bytes < r.max_inflight_audio_mb * 2**20
                and self._count("file") < r.max_files_in_flight)

    # --- submitting -------------------------------------------------------------------------
    def _submit_files(self) -> None:
        while self.pending and self._can_open_more():
            task = self.pending.popleft()
            self._start_file(task, attempt=1)

    def _start_file(self, task: FileTask, attempt: int) -> None:
        meta, audio = self.ex.submit_file(task)
        self.tasks[meta] = _Task("file", time.monotonic(), (task, audio), attempt)

    def _submit_batches(self) -> None:
        r = self.cfg.run
        size = self.cfg.transcribe.batch_size
        # a partial batch goes when no more clips can arrive before something else finishes, or when the
        # batched stages sit idle and part of a batch is waiting (so both lanes / pools keep working)
        starved = not self.pending and self._count("file") == 0
        blocked = self._count("file") == 0 and not self._can_open_more()
        fill = max(1, math.ceil(size * r.min_batch_fill))
        while self.queue and self._count("batch") < r.max_batches_in_flight and (
                len(self.queue) >= size or starved or blocked
                or (self._count("batch") == 0 and len(self.queue) >= fill)):
            batch = [self.queue.popleft() for _ in range(min(size, len(self.queue)))]
            self._start_batch(batch, single=False)

    def _start_batch(self, clips: list[Clip], single: bool) -> None:
        audio = list({c.source_index: self.open[c.source_index].audio for c in clips}.values())
        handle = self.ex.submit_batch(clips, audio)
        self.tasks[handle] = _Task("batch", time.monotonic(), (clips, single))

    def _start_write(self, state: _Open, status: str = "done", duplicate_of: Optional[int] = None) -> None:
        src = state.source
        clips = [] if status != "done" else [state.done[i] for i in sorted(state.done)]
        job = {"index": src.index, "run": self.build.run, "status": status, "duplicate_of": duplicate_of,
               "source": src.metadata(), "clips": [c.to_record() for c in clips]}
        handle = self.ex.submit_write(job, state.audio if clips else None)
        self.tasks[handle] = _Task("write", time.monotonic(), state)

    # --- results ----------------------------------------------------------------------------
    def _fail(self, index: int, path: str, stage: str, error: str, error_type: str) -> None:
        self.build.record_failure(Failure(path, stage, error, error_type), index)
        self.build.discard_audio(index)
        self.failures_this_run += 1
        self.progress.failed += 1
        self.progress.files_done += 1

    def _close(self, index: int) -> Optional[_Open]:
        state = self.open.pop(index, None)
        if state is not None:
            self.open_bytes -= state.audio_bytes
        return state

    def _fail_source(self, index: int, stage: str, error: str) -> None:
        state = self._close(index)
        if state is None:
            return
        self.queue = deque(c for c in self.queue if c.source_index != index)
        self._fail(index, state.source.path, stage, error, "BatchFailure")

    def _on_file(self, handle, task: _Task) -> None:
        entry, audio = task.payload
        try:
            result = self.ex.get(handle)
        except Exception as exc:  # the worker died (out of memory, killed): retry, then record
            if task.attempt < self.cfg.run.max_attempts and not isinstance(exc, TimeoutError):
                self.log(f"worker lost while processing {entry.path} ({type(exc).__name__}); retrying")
                self._start_file(entry, task.attempt + 1)
                return
            result = Failure(entry.path, "timeout" if isinstance(exc, TimeoutError) else "worker",
                             f"{type(exc).__name__}: {exc}"[:2000], type(exc).__name__)
        if isinstance(result, Failure):
            self._fail(entry.index, entry.path, result.stage, result.error, result.error_type)
            return
        source: Source = result
        nbytes = sum(int((c.end - c.start) * (source.sample_rate + 16000) * 4) for c in source.clips)
        state = _Open(source, audio, nbytes, waiting=len(source.clips))
        self.open[source.index] = state
        self.open_bytes += nbytes
        first = self.shas_done.get(source.sha256)
        if first is not None and first < source.index:
            self._start_write(state, status="duplicate", duplicate_of=first)  # recorded as skipped
            return
        if not source.clips:
            self._start_write(state)
            return
        self.queue.extend(source.clips)

    def _on_batch(self, handle, task: _Task) -> None:
        clips, single = task.payload
        try:
            result = self.ex.get(handle)
        except Exception as exc:  # worker death or timeout
            result = BatchFailure("timeout" if isinstance(exc, TimeoutError) else "worker", f"{type(exc).__name__}: {exc}"[:2000])
        if isinstance(result, BatchFailure):
            live = [c for c in clips if c.source_index in self.open]
            if single or len(live) <= 1:
                for c in live:
                    self._fail_source(c.source_index, result.stage, result.error)
            else:  # find the bad clip: each clip alone, so only its own source fails
                self.log(f"batch of {len(live)} clips failed ({result.stage}: {result.error[:200]}); retrying clip by clip")
                for c in live:
                    self._start_batch([c], single=True)
            return
        clips, seconds = result
        for k, v in seconds.items():
            self.batched_seconds[k] = self.batched_seconds.get(k, 0.0) + v
        for clip in clips:
            state = self.open.get(clip.source_index)
            if state is None:  # its source already failed
                continue
            state.done[clip.index] = clip
            if len(state.done) == state.waiting:
                self._start_write(state)

    def _on_write(self, handle, task: _Task) -> None:
        state: _Open = task.payload
        index = state.source.index
        self._close(index)
        try:
            self.ex.get(handle)
        except Exception as exc:  # disk full, writer died...: the source is not done, a rerun redoes it
            self._fail(index, state.source.path, "write", f"{type(exc).__name__}: {exc}"[:2000], type(exc).__name__)
            return
        self.acked.add(index)
        sha = state.source.sha256
        if sha not in self.shas_done or index < self.shas_done[sha]:
            self.shas_done[sha] = index
        self.progress.files_done += 1
        self.progress.audio_s += state.source.duration

    def _expire(self) -> Optional[float]:
        """Cancel tasks past their deadline; return seconds until the next deadline."""
        limit = self.cfg.run.task_timeout_s
        now = time.monotonic()
        nearest = None
        for handle, task in list(self.tasks.items()):
            left = task.started + limit - now
            if left <= 0:
                self.ex.cancel(handle)
                self.tasks.pop(handle)
                self.log(f"{task.kind} task exceeded run.task_timeout_s={limit:g} s: cancelled")
                err = f"TimeoutError: no result after run.task_timeout_s={limit:g} s"
                if task.kind == "file":
                    entry = task.payload[0]
                    self._fail(entry.index, entry.path, "timeout", err, "TimeoutError")
                elif task.kind == "batch":
                    self._on_batch_failure(task, BatchFailure("timeout", err))
                else:
                    state = task.payload
                    self._close(state.source.index)
                    self._fail(state.source.index, state.source.path, "timeout", err, "TimeoutError")
            else:
                nearest = left if nearest is None else min(nearest, left)
        return nearest

    def _on_batch_failure(self, task: _Task, failure: BatchFailure) -> None:
        clips, _ = task.payload
        for c in clips:  # a hung batch is not retried: its sources fail (the actor was restarted)
            self._fail_source(c.source_index, failure.stage, failure.error)

    def run(self) -> None:
        handlers = {"file": self._on_file, "batch": self._on_batch, "write": self._on_write}
        while self.pending or self.tasks or self.queue:
            self._submit_files()
            self._submit_batches()
            if not self.tasks:
                if self.queue:  # nothing in flight: send what is queued
                    self._start_batch([self.queue.popleft() for _ in range(min(len(self.queue), self.cfg.transcribe.batch_size))], single=False)
                continue
            timeout = self._expire()
            if not self.tasks:
                continue
            for handle in self.ex.wait(list(self.tasks), timeout=timeout):
                task = self.tasks.pop(handle, None)
                if task is not None:
                    handlers[task.kind](handle, task)
            self.progress.update()
        self.progress.update(force=True)


def run_pipeline(
    inputs: list[str | Path],
    out_dir: str | Path,
    config: PipelineConfig,
    executor_factory: Optional[Callable] = None,
    log: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True),
    allow_config_change: bool = False,
) -> dict:
    """Process ``inputs`` into an Emilia-format dataset in ``out_dir``; returns the summary. A build
    folder that already holds work is resumed: sources already done are not read again."""
    t_start = time.perf_counter()
    run = config.run
    setup_heap(run.tune_malloc, run.malloc_keep_free_mb, run.malloc_trim_threshold_mb)  # before stages start threads
    check_output(out_dir)
    found = expand_inputs(inputs, exclude=[out_dir])  # usage errors here, before any model loads
    if not found.files and not found.problems:
        raise InputError(f"no audio files found in {', '.join(map(str, inputs))}")
    preflight(config)
    stages = active_stages(config)
    runner = choose_runner(config)
    if not config.separation_enabled:
        log("separation: off (profile has no separation model) - clips are cut from the original mix")
    with Build(out_dir, config, allow_config_change=allow_config_change, log=log) as build:
        entries, n_done = build.plan(found.files, found.problems)
        if n_done:
            log(f"{n_done} file(s) already done in {out_dir}: not read again")
        executor = None
        scheduler = None
        run_config = config
        try:
            if entries:
                if executor_factory is not None:
                    executor = executor_factory(config, stages, out_dir, build.run)
                elif runner == "ray":
                    from emilia_pipe.runners.ray_executor import RayExecutor, auto_plan

                    if config.run.resource_plan == "auto":  # bounds too: the scheduler runs with this copy
                        run_config = auto_plan(config, stages, log)
                    executor = RayExecutor(run_config, stages, out_dir, build.run, address=config.run.ray_address,
                                           log=log)
                else:
                    from emilia_pipe.runners.local import LocalExecutor

                    sized = size_local(config)
                    log(f"local runner: {'two lanes' if sized.run.local_overlap else 'one lane'}, "
                        f"{sized.run.torch_threads} thread(s) per lane")
                    executor = LocalExecutor(sized, stages, out_dir, build.run)
                scheduler = Scheduler(build, executor, run_config, entries, build.shas_done(), log)
                scheduler.run()
                executor.commit_writers()
        finally:
            if executor is not None:
                executor.shutdown()
            build.flush_failures()
        if scheduler is not None:
            # a writer that died after acknowledging but before committing lost those rows: say so
            lost = scheduler.acked - build.ledger.done_indices()
            for index in sorted(lost):
                build.record_failure(Failure(build.path_of(index), "write",
                                             "writer died before committing; run again to redo", "WriterLost"), index)
            build.flush_failures()
        wall = time.perf_counter() - t_start
        audio_s = scheduler.progress.audio_s if scheduler else 0.0
        summary = finalize(out_dir, config, {
            "batched_stage_seconds": scheduler.batched_seconds if scheduler else {},
            "wall_seconds": round(wall, 3),
            "audio_hours_per_hour": round(audio_s / wall, 4) if wall > 0 else 0.0,
            "runner": runner,
            "this_run": {"files": len(entries) + build.input_failures,
                         "failed": (scheduler.failures_this_run if scheduler else 0) + build.input_failures,
                         "already_done": n_done, "audio_hours": round(audio_s / 3600, 6)},
        })
        build.compact()
    log(format_summary(summary))
    return summary
