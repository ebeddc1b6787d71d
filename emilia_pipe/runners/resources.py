"""Ray resources: how a node's GPUs and cores are shared among the stage pools (``run.resource_plan:
auto``). Which device a stage runs on is decided in :mod:`emilia_pipe.runtime.devices`."""
from __future__ import annotations

import math
from dataclasses import dataclass

# Share of one GPU each GPU stage's actor asks Ray for. Ray uses them only to place actors (they cap
# nothing), so all that matters is that one actor of every GPU stage fits on each GPU: they sum to 1.
# Ordered by expected GPU time in the full profile: Whisper large-v3 with beam search, then Demucs and
# pyannote (116x and ~60x real time on an H200, benchmarks/results/gpu_h200_torch_stages.json), DNSMOS.
GPU_SHARES = {"separate": 0.25, "diarize": 0.25, "transcribe": 0.4, "score": 0.1}
# Relative CPU cost of the pools that get the cores left over (on a GPU node only the CPU stages; on a
# CPU-only cluster every stage). From the lite run's stage seconds on sample_data (docs/performance.md):
# diarize and transcribe dominate, decoding / cutting / MP3 writing are light.
CPU_WEIGHTS_GPU_NODE = {"standardize": 2, "segment": 2, "write": 1}
CPU_WEIGHTS_CPU_ONLY = {"standardize": 1, "separate": 4, "diarize": 3, "segment": 1, "transcribe": 4,
                        "score": 3, "write": 1}
# More CPU-stage actors than this per GPU would wait on the GPU stages and cost ~0.3-0.5 GiB each
# (decoding, Silero VAD and MP3 encoding each run well above 100x real time per core).
MAX_CPU_ACTORS_PER_GPU = 4
MAX_ACTORS_CPU_ONLY = 8


@dataclass
class ResourcePlan:
    resources: dict  # pool -> StageResources
    max_files_in_flight: int
    max_open_sources: int
    max_batches_in_flight: int
    max_writes_in_flight: int


def _floor(x: float, step: float = 0.01) -> float:
    return max(step, math.floor(x / step + 1e-9) * step)


def _share_cores(cores: float, weights: dict[str, float], cap: int) -> dict[str, tuple[int, float]]:
    """Split ``cores`` among pools by weight: each pool gets whole-core actors (1..cap) and the cores of
    its share spread over them, rounded down, so the pools never ask for more than ``cores``."""
    total = sum(weights.values())
    out = {}
    for name, w in weights.items():
        share = cores * w / total
        actors = min(cap, max(1, int(share)))
        out[name] = (actors, round(_floor(share / actors), 2))
    return out


def plan_resources(n_gpus: int, n_cpus: float, stages: list[str]) -> ResourcePlan:
    """Pools for a node (or cluster) with ``n_gpus`` GPUs and ``n_cpus`` cores running ``stages``.

    With GPUs: every GPU stage gets one actor per GPU asking GPU_SHARES of a GPU (they sum to 1, so Ray
    puts one of each on every GPU) and up to one core; the CPU stages share the other cores. Without
    GPUs every stage shares the cores. One core stays free for the driver and Ray itself on nodes with
    4+ cores. In-flight bounds are raised so that every per-file actor has a file queued behind the one
    it works on and every transcribe actor a second batch."""
    from emilia_pipe.config import StageResources

    budget = n_cpus - (1 if n_cpus >= 4 else 0)
    res: dict[str, StageResources] = {}
    if n_gpus > 0:
        gpu_pools = [s for s in GPU_SHARES if s in stages]
        # GPU stages mostly wait on the GPU: at most one core each, at most half the node's cores
        cpus = round(min(1.0, _floor(budget / 2 / max(1, n_gpus * len(gpu_pools)))), 2)
        for name in gpu_pools:
            res[name] = StageResources(actors=n_gpus, num_cpus=cpus, num_gpus=GPU_SHARES[name])
        weights = {k: v for k, v in CPU_WEIGHTS_GPU_NODE.items() if k in stages or k == "write"}
        rest = budget - cpus * n_gpus * len(gpu_pools)
        cap = MAX_CPU_ACTORS_PER_GPU * n_gpus
    else:
        weights = {k: v for k, v in CPU_WEIGHTS_CPU_ONLY.items() if k in stages or k == "write"}
        rest, cap = budget, MAX_ACTORS_CPU_ONLY
    for name, (actors, cpus) in _share_cores(rest, weights, cap).items():
        res[name] = StageResources(actors=actors, num_cpus=cpus)
    per_file = sum(res[s].actors for s in ("standardize", "separate", "diarize", "segment") if s in res)
    files = max(4, 2 * per_file)
    return ResourcePlan(res, max_files_in_flight=files, max_open_sources=max(16, 2 * files),
                        max_batches_in_flight=max(2, 2 * res["transcribe"].actors if "transcribe" in res else 2),
                        max_writes_in_flight=max(8, 2 * res["write"].actors))


def planned_config(config, n_gpus: int, n_cpus: float, stages: list[str]):
    """A copy of ``config`` whose run.resources and in-flight bounds come from :func:`plan_resources`."""
    plan = plan_resources(n_gpus, n_cpus, stages)
    cfg = config.model_copy(deep=True)
    cfg.run.resources = plan.resources
    cfg.run.max_files_in_flight = plan.max_files_in_flight
    cfg.run.max_open_sources = plan.max_open_sources
    cfg.run.max_batches_in_flight = plan.max_batches_in_flight
    cfg.run.max_writes_in_flight = plan.max_writes_in_flight
    return cfg


def describe(config, pools: list[str]) -> str:
    r = config.run.resources
    return ", ".join(f"{p} {r[p].actors}x({r[p].num_cpus:g} CPU" + (f", {r[p].num_gpus:g} GPU)" if r[p].num_gpus else ")")
                     for p in pools)
