"""Before a run: which runner (local or Ray), how the local runner is sized to this machine, and the
checks that fail fast (output folder writable, every model present)."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from emilia_pipe.config import ConfigError, PipelineConfig
from emilia_pipe.media.inputs import OutputError
from emilia_pipe.models.refs import ModelUnavailableError
from emilia_pipe.models.registry import model_statuses
from emilia_pipe.runtime.devices import gpu_count
from emilia_pipe.runtime.heap import restart_tuned
from emilia_pipe.stages import STAGE_NAMES


def active_stages(config: PipelineConfig) -> list[str]:
    return [s for s in STAGE_NAMES if s != "separate" or config.separation_enabled]


def ray_installed() -> bool:
    try:
        return importlib.util.find_spec("ray") is not None
    except ImportError:  # a finder that refuses it
        return False


def choose_runner(config: PipelineConfig) -> str:
    """``run.runner: auto``: Ray for a cluster, or for a GPU where Ray is installed; else one process with
    two lanes, which on a CPU machine measured faster and far lighter than five Ray actor processes sharing
    the cores. Ray asked for (``run.runner: ray`` or ``run.ray_address``) but not installed is an error."""
    runner = config.run.runner
    if runner == "auto":
        wants_ray = config.run.ray_address or (gpu_count() > 0 and ray_installed())
        runner = "ray" if wants_ray else "local"
    if runner == "ray" and not ray_installed():
        raise ConfigError("run.runner ray (or run.ray_address) needs the ray package, which is not installed: "
                          "pip install 'emilia-pipe[ray]', or use --runner local")
    return runner


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
    from emilia_pipe.runtime.threads import default_threads

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
