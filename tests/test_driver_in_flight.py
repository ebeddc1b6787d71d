"""The driver holds only work in flight (issue 23): once a source is committed or failed nothing of it stays
in the scheduler, the executors wait only on work in flight, and a batch is sent only its clips' audio at
the analysis rate. Stand-in stages (tests/test_driver.py), the real scheduler, writer and ledger."""
import itertools

import numpy as np
from test_driver import ScriptedExecutor, _inputs, _source, _Task

from emilia_pipe.config import load_config
from emilia_pipe.records import ClipAudio, split_audio
from emilia_pipe.runners import scheduler as scheduler_module
from emilia_pipe.runners.calls import clip_spans, run_batch_stage
from emilia_pipe.runners.driver import run_pipeline

BOUNDS = ["run.max_files_in_flight=3", "run.max_open_sources=5", "run.max_batches_in_flight=2",
          "run.max_writes_in_flight=2", "transcribe.batch_size=4", "run.commit_every_sources=4"]
N = 60


class WatchedScheduler(scheduler_module.Scheduler):
    """The real scheduler; after each event, the size of its per-source bookkeeping."""

    last = None

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        WatchedScheduler.last = self
        self.most = 0

    def _per_source(self) -> int:
        return max(len(self.attempts), len(self.acked), len(self.unconfirmed), len(self.open))

    def _on_write(self, handle, task):
        super()._on_write(handle, task)
        self.most = max(self.most, self._per_source())


class WatchedExecutor(ScriptedExecutor):
    """Records what the scheduler waits on: every handle must still be in flight (not yet fetched)."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.fetched, self.waited_on, self.stale = set(), 0, 0

    def wait(self, handles, timeout=None):
        handles = list(handles)
        self.waited_on = max(self.waited_on, len(handles))
        self.stale += sum(1 for h in handles if h in self.fetched)
        return super().wait(handles, timeout)

    def get(self, handle):
        self.fetched.add(handle)  # (kept alive: no id is reused)
        return super().get(handle)


def _run(tmp_path, monkeypatch, **kw):
    monkeypatch.setattr("emilia_pipe.runners.driver.Scheduler", WatchedScheduler)
    holder = {}

    def factory(c, stages, out, run):
        holder["ex"] = WatchedExecutor(c, out, run, seed=3, **kw)
        return holder["ex"]

    cfg = load_config(overrides=["run.runner=local", *BOUNDS])
    summary = run_pipeline(_inputs(tmp_path, [f"f{i:03d}.wav" for i in range(N)]), tmp_path / "out", cfg,
                           executor_factory=factory, log=lambda m: None)
    return summary, WatchedScheduler.last, holder["ex"]


def test_no_source_stays_in_the_scheduler_after_it_is_committed(tmp_path, monkeypatch):
    summary, sched, _ = _run(tmp_path, monkeypatch)
    assert summary["files"]["ok"] == N and summary["clips"]["total"] == 2 * N
    # after the run: nothing of any source (before: attempts and acked held all 60)
    left = {name: len(getattr(sched, name)) for name in ("tasks", "open", "queue", "writes", "delayed", "unconfirmed",
                                                         "attempts", "acked")}
    assert set(left.values()) == {0}, left
    assert sched.in_flight == {"file": 0, "batch": 0, "write": 0}
    # during the run: at most the sources open, in flight and held by the writer until its commit every 4
    # sources (5 + 3 + 4 = 12); before: it grew with every source written, to 60
    assert 0 < sched.most <= 12, sched.most


def test_sources_a_writer_lost_are_still_redone_with_pruned_bookkeeping(tmp_path, monkeypatch):
    # the writer restarts twice, losing what it held: those sources are redone, each committed once
    summary, sched, _ = _run(tmp_path, monkeypatch, restart_writer_at=[6, 17])
    assert summary["files"]["ok"] == N and summary["this_run"]["failed"] == 0 and sched.redone > 0
    assert not sched.attempts and not sched.acked
    from test_driver import _source_rows

    assert _source_rows(tmp_path / "out") == list(range(N))


def test_the_scheduler_waits_only_on_work_in_flight(tmp_path, monkeypatch):
    summary, sched, ex = _run(tmp_path, monkeypatch)
    assert ex.stale == 0  # never a handle already fetched
    # files + batches (+ one clip at a time after a failed batch) + writes: 3 + 2 + 4 + 2; the code before
    # passed the same (it waited on its in-flight dict too): a guard, not a fix; one ray.wait per result
    # was the cost, which test_ray_wait_returns_every_ready_handle_at_once catches
    assert 0 < ex.waited_on <= 11, ex.waited_on


class FakeRay:
    """ray.wait over refs of which ``ready`` are done; records every list it is given."""

    def __init__(self, ready):
        self.ready, self.calls = set(ready), []

    def wait(self, refs, num_returns=1, timeout=None):
        self.calls.append(list(refs))
        done = [r for r in refs if r in self.ready][:num_returns]
        return done, [r for r in refs if r not in done]


def test_ray_wait_returns_every_ready_handle_at_once():
    from emilia_pipe.runners.ray_executor import RayExecutor

    ex = RayExecutor.__new__(RayExecutor)
    ex.ray = FakeRay(ready={"b", "d", "e"})
    done = ex.wait(["a", "b", "c", "d", "e"], timeout=1.0)
    assert sorted(done) == ["b", "d", "e"]  # before: ["b"], one event per scan of every ref
    assert all(set(c) <= {"a", "b", "c", "d", "e"} for c in ex.ray.calls)  # only what it was given


def _two_sources():
    """Two sources of two 3 s clips each: 24 kHz and 16 kHz arrays, every clip's audio different."""
    out = []
    for index in (7, 9):
        src = _source(_Task(index, f"/x/s{index}.wav"), 2)
        for c in src.clips:
            c.audio = np.full(72000, index + c.index, np.float32)
            c.audio_16k = np.full(48000, 100 + index + c.index, np.float32)
        out.append(split_audio(src))
    return out


def _bytes(spans) -> int:
    return sum(np.asarray(a).nbytes for a in spans.values())


def test_a_local_batch_gets_only_its_clips_at_the_analysis_rate(tmp_path, monkeypatch):
    import emilia_pipe.runners.local as local

    (a, audio_a), (b, audio_b) = _two_sources()
    sent = []

    class Stage:
        batched = True

        def __init__(self, name):
            self.name = name

        def run(self, clips):
            sent.append({(c.source_index, c.index): c.audio_16k for c in clips})
            return clips

    real = local.run_batch_stage
    seen = []
    monkeypatch.setattr(local, "run_batch_stage", lambda stage, item, spans: (seen.append(spans), real(stage, item, spans))[1])
    monkeypatch.setattr(local, "SourceWriter", lambda *args, **kwargs: None)
    ex = local.LocalExecutor(load_config(overrides=["run.local_overlap=false"]), ["transcribe", "score"], tmp_path, 0,
                             stage_builder=lambda name, config: Stage(name))
    batch = [a.clips[1], b.clips[0]]
    result = ex.get(ex.submit_batch(batch, [local._Done(audio_a), local._Done(audio_b)]))
    ex.shutdown()
    assert isinstance(result, tuple)
    assert [sorted(s) for s in seen] == [[(7, 1), (9, 0)]] * 2  # before: the sources' whole ClipAudio
    assert [float(np.asarray(v)[0]) for v in seen[0].values()] == [108.0, 109.0]  # the 16 kHz arrays of those clips
    whole = audio_a.nbytes + audio_b.nbytes
    assert _bytes(seen[0]) == 2 * 48000 * 4 and whole == 4 * (72000 + 48000) * 4  # 384 kB of 1.92 MB
    assert [sorted(s) for s in sent] == [[(7, 1), (9, 0)]] * 2
    assert all(c.audio_16k is None for c in batch)  # detached again after the stages


def test_a_ray_batch_is_sent_only_its_clips_at_the_analysis_rate():
    """RayExecutor.submit_batch with stand-ins for Ray: the stages' one audio argument is what clip_spans
    picks from the sources' analysis-rate objects; their working-rate objects are not passed."""
    from emilia_pipe.runners.ray_executor import RayExecutor, SourceAudio, StageActor

    (a, audio_a), (b, audio_b) = _two_sources()

    class Remote:
        def __init__(self, fn):
            self.fn, self.args = fn, []

        def remote(self, *args):
            self.args.append(args)
            return self.fn(*args)

    class Actor:
        def __init__(self):
            self.process_batch = Remote(lambda item, spans: object())  # a ref to the result

    actors = {"transcribe": Actor(), "score": Actor()}
    ex = RayExecutor.__new__(RayExecutor)
    ex.select, ex.batch_chain, ex.running = Remote(clip_spans), ["transcribe", "score"], {}
    ex.pools = {k: itertools.cycle([v]) for k, v in actors.items()}
    working = object()  # a ref the batch must never be given
    handles = [SourceAudio(7, working, audio_a.analysis), SourceAudio(9, working, audio_b.analysis)]
    ex.submit_batch([a.clips[1], b.clips[0]], handles)
    assert all(working not in args for args in ex.select.args)
    spans = actors["transcribe"].process_batch.args[0][1]
    assert sorted(spans) == [(7, 1), (9, 0)] and _bytes(spans) == 2 * 48000 * 4  # of 1.92 MB in the two sources
    assert actors["score"].process_batch.args[0][1] is spans

    # the last per-file call returns the working-rate and analysis-rate audio as separate objects
    actor = StageActor.__new__(StageActor)

    class Last:
        name = "segment"

        def run(self, source):
            return _source(_Task(3, "/x/s3.wav"), 2)

    actor.stage = Last()
    meta, work, analysis = actor.process_last(_source(_Task(3, "/x/s3.wav"), 0))
    assert isinstance(work, ClipAudio) and work.analysis == [] and [w.size for w in work.working] == [72000] * 2
    assert [x.size for x in analysis] == [48000] * 2 and all(c.audio is None for c in meta.clips)


def test_run_batch_stage_reads_only_the_spans_it_is_given():
    spans = clip_spans([(9, 0)], [7, 9], ["not read"], [np.ones(16000, np.float32)])
    src, _ = _two_sources()[1]

    class Stage:
        name = "score"

        def run(self, clips):
            assert clips[0].audio_16k.size == 16000
            return clips

    clips, seconds = run_batch_stage(Stage(), [src.clips[0]], spans)
    assert list(seconds) == ["score"] and clips[0].audio_16k is None
