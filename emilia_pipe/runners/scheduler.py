"""The run's scheduler: feeds planned files through the per-file stages, gathers their clips into
batches for the batched stages, hands finished sources to the writer, and enforces deadlines and retries.
It knows executors only through their small interface (local or Ray). One state machine over the
run's tasks, which reads better whole than split (about 430 lines)."""
from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Callable, Optional

from emilia_pipe.config import PipelineConfig
from emilia_pipe.dataset.build import Build
from emilia_pipe.media.audio import declared_seconds
from emilia_pipe.media.inputs import is_url, local_path
from emilia_pipe.records import Clip, Failure, FileTask, Source
from emilia_pipe.runners.calls import BatchFailure, restarting_error, task_deadline_s, worker_lost
from emilia_pipe.runtime.files import DISK_FULL, output_fault
from emilia_pipe.runtime.progress import Progress

COMPACT_EVERY_S = 30.0  # how often the driver looks for writers' parts to merge (64 at least)
MAX_WAITS = 10  # sends of a task whose actor is restarting, before it counts as a lost worker
WRITER_LOST = ("its writer process was lost before committing it (the writer died or hung after acknowledging "
               "it); run again to redo it")


@dataclass
class _Open:
    """A decoded source whose clips are still in the batched stages."""

    task: FileTask
    source: Source
    audio: object  # handle to its ClipAudio (never fetched here)
    audio_bytes: int
    waiting: int
    done: dict[int, Clip] = field(default_factory=dict)


@dataclass
class _Acked:
    """A source a writer acknowledged and holds in its buffer until its next commit."""

    task: FileTask
    writer: str
    incarnation: str


@dataclass
class _Task:
    kind: str  # file | batch | write
    started: float
    payload: object
    attempt: int = 1
    waits: int = 0  # times it found its actor restarting (not counted as attempts)
    error: Optional[BaseException] = None
    limit: float = math.inf  # seconds it may take (runners.calls.task_deadline_s)


class Scheduler:
    def __init__(self, build: Build, executor, config: PipelineConfig, entries: list[FileTask],
                 shas_done: dict[str, int], log: Callable[[str], None]):
        self.build, self.ex, self.cfg, self.log = build, executor, config, log
        self.pending = deque(entries)
        self.shas_done = shas_done  # sha256 -> lowest plan index already written
        self.tasks: dict = {}  # handle -> _Task: only work in flight (bounded by the run.max_*_in_flight)
        self.in_flight = {"file": 0, "batch": 0, "write": 0}  # tasks of each kind, kept as they come and go
        self._next_compaction = time.monotonic() + COMPACT_EVERY_S
        self.open: dict[int, _Open] = {}
        self.queue: deque[Clip] = deque()
        # a source leaves every structure here once it is committed or failed: nothing grows with the run
        self.unconfirmed: dict[int, _Acked] = {}  # acknowledged by a writer, not yet known committed
        self.incarnations: dict[str, str] = {}  # writer slot -> its latest life seen
        self.attempts: dict[int, int] = {}  # index -> tries of its file so far, until it is committed or failed
        self.writes: deque[tuple[_Open, dict]] = deque()  # waiting for a write slot (run.max_writes_in_flight)
        self.delayed: list[tuple[float, object]] = []  # (when, resend): tasks whose actor was restarting
        self.batched_seconds: dict[str, float] = {}
        self.progress = Progress("run", len(entries), "files")
        self.failures_this_run = 0
        self.redone = 0
        self.open_bytes = 0

    # --- counters ---------------------------------------------------------------------------
    def _count(self, kind: str) -> int:
        return self.in_flight[kind]

    def _track(self, handle, task: _Task) -> None:
        self.tasks[handle] = task
        self.in_flight[task.kind] += 1

    def _untrack(self, handle) -> Optional[_Task]:
        task = self.tasks.pop(handle, None)
        if task is not None:
            self.in_flight[task.kind] -= 1
        return task

    @property
    def acked(self) -> set[int]:
        """Sources a writer acknowledged that no commit is yet known to hold (pruned at each commit)."""
        return set(self.unconfirmed)

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

    def _start_file(self, task: FileTask, attempt: int, waits: int = 0) -> None:
        if not waits:
            attempt = max(attempt, self.attempts.get(task.index, 0) + 1)
        self.attempts[task.index] = attempt
        if not task.audio_s and not is_url(task.path):  # its length, from its header, sets its deadline
            task = replace(task, audio_s=declared_seconds(local_path(task.path)) or 0.0)
        meta, audio = self.ex.submit_file(task)
        self._track(meta, _Task("file", time.monotonic(), (task, audio), attempt, waits,
                                 limit=task_deadline_s(self.cfg.run, task.audio_s)))

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

    def _start_batch(self, clips: list[Clip], single: bool, attempt: int = 1, waits: int = 0) -> None:
        clips = [c for c in clips if c.source_index in self.open]  # (a later try: its source may have failed)
        if not clips:
            return
        audio = list({c.source_index: self.open[c.source_index].audio for c in clips}.values())
        handle = self.ex.submit_batch(clips, audio)
        self._track(handle, _Task("batch", time.monotonic(), (clips, single), attempt, waits,
                                  limit=task_deadline_s(self.cfg.run, sum(c.end - c.start for c in clips))))

    def _start_write(self, state: _Open, status: str = "done", duplicate_of: Optional[int] = None) -> None:
        src = state.source
        clips = [] if status != "done" else [state.done[i] for i in sorted(state.done)]
        job = {"index": src.index, "run": self.build.run, "status": status, "duplicate_of": duplicate_of,
               "source": src.metadata(), "clips": [c.to_record() for c in clips]}
        self.writes.append((state, job))
        self._submit_writes()

    def _submit_writes(self) -> None:
        while self.writes and self._count("write") < self.cfg.run.max_writes_in_flight:
            state, job = self.writes.popleft()
            self._send_write(state, job, 1)

    def _send_write(self, state: _Open, job: dict, attempt: int, waits: int = 0) -> None:
        handle = self.ex.submit_write(job, state.audio if job["clips"] else None)
        self._track(handle, _Task("write", time.monotonic(), (state, job), attempt, waits,
                                  limit=task_deadline_s(self.cfg.run, state.source.duration)))

    def _later(self, task: _Task, resend) -> bool:
        """The task's actor is restarting (the task may not have run): send it again after a pause that
        doubles each time (0.5 s to 8 s, about a minute in all), without counting a try. False when it has
        waited enough: then it counts as a lost worker."""
        if not restarting_error(task.error) or task.waits >= MAX_WAITS:
            return False
        self.delayed.append((time.monotonic() + min(8.0, 0.5 * 2 ** task.waits), resend))
        return True

    def _send_due(self) -> Optional[float]:
        """Send the delayed tasks that are due; seconds until the next one (None: none waits)."""
        now = time.monotonic()
        due = [d for d in self.delayed if d[0] <= now]
        self.delayed = [d for d in self.delayed if d[0] > now]
        for _, resend in due:
            resend()
        return min((d[0] for d in self.delayed), default=now + 1e9) - now if self.delayed else None

    # --- results ----------------------------------------------------------------------------
    def _fail(self, index: int, path: str, stage: str, error: str, error_type: str) -> None:
        self.build.record_failure(Failure(path, stage, error, error_type), index)
        self.build.discard_audio(index)
        self.attempts.pop(index, None)
        self.failures_this_run += 1
        self.progress.step(failed=True)

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
            if output_fault(exc) is not None and output_fault(exc).errno in DISK_FULL:  # the run cannot go on
                raise output_fault(exc) from None
            task.error = exc
            if self._later(task, lambda: self._start_file(entry, task.attempt, task.waits + 1)):
                return
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
        state = _Open(entry, source, audio, nbytes, waiting=len(source.clips))
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
            live = [c for c in clips if c.source_index in self.open]
            task.error = exc
            if live and self._later(task, lambda: self._start_batch(live, single, task.attempt, task.waits + 1)):
                return
            if worker_lost(exc) and task.attempt < self.cfg.run.max_attempts and live:
                self.log(f"worker lost while processing a batch of {len(live)} clips ({type(exc).__name__}); retrying")
                self._start_batch(live, single, task.attempt + 1)
                return
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
        state, job = task.payload
        index = state.source.index
        try:
            result = self.ex.get(handle)
        except Exception as exc:  # disk full, writer died...
            if output_fault(exc) is not None:  # the output cannot be written: stop (exit 5), the same command resumes
                raise output_fault(exc) from None
            if worker_lost(exc) and index in self.build.ledger.committed_by(f"{self.build.run:06d}-w"):
                self._done(state)  # it died after committing this source, before answering
                self.attempts.pop(index, None)
                return
            task.error = exc
            if self._later(task, lambda: self._send_write(state, job, task.attempt, task.waits + 1)):
                return
            if worker_lost(exc) and task.attempt < self.cfg.run.max_attempts:
                # the writer died with the write: write it again (a restarted writer) from the same audio
                self.log(f"writer lost while writing {state.source.path} ({type(exc).__name__}); writing it again")
                self._send_write(state, job, task.attempt + 1)
                return
            self._close(index)
            self._fail(index, state.source.path, "write", f"{type(exc).__name__}: {exc}"[:2000], type(exc).__name__)
            return
        self._done(state)
        self.unconfirmed[index] = _Acked(state.task, result["writer"], result["incarnation"])
        self._confirmed(result)  # (with this source, when this write's commit holds it)
        self._heard_from(result["writer"], result["incarnation"])

    def _done(self, state: _Open) -> None:
        index = state.source.index
        self._close(index)
        sha = state.source.sha256
        if sha not in self.shas_done or index < self.shas_done[sha]:
            self.shas_done[sha] = index
        self.progress.step(audio_s=state.source.duration)

    # --- writers' lives ---------------------------------------------------------------------
    def _heard_from(self, writer: str, incarnation: str) -> None:
        """A result from ``writer``'s life ``incarnation``: every earlier life of that writer is gone, and
        with it what it acknowledged but had not committed. Lives are numbered in the order they start,
        and answers may arrive out of order, so the newest life seen decides."""
        if incarnation > self.incarnations.get(writer, ""):
            self.incarnations[writer] = incarnation
        newest = self.incarnations[writer]
        self._lost(lambda a: a.writer == writer and a.incarnation < newest)

    def _confirmed(self, result: dict) -> None:
        for index in result["committed"]:  # durable: the source is done with, nothing of it is kept
            self.unconfirmed.pop(index, None)
            self.attempts.pop(index, None)

    def _lost(self, which) -> None:
        """Acknowledged sources that no commit made durable: redo them from their file (the same run),
        unless their writer committed them after all before it died."""
        lost = {i: a for i, a in self.unconfirmed.items() if which(a)}
        if not lost:
            return
        durable: set[int] = set()
        for prefix in {f"{a.writer}-{a.incarnation}" for a in lost.values()}:
            durable |= self.build.ledger.committed_by(prefix)
        for index, acked in sorted(lost.items()):
            del self.unconfirmed[index]
            if index in durable:
                self.attempts.pop(index, None)
                continue
            if self.attempts.get(index, 1) < self.cfg.run.max_attempts:
                self.log(f"writer {acked.writer} lost {acked.task.path} before committing it; redoing it")
                self.redone += 1
                self.progress.total += 1
                self.pending.append(acked.task)
            else:
                self._fail(index, acked.task.path, "write", WRITER_LOST, "WriterLost")

    def _commit_writers(self) -> None:
        """Every writer commits what it holds; a writer that cannot answer lost it."""
        for writer, result in self.ex.commit_writers():
            if isinstance(result, BaseException):
                self.log(f"writer {writer} did not commit ({type(result).__name__}: {str(result)[:200]})")
                self._lost(lambda a: a.writer == writer)
                continue
            self._confirmed(result)
            self._heard_from(result["writer"], result["incarnation"])
        self._lost(lambda a: True)  # acknowledged, yet no commit holds it: its writer's life ended

    def _expire(self) -> Optional[float]:
        """Cancel tasks past their deadline; return seconds until the next deadline."""
        now = time.monotonic()
        nearest = None
        began = getattr(self.ex, "began", None)  # an executor that queues work knows when a task began to run
        for handle, task in list(self.tasks.items()):
            limit = task.limit
            start = began(handle, task.started) if began else task.started
            if start is None:  # still waiting for a thread (behind a stuck one): its deadline has not begun
                nearest = 1.0 if nearest is None else min(nearest, 1.0)
                continue
            left = start + limit - now
            if left <= 0:
                self.ex.cancel(handle)
                self._untrack(handle)
                self.log(f"{task.kind} task exceeded its deadline of {limit:g} s: cancelled")
                err = (f"TimeoutError: no result after {limit:g} s (run.task_timeout_s + "
                       "run.task_timeout_per_audio_hour_s per hour of its audio)")
                if task.kind == "file":
                    entry = task.payload[0]
                    self._fail(entry.index, entry.path, "timeout", err, "TimeoutError")
                elif task.kind == "batch":
                    self._on_batch_failure(task, BatchFailure("timeout", err))
                else:
                    state = task.payload[0]
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
        """Until every planned file is written and committed (or failed): sources a writer lost are redone."""
        while True:
            self._run_once()
            self._commit_writers()
            if not self.pending:
                break
        self.progress.finish()

    def _run_once(self) -> None:
        handlers = {"file": self._on_file, "batch": self._on_batch, "write": self._on_write}
        while self.pending or self.tasks or self.queue or self.writes or self.delayed:
            next_due = self._send_due()
            self._submit_files()
            self._submit_batches()
            self._submit_writes()
            if not self.tasks:
                if self.queue:  # nothing in flight: send what is queued
                    self._start_batch([self.queue.popleft() for _ in range(min(len(self.queue), self.cfg.transcribe.batch_size))], single=False)
                elif next_due is not None:
                    time.sleep(max(0.0, next_due))
                continue
            timeout = self._expire()
            if not self.tasks:
                continue
            if next_due is not None:
                timeout = next_due if timeout is None else min(timeout, next_due)
            for handle in self.ex.wait(list(self.tasks), timeout=timeout):
                task = self._untrack(handle)
                if task is not None:
                    handlers[task.kind](handle, task)
            self.progress.update()
            self._compact()

    def _compact(self) -> None:
        """Now and then, the writers' committed parts merged into the ledger's buckets (under the lock this
        run holds), so the ledger's file count stays flat however long the run."""
        now = time.monotonic()
        if now >= self._next_compaction:
            self._next_compaction = now + COMPACT_EVERY_S
            self.build.compact_running()
