"""Before a run: which runner (local or Ray), how the local runner is sized to this machine, and the
checks that fail fast (output folder writable, every model present)."""
from __future__ import annotations

import importlib.util
import os
import tempfile
from pathlib import Path

from emilia_pipe.config import ConfigError, PipelineConfig
from emilia_pipe.media.inputs import OutputError
from emilia_pipe.models.refs import ModelUnavailableError
from emilia_pipe.models.registry import model_statuses
from emilia_pipe.records import STATE_DIR
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


def resolve_numerics(config: PipelineConfig, stages: list[str], cluster_gpus: int | None = None) -> dict[str, str]:
    """What the device settings will resolve to where the stages run (part of the build's fingerprint):
    each stage's device, Whisper's compute type (``auto``: float16 on CUDA, int8 on CPU with CTranslate2,
    float32 with torch) and Demucs' precision (float32 on CPU). ``cluster_gpus``: the Ray cluster's GPUs
    (a pool gets one only when it asks, run.resources.<pool>.num_gpus); None: this machine's."""
    out: dict[str, str] = {}
    for stage in ("separate", "diarize", "transcribe", "score"):
        if stage not in stages:
            continue
        setting = getattr(config, stage).device
        if cluster_gpus is None:
            available = gpu_count() > 0
        else:
            available = cluster_gpus > 0 and config.run.resources[stage].num_gpus > 0
        if stage == "score" and available:
            available = _onnx_has_cuda()
        out[f"resolved.{stage}.device"] = "cpu" if setting == "cpu" else ("cuda" if available or setting == "cuda" else "cpu")
    if "transcribe" in stages:
        t = config.transcribe
        on_gpu = out["resolved.transcribe.device"] == "cuda"
        ct = t.compute_type
        if ct == "auto":
            ct = "float16" if on_gpu else ("int8" if t.backend == "ctranslate2" else "float32")
        out["resolved.transcribe.compute_type"] = ct
    if "separate" in stages:
        out["resolved.separate.precision"] = (config.separate.precision
                                              if out["resolved.separate.device"] == "cuda" else "float32")
    return out


def _onnx_has_cuda() -> bool:
    try:
        import onnxruntime

        return "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    except Exception:  # noqa: BLE001 - no onnxruntime: the score stage reports it
        return False


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


def check_output(out_dir: str | Path, force: bool = False) -> Path:
    """Fail at once, with the fix, when the output cannot or must not be written: an empty path or one that
    is not UTF-8, a file, a folder of other things that is not a build (unless ``force``), a place where
    nothing can be created.
    Returns the output's absolute path; leaves nothing behind."""
    from emilia_pipe.dataset.ledger import is_build
    from emilia_pipe.runtime.userfiles import shown

    if not str(out_dir).strip():
        raise OutputError("the output path is empty; give -o a folder (a new one, or a build to resume)")
    out = Path(os.path.abspath(out_dir))
    try:
        str(out).encode("utf-8")
    except UnicodeEncodeError:  # the build's Parquet and JSON name files by UTF-8 paths
        raise OutputError(f"the output path {shown(out)} is not valid UTF-8; give -o a path with a UTF-8 name "
                          "(a link to the folder will do)") from None
    if out.exists() and not out.is_dir():
        raise OutputError(f"output {shown(out)} is a file, not a folder; give -o a new folder or an existing build")
    if out.is_dir() and not force and not is_build(out):
        with os.scandir(out) as entries:
            other = next((e.name for e in entries if e.name != STATE_DIR), None)  # .emilia alone: a build's start
        if other is not None:
            raise OutputError(f"output {shown(out)} holds other files (e.g. {shown(other)!r}) and is not a build of "
                              "emilia-pipe; give -o a new or empty folder, or add --force to write the build into it "
                              "(its summary.json, sources.jsonl, datacard.html, ... are replaced)")
    parent = out
    while not parent.exists():  # the nearest existing folder is where the output gets created
        parent = parent.parent
    try:  # a real try, not os.access: root passes every permission check but not a read-only mount or /sys
        os.rmdir(tempfile.mkdtemp(prefix=".emilia-probe-", dir=parent))
    except OSError as exc:
        raise OutputError(f"cannot write to {shown(parent)} ({exc.strerror}: read-only or no permission); "
                          "give -o a writable folder") from None
    return out


def preflight(config: PipelineConfig) -> None:
    """Fail before any work when a model the run needs is missing."""
    missing = [m for m in model_statuses(config) if not m.present]
    if missing:
        raise ModelUnavailableError("\n".join(f"{m.role}: {m.note}" for m in missing))
