"""The driver with stand-in executors (no model): worker deaths, failing batches and clips, hung tasks,
bounded work in flight, and audio that never reaches the driver. The real writer and ledger are used."""
import json
import time

import numpy as np
import pytest

from emilia_pipe.config import load_config
from emilia_pipe.dataset.writer import SourceWriter
from emilia_pipe.records import Clip, Source, split_audio
from emilia_pipe.runners.calls import BatchFailure
from emilia_pipe.runners.driver import run_pipeline


def _source(task, n_clips: int) -> Source:
    sid = f"{abs(hash(task.path)) % 16**16:016x}"
    src = Source(source_id=sid, path=task.path, sha256=sid * 4, duration=10.0, orig_sample_rate=24000,
                 orig_channels=1, codec="pcm", container="wav", index=task.index)
    src.clips = [Clip(source_id=sid, index=i, start=3.0 * i, end=3.0 * i + 3.0, speaker="SPEAKER_00",
                      audio=np.zeros(72000, np.float32), audio_16k=np.zeros(48000, np.float32)) for i in range(n_clips)]
    return src


class _Handle:  # hashable like a Ray ObjectRef
    def __init__(self, kind, value):
        self.kind, self.value = kind, value


class ScriptedExecutor:
    """Per-file results from a table. A path in `die` raises on get (as a dead Ray actor does); a batch
    holding a clip of a path in `bad_clip` fails; a path in `hang` never finishes."""

    def __init__(self, config, out_dir, run, die=(), bad_clip=(), hang=(), fail_batches=False):
        self.die, self.bad, self.hang, self.fail_batches = set(die), set(bad_clip), set(hang), fail_batches
        self.writer = SourceWriter(out_dir, config, f"{run:06d}-w0")
        self.batch_sizes, self.cancelled = [], []
        self.max_in_flight = 0
        self.live = set()

    def submit_file(self, task):
        meta = _Handle("file", task)
        self.live.add(meta)
        self.max_in_flight = max(self.max_in_flight, len(self.live))
        return meta, _Handle("audio", task)

    def submit_batch(self, clips, audio):
        assert all(c.audio is None and c.audio_16k is None for c in clips)  # the driver holds no audio
        self.batch_sizes.append(len(clips))
        return _Handle("batch", clips)

    def submit_write(self, job, audio):
        h = _Handle("write", (job, audio))
        return h

    def commit_writers(self):
        self.writer.commit()

    def wait(self, handles, timeout=None):
        ready = [h for h in handles if not (h.kind == "file" and h.value.path.endswith(tuple(self.hang)))]
        if not ready:
            time.sleep(timeout or 0)
        return ready[:1]

    def get(self, handle):
        kind, value = handle.kind, handle.value
        if kind == "file":
            self.live.discard(handle)
            if value.path.endswith(tuple(self.die)):
                raise RuntimeError(f"actor died while processing {value.path}")
            light, _ = split_audio(_source(value, 2))
            return light
        if kind == "write":
            job, audio = value
            src = _source(_Task(job["index"], job["source"]["path"]), 2)
            return self.writer.write(job, split_audio(src)[1] if audio is not None else None)
        if self.fail_batches:
            return BatchFailure("transcribe", "CUDA error: out of memory")
        if len(value) > 1 and any(c.source_id in self.bad for c in value):
            return BatchFailure("transcribe", "bad clip in batch")
        if any(c.source_id in self.bad for c in value):
            return BatchFailure("transcribe", "this clip is bad")
        for c in value:
            c.text, c.language, c.language_prob, c.dnsmos_ovrl, c.chars, c.sec_per_char = "hello there", "en", 0.99, 3.5, 10, 0.3
        return value, {"transcribe": 0.1, "score": 0.1}

    def cancel(self, handle):
        self.cancelled.append(handle)
        self.live.discard(handle)

    def shutdown(self):
        pass


class _Task:
    def __init__(self, index, path):
        self.index, self.path = index, path


def _inputs(tmp_path, names):
    paths = []
    for n in names:
        p = tmp_path / n
        p.write_bytes(n.encode())
        paths.append(p)
    return paths


def _run(tmp_path, names, overrides=(), **kw):
    cfg = load_config(overrides=["run.runner=local", *overrides])
    holder = {}

    def factory(c, stages, out, run):
        holder["ex"] = ScriptedExecutor(c, out, run, **kw)
        return holder["ex"]

    summary = run_pipeline(_inputs(tmp_path, names), tmp_path / "out", cfg, executor_factory=factory)
    failures = [json.loads(l) for l in (tmp_path / "out/failures.jsonl").read_text().splitlines()]
    return summary, failures, holder["ex"]


def test_dead_worker_is_retried_then_fails_only_its_file(tmp_path):
    summary, failures, _ = _run(tmp_path, ["a.wav", "b.wav", "c.wav"], die=["b.wav"])
    assert [(f["stage"], f["path"].endswith("b.wav")) for f in failures] == [("worker", True)]
    assert "actor died" in failures[0]["error"]
    assert summary["files"]["ok"] == 2 and summary["files"]["failed"] == 1
    assert summary["clips"]["total"] == 4 and summary["clips"]["kept"] == 4


def test_failed_batches_fail_their_sources_and_the_run_finishes(tmp_path):
    summary, failures, _ = _run(tmp_path, ["a.wav", "b.wav"], fail_batches=True)
    assert summary["files"]["failed"] == 2 and summary["files"]["failed_by_stage"] == {"transcribe": 2}
    assert summary["clips"]["total"] == 0


def test_one_bad_clip_fails_only_its_source(tmp_path):
    bad = f"{abs(hash(str((tmp_path / 'b.wav').absolute()))) % 16**16:016x}"
    summary, failures, ex = _run(tmp_path, ["a.wav", "b.wav", "c.wav"], overrides=["transcribe.batch_size=16"],
                                 bad_clip=[bad])
    assert [f["path"].endswith("b.wav") for f in failures] == [True]
    assert summary["files"]["ok"] == 2 and summary["clips"]["total"] == 4
    assert ex.batch_sizes[0] == 6 and ex.batch_sizes[1:] == [1] * 6  # the whole batch, then clip by clip


def test_a_hung_file_times_out_and_the_rest_goes_on(tmp_path):
    summary, failures, ex = _run(tmp_path, ["a.wav", "hung.wav", "c.wav"], overrides=["run.task_timeout_s=0.5"],
                                 hang=["hung.wav"])
    assert [(f["stage"], f["path"].endswith("hung.wav")) for f in failures] == [("timeout", True)]
    assert len(ex.cancelled) == 1 and summary["files"]["ok"] == 2


def test_work_in_flight_is_bounded_whatever_the_input_count(tmp_path):
    names = [f"f{i:03d}.wav" for i in range(40)]
    summary, failures, ex = _run(tmp_path, names, overrides=["run.max_files_in_flight=3", "run.max_open_sources=5",
                                                             "transcribe.batch_size=4"])
    assert not failures and summary["files"]["ok"] == 40 and summary["clips"]["total"] == 80
    assert ex.max_in_flight <= 3
    assert max(ex.batch_sizes) <= 4 and sum(ex.batch_sizes) == 80


def test_batches_are_filled_across_files(tmp_path):
    # batches fill across files up to batch_size; only the last one is partial
    summary, _, ex = _run(tmp_path, [f"f{i}.wav" for i in range(10)],
                          overrides=["transcribe.batch_size=8", "run.min_batch_fill=1"])
    assert ex.batch_sizes == [8, 8, 4]


def test_an_idle_batch_stage_gets_half_a_batch(tmp_path):
    # with nothing in the batched stages, half a batch is sent at once (both lanes busy), never less
    summary, _, ex = _run(tmp_path, [f"f{i}.wav" for i in range(10)], overrides=["transcribe.batch_size=8"])
    assert ex.batch_sizes[0] == 4 and min(ex.batch_sizes[:-1]) >= 4 and sum(ex.batch_sizes) == 20


@pytest.mark.parametrize("names", [["a.wav", "b.wav"]])
def test_ids_follow_the_plan_not_completion(tmp_path, names):
    summary, _, _ = _run(tmp_path, names)
    lines = [json.loads(l) for l in (tmp_path / "out/EN/EN_B00000.jsonl").read_text().splitlines()]
    by_source = {l["source"].rsplit("/", 1)[1]: l["id"][:-8] for l in lines}
    assert by_source == {"a.wav": "EN_B00000_S00000", "b.wav": "EN_B00000_S00001"}


def test_a_resource_plan_larger_than_the_cluster_is_refused_at_once():
    from emilia_pipe.runners.ray_executor import ResourcePlanError, check_plan, plan_demand

    cfg = load_config(overrides=["run.resources.transcribe={actors: 2, num_cpus: 1, num_gpus: 0.5}",
                                 "run.resources.write={actors: 3, num_cpus: 0.5, custom: {cpu_node: 1}}"])
    pools = ["standardize", "diarize", "segment", "transcribe", "score", "write"]
    assert plan_demand(cfg, pools, has_gpu=True) == {"CPU": 4.75, "GPU": 1.0, "cpu_node": 3.0}  # 0.25+0.5+0.25+2+0.25+1.5
    assert "GPU" not in plan_demand(cfg, pools, has_gpu=False)  # GPU asks are dropped on a CPU-only cluster
    check_plan(cfg, pools, {"CPU": 8, "GPU": 1, "cpu_node": 4}, has_gpu=True)  # fits: no error
    with pytest.raises(ResourcePlanError, match="CPU 4.75 wanted, 2 available.*cpu_node 3 wanted, 0 available"):
        check_plan(cfg, pools, {"CPU": 2}, has_gpu=False)
    grow = load_config(overrides=["run.allow_autoscaling=true"])
    check_plan(grow, pools, {"CPU": 0.5}, has_gpu=False)  # an autoscaling cluster may grow into it
