"""The Ray path end to end, compared byte for byte with the in-process build of the same inputs:
embedded single-node Ray with several workers per pool, and a real two-node Ray cluster on this machine
(`ray start --head` + `ray start --address`), with pools pinned to different nodes so audio crosses nodes
through the object store and MP3s are written by a writer on the other node."""
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import cli, copy_inputs, published

pytestmark = pytest.mark.integration

FILES = ["asr/en/en_jfk_inaugural.flac", "asr/de/de_picovoice_test_de.wav", "asr/en/en_ljspeech_LJ001-0001.wav",
         "nonspeech/animal_robin_bird_whistle.ogg"]
COMMON = ["--set", "transcribe.batch_size=2", "--set", "run.max_files_in_flight=2"]
RAY = str(Path(sys.executable).parent / "ray")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return copy_inputs(tmp_path_factory.mktemp("in"), FILES)


@pytest.fixture(scope="module")
def local_build(tmp_path_factory, inputs):
    out = tmp_path_factory.mktemp("local") / "out"
    cli("run", inputs, "-o", out, "--runner", "local", *COMMON, check=0)
    return published(out)


def test_ray_with_several_workers_equals_in_process(tmp_path, inputs, local_build):
    out = tmp_path / "out"
    proc = cli("run", inputs, "-o", out, "--runner", "ray", *COMMON,
               "--set", "run.resources.transcribe={actors: 2, num_cpus: 0.25}",
               "--set", "run.resources.write={actors: 2, num_cpus: 0.125}", check=0)
    assert "transcribe: 2 actor(s)" in proc.stderr and "write: 2 actor(s)" in proc.stderr
    view = published(out)
    assert json.loads((out / "summary.json").read_text())["runner"] == "ray"
    assert view == local_build
    assert sum(k.endswith(".mp3") for k in view) >= 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_node_cluster_equals_in_process(tmp_path, inputs, local_build):
    port = _free_port()
    env = {**os.environ, "RAY_ADDRESS": "", "RAY_AUTH_MODE": "disabled"}  # loopback-only test cluster
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay under 107 bytes
    start = dict(capture_output=True, text=True, timeout=180, env=env)
    head = subprocess.run([RAY, "start", "--head", f"--port={port}", "--num-cpus=1", '--resources={"head_node": 1}',
                           "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}"], **start)
    try:
        assert head.returncode == 0, head.stderr[-3000:]
        worker = subprocess.run([RAY, "start", f"--address=127.0.0.1:{port}", "--num-cpus=2",
                                 '--resources={"worker_node": 1}', "--disable-usage-stats"], **start)
        assert worker.returncode == 0, worker.stderr[-3000:]
        out = tmp_path / "out"
        on_head = "{actors: 1, num_cpus: 0.2, custom: {head_node: 0.2}}"
        on_worker = "{actors: 1, num_cpus: 0.3, custom: {worker_node: 0.2}}"
        cli("run", inputs, "-o", out, "--ray-address", f"127.0.0.1:{port}", *COMMON,
            "--set", f"run.resources.standardize={on_head}", "--set", f"run.resources.diarize={on_head}",
            "--set", f"run.resources.segment={on_head}", "--set", f"run.resources.transcribe={on_worker}",
            "--set", f"run.resources.score={on_worker}", "--set", f"run.resources.write={on_worker}", check=0)
        nodes = subprocess.run([sys.executable, "-c", f"import ray; ray.init(address='127.0.0.1:{port}'); "
                                "print(sum(n['Alive'] for n in ray.nodes()))"], **start)
        assert nodes.stdout.strip().splitlines()[-1] == "2", nodes.stderr[-2000:]
        assert published(out) == local_build
    finally:
        subprocess.run([RAY, "stop", "--force"], capture_output=True, timeout=120, env=env)
        shutil.rmtree(temp, ignore_errors=True)
