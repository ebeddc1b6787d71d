"""The two calls every executor makes on a stage, with failures turned into records."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Union

from emilia_pipe.records import Clip, Failure, Source
from emilia_pipe.stages import Stage


def run_file_stage(stage: Stage, item: Union[str, Path, Source, Failure]) -> Union[Source, Failure]:
    """One per-file stage; a failure upstream passes through, an exception here becomes a Failure."""
    if isinstance(item, Failure):
        return item
    path = str(item) if isinstance(item, (str, Path)) else item.path
    try:
        return stage.run(item)
    except Exception as exc:  # noqa: BLE001 - any error in one file must not stop the run
        return Failure(path=path, stage=stage.name, error=f"{type(exc).__name__}: {exc}", error_type=type(exc).__name__)


class BatchFailure(Exception):
    def __init__(self, stage: str, error: str):
        super().__init__(f"{stage}: {error}")
        self.stage, self.error = stage, error


def run_batch_stage(stage: Stage, item: Union[list[Clip], BatchFailure]) -> Union[tuple[list[Clip], dict], BatchFailure]:
    """One batched stage; returns the clips and accumulated per-stage seconds, or a BatchFailure."""
    if isinstance(item, BatchFailure):
        return item
    clips, seconds = item if isinstance(item, tuple) else (item, {})
    t0 = time.perf_counter()
    try:
        clips = stage.run(clips)
    except Exception as exc:  # noqa: BLE001
        return BatchFailure(stage.name, f"{type(exc).__name__}: {exc}")
    return clips, {**seconds, stage.name: time.perf_counter() - t0}
