"""The six stages. Each is a small class: built once from the config (it loads its model then) and
called with ``run(item)``. Per-file stages take and return a :class:`~emilia_pipe.records.Source`;
batched stages (transcribe, score) take and return a list of :class:`~emilia_pipe.records.Clip` from
any number of sources. No stage knows about Ray.

:data:`STAGES` is the one list of stages: executors, config and the driver all derive their chains from
it, so adding a stage is one module plus one line here."""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, ClassVar


@dataclass(frozen=True)
class StageSpec:
    name: str
    target: str  # "module:Class"
    batched: bool  # False: one Source at a time; True: lists of Clips from many sources


STAGES = (
    StageSpec("standardize", "emilia_pipe.stages.standardize:Standardizer", batched=False),
    StageSpec("separate", "emilia_pipe.stages.separate:Separator", batched=False),
    StageSpec("diarize", "emilia_pipe.stages.diarize:Diarizer", batched=False),
    StageSpec("segment", "emilia_pipe.stages.segment:Segmenter", batched=False),
    StageSpec("transcribe", "emilia_pipe.stages.transcribe:Transcriber", batched=True),
    StageSpec("score", "emilia_pipe.stages.score:Scorer", batched=True),
)
STAGE_NAMES = tuple(s.name for s in STAGES)
_BY_NAME = {s.name: s for s in STAGES}


def file_chain(names) -> list[str]:
    """The per-file stages among ``names``, in pipeline order."""
    return [s.name for s in STAGES if s.name in names and not s.batched]


def batch_chain(names) -> list[str]:
    """The batched (cross-file) stages among ``names``, in pipeline order."""
    return [s.name for s in STAGES if s.name in names and s.batched]


class Stage:
    name: ClassVar[str]
    batched: ClassVar[bool] = False
    uses_gpu: ClassVar[bool] = False

    def run(self, item: Any) -> Any:  # pragma: no cover - interface
        raise NotImplementedError


def build_stage(name: str, config) -> Stage:
    """Instantiate a stage by name (imports lazily so a stage's heavy libraries load only where used)."""
    spec = _BY_NAME.get(name)
    if spec is None:
        raise ValueError(f"unknown stage {name!r}; stages are {STAGE_NAMES}")
    module, cls = spec.target.split(":")
    return getattr(importlib.import_module(module), cls)(config)
