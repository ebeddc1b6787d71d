"""Hostile invocations of the command itself (tests/corpus.py INVOCATIONS): run from a folder full of
booby-trapped modules, pointed at special files, odd output folders, bad settings; each ends with its
documented exit status and one line, never a traceback, and touches nothing outside its own folders."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import ROOT

TRAPS = ("argparse", "json", "typing", "runpy", "yaml", "emilia_pipe")
ENTRY = "import sys\nfrom emilia_pipe.cli import console_main\nsys.exit(console_main())\n"


def trap_folder(folder: Path) -> Path:
    """A folder holding modules that leave a mark when anything imports them."""
    folder.mkdir(parents=True, exist_ok=True)
    mark = ("import os\nopen(os.path.join({!r}, 'MARK-' + __name__), 'w').close()\n").format(str(folder))
    for name in TRAPS:
        if name == "emilia_pipe":
            (folder / name).mkdir()
            (folder / name / "__init__.py").write_text(mark)
        else:
            (folder / f"{name}.py").write_text(mark)
    return folder


def emilia_pipe(*args, cwd: Path, bin_dir: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    """The installed ``emilia-pipe`` console script, as a user starts it (its folder, not the working
    folder, is first on sys.path)."""
    script = bin_dir / "emilia-pipe"
    if not script.exists():
        bin_dir.mkdir(parents=True, exist_ok=True)
        script.write_text(ENTRY)
    return subprocess.run([sys.executable, str(script), *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": str(ROOT), "RAY_ADDRESS": "",
                                                "PYTHONDONTWRITEBYTECODE": "1"})


@pytest.mark.integration
def test_no_command_imports_code_from_the_working_folder(tmp_path):
    trap = trap_folder(tmp_path / "downloads")
    bin_dir = tmp_path / "bin"
    sf.write(trap / "talk.wav", np.zeros(32000, np.float32), 16000)
    refs = trap / "refs.tsv"
    refs.write_text("talk.wav\thello\n")
    out = trap / "out"
    runs = [("run", "talk.wav", "-o", "out", "--runner", "local"),  # restarts itself with malloc tuned
            ("status", "out"), ("status", "out", "--json"), ("refilter", "out", "--set", "filter.dnsmos_min=2.5"),
            ("eval", "out", "--refs", "refs.tsv"), ("export", "out", "--format", "list", "-o", "exported"),
            ("models", "list"), ("config",), ("--version",)]
    for args in runs:
        proc = emilia_pipe(*args, cwd=trap, bin_dir=bin_dir)
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, (args, proc.stderr[-3000:])
        assert not list(trap.glob("MARK-*")), (args, [p.name for p in trap.glob("MARK-*")])
    assert (out / "summary.json").exists() and (trap / "exported/gpt_sovits.list").exists()


# --- bad invocations: exit 2, one line ---------------------------------------------------------------

def _one_line(err: str) -> str:
    """The error line: the last one, the only ``emilia-pipe:`` line (log and progress lines may come first)."""
    errors = [line for line in err.strip().splitlines() if line.startswith("emilia-pipe: ")]
    assert "Traceback" not in err and len(errors) == 1 and err.strip().endswith(errors[0]), err[-3000:]
    return errors[0]


@pytest.fixture
def scripted(monkeypatch):
    """`emilia-pipe run` in this process with no model: the scripted executor of test_driver (two clips a
    file, real MP3s, real ledger and manifests)."""
    from test_driver import ScriptedExecutor

    monkeypatch.setattr("emilia_pipe.runners.local.LocalExecutor",
                        lambda config, stages, out, run: ScriptedExecutor(config, out, run))
    monkeypatch.setattr("emilia_pipe.runners.driver.preflight", lambda config: None)


def _inputs(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"f{i:02d}.wav").write_bytes(b"x")
    return folder


def _usage_cases(tmp_path: Path) -> list[tuple[list, str]]:
    wav = tmp_path / "a.wav"
    sf.write(wav, np.zeros(16000, np.float32), 16000)
    os.mkfifo(tmp_path / "fifo.txt")
    (tmp_path / "latin1.txt").write_bytes("café.wav\n".encode("latin-1"))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine/summary.json").write_text("{}")
    run = ["run", wav, "--runner", "local"]
    return [
        ([*run[:1], "@/dev/zero", "-o", tmp_path / "o1"], "is a character device, not a regular file"),
        ([*run[:1], "--inputs-from", tmp_path / "fifo.txt", "-o", tmp_path / "o2"], "is a FIFO, not a regular file"),
        ([*run[:1], f"@{tmp_path / 'latin1.txt'}", "-o", tmp_path / "o3"], "is not UTF-8 text (line 1)"),
        ([*run, "-o", tmp_path / "o4", "-c", "/dev/zero"], "is a character device"),
        ([*run, "-o", tmp_path / "o5", "-c", tmp_path], "is a folder"),
        ([*run, "-o", tmp_path / "o6", "--set", "filter.languages=[en"], "the value is not valid YAML"),
        ([*run, "-o", ""], "the output path is empty"),
        ([*run, "-o", tmp_path / "mine"], "holds other files (e.g. 'summary.json') and is not a build"),
        ([*run, "-o", "/sys/emilia-out"], "cannot write to /sys"),
        (["config", "-c", "/dev/zero"], "is a character device"),
        (["models", "list", "-c", tmp_path], "is a folder"),
    ]


def test_bad_invocations_exit_2_with_one_line(tmp_path, capsys):
    """Before: @/dev/zero grew to 6 GB, -c /dev/zero hung, -c DIR and a bad --set value gave tracebacks,
    -o '' built into the working folder, -o a folder of other files overwrote them, -o /sys/x: traceback."""
    from emilia_pipe.cli import main

    for args, needle in _usage_cases(tmp_path):
        t0 = time.perf_counter()
        assert main([str(a) for a in args]) == 2, args
        line = _one_line(capsys.readouterr().err)
        assert line.startswith("emilia-pipe: ") and needle in line, (args, line)
        assert time.perf_counter() - t0 < 30
    assert (tmp_path / "mine/summary.json").read_text() == "{}" and not list(tmp_path.glob("o*"))


# --- the output cannot be written: exit 5, one line, and the same command resumes ---------------------

def test_disk_full_or_a_folder_made_read_only_at_any_write_exits_5_and_resumes(tmp_path, monkeypatch, capsys,
                                                                              scripted):
    """Every write of a run (lock, build.json, plan, MP3s, ledger parts, failures, manifests, summary) fails
    in turn; before, disk full while committing exited 2 ("No such file or directory") or 1."""
    import errno

    from emilia_pipe.cli import main
    from emilia_pipe.runtime import files

    d = _inputs(tmp_path / "in", 6)
    real = files._publish
    writes = []

    def counting(path, tmp_dir, write, *args, **kwargs):
        writes.append(Path(path).name)
        return real(path, tmp_dir, write, *args, **kwargs)

    monkeypatch.setattr(files, "_publish", counting)
    args = ["run", str(d), "-o", str(tmp_path / "probe"), "--set", "run.commit_every_sources=2"]
    assert main(args) == 0
    capsys.readouterr()
    n = len(writes)
    kinds = {w.split("-")[0].split(".")[0] for w in writes}
    assert n >= 20 and {"lock", "build", "plan", "clips", "sources", "summary", "datacard"} <= kinds, writes
    out = tmp_path / "out"
    args[3] = str(out)
    codes = []
    for k in range(1, n + 1):
        for err in (errno.ENOSPC, errno.EACCES):
            calls = []

            def failing(path, tmp_dir, write, *args, **kwargs):
                calls.append(path)
                if len(calls) == k:
                    raise OSError(err, os.strerror(err), str(path))
                return real(path, tmp_dir, write, *args, **kwargs)

            monkeypatch.setattr(files, "_publish", failing)
            rc = main(args)
            err_text = capsys.readouterr().err
            codes.append(rc)
            if len(calls) < k:  # a resumed build writes less: it finished before the k-th write
                assert rc == 0, err_text[-3000:]
            else:
                line = _one_line(err_text)
                assert rc == 5, (k, err, line)
                assert line.startswith("emilia-pipe: cannot write the output: "), line
                assert ("free space" if err == errno.ENOSPC else "make the folder writable") in line, line
                assert not [p for p in out.rglob("*.tmp*") if ".emilia" not in p.parts]
    assert 5 in codes
    monkeypatch.setattr(files, "_publish", real)
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["files"]["ok"] == 6 and summary["files"]["failed"] == 0


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    return os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path],
                                                capture_output=True).returncode == 0


def test_a_real_full_disk_exits_5_and_a_read_only_build_still_exports(tmp_path, monkeypatch, capsys, scripted):
    from emilia_pipe.cli import main

    small = tmp_path / "small"
    if not _mount_tmpfs(small, "1m"):
        pytest.skip("needs root to mount a tmpfs")
    try:
        d = _inputs(tmp_path / "in", 40)  # 40 sources x 2 clips x ~24 kB of MP3: more than 1 MB
        out = small / "out"
        args = ["run", str(d), "-o", str(out)]
        assert main(args) == 5  # before: 1 (the writes that failed recorded as failures) or 2
        line = _one_line(capsys.readouterr().err)
        assert "No space left on device" in line and "free space" in line
        subprocess.run(["mount", "-o", "remount,size=20m", small], check=True)
        assert main(args) == 0
        capsys.readouterr()
        subprocess.run(["mount", "-o", "remount,ro", small], check=True)
        # only read: its lock is taken on a read-only descriptor (before: "free space", exit 5)
        assert main(["export", str(out), "--format", "text", "-o", str(tmp_path / "text")]) == 0, \
            capsys.readouterr().err
        assert len((tmp_path / "text/all.tsv").read_text().splitlines()) == 80
        assert main(["status", str(out)]) == 0
    finally:
        subprocess.run(["umount", "-l", small])


READ_ONLY_MID_RUN = """import os, sys
sys.path[:0] = [{root!r}, {tests!r}]
from test_driver import ScriptedExecutor
import emilia_pipe.runners.driver as driver
driver.preflight = lambda config: None
class ReadOnlyMidRun(ScriptedExecutor):
    writes = 0
    def get(self, handle):
        if handle.kind == "write" and {flip}:
            ReadOnlyMidRun.writes += 1
            if ReadOnlyMidRun.writes == 5:  # the user (or a quota tool) makes the build read-only
                for folder, _, _ in os.walk({out!r}):
                    os.chmod(folder, 0o555)
        return super().get(handle)
import emilia_pipe.runners.local as local
local.LocalExecutor = lambda config, stages, out, run: ReadOnlyMidRun(config, out, run)
from emilia_pipe.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_folder_made_read_only_mid_run_exits_5_and_resumes(tmp_path):
    """Before: an EACCES traceback. Runs as an unprivileged user (root writes through permission bits)."""
    import shutil
    import tempfile

    if os.geteuid() != 0:
        pytest.skip("needs root to switch to an unprivileged user")
    base = Path(tempfile.mkdtemp(prefix="emilia-ro-"))  # pytest's own tmp is private to root
    try:
        os.chmod(base, 0o777)
        d = _inputs(base / "in", 20)
        out = base / "out"

        def run(flip: bool) -> subprocess.CompletedProcess:
            script = READ_ONLY_MID_RUN.format(root=str(ROOT), tests=str(ROOT / "tests"), out=str(out), flip=flip)
            return subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable,
                                   "-c", script, "run", str(d), "-o", str(out), "--set", "run.commit_every_sources=2"],
                                  capture_output=True, text=True, timeout=300, cwd=base,
                                  env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})

        proc = run(flip=True)
        assert proc.returncode == 5, proc.stderr[-3000:]
        line = _one_line(proc.stderr)
        assert "Permission denied" in line and "make the folder writable" in line, line
        for folder, _, _ in os.walk(out):
            os.chmod(folder, 0o755)
        proc = run(flip=False)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert json.loads((out / "summary.json").read_text())["files"]["ok"] == 20
    finally:
        shutil.rmtree(base, ignore_errors=True)


# --- stopped by Ctrl-C or SIGTERM: 130 / 143, how to resume, and it resumes --------------------------

STOPPABLE = """import sys, time
sys.path[:0] = [{root!r}, {tests!r}]
from test_driver import ScriptedExecutor
import emilia_pipe.runners.driver as driver
driver.preflight = lambda config: None
class Slow(ScriptedExecutor):
    def get(self, handle):
        if handle.kind == "write" and {slow}:
            time.sleep(0.2)
        return super().get(handle)
import emilia_pipe.runners.local as local
local.LocalExecutor = lambda config, stages, out, run: Slow(config, out, run)
from emilia_pipe.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("signum,code,name", [(2, 130, "Ctrl-C"), (15, 143, "SIGTERM")])
def test_ctrl_c_and_sigterm_stop_cleanly_say_how_to_resume_and_resume(tmp_path, signum, code, name):
    """Before: Ctrl-C printed a KeyboardInterrupt traceback."""
    d = _inputs(tmp_path / "in", 30)
    out = tmp_path / "out"
    args = ["run", str(d), "-o", str(out), "--set", "run.commit_every_sources=1"]

    def start(slow: bool) -> subprocess.Popen:
        script = STOPPABLE.format(root=str(ROOT), tests=str(ROOT / "tests"), slow=slow)
        return subprocess.Popen([sys.executable, "-c", script, *args], stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})

    proc = start(slow=True)
    deadline = time.monotonic() + 120
    while len(list((out / ".emilia/ledger").glob("sources-*"))) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signum)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == code, err[-3000:]
    line = _one_line(err)
    assert line.startswith(f"emilia-pipe: stopped by {name}; the files finished so far are kept; to resume, run "
                           "the same command again: emilia-pipe run "), line
    committed = len(list((out / ".emilia/ledger").glob("sources-*")))
    assert 3 <= committed < 30 and not (out / "summary.json").exists()
    resumed = start(slow=False)
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["files"]["ok"] == 30 and summary["this_run"]["already_done"] >= 3


# --- exports that list paths: refuse a path the format cannot hold, with one line ---------------------

def _scripted_build(out: Path, n: int = 3) -> Path:
    from test_driver import ScriptedExecutor

    from emilia_pipe.config import load_config
    from emilia_pipe.runners.driver import run_pipeline

    d = _inputs(out.parent / "in", n)
    run_pipeline([d], out, load_config(overrides=["run.runner=local"]), log=lambda m: None,
                 executor_factory=lambda c, stages, o, run: ScriptedExecutor(c, o, run))
    return out


def test_exports_refuse_paths_their_files_cannot_hold(tmp_path, capsys):
    """Before: `list` with '|' or a line break in DEST wrote 40 lines for 20 clips; `kaldi` from a build
    whose path has a space wrote wav.scp lines of three fields (read as 0 samples downstream)."""
    from emilia_pipe.cli import main

    spaced = _scripted_build(tmp_path / "my builds" / "out")
    clips = 6
    cases = [(["kaldi", spaced, tmp_path / "k1"], "kaldi: the path of the build", "holds a space"),
             (["list", spaced, tmp_path / "a|b"], "list: the path of the destination", "holds '|'"),
             (["list", spaced, tmp_path / "a\nb"], "list: the path of the destination", "holds a line break")]
    for (fmt, build, dest), what, needle in cases:
        assert main(["export", str(build), "--format", fmt, "-o", str(dest)]) == 2
        line = _one_line(capsys.readouterr().err)
        assert what in line and needle in line, line
        assert not dest.exists() and not list(dest.parent.glob(".*export-tmp*"))
    # a link to the build without the space is the way out for kaldi; a space is fine in a list's path
    os.symlink(spaced, tmp_path / "build")
    assert main(["export", str(tmp_path / "build"), "--format", "kaldi", "-o", str(tmp_path / "kaldi")]) == 0
    scp = (tmp_path / "kaldi/wav.scp").read_text().splitlines()
    assert len(scp) == clips and all(len(line.split()) == 2 and Path(line.split()[1]).exists() for line in scp)
    assert main(["export", str(spaced), "--format", "list", "-o", str(tmp_path / "with space")]) == 0
    rows = (tmp_path / "with space/gpt_sovits.list").read_text().splitlines()
    assert len(rows) == clips and all(Path(r.split("|")[0]).exists() for r in rows)
    capsys.readouterr()
    # bytes that are not UTF-8 in the build's path: lhotse's JSON and kaldi's text cannot hold them
    odd = os.path.join(os.fsencode(tmp_path), b"odd\xff")
    os.symlink(spaced, odd)
    for fmt in ("lhotse", "kaldi"):
        assert main(["export", os.fsdecode(odd), "--format", fmt, "-o", str(tmp_path / f"odd-{fmt}")]) == 2
        assert "odd\\xff) is not valid UTF-8" in _one_line(capsys.readouterr().err)
    # nor a destination that is not UTF-8 (Parquet shards, JSON): before, hf stopped with a traceback
    for fmt in ("hf", "text"):
        assert main(["export", str(spaced), "--format", fmt, "-o", os.fsdecode(odd) + "-dest"]) == 2
        assert "the path of the destination" in _one_line(capsys.readouterr().err)


def test_hf_features_load_in_datasets_3_and_4():
    """Before: the word-timestamps column declared the feature type `List`, which only datasets 4.x knows
    (3.x, which Amphion's dualcodec loader needs, failed: "Feature type 'List' not found"). A plain JSON
    list is the form both read; checked against 3.6.0 in a separate environment (docs/notes/issue-22.md)."""
    import datasets
    import pyarrow as pa

    from emilia_pipe.exports.hf import schema

    sch = schema(24000, words=True)
    features = json.loads(sch.metadata[b"huggingface"])["info"]["features"]
    assert isinstance(features["words"], list) and "List" not in json.dumps(features)
    assert features["words"][0]["word"] == {"dtype": "string", "_type": "Value"}
    row = {"audio": {"bytes": b"", "path": "x.mp3"}, "id": "EN_B00000_S00000_W000000", "text": "hi", "duration": 1.0,
           "speaker": "s", "language": "en", "dnsmos": 3.0, "start": 0.0, "end": 1.0, "source": "/x",
           "language_prob": 1.0, "words": [{"word": "hi", "start": 0.0, "end": 0.5}]}
    table = pa.Table.from_pylist([row], schema=sch)
    got = datasets.Features.from_arrow_schema(table.schema)
    assert got["words"] == datasets.Features.from_dict({"w": features["words"]})["w"]
    assert datasets.Dataset(table).cast_column("audio", datasets.Audio(decode=False))[0]["words"] == row["words"]


def test_reference_lists_are_user_files_too(tmp_path, capsys):
    from emilia_pipe.cli import main

    out = _scripted_build(tmp_path / "out")
    os.mkfifo(tmp_path / "refs.tsv")
    assert main(["eval", str(out), "--refs", str(tmp_path / "refs.tsv")]) == 2
    assert "reference list" in _one_line(capsys.readouterr().err)
    assert main(["eval", str(out), "--refs", "/dev/zero"]) == 2
    assert "is a character device, not a regular file" in _one_line(capsys.readouterr().err)


@pytest.mark.integration
def test_ray_workers_do_not_import_from_the_working_folder(tmp_path):
    """ray.init puts the driver's working folder on every worker's sys.path (before: a colorsys.py there was
    imported by a worker)."""
    trap = tmp_path / "trap"
    trap.mkdir()
    (trap / "colorsys.py").write_text(f"open({str(trap / 'MARK')!r}, 'w').close()\n")
    script = ("import sys\nsys.path[:0] = [{root!r}]\n"
              "from emilia_pipe.runners.ray_executor import init_ray\n"
              "ray = init_ray(None, {{}})\n"
              "@ray.remote\ndef probe():\n    import os, sys\n    import colorsys\n"
              "    return [p for p in sys.path if 'trap' in p]\n"
              "print(ray.get(probe.remote()))\nray.shutdown()\n").format(root=str(ROOT))
    (tmp_path / "probe.py").write_text(script)
    proc = subprocess.run([sys.executable, str(tmp_path / "probe.py")], cwd=trap, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "RAY_ADDRESS": "", "RAY_AUTH_MODE": "disabled"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]" and not (trap / "MARK").exists()


def test_the_corpus_has_at_least_50_kinds_each_run_by_a_test():
    from corpus import EXPECT, INVOCATIONS

    assert len(EXPECT) + len(INVOCATIONS) >= 50, (len(EXPECT), len(INVOCATIONS))
    sources = "".join((ROOT / "tests" / f).read_text() for f in ("test_hostile_invocations.py", "test_safe_inputs.py"))
    missing = {kind: test for kind, test in INVOCATIONS.items() if f"def {test}(" not in sources}
    assert not missing, missing


def test_a_name_that_is_not_utf8_on_the_command_line(tmp_path):
    """The command line itself holds the odd bytes (recorded in build.json's and lock.json's argv)."""
    d = _inputs(tmp_path / "in", 1)
    bad = os.path.join(os.fsencode(d), b"caf\xe9.wav")
    with open(bad, "wb") as fh:
        fh.write(b"y")
    script = STOPPABLE.format(root=str(ROOT), tests=str(ROOT / "tests"), slow=False)
    proc = subprocess.run([sys.executable.encode(), b"-c", script.encode(), b"run", bad, os.fsencode(d / "f00.wav"),
                           b"-o", os.fsencode(tmp_path / "out")], capture_output=True, timeout=300,
                          env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-3000:]
    paths = [json.loads(line)["path"] for line in (tmp_path / "out/sources.jsonl").read_text().splitlines()]
    assert paths == sorted([str(d / "f00.wav"), f"file://{d}/caf%E9.wav"])
    argv = json.loads((tmp_path / "out/.emilia/build.json").read_text())["runs"][0]["argv"]
    assert f"{d}/caf\\xe9.wav" in argv
