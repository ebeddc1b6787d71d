"""The driver: feeds files to an executor, regroups clips into cross-file batches for transcription and
scoring, brings each source's clips back together, and hands finished sources to the writer.

A source is "closed" when every one of its clips has come back from the batched stages; it is then
written (MP3s + its record) at once, so memory holds only sources still in flight."""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from emilia_pipe.audio import AUDIO_EXTENSIONS, sha256_of
from emilia_pipe.config import PipelineConfig
from emilia_pipe.models import ModelUnavailableError, model_statuses
from emilia_pipe.records import Clip, Failure, Source
from emilia_pipe.runners.calls import BatchFailure
from emilia_pipe.stages import STAGE_NAMES
from emilia_pipe.writer import DatasetWriter, finalize, format_summary


def expand_inputs(inputs: list[str | Path]) -> list[Path]:
    """Files as given, and audio/video files found under given folders (sorted, recursive)."""
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in AUDIO_EXTENSIONS))
        else:
            out.append(p)  # a missing or unreadable file becomes a recorded failure, not a crash
    seen, unique = set(), []
    for p in out:
        key = str(p.resolve()) if p.exists() else str(p)
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def active_stages(config: PipelineConfig) -> list[str]:
    return [s for s in STAGE_NAMES if s != "separate" or config.separation_enabled]


def preflight(config: PipelineConfig) -> None:
    """Fail before any work when a model the run needs is missing."""
    missing = [m for m in model_statuses(config) if not m.present]
    if missing:
        raise ModelUnavailableError("\n".join(f"{m.role}: {m.note}" for m in missing))


@dataclass
class _OpenSource:
    source: Source
    waiting: int
    done: list[Clip] = field(default_factory=list)
    failed: Optional[Failure] = None


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
        rate = self.audio_s / 3600 / (elapsed / 3600) if elapsed > 0 else 0.0
        eta = elapsed / self.files_done * (self.total - self.files_done) if self.files_done else float("nan")
        eta_s = "?" if eta != eta else time.strftime("%H:%M:%S", time.gmtime(eta))
        print(f"[emilia-pipe] files {self.files_done}/{self.total} ({self.failed} failed) | "
              f"{self.audio_s / 3600:.3f} audio-h | {rate:.1f} audio-h/h | elapsed {elapsed:.0f}s | ETA {eta_s}",
              file=self.stream, flush=True)


def run_pipeline(
    inputs: list[str | Path],
    out_dir: str | Path,
    config: PipelineConfig,
    executor_factory: Optional[Callable] = None,
    log: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True),
) -> dict:
    """Process ``inputs`` into an Emilia-format dataset in ``out_dir``; returns the summary."""
    t_start = time.perf_counter()
    files = expand_inputs(inputs)
    if not files:
        raise FileNotFoundError(f"no audio files found in {', '.join(map(str, inputs))}")
    preflight(config)
    stages = active_stages(config)
    if not config.separation_enabled:
        log("separation: off (profile has no separation model) - clips are cut from the original mix")
    writer = DatasetWriter(out_dir, config)
    if executor_factory is None:
        if config.run.runner == "ray":
            from emilia_pipe.runners.ray_executor import RayExecutor

            executor = RayExecutor(config, stages, address=config.run.ray_address, log=log)
        else:
            from emilia_pipe.runners.local import LocalExecutor

            executor = LocalExecutor(config, stages)
    else:
        executor = executor_factory(config, stages)

    progress = Progress(len(files))
    batched_seconds: dict[str, float] = {}
    open_sources: dict[str, _OpenSource] = {}
    paths_by_id: dict[str, str] = {}
    queue: list[Clip] = []
    file_handles: dict = {}
    batch_handles: dict = {}
    pending = list(files)
    batch_size = config.transcribe.batch_size
    if any(writer.work.joinpath("sources").iterdir()):
        # the output already holds sources (an earlier run): skip files whose content is there
        done_before = {p for p in pending if p.is_file() and writer.is_committed(sha256_of(p)[:16])}
        if done_before:
            log(f"{len(done_before)} file(s) already in {out_dir}: skipped")
            pending = [p for p in pending if p not in done_before]
            progress.total -= len(done_before)

    def close(state: _OpenSource) -> None:
        src = state.source
        if state.failed is not None:
            writer.record_failure(state.failed)
            progress.failed += 1
        else:
            writer.commit_source(src, state.done)
        progress.files_done += 1
        progress.audio_s += src.duration
        open_sources.pop(src.source_id, None)

    try:
        while pending or file_handles or batch_handles or queue:
            while pending and len(file_handles) < config.run.max_files_in_flight:
                path = pending.pop(0)
                file_handles[executor.submit_file(path)] = str(path)
            no_more_clips = not pending and not file_handles
            while len(queue) >= batch_size or (queue and (no_more_clips or not batch_handles)):
                batch, queue = queue[:batch_size], queue[batch_size:]
                batch_handles[executor.submit_batch(batch)] = sorted({c.source_id for c in batch})
            if not file_handles and not batch_handles:
                continue
            for handle in executor.wait(list(file_handles) + list(batch_handles)):
                if handle in file_handles:
                    path = file_handles.pop(handle)
                    try:
                        result = executor.get(handle)
                    except Exception as exc:  # a worker died (e.g. out of memory): that file fails, the run goes on
                        result = Failure(path, "worker", f"{type(exc).__name__}: {exc}"[:2000], type(exc).__name__)
                    if isinstance(result, Failure):
                        writer.record_failure(result)
                        progress.files_done += 1
                        progress.failed += 1
                        continue
                    if result.source_id in paths_by_id or writer.is_committed(result.source_id):
                        first = paths_by_id.get(result.source_id, "a file already in the dataset")
                        writer.record_failure(Failure(path, "standardize", f"duplicate content of {first} (same sha256)", "Duplicate"))
                        progress.files_done += 1
                        progress.failed += 1
                        continue
                    paths_by_id[result.source_id] = path
                    clips = result.clips
                    result.audio = result.audio_16k = None  # the clips carry their own audio
                    state = _OpenSource(result, waiting=len(clips))
                    open_sources[result.source_id] = state
                    if not clips:
                        close(state)
                    queue.extend(clips)
                else:
                    source_ids = batch_handles.pop(handle)
                    try:
                        result = executor.get(handle)
                    except Exception as exc:  # worker death: the batch's sources fail, the run goes on
                        result = BatchFailure("worker", f"{type(exc).__name__}: {exc}"[:2000])
                    if isinstance(result, BatchFailure):
                        for sid in source_ids:
                            state = open_sources.get(sid)
                            if state is not None and state.failed is None:
                                state.failed = Failure(state.source.path, result.stage, result.error, "BatchFailure")
                        # clips of these sources still queued are dropped with their source
                        queue = [c for c in queue if c.source_id not in source_ids]
                        for sid in source_ids:
                            if sid in open_sources:
                                close(open_sources[sid])
                        continue
                    clips, seconds = result
                    for k, v in seconds.items():
                        batched_seconds[k] = batched_seconds.get(k, 0.0) + v
                    for clip in clips:
                        state = open_sources.get(clip.source_id)
                        if state is None:
                            continue
                        state.done.append(clip)
                        state.waiting -= 1
                        if state.waiting == 0:
                            close(state)
                progress.update()
    finally:
        executor.shutdown()
    progress.update(force=True)
    wall = time.perf_counter() - t_start
    summary = finalize(out_dir, config, {
        "batched_stage_seconds": batched_seconds,
        "wall_seconds": round(wall, 3),
        "audio_hours_per_hour": round(progress.audio_s / wall, 4) if wall > 0 else 0.0,
        "runner": config.run.runner,
    })
    log(format_summary(summary))
    return summary
