"""The local runner under a stuck thread: a batch or a write that never returns fails its sources at
run.task_timeout_s and the run ends; what a stuck writer held is redone by a new writer. Stand-in stages
(tests/standin.py), real local executor, writer and ledger."""
import hashlib
import json
import threading

import pytest
import standin

from emilia_pipe.dataset.writer import SourceWriter

DEADLINE = ["run.task_timeout_s=3", "output.sources_per_shard=3"]


def _run_in_thread(inputs, out, overrides, limit_s=120):
    """The run in a thread, so a run that never ends fails the test instead of hanging it."""
    box = {}

    def target():
        box["summary"] = standin.run(inputs, out, overrides)

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(limit_s)
    assert not t.is_alive(), "the run did not end: a stuck thread held it up"
    return box["summary"]


@pytest.fixture
def release():
    gate = threading.Event()
    yield gate
    gate.set()  # lets the threads left behind finish


def test_a_stuck_batch_fails_its_sources_and_the_run_ends(tmp_path, monkeypatch, release):
    inputs = standin.make_inputs(tmp_path / "in", 6)
    stuck = hashlib.sha256(inputs[1].read_bytes()).hexdigest()[:16]
    real = standin.Transcribe.run

    def hang(self, clips):
        if any(c.source_id == stuck for c in clips):
            release.wait()
        return real(self, clips)

    monkeypatch.setattr(standin.Transcribe, "run", hang)
    summary = _run_in_thread(inputs, tmp_path / "out", [*DEADLINE, "transcribe.batch_size=1"])
    failures = [json.loads(line) for line in (tmp_path / "out/failures.jsonl").read_text().splitlines()]
    # before: the run never ended (the lane's thread was joined at shutdown, and at exit)
    assert [f["stage"] for f in failures] == ["timeout"] and failures[0]["path"] == str(inputs[1])
    assert summary["this_run"]["failed"] == 1 and summary["files"]["ok"] == 5


def test_a_stuck_write_fails_its_source_and_what_the_writer_held_is_redone(tmp_path, monkeypatch, release):
    inputs = standin.make_inputs(tmp_path / "in", 6)
    real = SourceWriter.write

    def hang(self, job, audio):
        if job["index"] == 3:
            release.wait()
        return real(self, job, audio)

    monkeypatch.setattr(SourceWriter, "write", hang)
    summary = _run_in_thread(inputs, tmp_path / "out", DEADLINE)  # one commit at the end: 0-2 are held
    failures = [json.loads(line) for line in (tmp_path / "out/failures.jsonl").read_text().splitlines()]
    assert [(f["stage"], f["path"]) for f in failures] == [("timeout", str(inputs[3]))]
    assert summary["this_run"]["failed"] == 1 and summary["files"]["ok"] == 5  # 0-2 redone by a new writer
