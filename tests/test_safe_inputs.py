"""What a run reads, made safe wherever it is pointed, with no model: user files (input lists, configs)
only when regular and bounded, in UTF-8 or UTF-16 with a BOM; remote inputs bounded in bytes and time;
names that are not UTF-8 processed and recorded losslessly; the output folder never read back, however
it is reached; several audio streams chosen by a documented rule and recorded; deadlines that grow with
the audio; decoding progress."""
import codecs
import json
import os
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from corpus import SPEECH, StandardizeOnlyExecutor, two_stream_mkv

from emilia_pipe.config import ConfigError, load_config
from emilia_pipe.media.inputs import InputError, OutputError, expand_inputs, local_path, path_text, read_list
from emilia_pipe.runners.driver import run_pipeline

CFG = load_config(overrides=["run.runner=local"])


def _run(inputs, out, config=CFG, **kw):
    return run_pipeline(inputs, out, config, executor_factory=StandardizeOnlyExecutor, log=lambda m: None, **kw)


def _wav(path: Path, seconds: float = 1.0, level: float = 0.1, rate: int = 16000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.full(int(seconds * rate), level, np.float32), rate)
    return path


def _rows(out: Path, name: str) -> list[dict]:
    p = out / name
    return [json.loads(line) for line in p.read_text().splitlines()] if p.exists() else []


# --- user files: input lists and configs ------------------------------------------------------------

def test_special_files_as_lists_or_configs_are_refused_at_once(tmp_path):
    os.mkfifo(tmp_path / "fifo")  # nobody writes it: opening it the usual way would wait forever
    cases = [("/dev/zero", "is a character device, not a regular file"),  # grew to 6 GB before
             (str(tmp_path / "fifo"), "is a FIFO, not a regular file"),
             (str(tmp_path), "is a folder")]
    for path, needle in cases:
        t0 = time.perf_counter()
        with pytest.raises(InputError, match=needle):
            expand_inputs([f"@{path}"])
        with pytest.raises(ConfigError, match=needle):
            load_config([path])
        assert time.perf_counter() - t0 < 10  # refused, not read


def test_lists_over_the_cap_are_refused_before_reading(tmp_path):
    big = tmp_path / "big.txt"
    big.write_text("a.wav\n" * 1000)
    with pytest.raises(InputError, match=r"is 6000 bytes, more than the 1000 bytes allowed \(inputs.max_list_mb\)"):
        read_list(big, max_bytes=1000)
    huge = tmp_path / "huge.yaml"
    with open(huge, "wb") as fh:  # sparse: 64 MiB of nothing, over the 16 MiB config cap
        fh.truncate(64 << 20)
    with pytest.raises(ConfigError, match="64.0 MiB, more than the 16.0 MiB allowed"):
        load_config([huge])


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "utf-16-le-bom", "utf-16-be-bom"])
def test_lists_in_utf8_with_or_without_bom_and_utf16_with_bom_are_read(tmp_path, encoding):
    a, b = _wav(tmp_path / "ünï a.wav"), _wav(tmp_path / "語 b.wav")
    text = f"# inputs\n{a.name}\r\n{b}\n"
    data = {"utf-8": text.encode("utf-8"), "utf-8-sig": codecs.BOM_UTF8 + text.encode("utf-8"),
            "utf-16-le-bom": codecs.BOM_UTF16_LE + text.encode("utf-16-le"),
            "utf-16-be-bom": codecs.BOM_UTF16_BE + text.encode("utf-16-be")}[encoding]
    (tmp_path / "list.txt").write_bytes(data)
    assert expand_inputs([f"@{tmp_path / 'list.txt'}"]).files == sorted([str(a), str(b)])


@pytest.mark.parametrize("data,needle", [
    ("café.wav\n".encode("latin-1"), r"is not UTF-8 text \(line 1\)"),
    ("a.wav\n".encode("utf-16-le"), "holds NUL characters"),  # UTF-16 without its byte-order mark
])
def test_lists_in_other_encodings_get_one_line(tmp_path, data, needle):
    (tmp_path / "list.txt").write_bytes(data)
    with pytest.raises(InputError, match=needle):
        expand_inputs([f"@{tmp_path / 'list.txt'}"])


def test_configs_that_are_not_yaml_or_utf8_get_one_line(tmp_path):
    (tmp_path / "latin1.yaml").write_bytes("filter: {languages: [fr]}  # é\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        load_config([tmp_path / "latin1.yaml"])
    (tmp_path / "bad.yaml").write_text("filter: [unclosed\n")
    with pytest.raises(ConfigError, match=r"is not valid YAML: .*\(line 2, column 1\)"):
        load_config([tmp_path / "bad.yaml"])
    (tmp_path / "bom.yaml").write_bytes(codecs.BOM_UTF8 + b"filter: {dnsmos_min: 2.5}\n")
    assert load_config([tmp_path / "bom.yaml"]).filter.dnsmos_min == 2.5
    with pytest.raises(ConfigError, match=r"--set 'filter.languages=\[en': the value is not valid YAML"):
        load_config(overrides=["filter.languages=[en"])


# --- remote inputs ------------------------------------------------------------------------------------

class _Stream:
    """A remote file that never ends (``endless``) or stops sending after its header (``stall``)."""

    def __init__(self, kind: str, released: threading.Event):
        self.kind, self.released, self.sent = kind, released, 0
        self.closed = False

    def read(self, n=-1):
        if self.kind == "stall" and self.sent:
            self.released.wait(30)  # a connection that stays open and silent
            return b""
        self.sent += 1
        return b"\0" * (n if n and n > 0 else 1 << 16)

    def close(self):
        self.closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@pytest.fixture
def hostile_fs():
    import fsspec
    from fsspec.spec import AbstractFileSystem

    released = threading.Event()

    class HostileFS(AbstractFileSystem):
        protocol = ("endless", "stall")

        def info(self, path, **kw):
            return {"name": path, "size": None, "type": "file"}

        def ls(self, path, detail=True, **kw):
            return [self.info(path)] if detail else [path]

        def _open(self, path, mode="rb", **kw):
            return _Stream(self._kind, released)

    for kind in ("endless", "stall"):
        cls = type(f"{kind.title()}FS", (HostileFS,), {"protocol": kind, "_kind": kind, "cachable": False})
        fsspec.register_implementation(kind, cls, clobber=True)
    yield
    released.set()


def test_an_endless_or_stalled_remote_input_fails_alone_and_keeps_the_disk(tmp_path, hostile_fs):
    good = _wav(tmp_path / "in/good.wav")
    cfg = load_config(overrides=["run.runner=local", "inputs.remote_max_mb=2", "inputs.remote_stall_timeout_s=1"])
    out = tmp_path / "out"
    t0 = time.perf_counter()
    summary = _run(["endless://radio/live.wav", "stall://host/slow.wav", good], out, cfg)
    assert time.perf_counter() - t0 < 60  # neither waited for the end of a stream
    failures = {Path(r["path"]).name: r for r in _rows(out, "failures.jsonl")}
    assert set(failures) == {"live.wav", "slow.wav"}
    assert "larger than inputs.remote_max_mb=2 MiB" in failures["live.wav"]["error"]
    assert "no data for inputs.remote_stall_timeout_s=1 s" in failures["slow.wav"]["error"]
    assert [Path(r["path"]).name for r in _rows(out, "sources.jsonl")] == ["good.wav"]
    assert summary["this_run"]["failed"] == 2
    assert not list((out / ".emilia/tmp").glob(".stage-*"))  # the staged 2 MiB were deleted


# --- names that are not UTF-8 -----------------------------------------------------------------------

def test_a_name_that_is_not_utf8_is_planned_processed_and_recorded_beside_a_good_file(tmp_path, capsys):
    """Before: UnicodeEncodeError while planning, 0 files planned, the good file never processed."""
    d = tmp_path / "in"
    _wav(d / "good.wav")
    bad = os.path.join(os.fsencode(d), b"bad\xff\xfe name.wav")
    with open(bad, "wb") as fh:
        sf.write(fh, np.full(16000, 0.2, np.float32), 16000, format="WAV")
    out = tmp_path / "out"
    summary = _run([d], out)
    assert summary["files"]["ok"] == 2 and summary["this_run"]["failed"] == 0
    paths = [r["path"] for r in _rows(out, "sources.jsonl")]
    text = path_text(os.fsdecode(bad))
    assert text == "file://" + str(d) + "/bad%FF%FE%20name.wav" and text in paths
    assert os.fsencode(local_path(text)) == bad  # lossless: the exact bytes back
    # a resume recognises it by that record; the name given directly (as bytes or its URL) is the same input
    again = _run([d, bad, text], out)
    assert again["this_run"]["already_done"] == 2 and again["this_run"]["files"] == 0
    # messages show the bytes escaped
    os.symlink(b"missing\xff", os.path.join(os.fsencode(d), b"dangling\xfe.wav"))
    found = expand_inputs([d])
    reason = next(p.reason for p in found.problems if "dangling" in p.path)
    assert "dangling\\xfe.wav is a dangling symlink (to 'missing\\xff'" in reason


# --- the output folder ------------------------------------------------------------------------------

def test_an_empty_output_path_or_one_that_is_not_utf8_is_refused(tmp_path):
    _wav(tmp_path / "a.wav")
    with pytest.raises(OutputError, match="the output path is empty"):
        _run([tmp_path / "a.wav"], "")
    with pytest.raises(OutputError, match=r"the output path .*/b\\xffuild is not valid UTF-8"):
        _run([tmp_path / "a.wav"], os.fsdecode(os.path.join(os.fsencode(tmp_path), b"b\xffuild")))
    assert os.listdir(tmp_path) == ["a.wav"]


def test_a_folder_of_other_files_is_refused_unless_forced(tmp_path):
    a = _wav(tmp_path / "in/a.wav")
    mine = tmp_path / "my_project"
    mine.mkdir()
    (mine / "summary.json").write_text("my own summary")
    with pytest.raises(OutputError, match=r"holds other files \(e.g. 'summary.json'\) and is not a build"):
        _run([a], mine)
    assert (mine / "summary.json").read_text() == "my own summary" and not (mine / ".emilia").exists()
    assert _run([a], mine, force_output=True)["files"]["ok"] == 1
    assert json.loads((mine / "summary.json").read_text())["files"]["ok"] == 1
    # an empty folder, and a folder holding only a build's start (a run killed at once), are fine
    (tmp_path / "empty").mkdir()
    assert _run([a], tmp_path / "empty")["files"]["ok"] == 1
    (tmp_path / "started/.emilia").mkdir(parents=True)
    assert _run([a], tmp_path / "started")["files"]["ok"] == 1


def test_the_output_is_never_read_however_it_is_reached(tmp_path):
    """Before: an output folder reached through a link inside the input tree was read back as input."""
    d = tmp_path / "data"
    _wav(d / "a.wav")
    out = tmp_path / "out"
    assert _run([d], out)["files"]["ok"] == 1
    mp3_like = _wav(out / "EN/EN_B00000/x.wav")  # something audio-like inside the build
    os.symlink(out, d / "out_link")
    os.symlink(mp3_like, d / "file_link.wav")
    for given in ([d], [d / "out_link"], [str(d / "out_link/**/*.wav")], [d / "out_link/EN/EN_B00000/x.wav"],
                  [d / "file_link.wav"], [str(d) + "/*/EN"]):
        try:
            files = expand_inputs(given, exclude=[out]).files
        except InputError:  # the glob found only the output
            files = []
        assert not [f for f in files if "x.wav" in f or "out_link" in f or "file_link" in f], (given, files)
    if os.geteuid() != 0:
        return
    bind = tmp_path / "bind"
    bind.mkdir()
    if subprocess.run(["mount", "--bind", out, bind], capture_output=True).returncode != 0:
        pytest.skip("cannot bind-mount here")
    try:  # a bind mount of the output: another path, the same folder (device and inode)
        assert [f for f in expand_inputs([bind, tmp_path], exclude=[out]).files if "x.wav" in f] == []
        with pytest.raises(InputError, match="no audio files found"):
            _run([bind], out)
    finally:
        subprocess.run(["umount", bind])


# --- several audio streams --------------------------------------------------------------------------

def test_the_audio_stream_is_chosen_by_rule_or_setting_and_recorded(tmp_path):
    from emilia_pipe.stages.standardize import Standardizer

    speech, rate = sf.read(SPEECH, dtype="float32")
    noise = np.random.default_rng(0).standard_normal(speech.size).astype(np.float32) * 0.3
    mkv = tmp_path / "film.mkv"
    two_stream_mkv(mkv, noise, speech, rate, default=None)
    auto = Standardizer(CFG).run(mkv)
    second = Standardizer(load_config(overrides=["standardize.audio_stream=1"])).run(mkv)
    assert (auto.audio_stream, auto.audio_streams, second.audio_stream, second.audio_streams) == (0, 2, 1, 2)
    # the setting decides what is decoded: the speech stream correlates with the speech, the noise does not
    ref = speech[: rate * 2]
    for src, want in ((auto, False), (second, True)):
        x = np.asarray(src.audio_16k)[: 32000]
        corr = abs(float(np.corrcoef(x, np.interp(np.arange(32000) * rate / 16000, np.arange(ref.size), ref))[0, 1]))
        assert (corr > 0.9) == want, corr  # noise: |r| < 0.05; the speech stream: r > 0.99 (resampled)
    with pytest.raises(Exception, match=r"has 2 audio stream\(s\): no stream 2"):
        Standardizer(load_config(overrides=["standardize.audio_stream=2"])).run(mkv)
    with pytest.raises(ConfigError, match="standardize.audio_stream"):
        load_config(overrides=["standardize.audio_stream=-1"])


# --- deadlines and progress -------------------------------------------------------------------------

def test_deadlines_grow_with_the_audio_duration(tmp_path):
    from emilia_pipe.runners.calls import deadline, task_deadline_s

    run = load_config(overrides=["run.task_timeout_s=600", "run.task_timeout_per_audio_hour_s=1800"]).run
    assert task_deadline_s(run, 0) == 600 and task_deadline_s(run, 3 * 3600) == 600 + 3 * 1800
    # the default gives a 3-hour file 3600 + 3 x 3600 s: the 3-hour benchmark took 4471 s, over the old 3600 s
    assert task_deadline_s(CFG.run, 3 * 3600) == 14400
    with deadline(0.3) as timer:  # extended once the length is known: no TimeoutError at 0.3 s
        timer.extend_to(30)
        time.sleep(0.6)
    with pytest.raises(TimeoutError, match="deadline of 0.2 s"):
        with deadline(0.2):
            time.sleep(5)
    # the scheduler hands each file its length from its header (for the executor's deadline)
    seen = {}

    class Recording(StandardizeOnlyExecutor):
        def submit_file(self, task):
            seen[Path(task.path).name] = task.audio_s
            return super().submit_file(task)

    _wav(tmp_path / "in/long.wav", seconds=700, level=0.0)
    _wav(tmp_path / "in/short.wav", seconds=2)
    run_pipeline([tmp_path / "in"], tmp_path / "out", CFG, executor_factory=Recording, log=lambda m: None)
    assert seen == {"long.wav": 700.0, "short.wav": 2.0}


def test_decoding_a_long_input_reports_progress(tmp_path, capsys):
    from emilia_pipe.media.audio import PROGRESS_AFTER_S, decode

    f = _wav(tmp_path / "long.wav", seconds=30, level=0.0)
    decode(f, 16000, progress_after_s=10)
    lines = [line for line in capsys.readouterr().err.splitlines() if "decode" in line]
    assert lines and lines[-1].startswith("[emilia-pipe] decode ") and "audio-s 30/30" in lines[-1]
    decode(f, 16000)  # under the default 10 min: quiet
    assert PROGRESS_AFTER_S == 600 and "decode" not in capsys.readouterr().err


def test_a_remote_input_never_fills_the_output_disk(tmp_path, hostile_fs):
    small = tmp_path / "small"
    small.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200m", "tmpfs", small],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs root to mount a tmpfs")
    try:
        good = _wav(tmp_path / "in/good.wav")
        cfg = load_config(overrides=["run.runner=local", "inputs.remote_min_free_mb=100"])  # 4 GiB cap: not hit
        out = small / "out"
        _run(["endless://radio/live.wav", good], out, cfg)
        failure = _rows(out, "failures.jsonl")[0]
        assert "would leave less than inputs.remote_min_free_mb=100 MiB free" in failure["error"], failure
        free = os.statvfs(small).f_bavail * os.statvfs(small).f_frsize
        assert free > 190 << 20  # the staged part is gone: the disk has its space back
        assert [Path(r["path"]).name for r in _rows(out, "sources.jsonl")] == ["good.wav"]
    finally:
        subprocess.run(["umount", "-l", small])


def test_the_new_settings_leave_older_builds_resumable():
    """Settings added here are not in an older build's fingerprint: at their defaults they stay out of it,
    so a resume does not report a change; a stream chosen by number does shape the clips and counts."""
    from emilia_pipe.dataset.fingerprint import fingerprint

    fp = fingerprint(CFG)
    assert not [k for k in fp if k.startswith("inputs.") or k in ("standardize.audio_stream",
                                                                    "run.task_timeout_per_audio_hour_s")]
    assert fingerprint(load_config(overrides=["standardize.audio_stream=1"]))["standardize.audio_stream"] == 1
