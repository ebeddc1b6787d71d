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

SAME_CONTENT: dict[str, str] = {}  # input name -> the name whose content it has (a duplicate)


def _source(task, n_clips: int) -> Source:
    name = task.path.rsplit("/", 1)[-1]
    sid = f"{abs(hash(task.path.replace(name, SAME_CONTENT.get(name, name)))) % 16**16:016x}"
    src = Source(source_id=sid, path=task.path, sha256=sid * 4, duration=10.0, orig_sample_rate=24000,
                 orig_channels=1, codec="pcm", container="wav", index=task.index)
    src.clips = [Clip(source_id=sid, index=i, start=3.0 * i, end=3.0 * i + 3.0, speaker="SPEAKER_00",
                      audio=np.zeros(72000, np.float32), audio_16k=np.zeros(48000, np.float32)) for i in range(n_clips)]
    return src


class _Handle:  # hashable like a Ray ObjectRef
    def __init__(self, kind, value):
        self.kind, self.value = kind, value


class ActorDiedError(Exception):
    """Named as Ray's: the driver takes it for work lost with its worker."""


class ActorUnavailableError(Exception):
    """Named as Ray's: the actor is restarting."""


class ScriptedExecutor:
    """Per-file results from a table, completed in a random (seeded) order. A path in `die` raises on get
    (as a dead Ray actor does); a batch holding a clip of a path in `bad_clip` fails; a path in `hang`
    never finishes. Writer lives (counted in writes answered, from 1): `restart_writer_at` restarts the
    writer after that write (what it buffered is lost, as with a Ray actor restart); `die_in_write`
    loses the writer during that write, before it writes; `die_after_write` loses it after the write
    (and its commit) but before it answers."""

    def __init__(self, config, out_dir, run, die=(), bad_clip=(), hang=(), fail_batches=False, seed=0,
                 restart_writer_at=(), die_in_write=(), die_after_write=(), unavailable_writes=()):
        import random

        self.die, self.bad, self.hang, self.fail_batches = set(die), set(bad_clip), set(hang), fail_batches
        self.config, self.out, self.slot = config, out_dir, f"{run:06d}-w0"
        self.writer = SourceWriter(out_dir, config, self.slot)
        self.rng = random.Random(seed)
        self.restart_at, self.die_in, self.die_after = set(restart_writer_at), set(die_in_write), set(die_after_write)
        self.unavailable = set(unavailable_writes)
        self.writes = 0
        self.batch_sizes, self.cancelled, self.max_writes = [], [], 0
        self.max_in_flight = 0
        self.live = set()
        self.live_writes = set()

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
        self.live_writes.add(h)
        self.max_writes = max(self.max_writes, len(self.live_writes))
        return h

    def commit_writers(self):
        return [(self.slot, self.writer.commit())]

    def _restart_writer(self):
        self.writer = SourceWriter(self.out, self.config, self.slot)

    def wait(self, handles, timeout=None):
        ready = [h for h in handles if not (h.kind == "file" and h.value.path.endswith(tuple(self.hang)))]
        if not ready:
            time.sleep(timeout or 0)
            return []
        return [self.rng.choice(ready)]

    def get(self, handle):
        kind, value = handle.kind, handle.value
        if kind == "file":
            self.live.discard(handle)
            if value.path.endswith(tuple(self.die)):
                raise RuntimeError(f"actor died while processing {value.path}")
            light, _ = split_audio(_source(value, 2))
            return light
        if kind == "write":
            self.live_writes.discard(handle)
            self.writes += 1
            if self.writes in self.die_in:
                self._restart_writer()
                raise ActorDiedError("the writer died while writing")
            if self.writes in self.unavailable:
                raise ActorUnavailableError("the actor is restarting; the task may or may not have run")
            job, audio = value
            src = _source(_Task(job["index"], job["source"]["path"]), 2)
            result = self.writer.write(job, split_audio(src)[1] if audio is not None else None)
            if self.writes in self.die_after:
                self._restart_writer()
                raise ActorDiedError("the writer died before it answered")
            if self.writes in self.restart_at:
                self._restart_writer()
            return result
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


# --- writer lives: a restarted writer never replaces a committed part; lost writes are redone --------------

def _source_rows(out):
    """Every commit of a source in the ledger, duplicates included: the rows of writers' parts, and each row
    of a bucket as many times as writers committed it (its ``commits``)."""
    import pyarrow.parquet as pq

    ledger = out / ".emilia/ledger"
    rows = [i for p in ledger.glob("sources-*.parquet") for i in pq.read_table(p)["index"].to_pylist()]
    for p in ledger.glob("bsources-*.parquet"):
        t = pq.read_table(p, columns=["index", "commits"])
        rows += [i for i, n in zip(t["index"].to_pylist(), t["commits"].to_pylist()) for _ in range(n)]
    return sorted(rows)


def _job(index, path):
    src = Source(source_id=f"{index:016x}", path=path, sha256=f"{index:064x}", duration=1.0, orig_sample_rate=16000,
                 orig_channels=1, codec="pcm", container="wav", index=index)
    return {"index": index, "run": 0, "status": "done", "duplicate_of": None, "source": src.metadata(), "clips": []}


def test_a_restarted_writer_never_replaces_a_committed_part(tmp_path):
    from emilia_pipe.dataset.ledger import Ledger

    cfg = load_config(overrides=["run.runner=local", "run.commit_every_sources=1"])
    SourceWriter(tmp_path, cfg, "000000-w0").write(_job(0, "/a.wav"), None)  # committed by the first life
    SourceWriter(tmp_path, cfg, "000000-w0").write(_job(1, "/b.wav"), None)  # the same writer, restarted
    assert Ledger(tmp_path).done_indices() == {0, 1}  # before: the second life's part replaced the first's: {1}


def test_a_committed_part_is_never_replaced(tmp_path):
    import pyarrow as pa

    from emilia_pipe.runtime.files import write_table_atomic

    path = tmp_path / "sources-x.parquet"
    write_table_atomic(path, pa.table({"index": [1]}), tmp_path, exclusive=True)
    with pytest.raises(FileExistsError):
        write_table_atomic(path, pa.table({"index": [2]}), tmp_path, exclusive=True)
    import pyarrow.parquet as pq

    assert pq.read_table(path)["index"].to_pylist() == [1] and not list(tmp_path.glob(".*tmp*"))


NAMES = [f"f{i}.wav" for i in range(7)]


@pytest.mark.parametrize("seed", [0, 1])
def test_sources_a_restarted_writer_lost_are_redone_in_the_same_run(tmp_path, seed):
    # three sources a commit: the writer restarts after its 2nd and 5th answers, losing what it held
    summary, failures, ex = _run(tmp_path, NAMES, overrides=["run.commit_every_sources=3"], seed=seed,
                                 restart_writer_at=[2, 5])
    assert failures == [] and summary["this_run"]["failed"] == 0  # before: 2-4 WriterLost failures, exit 0
    assert summary["files"]["ok"] == 7 and summary["clips"]["total"] == 14
    assert _source_rows(tmp_path / "out") == list(range(7))  # each source committed once


def test_a_write_lost_with_its_writer_is_written_again(tmp_path):
    summary, failures, ex = _run(tmp_path, NAMES, overrides=["run.commit_every_sources=2"], die_in_write=[3])
    assert failures == [] and summary["files"]["ok"] == 7  # before: one "write" failure (ActorDiedError)
    assert _source_rows(tmp_path / "out") == list(range(7))


def test_a_write_committed_before_its_writer_died_is_not_committed_twice(tmp_path):
    summary, failures, ex = _run(tmp_path, NAMES, overrides=["run.commit_every_sources=1"], die_after_write=[2, 4])
    assert failures == [] and summary["files"]["ok"] == 7
    assert _source_rows(tmp_path / "out") == list(range(7))


def test_a_source_lost_on_every_try_is_a_failure_with_the_right_reason(tmp_path):
    # max_attempts=1: a lost source is not redone; it is counted as a failure of this run (exit 1)
    summary, failures, ex = _run(tmp_path, NAMES, overrides=["run.commit_every_sources=3", "run.max_attempts=1"],
                                 restart_writer_at=[2])
    assert summary["this_run"]["failed"] == 2 and len(failures) == 2
    assert {f["error_type"] for f in failures} == {"WriterLost"}
    assert all("lost before committing it" in f["error"] for f in failures)


def test_writes_in_flight_are_bounded(tmp_path):
    summary, failures, ex = _run(tmp_path, [f"f{i:02d}.wav" for i in range(20)],
                                 overrides=["run.max_writes_in_flight=2", "transcribe.batch_size=16"])
    assert not failures and summary["files"]["ok"] == 20
    assert 1 <= ex.max_writes <= 2  # before: up to max_open_sources writes at once


def test_published_files_do_not_depend_on_completion_order(tmp_path, monkeypatch):
    """Two pairs of inputs with the same content: which copy finishes first changes how the second is
    found (written as a duplicate, or found one at publish), never a published byte."""
    monkeypatch.setattr("test_driver.SAME_CONTENT", {"b.wav": "a.wav", "z.wav": "c.wav"})
    names = ["a.wav", "b.wav", "c.wav", *[f"f{i}.wav" for i in range(8)], "z.wav"]
    inputs = _inputs(tmp_path, names)
    cfg = load_config(overrides=["run.runner=local", "run.max_files_in_flight=2"])
    views, statuses = set(), set()
    for seed in range(4):
        out = tmp_path / f"out{seed}"
        run_pipeline(inputs, out, cfg, log=lambda m: None,
                     executor_factory=lambda c, stages, o, run, seed=seed: ScriptedExecutor(c, o, run, seed=seed))
        from conftest import published

        views.add(json.dumps({k: v for k, v in published(out).items() if k != "summary.json"}, sort_keys=True))
        from emilia_pipe.dataset.ledger import Ledger

        statuses.add(tuple(Ledger(out).sources(["status"])["status"]))
    assert len(statuses) > 1  # the copies did finish in different orders (seeds 0-3: z first twice, b first twice)
    assert len(views) == 1  # before: skipped.jsonl listed the two copies in either order


def test_new_folders_are_fsynced_into_their_parents_before_the_commit(tmp_path, monkeypatch):
    from pathlib import Path

    from emilia_pipe.dataset.ledger import Ledger

    events = []
    monkeypatch.setattr("emilia_pipe.dataset.writer.fsync_dir", lambda d: events.append(("fsync", Path(d))))
    real = Ledger.commit
    monkeypatch.setattr(Ledger, "commit", lambda self, *a: (events.append(("commit", None)), real(self, *a))[1])
    cfg = load_config(overrides=["run.commit_every_sources=1"])
    writer = SourceWriter(tmp_path, cfg, "000000-w0")
    src = _source(_Task(0, "/x/a.wav"), 2)
    job = {"index": 0, "run": 0, "status": "done", "duplicate_of": None, "source": src.metadata(),
           "clips": [c.to_record() for c in src.clips]}
    writer.write(job, split_audio(src)[1])
    synced = {p for kind, p in events[:events.index(("commit", None))] if kind == "fsync"}
    mp3s = list(tmp_path.rglob("*.mp3"))
    on_the_way = {p for m in mp3s for p in m.parents if tmp_path in p.parents}  # every folder below OUT
    assert mp3s and on_the_way <= synced, sorted(on_the_way - synced)  # before: only the mp3/ folders


def test_status_reads_a_consistent_ledger_while_a_compaction_removes_parts(tmp_path, monkeypatch):
    from emilia_pipe.dataset.build import status
    from emilia_pipe.dataset.compaction import compact
    from emilia_pipe.dataset.ledger import Ledger

    summary, _, _ = _run(tmp_path, [f"f{i}.wav" for i in range(10)], overrides=["run.commit_every_sources=1"])
    out = tmp_path / "out"
    for i in range(10, 19):  # more committed parts, not yet compacted
        SourceWriter(out, load_config(overrides=["run.commit_every_sources=1"]), "000001-w0").write(
            _job(i, f"/x/g{i}.wav"), None)
    real, state = Ledger._read_part, {"compacted": False}

    def compacting_meanwhile(self, path, schema, columns):
        if not state["compacted"] and "sources-" in path.name:
            state["compacted"] = True
            compact(Ledger(out), 2)  # writes the merged parts, then removes the old ones
        return real(self, path, schema, columns)

    monkeypatch.setattr(Ledger, "_read_part", compacting_meanwhile)
    st = status(out)
    assert state["compacted"] and st["sources"]["done"] == 19  # before: FileNotFoundError


def test_a_write_to_a_restarting_writer_is_sent_again_without_using_a_try(tmp_path):
    # max_attempts=1: a lost worker is never retried, yet an actor that is restarting is waited for
    summary, failures, ex = _run(tmp_path, NAMES, overrides=["run.max_attempts=1"], unavailable_writes=[2, 3, 4])
    assert failures == [] and summary["files"]["ok"] == 7  # before: 3 "write" failures (ActorUnavailableError)


def test_the_driver_merges_writer_parts_into_buckets_while_the_run_goes_on(tmp_path, monkeypatch):
    """80 sources committed one by one: before, their 160 parts stayed until the run's end (a long run
    left ~48k files an hour); now the driver merges them while the run goes on, 64 parts at a time, and
    the ledger never holds more than that many writer parts plus the buckets."""
    from emilia_pipe.dataset.build import Build
    from emilia_pipe.runners import scheduler

    monkeypatch.setattr(scheduler, "COMPACT_EVERY_S", 0.0)
    seen, merged = [], []
    real = Build.compact_running

    def watched(self, min_parts=64):
        seen.append(len(list(self.ledger.dir.glob("sources-*.parquet"))))
        merged.append(real(self, min_parts))
        return merged[-1]

    monkeypatch.setattr(Build, "compact_running", watched)
    names = [f"f{i:03d}.wav" for i in range(80)]
    summary, failures, _ = _run(tmp_path, names, overrides=["run.commit_every_sources=1"])
    assert failures == [] and summary["files"]["ok"] == 80
    assert sum(merged) >= 64 and max(seen) < 64 + 16, (sum(merged), max(seen))  # before: never called
    assert _source_rows(tmp_path / "out") == list(range(80))  # each committed once, merged or not
