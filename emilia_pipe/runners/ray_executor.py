"""Run the stages on Ray: one actor pool per stage (each actor holds its model once) plus a pool of
writers.

Dataflow: per-file stages are chained by object refs, so audio moves between pools through the object
store. The last per-file call returns three objects: the small source record, which the driver fetches,
and the clips' audio at the working rate and at the analysis rate, which stay in the object store. A
batch's first call is a small task that picks just its clips' analysis-rate audio out of its sources'
(runners.calls.clip_spans): the batched stages receive only that. A writer receives the working-rate
audio (it encodes the MP3s and commits the ledger rows). The driver never fetches audio. GPU stages ask for their (fractional) GPUs when the cluster has
any."""
from __future__ import annotations

import itertools
import os
from typing import Any, NamedTuple

from emilia_pipe.records import ClipAudio
from emilia_pipe.runners.calls import batch_keys, clip_spans, finish_file, run_batch_stage, run_file_stage
from emilia_pipe.stages import batch_chain, file_chain

# set by emilia_pipe/__init__ in the driver; workers must start with the same values (and the crash
# injection of the exactly-once tests, runtime/failpoints.py, when it is set)
_WORKER_ENV = ("PYANNOTE_METRICS_ENABLED", "TOKENIZERS_PARALLELISM", "OMP_WAIT_POLICY", "EMILIA_PIPE_CRASH_AT",
               "EMILIA_PIPE_CRASH_ONCE")


class StageActor:
    def __init__(self, name: str, config_data: dict, stage_builder=None):
        from emilia_pipe.config import build_config
        from emilia_pipe.runtime.heap import setup_heap
        from emilia_pipe.runtime.threads import set_torch_threads
        from emilia_pipe.stages import build_stage

        config = build_config(config_data)
        run = config.run
        setup_heap(run.tune_malloc, run.malloc_keep_free_mb, run.malloc_trim_threshold_mb)
        set_torch_threads(config.run.torch_threads)
        self.stage = (stage_builder or build_stage)(name, config)

    def process(self, item):
        return run_file_stage(self.stage, item)

    def process_last(self, item):
        """The source record, its clips' working-rate audio (for a writer) and their analysis-rate audio
        (for the batched stages), as three objects."""
        meta, audio = finish_file(run_file_stage(self.stage, item))
        if audio is None:
            return meta, None, None
        return meta, ClipAudio(audio.index, audio.sample_rate, audio.working, []), audio.analysis

    def process_batch(self, item, spans):
        return run_batch_stage(self.stage, item, spans)

    def ready(self) -> bool:
        return True


class WriterActor:
    """A SourceWriter in its own process. Ray restarts it after a crash (or after the driver kills it at a
    deadline) by running ``__init__`` again: the new life draws a new incarnation id, so its parts never
    replace those of the life before."""

    def __init__(self, out_dir: str, config_data: dict, slot: str):
        from emilia_pipe.config import build_config
        from emilia_pipe.dataset.writer import SourceWriter

        self.writer = SourceWriter(out_dir, build_config(config_data), slot)

    def write(self, job, audio):
        return self.writer.write(job, audio)

    def commit(self) -> dict:
        return self.writer.commit()

    def pid(self) -> int:
        return os.getpid()

    def ready(self) -> bool:
        return True


class SourceAudio(NamedTuple):
    """The driver's handle to one source's clip audio: refs it passes on, never fetches."""

    index: int
    working: Any  # ref to a ClipAudio at the working rate (for its writer)
    analysis: Any  # ref to the per-clip analysis-rate arrays (for the batched stages, through clip_spans)


class ResourcePlanError(RuntimeError):
    """The pools ask for more than the cluster has."""


def _fmt(resources: dict) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in sorted(resources.items()) if not k.startswith(("node:", "memory", "object_store")))


def plan_demand(config, pools: list[str], has_gpu: bool) -> dict[str, float]:
    """Total resources the pools ask for: every actor's CPUs, GPUs (only where the cluster has GPUs) and
    custom resources."""
    total: dict[str, float] = {}
    for name in pools:
        res = config.run.resources[name]
        want = {"CPU": res.num_cpus, "GPU": res.num_gpus if has_gpu else 0.0, **res.custom}
        for k, v in want.items():
            total[k] = total.get(k, 0.0) + v * res.actors
    return {k: round(v, 6) for k, v in total.items() if v > 0}


def check_plan(config, pools: list[str], cluster: dict, has_gpu: bool) -> None:
    """Refuse at once a plan that cannot fit the cluster as it is (rather than wait forever)."""
    demand = plan_demand(config, pools, has_gpu)
    short = {k: v for k, v in demand.items() if v > cluster.get(k, 0.0) + 1e-9}
    if short and not config.run.allow_autoscaling:
        raise ResourcePlanError(
            "the pools ask for more than the Ray cluster has: "
            + ", ".join(f"{k} {v:g} wanted, {cluster.get(k, 0):g} available" for k, v in short.items())
            + ". Lower run.resources.<pool>.actors / num_cpus / num_gpus (pools: " + ", ".join(pools)
            + "), or set run.allow_autoscaling=true on a cluster that adds nodes on demand.")


def worker_env(config) -> dict[str, str]:
    """Environment of the Ray workers: the variables above that are set here, and glibc's malloc tuning from
    each worker's first allocation (an actor's own mallopt comes after Ray's threads made their arenas)."""
    from emilia_pipe.runtime.heap import tuned_env

    env = {k: os.environ[k] for k in _WORKER_ENV if k in os.environ}
    if config.run.tune_malloc:  # other C libraries ignore GLIBC_TUNABLES
        env.update(tuned_env(config.run.malloc_trim_threshold_mb))
    return env


def init_ray(address: str | None, env_vars: dict[str, str]):
    import ray

    if not ray.is_initialized():
        env = {"env_vars": env_vars}
        # ray.init puts the working folder on every worker's sys.path (and a local cluster's workers start
        # in it): started from the folder holding this package instead, no module lying in the user's
        # working folder can be imported by a worker. Every path handed to the workers is absolute.
        here = os.getcwd()
        os.chdir(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
        try:
            if address:
                ray.init(address=address, include_dashboard=False, log_to_driver=True, runtime_env=env)
            else:
                ray.init(include_dashboard=False, log_to_driver=True, configure_logging=False, runtime_env=env)
        finally:
            os.chdir(here)
    return ray


def cluster_resources(config) -> dict:
    """The Ray cluster's resources (starting a local Ray, or joining run.ray_address)."""
    return init_ray(config.run.ray_address, worker_env(config)).cluster_resources()


def auto_plan(config, stage_names: list[str], log=print):
    """``run.resource_plan: auto``: the config with pools sized for the cluster's GPUs and cores."""
    from emilia_pipe.runners.resources import describe, planned_config

    cluster = init_ray(config.run.ray_address, worker_env(config)).cluster_resources()
    gpus, cpus = int(cluster.get("GPU", 0)), float(cluster.get("CPU", 1))
    planned = planned_config(config, gpus, cpus, stage_names)
    log(f"ray: resource plan for {gpus} GPU(s), {cpus:g} CPU(s): {describe(planned, [*stage_names, 'write'])}; "
        f"{planned.run.max_files_in_flight} files in flight")
    return planned


class RayExecutor:
    def __init__(self, config, stage_names: list[str], out_dir, run: int, address: str | None = None, log=print,
                 stage_builder=None):
        ray = init_ray(address, worker_env(config))
        self.ray = ray
        self._owns_ray = address is None
        cluster = ray.cluster_resources()
        has_gpu = cluster.get("GPU", 0) > 0
        check_plan(config, [*stage_names, "write"], cluster, has_gpu)
        data = config.model_dump(mode="json")
        self.pools: dict[str, itertools.cycle] = {}
        actors = []
        for name in stage_names:
            res = config.run.resources[name]
            num_gpus = res.num_gpus if has_gpu else 0
            cls = ray.remote(StageActor).options(num_cpus=res.num_cpus, num_gpus=num_gpus, resources=res.custom,
                                                 max_restarts=-1, max_task_retries=0)
            pool = [cls.remote(name, data, stage_builder) for _ in range(res.actors)]
            actors.extend(pool)
            self.pools[name] = itertools.cycle(pool)
            log(f"ray: {name}: {res.actors} actor(s), {res.num_cpus} CPU, {num_gpus} GPU each")
        wres = config.run.resources["write"]
        wcls = ray.remote(WriterActor).options(num_cpus=wres.num_cpus, resources=wres.custom, max_restarts=-1,
                                               max_task_retries=0)
        self.slots = [f"{run:06d}-w{i}" for i in range(wres.actors)]
        self.writers = [wcls.remote(str(out_dir), data, slot) for slot in self.slots]
        self.commit_timeout = config.run.task_timeout_s
        self.writer_cycle = itertools.cycle(self.writers)
        log(f"ray: write: {wres.actors} actor(s), {wres.num_cpus} CPU each")
        # surface model-loading errors now; actors that find no room on the cluster would wait forever
        ready = [a.ready.remote() for a in actors + self.writers]
        done, waiting = ray.wait(ready, num_returns=len(ready), timeout=config.run.actor_start_timeout_s)
        ray.get(done)
        if waiting:
            raise ResourcePlanError(
                f"{len(waiting)} of {len(ready)} actors did not start within run.actor_start_timeout_s="
                f"{config.run.actor_start_timeout_s:g} s: the cluster has no room for them (resources: "
                f"{_fmt(cluster)}). Lower run.resources.<pool>.actors / num_cpus / num_gpus, or add nodes.")
        self.file_chain = file_chain(stage_names)
        self.batch_chain = batch_chain(stage_names)
        self.actors = actors + self.writers
        # picks a batch's spans out of its sources' audio: no CPU asked, so it never waits behind the pools
        self.select = ray.remote(num_cpus=0)(clip_spans)
        self.running: dict = {}  # final ref -> [(ref, actor)] of its chain, to find a hung actor

    def submit_file(self, task):
        item, steps = task, []
        for i, name in enumerate(self.file_chain):
            actor = next(self.pools[name])
            if i == len(self.file_chain) - 1:
                meta, working, analysis = actor.process_last.options(num_returns=3).remote(item)
                steps.append((meta, actor))
            else:
                item = actor.process.remote(item)
                steps.append((item, actor))
        self.running[meta] = steps
        return meta, SourceAudio(task.index, working, analysis)

    def submit_batch(self, clips, audio_handles):
        spans = self.select.remote(batch_keys(clips), [h.index for h in audio_handles],
                                   *[h.analysis for h in audio_handles])
        ref, steps = clips, []
        for name in self.batch_chain:
            actor = next(self.pools[name])
            ref = actor.process_batch.remote(ref, spans)
            steps.append((ref, actor))
        self.running[ref] = steps
        return ref

    def submit_write(self, job, audio_handle):
        actor = next(self.writer_cycle)
        ref = actor.write.remote(job, audio_handle.working if audio_handle is not None else None)
        self.running[ref] = [(ref, actor)]
        return ref

    def commit_writers(self) -> list[tuple[str, object]]:
        """(writer slot, its commit's result or the error it raised); a writer that does not answer within
        run.task_timeout_s (its node is gone) counts as lost."""
        refs = [w.commit.remote() for w in self.writers]
        _, waiting = self.ray.wait(refs, num_returns=len(refs), timeout=self.commit_timeout)
        results: list[tuple[str, object]] = []
        for slot, ref in zip(self.slots, refs):
            if ref in waiting:
                results.append((slot, TimeoutError(f"no answer within run.task_timeout_s={self.commit_timeout:g} s")))
                continue
            try:
                results.append((slot, self.ray.get(ref)))
            except Exception as exc:  # noqa: BLE001 - the writer died with its buffer
                results.append((slot, exc))
        return results

    def wait(self, handles, timeout=None):
        """The handles (the scheduler's work in flight, a bounded number) that are done: every one done by
        now, once at least one is (one event per call would scan them all once per result)."""
        handles = list(handles)
        done, rest = self.ray.wait(handles, num_returns=1, timeout=timeout)
        if done and rest:
            more, _ = self.ray.wait(rest, num_returns=len(rest), timeout=0)
            done += more
        return done

    def get(self, handle):
        try:
            return self.ray.get(handle)
        finally:
            self.running.pop(handle, None)

    def cancel(self, handle) -> None:
        """A task past its deadline: restart the actor still working on it (its model reloads); the
        task then fails with the actor's death and other tasks queued on that actor are retried."""
        for ref, actor in self.running.pop(handle, []):
            ready, _ = self.ray.wait([ref], timeout=0)
            if not ready:
                self.ray.kill(actor, no_restart=False)
                break

    def shutdown(self):
        for actor in self.actors:  # this run's pools; a cluster joined by address outlives the run
            try:
                self.ray.kill(actor, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone with its node
                pass
        if self._owns_ray and os.environ.get("EMILIA_PIPE_KEEP_RAY") != "1":
            self.ray.shutdown()
