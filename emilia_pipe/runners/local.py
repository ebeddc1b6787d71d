"""Run every stage in this process, one call after another: for tests, debugging, small jobs."""
from __future__ import annotations

from emilia_pipe.runners.calls import run_batch_stage, run_file_stage
from emilia_pipe.stages import build_stage


class LocalExecutor:
    def __init__(self, config, stage_names: list[str]):
        self.stages = {name: build_stage(name, config) for name in stage_names}
        self.file_chain = [n for n in stage_names if n in ("standardize", "separate", "diarize", "segment")]
        self.batch_chain = [n for n in stage_names if n in ("transcribe", "score")]

    def submit_file(self, path):
        item = path
        for name in self.file_chain:
            item = run_file_stage(self.stages[name], item)
        return _Done(item)

    def submit_batch(self, clips):
        item = clips
        for name in self.batch_chain:
            item = run_batch_stage(self.stages[name], item)
        return _Done(item)

    def wait(self, handles):
        return list(handles)

    def get(self, handle):
        return handle.value

    def shutdown(self):
        self.stages.clear()


class _Done:
    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value
