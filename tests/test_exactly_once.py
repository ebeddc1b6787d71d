"""Exactly-once and determinism with real models on short real recordings: a build killed (SIGKILL) while
transcribing, between MP3 writes, between a ledger commit's two files, and while writing manifests, then
rerun with the same command, equals an uninterrupted build byte for byte (timing fields aside), with no
temporary or orphan file left. Also: the lock, the fingerprint check, failure records that expire."""
import json
import shutil
import subprocess
import sys
import time

import pytest
from conftest import cli, copy_inputs, published

pytestmark = pytest.mark.integration

FILES = ["asr/en/en_jfk_inaugural.flac", "asr/de/de_picovoice_test_de.wav", "asr/fr/fr_picovoice_test_fr.wav",
         "asr/en/en_ljspeech_LJ001-0001.wav", "nonspeech/animal_robin_bird_whistle.ogg"]
# one commit per source and two clips a batch: a kill lands between many small steps
SETTINGS = ["--runner", "local", "--set", "run.commit_every_sources=1", "--set", "transcribe.batch_size=2"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return copy_inputs(tmp_path_factory.mktemp("in"), FILES)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, inputs):
    out = tmp_path_factory.mktemp("ref") / "out"
    cli("run", inputs, "-o", out, *SETTINGS, check=0)
    return published(out)


def test_reference_build_has_clips_in_several_languages(reference):
    manifests = [k for k in reference if k.endswith(".jsonl") and "/" in k]
    # kept clips' MP3s only: rejected clips' audio is held out of the release layout (OUT/.emilia/audio)
    assert len(manifests) >= 2 and sum(k.endswith(".mp3") for k in reference) >= 3


@pytest.mark.parametrize("point", ["transcribe:2", "mp3:2", "commit:2", "manifest:1"])
def test_killed_and_resumed_equals_uninterrupted(tmp_path, inputs, reference, point):
    out = tmp_path / "out"
    crashed = cli("run", inputs, "-o", out, *SETTINGS, env={"EMILIA_PIPE_CRASH_AT": point})
    assert crashed.returncode == -9, crashed.stderr[-2000:]  # really killed where asked
    resumed = cli("run", inputs, "-o", out, *SETTINGS, check=0)  # the lock of the dead run is not stuck
    assert published(out) == reference
    leftovers = [p for p in out.rglob("*") if ".tmp" in p.name]
    assert not leftovers, leftovers
    summary = json.loads((out / "summary.json").read_text())
    if point != "manifest:1":  # the killed run committed some sources: the rerun did not redo them
        assert summary["this_run"]["already_done"] >= 1, resumed.stderr[-2000:]


def test_second_run_on_a_busy_build_is_refused(tmp_path, inputs):
    out = tmp_path / "out"
    first = subprocess.Popen([sys.executable, "-m", "emilia_pipe.cli", "run", str(inputs), "-o", str(out), *SETTINGS],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        lock_info = out / ".emilia/lock.json"
        for _ in range(600):
            if lock_info.exists():
                break
            time.sleep(0.1)
        second = cli("run", inputs, "-o", out, *SETTINGS)
        assert second.returncode == 4 and "in use by pid" in second.stderr, second.stderr
        assert "Traceback" not in second.stderr
    finally:
        first.kill()
        first.wait()


def test_resume_with_other_settings_is_refused_unless_asked(tmp_path, sample_dir):
    out = tmp_path / "out"
    jfk = sample_dir / FILES[0]
    cli("run", jfk, "-o", out, *SETTINGS, check=0)
    changed = cli("run", jfk, "-o", out, *SETTINGS, "--set", "segment.min_clip_s=2.5")
    assert changed.returncode == 2 and "segment.min_clip_s: 3.0 (build) -> 2.5 (this run)" in changed.stderr
    assert "Traceback" not in changed.stderr
    # filter thresholds are not part of the fingerprint: they are re-applied to the whole build
    cli("run", jfk, "-o", out, *SETTINGS, "--set", "filter.dnsmos_min=2.5", check=0)
    forced = cli("run", jfk, "-o", out, *SETTINGS, "--set", "segment.min_clip_s=2.5", "--allow-config-change", check=0)
    runs = json.loads((out / ".emilia/build.json").read_text())["runs"]
    assert runs[-1]["changed"] == ["segment.min_clip_s: 3.0 (build) -> 2.5 (this run)"]
    assert forced.returncode == 0


def test_failures_expire_and_exit_status_is_this_runs(tmp_path, sample_dir):
    out = tmp_path / "out"
    bad = tmp_path / "in" / "broken.wav"
    bad.parent.mkdir()
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" * 10)
    good = sample_dir / FILES[1]
    first = cli("run", bad, good, "-o", out, *SETTINGS)
    assert first.returncode == 1
    assert [json.loads(l)["path"] for l in (out / "failures.jsonl").read_text().splitlines()] == [str(bad)]
    # a later run of good files only succeeds, while the build still reports the pending failure
    second = cli("run", sample_dir / FILES[3], "-o", out, *SETTINGS)
    assert second.returncode == 0, second.stderr[-2000:]
    status = json.loads(cli("status", out, "--json", check=0).stdout)
    assert status["sources"] == {"planned": 3, "done": 2, "skipped": 0, "failed": 1, "pending": 0, "missing": 0,
                                 "withdrawn": 0}
    # the file is fixed: the next run redoes it and its failure record is gone
    shutil.copy(sample_dir / FILES[0], bad)
    third = cli("run", bad, "-o", out, *SETTINGS)
    assert third.returncode == 0, third.stderr[-2000:]
    assert (out / "failures.jsonl").read_text() == ""
    assert json.loads(cli("status", out, "--json", check=0).stdout)["sources"]["failed"] == 0


def test_user_files_in_the_output_survive_run_and_refilter(tmp_path, sample_dir):
    out = tmp_path / "out"
    mine = [out / "mydata" / "interviews_Batch2.jsonl", out / "EN" / "EN_B00099.jsonl", out / "notes.txt"]
    for p in mine:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("mine\n")
    # a folder of the user's files is a build only when asked for (--force); refused otherwise
    assert cli("run", sample_dir / FILES[0], "-o", out, *SETTINGS).returncode == 2
    cli("run", sample_dir / FILES[0], "-o", out, "--force", *SETTINGS, check=0)
    cli("refilter", out, "--set", "filter.dnsmos_min=9", check=0)
    cli("refilter", out, "--set", "filter.dnsmos_min=0", check=0)
    assert all(p.read_text() == "mine\n" for p in mine)
