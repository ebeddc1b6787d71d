"""Run the stages on Ray: one actor pool per stage, each actor holding its model once.

Per-file stages are chained by passing object refs from one pool's call to the next, so Ray streams
files through the pools without the driver touching the audio in between. GPU stages ask for the
configured (fractional) GPUs when the cluster has any."""
from __future__ import annotations

import itertools
import os

from emilia_pipe.runners.calls import run_batch_stage, run_file_stage

_FILE_STAGES = ("standardize", "separate", "diarize", "segment")
# set by emilia_pipe/__init__ in the driver; workers must start with the same values
_WORKER_ENV = ("PYANNOTE_METRICS_ENABLED", "TOKENIZERS_PARALLELISM", "OMP_WAIT_POLICY")


class StageActor:
    def __init__(self, name: str, config_data: dict):
        from emilia_pipe.config import build_config
        from emilia_pipe.stages import build_stage
        from emilia_pipe.torch_threads import set_torch_threads

        config = build_config(config_data)
        set_torch_threads(config.run.torch_threads)
        self.stage = build_stage(name, config)

    def process(self, item):
        return run_file_stage(self.stage, item)

    def process_batch(self, item):
        return run_batch_stage(self.stage, item)

    def ready(self) -> bool:
        return True


class RayExecutor:
    def __init__(self, config, stage_names: list[str], address: str | None = None, log=print):
        import ray

        self.ray = ray
        if not ray.is_initialized():
            if address:
                ray.init(address=address, include_dashboard=False, log_to_driver=True)
            else:
                ray.init(include_dashboard=False, log_to_driver=True, configure_logging=False,
                         runtime_env={"env_vars": {k: os.environ[k] for k in _WORKER_ENV}})
        self._owns_ray = address is None
        has_gpu = ray.cluster_resources().get("GPU", 0) > 0
        data = config.model_dump(mode="json")
        self.pools: dict[str, itertools.cycle] = {}
        actors = []
        for name in stage_names:
            res = config.run.resources[name]
            num_gpus = res.num_gpus if has_gpu else 0
            cls = ray.remote(StageActor).options(num_cpus=res.num_cpus, num_gpus=num_gpus, max_restarts=1,
                                                 name=None)
            pool = [cls.remote(name, data) for _ in range(res.actors)]
            actors.extend(pool)
            self.pools[name] = itertools.cycle(pool)
            log(f"ray: {name}: {res.actors} actor(s), {res.num_cpus} CPU, {num_gpus} GPU each")
        ray.get([a.ready.remote() for a in actors])  # surface model-loading errors now
        self.file_chain = [n for n in stage_names if n in _FILE_STAGES]
        self.batch_chain = [n for n in stage_names if n not in _FILE_STAGES]

    def submit_file(self, path):
        ref = str(path)
        for name in self.file_chain:
            ref = next(self.pools[name]).process.remote(ref)
        return ref

    def submit_batch(self, clips):
        ref = clips
        for name in self.batch_chain:
            ref = next(self.pools[name]).process_batch.remote(ref)
        return ref

    def wait(self, handles):
        done, _ = self.ray.wait(list(handles), num_returns=1)
        return done

    def get(self, handle):
        return self.ray.get(handle)

    def shutdown(self):
        if self._owns_ray and os.environ.get("EMILIA_PIPE_KEEP_RAY") != "1":
            self.ray.shutdown()
