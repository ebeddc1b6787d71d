"""Inputs of any kind, from anywhere, with no model: the hostile corpus through the real planner, decoder,
driver, ledger and manifests (stand-in executor, real standardize stage); globs, list files, memory://
URLs, the output never read back; and bad invocations that end with one line and a documented status."""
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import ROOT, cli
from corpus import EXPECT, NAMES, NONFINITE, NOT_UTF8, STREAMS, StandardizeOnlyExecutor, make_corpus, outcomes

from emilia_pipe.config import load_config
from emilia_pipe.media.inputs import InputError, expand_inputs, local_path
from emilia_pipe.runners.driver import run_pipeline

# no duration cap by default; the corpus checks that a user's cap refuses a 17 h file from its header
CFG = load_config(overrides=["run.runner=local", "standardize.max_duration_s=14400"])


def _run(inputs, out, executor=StandardizeOnlyExecutor):
    return run_pipeline(inputs, out, CFG, executor_factory=executor, log=lambda m: None)


@pytest.fixture(scope="module")
def corpus_build(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    src = make_corpus(root)
    cwd = os.getcwd()
    os.chdir(src)  # a name like "$(touch pwned).wav" would create src/pwned if anything ran it in a shell
    try:
        summary = _run([src], root / "out")
    finally:
        os.chdir(cwd)
    return root, src, summary, outcomes(root / "out")


def test_every_hostile_input_has_its_recorded_outcome(corpus_build):
    root, src, summary, got = corpus_build
    table = {name: (got[name]["outcome"], got[name]["stage"]) if name in got else None for name in EXPECT}
    assert table == {name: exp[:2] for name, exp in EXPECT.items()}
    for name, (outcome, stage, pattern) in EXPECT.items():
        rec = got[name]
        if name == "deep.wav":
            name = os.path.relpath(local_path(rec["path"]), src)
        if name in NOT_UTF8:  # recorded losslessly as a file:// URL, and read back to the exact name
            assert rec["path"].startswith("file:///") and local_path(rec["path"]) == str(src / name), rec["path"]
            assert os.fsencode(local_path(rec["path"])) == os.fsencode(str(src / name))
        else:
            assert rec["path"] == str(src / name)
        if outcome == "failed":  # the reason says what is wrong and names the file
            assert re.search(pattern, rec["reason"]) and name in rec["reason"], (name, rec["reason"])
        elif outcome == "skipped":
            assert re.search(pattern, rec["reason"]), (name, rec["reason"])
    assert got["dup_b.wav"]["record"]["duplicate_of"] == str(src / "dup_a.wav")
    n_failed = sum(e[0] == "failed" for e in EXPECT.values())
    assert summary["this_run"]["failed"] == n_failed and summary["files"]["failed"] == n_failed


def test_decoder_problems_are_recorded_on_the_source(corpus_build):
    _, _, _, got = corpus_build
    src = {name: r["record"] for name, r in got.items() if r["outcome"] == "done"}
    assert any("flac" in e for e in src["corrupt_frames.flac"]["decode_errors"]), src["corrupt_frames.flac"]
    assert src["nan_few.wav"]["nonfinite_samples"] == NONFINITE
    assert src["good.wav"]["decode_errors"] == [] and src["good.wav"]["nonfinite_samples"] == 0
    assert (src["eight_channels.wav"]["orig_channels"], src["float32_192k.wav"]["orig_sample_rate"]) == (8, 192000)
    assert src["mulaw_8k.wav"]["codec"] == "pcm_mulaw" and src["silence_10min.wav"]["duration"] == 600.0
    # which audio stream of how many: the one marked default, else the first; both recorded
    assert {n: (src[n]["audio_stream"], src[n]["audio_streams"]) for n in STREAMS} == STREAMS
    assert src["mp3_named_wav.wav"]["codec"].startswith("mp3")


def test_nothing_is_run_or_read_outside_the_inputs(corpus_build):
    root, src, _, got = corpus_build
    assert not list(root.rglob("pwned*"))  # names are never given to a shell
    paths = [r["path"] for r in got.values()]
    assert not any("canary" in p or "/outside/" in p for p in paths)  # a folder link is not followed
    assert all(n in got for n in NAMES)


def test_a_file_over_the_cap_fails_from_its_header_without_reading_it(corpus_build):
    from emilia_pipe.stages.standardize import Standardizer

    _, src, _, _ = corpus_build
    t0 = time.perf_counter()
    with pytest.raises(Exception, match="container header"):
        Standardizer(CFG).run(src / "sparse_2gb.wav")
    assert time.perf_counter() - t0 < 2.0  # 2 GB are neither hashed nor decoded


def test_too_many_nonfinite_samples_is_configurable(tmp_path):
    from emilia_pipe.stages.standardize import Standardizer

    x = np.zeros(16000, np.float32)
    x[:400] = np.nan  # 2.5 %
    sf.write(tmp_path / "n.wav", x, 16000, subtype="FLOAT")
    with pytest.raises(Exception, match="400 of 16000 samples are NaN/Inf"):
        Standardizer(CFG).run(tmp_path / "n.wav")
    lenient = load_config(overrides=["standardize.max_nonfinite_fraction=0.05"])
    src = Standardizer(lenient).run(tmp_path / "n.wav")
    assert src.nonfinite_samples == 400 and np.isfinite(src.audio).all()


def test_a_run_with_only_skips_and_duplicates_has_nothing_failed(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    sf.write(d / "a.wav", np.full(16000, 0.1, np.float32), 16000)
    (d / "b.wav").write_bytes((d / "a.wav").read_bytes())
    (d / "c.wav").mkdir()
    os.symlink("a.wav", d / "link.wav")
    summary = _run([d], tmp_path / "out")
    assert summary["this_run"]["failed"] == 0 and summary["files"]["skipped"] == 3
    # a rerun does not record them again
    again = _run([d], tmp_path / "out")
    assert again["this_run"] == {**again["this_run"], "files": 0, "failed": 0, "already_done": 2}


def test_unreadable_input_is_a_failure_for_an_unprivileged_user_and_resumes(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to an unprivileged user")
    import shutil
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="emilia-unpriv-"))  # pytest's own tmp is private to root
    try:
        os.chmod(base, 0o777)
        d = base / "in"
        d.mkdir()
        sf.write(d / "good.wav", np.full(16000, 0.1, np.float32), 16000)
        sf.write(d / "secret.wav", np.full(16000, 0.2, np.float32), 16000)
        os.chmod(d / "secret.wav", 0)
        os.chmod(d, 0o755)
        script = (f"import json, sys; sys.path[:0] = [{str(ROOT)!r}, {str(ROOT / 'tests')!r}]\n"
                  "from test_inputs import _run\n"
                  "import emilia_pipe.runners.driver as d; d.preflight = lambda config: None  # no model is used\n"
                  f"s = _run([{str(d)!r}], {str(base / 'out')!r})\n"
                  "print(json.dumps(s['this_run']))\n")
        runs = []
        for _ in range(2):  # the second is a resume of the first
            proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable,
                                   "-c", script], capture_output=True, text=True, timeout=300, cwd=base,
                                  env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"})
            assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
            runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        assert runs[0]["failed"] == 1 and runs[1]["failed"] == 1 and runs[1]["already_done"] == 1
        failures = [json.loads(line) for line in (base / "out/failures.jsonl").read_text().splitlines()]
        assert [(f["stage"], Path(f["path"]).name) for f in failures] == [("input", "secret.wav")]
        assert "secret.wav is not readable (permission denied)" in failures[0]["error"]
    finally:
        shutil.rmtree(base, ignore_errors=True)


# --- where inputs come from ---------------------------------------------------------------------

def _tree(tmp_path):
    d = tmp_path / "data"
    for rel in ["a.wav", "sub/b.wav", "sub/deep/c.flac", "notes.txt", "sub/d.mp3"]:
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_bytes(rel.encode())
    return d


def test_folders_globs_and_list_files(tmp_path, monkeypatch):
    d = _tree(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert expand_inputs([d]).files == [str(d / f) for f in ("a.wav", "sub/b.wav", "sub/d.mp3", "sub/deep/c.flac")]
    assert expand_inputs(["data/**/*.wav"]).files == [str(d / "a.wav"), str(d / "sub/b.wav")]
    listing = tmp_path / "lists" / "inputs.txt"
    listing.parent.mkdir()
    listing.write_text(f"# my inputs\n\n../data/sub/deep\n  {d / 'a.wav'}  \n# ../data/sub/d.mp3\n")
    assert expand_inputs([f"@{listing}"]).files == [str(d / "a.wav"), str(d / "sub/deep/c.flac")]
    with pytest.raises(InputError, match=r"input not found: data/\*\*/\*\.ogg"):
        expand_inputs(["data/**/*.ogg"])
    listing.write_text("../data/missing.wav\n")
    with pytest.raises(InputError, match="missing.wav"):
        expand_inputs([f"@{listing}"])


def test_the_output_folder_is_never_read_as_input(tmp_path):
    d = _tree(tmp_path)
    out = d / "out"
    (out / "EN/EN_B00000/EN_B00000_S00000/mp3").mkdir(parents=True)
    (out / "EN/EN_B00000/EN_B00000_S00000/mp3/x.mp3").write_bytes(b"mp3")
    (out / ".emilia/tmp").mkdir(parents=True)
    (out / ".emilia/tmp/.stage-1.wav").write_bytes(b"wav")
    for args in ([d], [str(d / "**/*.mp3")], [d, out / "EN/EN_B00000/EN_B00000_S00000/mp3/x.mp3"]):
        files = expand_inputs(args, exclude=[out]).files
        assert files and not any(f.startswith(str(out)) for f in files), files


def test_memory_urls_are_staged_one_at_a_time_and_removed(tmp_path, monkeypatch):
    import fsspec

    from emilia_pipe.media import remote

    fs = fsspec.filesystem("memory")
    for i, name in enumerate(["corpus/a.wav", "corpus/sub/b.flac", "corpus/readme.txt"]):
        with fs.open(name, "wb") as fh:
            if name.endswith(".txt"):
                fh.write(b"not audio")
            else:
                sf.write(fh, np.full(8000 * (i + 1), 0.1 * (i + 1), np.float32), 16000,
                         format=name.rsplit(".", 1)[1].upper())
    staged_at_once = []
    real = remote.local_copy

    def watching(path, stage_dir, *limits):
        cm = real(path, stage_dir, *limits)
        local, digest = cm.__enter__()
        staged_at_once.append(len(list(Path(stage_dir).glob(".stage-*"))))
        assert Path(local).parent == tmp_path / "out/.emilia/tmp"
        return _Wrapped(cm, (local, digest))

    monkeypatch.setattr("emilia_pipe.stages.standardize.local_copy", watching)
    found = expand_inputs(["memory://corpus", "memory://corpus/**/*.wav"])
    assert found.files == ["memory:///corpus/a.wav", "memory:///corpus/sub/b.flac"]
    summary = _run(["memory://corpus"], tmp_path / "out")
    assert summary["files"]["ok"] == 2 and summary["this_run"]["failed"] == 0
    rows = [json.loads(line) for line in (tmp_path / "out/sources.jsonl").read_text().splitlines()]
    assert [(r["path"], r["duration"]) for r in rows] == [("memory:///corpus/a.wav", 0.5), ("memory:///corpus/sub/b.flac", 1.0)]
    assert staged_at_once == [1, 1] and not list((tmp_path / "out/.emilia/tmp").glob(".stage-*"))
    # a resume recognises remote inputs by size and time, without reading them
    assert _run(["memory://corpus"], tmp_path / "out")["this_run"]["already_done"] == 2
    with pytest.raises(InputError, match="input not found: memory://corpus/nope.wav"):
        expand_inputs(["memory://corpus/nope.wav"])


class _Wrapped:
    def __init__(self, cm, value):
        self.cm, self.value = cm, value

    def __enter__(self):
        return self.value

    def __exit__(self, *exc):
        return self.cm.__exit__(*exc)


# --- bad invocations: one line, documented exit status, no traceback ---------------------------------

def _one_line_error(proc, code, *needles):
    assert proc.returncode == code, proc.stderr[-3000:]
    err = proc.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert all(n in err for n in needles), err


def test_missing_input_exits_2_before_any_model_loads(tmp_path):
    t0 = time.perf_counter()
    proc = cli("run", tmp_path / "nothere.wav", "-o", tmp_path / "out", "--runner", "local")
    _one_line_error(proc, 2, "input not found", "nothere.wav")
    assert not (tmp_path / "out").exists() and time.perf_counter() - t0 < 60
    listing = tmp_path / "list.txt"
    listing.write_text("# nothing else\n/nonexistent/x.wav\n")
    _one_line_error(cli("run", "--inputs-from", listing, "-o", tmp_path / "out"), 2, "/nonexistent/x.wav")
    _one_line_error(cli("run", "-o", tmp_path / "out"), 2, "no inputs given")


def test_output_that_is_a_file_or_read_only_exits_2(tmp_path):
    wav = tmp_path / "a.wav"
    sf.write(wav, np.zeros(16000, np.float32), 16000)
    (tmp_path / "file").write_text("x")
    _one_line_error(cli("run", wav, "-o", tmp_path / "file"), 2, "is a file, not a folder")
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", ro]).returncode == 0:
        try:  # root writes through permission bits: a read-only filesystem is the real test
            _one_line_error(cli("run", wav, "-o", ro / "out"), 2, "read-only or no permission")
        finally:
            subprocess.run(["umount", ro])
    else:
        ro.chmod(0o555)
        _one_line_error(cli("run", wav, "-o", ro / "out"), 2, "read-only or no permission")


@pytest.mark.parametrize("setting,needle", [
    ("filter.dnsmos_minimum=3", "filter.dnsmos_minimum: unknown key (valid: "),
    ("filter.dnsmos_min=abc", "filter.dnsmos_min: Input should be a valid number"),
    ("filter.dnsmos_min=nan", "filter.dnsmos_min: Input should be a finite number"),
    ("segment.vad_threshold=2", "segment.vad_threshold: Input should be less than 1"),
    ("standardize.sample_rate=7", "standardize.sample_rate: must be one of 16000"),
    ("diarize.min_speakers=3", "diarize.min_speakers (3) must not exceed diarize.max_speakers (2)"),
])
def test_bad_config_exits_2_with_one_line(tmp_path, setting, needle):
    from emilia_pipe.cli import main

    wav = tmp_path / "a.wav"
    sf.write(wav, np.zeros(16000, np.float32), 16000)
    proc = cli("run", wav, "-o", tmp_path / "out", "--set", setting, "--set", "diarize.max_speakers=2")
    _one_line_error(proc, 2, needle, "emilia-pipe config")
    assert not (tmp_path / "out").exists()
    assert main(["config", "--set", setting, "--set", "diarize.max_speakers=2"]) == 2


def test_full_profile_without_network_exits_3_naming_each_model_and_its_fix(tmp_path):
    wav = tmp_path / "a.wav"
    sf.write(wav, np.zeros(16000, np.float32), 16000)
    proc = cli("run", wav, "-o", tmp_path / "out", "--profile", "full", env={"HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 3 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert lines[0] == "emilia-pipe: model missing:"
    assert all(re.match(r"^\w+: .*(models fetch|--set|point models\.)", line) for line in lines[1:]), lines


def test_disk_full_leaves_nothing_half_written_and_resumes(tmp_path, monkeypatch, capsys):
    from test_driver import ScriptedExecutor

    from emilia_pipe.cli import main

    small = tmp_path / "small"
    small.mkdir()
    mounted = os.geteuid() == 0 and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", small]).returncode == 0
    if not mounted:  # no tmpfs: the writer's MP3 writes fail as on a full disk
        import errno

        from emilia_pipe.dataset import writer

        real = writer.write_atomic
        calls = {"n": 0}

        def full(path, data, **kw):
            calls["n"] += 1
            if calls["n"] > 20 and str(path).endswith(".mp3"):
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
            return real(path, data, **kw)

        monkeypatch.setattr(writer, "write_atomic", full)
    try:
        d = tmp_path / "in"
        d.mkdir()
        for i in range(40):  # 40 sources x 2 clips x ~24 kB of MP3: more than 1 MB
            (d / f"f{i:02d}.wav").write_bytes(b"x")
        monkeypatch.setattr("emilia_pipe.runners.local.LocalExecutor",
                            lambda config, stages, out, run: ScriptedExecutor(config, out, run))
        monkeypatch.setattr("emilia_pipe.runners.driver.preflight", lambda config: None)
        out = small / "out"
        rc = main(["run", str(d), "-o", str(out), "--runner", "local"])
        err = capsys.readouterr().err
        assert rc in (1, 5) and "Traceback" not in err, err  # 5: the ledger or a manifest could not be written
        if rc == 5:
            assert "emilia-pipe: cannot write the output: " in err.splitlines()[-1], err
        published = [p for p in out.rglob("*") if ".emilia" not in p.parts]
        assert not [p for p in published if ".tmp" in p.name]
        lines = [json.loads(line) for p in published if p.suffix == ".jsonl" for line in p.read_text().splitlines()]
        mp3s = {p.name for p in published if p.suffix == ".mp3"}
        kept = [line for line in lines if line.get("wav")]
        assert all(Path(line["wav"]).name in mp3s for line in kept)  # every published clip has its MP3
        for p in published:
            if p.suffix == ".mp3":  # and every MP3 is whole
                assert p.stat().st_size > 10_000
        if mounted:
            subprocess.run(["mount", "-o", "remount,size=20m", small], check=True)
        else:
            monkeypatch.setattr("emilia_pipe.dataset.writer.write_atomic", real)
        assert main(["run", str(d), "-o", str(out), "--runner", "local"]) == 0
        summary = json.loads((out / "summary.json").read_text())
        assert summary["files"]["ok"] == 40 and summary["files"]["failed"] == 0
    finally:
        if mounted:
            subprocess.run(["umount", "-l", small])
