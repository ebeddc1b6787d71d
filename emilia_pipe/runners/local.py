"""Run every stage in this process, one call after another: no start-up cost, one copy of each model.
Each call runs under a SIGALRM deadline (``run.task_timeout_s``), so a hung file becomes a failure."""
from __future__ import annotations

from emilia_pipe.runners.calls import BatchFailure, deadline, finish_file, run_batch_stage, run_file_stage
from emilia_pipe.records import Failure
from emilia_pipe.stages import batch_chain, build_stage, file_chain
from emilia_pipe.writer import SourceWriter


class LocalExecutor:
    def __init__(self, config, stage_names: list[str], out_dir, run: int):
        self.timeout = config.run.task_timeout_s
        self.stages = {name: build_stage(name, config) for name in stage_names}
        self.file_chain = file_chain(stage_names)
        self.batch_chain = batch_chain(stage_names)
        self.writer = SourceWriter(out_dir, config, part=f"{run:06d}-w0")

    def submit_file(self, task):
        item = task
        try:
            with deadline(self.timeout):
                for name in self.file_chain:
                    item = run_file_stage(self.stages[name], item)
        except TimeoutError as exc:
            item = Failure(task.path, "timeout", str(exc), "TimeoutError")
        meta, audio = finish_file(item)
        return _Done(meta), _Done(audio)

    def submit_batch(self, clips, audio_handles):
        bundles = {h.value.index: h.value for h in audio_handles}
        item = clips
        try:
            with deadline(self.timeout):
                for name in self.batch_chain:
                    item = run_batch_stage(self.stages[name], item, bundles)
        except TimeoutError as exc:
            item = BatchFailure("timeout", str(exc))
        return _Done(item)

    def submit_write(self, job, audio_handle):
        try:
            return _Done(self.writer.write(job, audio_handle.value if audio_handle is not None else None))
        except Exception as exc:  # noqa: BLE001 - e.g. disk full: that source fails, as on a Ray writer
            return _Done(exc, failed=True)

    def commit_writers(self) -> None:
        self.writer.commit()

    def wait(self, handles, timeout=None):
        return list(handles)

    def get(self, handle):
        if handle.failed:
            raise handle.value
        return handle.value

    def cancel(self, handle) -> None:  # calls finish before returning: nothing is ever still running
        pass

    def shutdown(self):
        self.stages.clear()


class _Done:
    __slots__ = ("value", "failed")

    def __init__(self, value, failed: bool = False):
        self.value, self.failed = value, failed
