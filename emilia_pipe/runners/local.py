"""Run every stage in this process: no start-up cost, one copy of each model.

On a machine with two or more cores the work overlaps: the calling (main) thread runs the per-file
stages (decode, separation, diarization, VAD) with half the cores' threads, while one worker thread per
core runs the batched stages (ASR with one CTranslate2 replica per worker, DNSMOS) and one more thread
writes. The models release the GIL while they compute, so this uses every core with one copy of the
models in memory; when the per-file lane waits for the batched stages (they are the slower half on a
CPU), the batched stages have every core (one batch thread per core is far faster than one in all:
docs/performance.md). Per-file calls run under a SIGALRM deadline (``run.task_timeout_s`` plus
``run.task_timeout_per_audio_hour_s`` per hour of the file, extended once it is decoded), so a hung file
becomes a failure.

A batched stage on a GPU takes one batch at a time (a lock per stage), as Ray's one actor per stage and
GPU does: a second Whisper batch on the same GPU would double its memory for no speed, while a CPU stage
still runs one batch per core. A batch or a write stuck past its
deadline leaves its thread behind (:mod:`emilia_pipe.runners.lanes`), its sources fail, and the run goes on
and ends."""
from __future__ import annotations

import concurrent.futures as cf
import contextlib
import threading

from emilia_pipe.dataset.writer import SourceWriter
from emilia_pipe.records import Failure, Source
from emilia_pipe.runners.calls import (
    BatchFailure,
    batch_keys,
    clip_spans,
    deadline,
    finish_file,
    run_batch_stage,
    run_file_stage,
    task_deadline_s,
)
from emilia_pipe.runners.lanes import Lane
from emilia_pipe.runtime.threads import set_torch_threads
from emilia_pipe.stages import batch_chain, build_stage, file_chain


class LocalExecutor:
    def __init__(self, config, stage_names: list[str], out_dir, run: int, stage_builder=build_stage):
        self.run_config = config.run
        self.timeout = config.run.task_timeout_s
        self.threads = config.run.torch_threads
        self.stages = {name: stage_builder(name, config) for name in stage_names}
        self.file_chain = file_chain(stage_names)
        self.batch_chain = batch_chain(stage_names)
        self.out, self.config = out_dir, config
        self.writer = SourceWriter(out_dir, config, slot=f"{run:06d}-w0")
        self.gpu_locks = {name: threading.Lock() for name in self.batch_chain if _on_gpu(self.stages[name])}
        # background workers for the batched stages (none: everything in this thread); the writer has its
        # own single thread, since a SourceWriter is not meant to be shared between threads
        overlap = config.run.local_overlap
        self.lane = Lane(config.run.max_batches_in_flight, "emilia-batch") if overlap else None
        self.write_lane = Lane(1, "emilia-write") if overlap else None

    def submit_file(self, task):
        item = task
        try:
            with deadline(task_deadline_s(self.run_config, task.audio_s)) as timer:
                set_torch_threads(self.threads)
                for name in self.file_chain:
                    item = run_file_stage(self.stages[name], item)
                    if isinstance(item, Source):  # decoded: its real length is known now
                        timer.extend_to(task_deadline_s(self.run_config, item.duration))
        except TimeoutError as exc:
            item = Failure(task.path, "timeout", str(exc), "TimeoutError")
        meta, audio = finish_file(item)
        return _Done(meta), _Done(audio)

    def _batch(self, clips, spans):
        item = clips
        for name in self.batch_chain:
            with self.gpu_locks.get(name) or contextlib.nullcontext():
                item = run_batch_stage(self.stages[name], item, spans)
        return item

    def submit_batch(self, clips, audio_handles):
        audio = [h.value for h in audio_handles]
        spans = clip_spans(batch_keys(clips), [a.index for a in audio], *[a.analysis for a in audio])
        if self.lane is not None:
            return self.lane.submit(self._batch, clips, spans)
        try:
            with deadline(task_deadline_s(self.run_config, sum(c.end - c.start for c in clips))):
                return _Done(self._batch(clips, spans))
        except TimeoutError as exc:
            return _Done(BatchFailure("timeout", str(exc)))

    def _write(self, job, audio):
        return self.writer.write(job, audio)  # the writer of the moment (a stuck one is replaced)

    def submit_write(self, job, audio_handle):
        audio = audio_handle.value if audio_handle is not None else None
        if self.write_lane is not None:
            return self.write_lane.submit(self._write, job, audio)
        try:
            with deadline(self.timeout):
                return _Done(self._write(job, audio))
        except Exception as exc:  # noqa: BLE001 - e.g. disk full: that source fails, as on a Ray writer
            return _Done(exc, failed=True)

    def commit_writers(self) -> list[tuple[str, object]]:
        """(writer slot, its commit's result or the error it raised); a commit stuck past
        run.task_timeout_s counts as lost (its writer is replaced)."""
        slot = self.writer.slot
        try:
            if self.write_lane is not None:
                future = self.write_lane.submit(lambda: self.writer.commit())
                try:
                    result = future.result(timeout=self.timeout)
                except cf.TimeoutError:
                    self._replace_writer(future)
                    result = TimeoutError(f"the writer's commit took longer than run.task_timeout_s={self.timeout:g} s")
            else:
                with deadline(self.timeout):
                    result = self.writer.commit()
        except Exception as exc:  # noqa: BLE001 - e.g. disk full: the driver counts what it held as lost
            result = exc
        return [(slot, result)]

    def _replace_writer(self, future) -> None:
        """The write thread is stuck: it is left behind, its writer may no longer commit (what it holds is
        redone by the driver), and a new writer life takes the lane."""
        self.writer.retired = True
        self.write_lane.abandon(future)
        self.writer = SourceWriter(self.out, self.config, slot=self.writer.slot)

    def wait(self, handles, timeout=None):
        done = [h for h in handles if isinstance(h, _Done) or h.done()]
        if done:
            return done
        finished, _ = cf.wait(handles, timeout=timeout, return_when=cf.FIRST_COMPLETED)
        return list(finished)

    def get(self, handle):
        if isinstance(handle, cf.Future):
            return handle.result()  # re-raises what the lane raised (e.g. disk full in the writer)
        if handle.failed:
            raise handle.value
        return handle.value

    def began(self, handle, submitted: float):
        """When the task of ``handle`` began to run (None: queued in its lane), for its deadline: a task
        waiting behind a stuck one is not late."""
        if not isinstance(handle, cf.Future) or handle.done():
            return submitted
        for lane in (self.lane, self.write_lane):
            if lane is not None and handle in lane.began:
                return lane.began[handle]
        return None

    def cancel(self, handle) -> None:
        """A task past its deadline (the scheduler records it as failed). A per-file call is interrupted
        by its own deadline; a lane thread stuck in a task is left behind and replaced (lanes.Lane), and a
        stuck write also replaces the writer, so what it held is redone."""
        if not isinstance(handle, cf.Future):
            return
        if self.write_lane is not None and handle in self.write_lane.running:
            self._replace_writer(handle)
        elif self.lane is not None and handle in self.lane.running:
            self.lane.abandon(handle)
        else:  # still queued behind a stuck one
            handle.cancel()

    def shutdown(self):
        for lane in (self.lane, self.write_lane):
            if lane is not None:
                lane.close()
        self.stages.clear()


def _on_gpu(stage) -> bool:
    """Whether a built stage computes on a CUDA device (its ``device``, or DNSMOS's CUDA provider)."""
    return str(getattr(stage, "device", "cpu")).startswith("cuda") or bool(getattr(stage, "on_gpu", False))


class _Done:
    __slots__ = ("value", "failed")

    def __init__(self, value, failed: bool = False):
        self.value, self.failed = value, failed
