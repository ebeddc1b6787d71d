"""The driver: plans the build, feeds files to an executor, regroups clips into cross-file batches for
the batched stages, sends each finished source to a writer, and finalizes the manifests.

It only ever holds small records (ids, scores, paths, counts) and handles to audio that lives with the
workers. Everything in flight is bounded: files in the per-file stages, open sources (decoded, clips not
yet written) and their audio bytes, batches, and writes. Every task has a deadline; a task past it is
cancelled and recorded as a failure. A failing batch is retried clip by clip, so one bad clip fails only
its own source."""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Callable, Optional

from emilia_pipe.config import PipelineConfig
from emilia_pipe.dataset.build import Build
from emilia_pipe.dataset.planning import drop_missing as drop_missing_inputs
from emilia_pipe.dataset.publish import finalize
from emilia_pipe.dataset.summary import format_summary
from emilia_pipe.media.inputs import InputError, expand_inputs
from emilia_pipe.records import Failure
from emilia_pipe.runners.choice import (
    active_stages,
    check_output,
    choose_runner,
    preflight,
    resolve_numerics,
    size_local,
)
from emilia_pipe.runners.scheduler import WRITER_LOST, Scheduler
from emilia_pipe.runtime.heap import setup_heap
from emilia_pipe.runtime.userfiles import shown


def run_pipeline(
    inputs: list[str | Path],
    out_dir: str | Path,
    config: PipelineConfig,
    executor_factory: Optional[Callable] = None,
    log: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True),
    allow_config_change: bool = False,
    force_output: bool = False,
    filter_given: bool = False,
    drop_missing: bool = False,
) -> dict:
    """Process ``inputs`` into an Emilia-format dataset in ``out_dir``; returns the summary. A build
    folder that already holds work is resumed: sources already done are not read again. A folder of
    other files is refused unless ``force_output``. A resumed build keeps its filter settings (those its
    last ``refilter`` set) unless ``filter_given``: the caller was given filter settings for this run.
    ``drop_missing``: withdraw the clips of inputs no longer on disk."""
    t_start = time.perf_counter()
    run = config.run
    setup_heap(run.tune_malloc, run.malloc_keep_free_mb, run.malloc_trim_threshold_mb)  # before stages start threads
    out_dir = check_output(out_dir, force_output)  # absolute: workers may start in another folder
    found = expand_inputs(inputs, exclude=[out_dir], max_list_bytes=int(config.inputs.max_list_mb * 2**20),
                          metadata_threads=config.inputs.metadata_threads)
    if not found.files and not found.problems:
        raise InputError(f"no audio files found in {', '.join(map(shown, inputs))}")
    preflight(config)
    stages = active_stages(config)
    runner = choose_runner(config)
    if not config.separation_enabled:
        log("separation: off (profile has no separation model) - clips are cut from the original mix")
    planned, cluster_gpus = config, None
    if executor_factory is None and runner == "ray":  # the cluster decides the devices, so the fingerprint
        from emilia_pipe.runners.ray_executor import auto_plan, cluster_resources

        cluster_gpus = int(cluster_resources(config).get("GPU", 0))
        if config.run.resource_plan == "auto":  # bounds too: the scheduler runs with this copy
            planned = auto_plan(config, stages, log)
    resolved = resolve_numerics(planned, stages, cluster_gpus)
    with Build(out_dir, config, allow_config_change=allow_config_change, log=log, filter_given=filter_given,
               resolved=resolved) as build:
        config = build.cfg  # with the filter settings in force in the build: what is published
        run_config = planned.model_copy(update={"filter": build.stage_cfg.filter})  # what the stages run with
        entries, n_done = build.plan(found.files, found.problems)
        planned_files = len(entries)
        del found  # every input path: planned now
        if n_done:
            log(f"{n_done} file(s) already done in {out_dir}: not read again")
        executor = None
        scheduler = None
        try:
            if entries:
                if executor_factory is not None:
                    executor = executor_factory(run_config, stages, out_dir, build.run)
                elif runner == "ray":
                    from emilia_pipe.runners.ray_executor import RayExecutor

                    executor = RayExecutor(run_config, stages, out_dir, build.run, address=config.run.ray_address,
                                           log=log)
                else:
                    from emilia_pipe.runners.local import LocalExecutor

                    sized = size_local(run_config)
                    log(f"local runner: {'two lanes' if sized.run.local_overlap else 'one lane'}, "
                        f"{sized.run.torch_threads} thread(s) per lane")
                    executor = LocalExecutor(sized, stages, out_dir, build.run)
                scheduler = Scheduler(build, executor, run_config, entries, build.shas_done(), log)
                del entries  # the scheduler's queue holds the plan and lets each task go once it is sent
                scheduler.run()  # ends with every writer's commit; sources a writer lost are redone
        finally:
            if executor is not None:
                executor.shutdown()
            build.flush_failures()
        if scheduler is not None and scheduler.acked:
            # the last check: a source a writer acknowledged that no committed part holds is a failure
            # (the scheduler keeps only those no commit confirmed: none, once its run ended normally)
            lost = scheduler.acked - build.ledger.done_indices()
            for index in sorted(lost):
                build.record_failure(Failure(build.path_of(index), "write", WRITER_LOST, "WriterLost"), index)
            scheduler.failures_this_run += len(lost)
            build.flush_failures()
        if drop_missing:
            drop_missing_inputs(build.ledger, build.run, log)
        wall = time.perf_counter() - t_start
        audio_s = scheduler.progress.audio_s if scheduler else 0.0
        summary = finalize(out_dir, config, {
            "batched_stage_seconds": scheduler.batched_seconds if scheduler else {},
            "wall_seconds": round(wall, 3),
            "audio_hours_per_hour": round(audio_s / wall, 4) if wall > 0 else 0.0,
            "runner": runner,
            "this_run": {"files": planned_files + build.input_failures,
                         "failed": (scheduler.failures_this_run if scheduler else 0) + build.input_failures,
                         "already_done": n_done, "audio_hours": round(audio_s / 3600, 6)},
        }, log=log)
        build.compact()
    log(format_summary(summary))
    return summary
