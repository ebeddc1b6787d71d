"""The six stages. Each is a small class: built once from the config (it loads its model then) and
called with ``run(item)``. Per-file stages take and return a :class:`~emilia_pipe.records.Source`;
batched stages (transcribe, score) take and return a list of :class:`~emilia_pipe.records.Clip` from
any number of sources. No stage knows about Ray."""
from __future__ import annotations

from typing import Any, ClassVar

STAGE_NAMES = ("standardize", "separate", "diarize", "segment", "transcribe", "score")
PER_FILE_STAGES = STAGE_NAMES[:4]
BATCHED_STAGES = STAGE_NAMES[4:]


class Stage:
    name: ClassVar[str]
    batched: ClassVar[bool] = False
    uses_gpu: ClassVar[bool] = False

    def run(self, item: Any) -> Any:  # pragma: no cover - interface
        raise NotImplementedError


def build_stage(name: str, config) -> Stage:
    """Instantiate a stage by name (imports lazily so a stage's heavy libraries load only where used)."""
    if name == "standardize":
        from emilia_pipe.stages.standardize import Standardizer as cls
    elif name == "separate":
        from emilia_pipe.stages.separate import Separator as cls
    elif name == "diarize":
        from emilia_pipe.stages.diarize import Diarizer as cls
    elif name == "segment":
        from emilia_pipe.stages.segment import Segmenter as cls
    elif name == "transcribe":
        from emilia_pipe.stages.transcribe import Transcriber as cls
    elif name == "score":
        from emilia_pipe.stages.score import Scorer as cls
    else:
        raise ValueError(f"unknown stage {name!r}; stages are {STAGE_NAMES}")
    return cls(config)
