"""Chaos on a real two-node Ray cluster on this machine (`ray start --head` + `ray start --address`, as
tests/test_ray.py): writer actors SIGKILLed after their first commit and in the middle of a write with
sources acknowledged but not committed, a transcribe actor SIGKILLed mid-batch, and the second node
stopped mid-build. The run (or its resume) ends with a published tree byte-equal to a clean build, and no
source is committed twice or lost. The stages are stand-ins (tests/standin.py: the test is about the
plumbing), so the whole module takes about a minute; the driver's fetches are checked for audio."""
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import standin
from conftest import published

from emilia_pipe.records import ClipAudio, Source
from emilia_pipe.runners.ray_executor import RayExecutor

pytestmark = pytest.mark.integration

RAY = str(Path(sys.executable).parent / "ray")
N = 12
POOL = "{actors: 1, num_cpus: 0.25}"
SETTINGS = ["output.sources_per_shard=3", "run.commit_every_sources=3", "run.max_files_in_flight=3",
            "transcribe.batch_size=2", "run.task_timeout_s=25", "run.actor_start_timeout_s=120",
            *[f"run.resources.{p}={POOL}" for p in ("standardize", "diarize", "segment", "score")],
            "run.resources.transcribe={actors: 2, num_cpus: 0.25}", "run.resources.write={actors: 2, num_cpus: 0.25}"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """A head and a second node, each a `ray start --block` process of its own, so the test stops exactly
    these (never `ray stop`, which would stop every Ray on the machine)."""

    def __init__(self):
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # socket paths must stay under 107 bytes
        self.env = {**os.environ, "RAY_ADDRESS": "", "RAY_AUTH_MODE": "disabled"}
        self.head = self._start(["--head", f"--port={self.port}", "--num-cpus=1", "--include-dashboard=false",
                                 f"--temp-dir={self.temp}"])
        self._wait_nodes(1)
        self.node = self.start_node()

    def _start(self, args):
        return subprocess.Popen([RAY, "start", "--block", "--disable-usage-stats", *args], env=self.env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    def start_node(self):
        before = self.alive()
        proc = self._start([f"--address={self.address}", "--num-cpus=2"])
        self._wait_nodes(before + 1)
        return proc

    def alive(self) -> int:
        out = subprocess.run([sys.executable, "-c", f"import ray; ray.init(address='{self.address}', "
                              "logging_level='ERROR'); print(sum(n['Alive'] for n in ray.nodes()))"],
                             capture_output=True, text=True, env=self.env, timeout=120)
        return int(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 and out.stdout.strip() else 0

    def _wait_nodes(self, n, limit_s=120):
        end = time.monotonic() + limit_s
        while time.monotonic() < end:
            if self.alive() >= n:
                return
            time.sleep(1)
        raise AssertionError(f"the Ray cluster did not reach {n} node(s)")

    def stop_node(self):
        os.killpg(self.node.pid, 15)  # `ray start --block` stops its node's raylet and workers
        self.node.wait(60)

    def close(self):
        for proc in (self.node, self.head):
            if proc.poll() is None:
                os.killpg(proc.pid, 15)
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, 9)
        import shutil

        shutil.rmtree(self.temp, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster():
    c = Cluster()
    yield c
    import ray

    ray.shutdown()
    c.close()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return standin.make_inputs(tmp_path_factory.mktemp("in"), N)


@pytest.fixture(scope="module")
def clean(tmp_path_factory, inputs):
    """The same build, uninterrupted, on the local runner."""
    out = tmp_path_factory.mktemp("clean") / "out"
    standin.run(inputs, out, SETTINGS)
    return published(out)


def _sources_rows(out):
    """Every commit of a source: writers' rows, and a merged bucket row as many times as it was committed
    (so a compaction never hides a duplicate)."""
    from test_driver import _source_rows

    return _source_rows(out)


def _no_audio(value):
    """What the driver fetched holds no audio: no ClipAudio, no array on a source or a clip."""
    if isinstance(value, ClipAudio):
        raise AssertionError("the driver fetched a source's clip audio")
    if isinstance(value, (list, tuple)):
        for v in value:
            _no_audio(v)
    if isinstance(value, Source):
        assert value.audio is None and value.audio_16k is None
        value = value.clips
    if isinstance(value, list):
        assert all(getattr(c, "audio", None) is None and getattr(c, "audio_16k", None) is None for c in value)


class WatchedRayExecutor(RayExecutor):
    """The real Ray executor, checking everything the driver fetches from the cluster."""

    fetched = 0

    def get(self, handle):
        value = super().get(handle)
        _no_audio(value)
        WatchedRayExecutor.fetched += 1
        return value

    def submit_batch(self, clips, audio_handles):
        assert all(c.audio is None and c.audio_16k is None for c in clips)
        return super().submit_batch(clips, audio_handles)


def test_killed_writers_and_transcriber_in_one_run_end_complete_and_equal_to_a_clean_build(
        cluster, inputs, clean, tmp_path, monkeypatch):
    once = tmp_path / "crashed"
    once.mkdir()
    # each once across the cluster: the first writer life to commit dies right after its commit; a
    # transcribe actor dies in its 2nd batch; a writer dies after its 5th MP3, holding acknowledged sources
    monkeypatch.setenv("EMILIA_PIPE_CRASH_AT", "committed:1,transcribe:2,mp3:5")
    monkeypatch.setenv("EMILIA_PIPE_CRASH_ONCE", str(once))
    out = tmp_path / "out"
    logged = []
    summary = standin.run(inputs, out, SETTINGS, log=logged.append,
                          executor_factory=standin.ray_factory(cluster.address, WatchedRayExecutor))
    assert sorted(p.name for p in once.iterdir()) == ["committed", "mp3", "transcribe"]  # every kill happened
    assert summary["this_run"]["failed"] == 0, (logged, (out / "failures.jsonl").read_text())  # before: WriterLost failures, parts overwritten
    assert published(out) == clean
    assert _sources_rows(out) == list(range(N))  # each source committed once, none lost
    assert WatchedRayExecutor.fetched > N  # the check saw the driver's fetches


def test_the_second_node_stopped_mid_build_then_resumed_equals_a_clean_build(cluster, inputs, clean, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, standin.__file__, "run", *map(str, inputs), "-o", str(out), "--ray", cluster.address,
           "--verbose", *[a for s in SETTINGS for a in ("--set", s)]]
    env = {**os.environ, "RAY_ADDRESS": "", "RAY_AUTH_MODE": "disabled"}
    # a shorter deadline for the run that loses its node: work stuck on the lost node fails sooner
    run = subprocess.Popen([*cmd, "--set", "run.task_timeout_s=12"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, env=env)
    ledger = out / ".emilia/ledger"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and run.poll() is None and not list(ledger.glob("sources-*-w*.parquet")):
        time.sleep(0.2)
    assert run.poll() is None, run.communicate()[1][-3000:]  # still building after its first commit
    cluster.stop_node()
    stdout, stderr = run.communicate(timeout=600)  # the run ends (its lost work failed or redone), no hang
    assert run.returncode in (0, 1), stderr[-3000:]
    assert "lost" in stderr, stderr[-3000:]  # the stop took workers with it (the head has room for half the pools)
    cluster.node = cluster.start_node()
    resumed = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert published(out) == clean
    rows = _sources_rows(out)
    assert sorted(set(rows)) == list(range(N))
    # a source is committed twice only when its writer died after committing it and before answering,
    # and the redo found it committed: then it is not written again
    assert len(rows) == N, rows
