"""Resuming a build: a run keeps the filter settings its last refilter set; damaged state stops with one
line; changed and deleted inputs. Builds use the stand-in stages (tests/standin.py): real writer,
ledger and publish, no model."""
import json
import shutil

import pytest
import standin
from conftest import cli, published

SETTINGS = ["output.sources_per_shard=3"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    folder = tmp_path_factory.mktemp("base")
    inputs = standin.make_inputs(folder / "in", 8)
    out = folder / "out"
    standin.run(inputs, out, SETTINGS)
    return inputs, out


def _copy(base, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(base[1], out, symlinks=True)
    return out


def _summary(out):
    return json.loads((out / "summary.json").read_text())


def test_a_run_keeps_the_filter_settings_its_last_refilter_set(base, tmp_path):
    inputs, _ = base
    out = _copy(base, tmp_path)
    cli("refilter", out, "--set", "filter.dnsmos_min=2.6", check=0)
    refiltered = published(out)
    logged = []
    summary = standin.run(inputs, out, SETTINGS, log=logged.append)  # no filter settings given: kept
    assert summary["filter"]["dnsmos_min"] == 2.6  # before: 3.0, the refilter silently undone
    assert published(out) == refiltered
    assert any("keeping the build's (set by refilter" in m and "filter.dnsmos_min: 2.6" in m for m in logged), logged
    # given filter settings, a run uses them and says so
    logged.clear()
    summary = standin.run(inputs, out, [*SETTINGS, "filter.dnsmos_min=3.2"], filter_given=True, log=logged.append)
    assert summary["filter"]["dnsmos_min"] == 3.2
    assert any("replace the build's" in m and "filter.dnsmos_min: 2.6 (build) -> 3.2 (this run)" in m for m in logged)
    assert standin.run(inputs, out, SETTINGS)["filter"]["dnsmos_min"] == 3.2  # and they stay


# --- damaged state: one line naming the file and what to do; `repair`; nothing silently "done" ----------------

def _script(*args, env=None, check=None):
    """The stand-in build as a command (tests/standin.py), so it can be killed and its exit status read."""
    import os
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, standin.__file__, *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "RAY_ADDRESS": "", **(env or {})})
    if check is not None:
        assert proc.returncode == check, proc.stderr[-3000:]
    return proc


def _run_cmd(inputs, out, *extra, **kw):
    return _script("run", *inputs, "-o", out, *[a for s in SETTINGS for a in ("--set", s)], *extra, **kw)


def _one_line(proc, code, *words):
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == code and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert len(lines) == 1 and all(w in lines[0] for w in words), lines


def _part(out, kind, n=0):
    """A ledger part of ``kind``: a writer's, or a bucket's once compacted (``bsources``, ``bclips``)."""
    ledger = out / ".emilia/ledger"
    return sorted([*ledger.glob(f"{kind}-*.parquet"), *ledger.glob(f"b{kind}-*.parquet")])[n]


DAMAGE = {"truncated": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
          "garbage": lambda p: p.write_bytes(b"\x00garbage" * 40)}


@pytest.mark.parametrize("kind, damage", [("sources", "truncated"), ("clips", "garbage"), ("plan", "garbage"),
                                          ("failures", "truncated")])
def test_a_damaged_ledger_part_stops_every_command_with_one_line_and_repair_redoes_it(base, tmp_path, kind, damage):
    inputs, ref = base
    out = _copy(base, tmp_path)
    if kind == "failures":  # a failure record to damage: a file that fails to decode
        bad = tmp_path / "bad.wav"
        bad.write_bytes(b"broken")
        inputs = [*inputs, bad]
        _run_cmd(inputs, out, check=1)
    part = _part(out, kind)
    DAMAGE[damage](part)
    commands = [_run_cmd(inputs, out)] + ([cli("status", out), cli("refilter", out)] if kind == "sources" else [])
    for proc in commands:
        _one_line(proc, 6, part.name, "emilia-pipe repair")  # before: a traceback (pyarrow.lib.ArrowInvalid)
    repaired = cli("repair", out, check=0)
    assert "set aside " + part.name in repaired.stdout and not part.exists()
    assert list((out / ".emilia/damaged").rglob(part.name))  # kept, not deleted
    _run_cmd(inputs, out, check=1 if kind == "failures" else 0)
    assert _ok(published(out)) == _ok(published(ref))


def _ok(view):
    """The published view without failures.jsonl (a test may add a failing input)."""
    return {k: v for k, v in view.items() if k not in ("failures.jsonl", "summary.json", "datacard.html")}


def test_garbage_build_json_is_restored_from_its_copy(base, tmp_path):
    inputs, ref = base
    out = _copy(base, tmp_path)
    (out / ".emilia/build.json").write_text("{not json")
    for proc in (cli("status", out), cli("refilter", out), _run_cmd(inputs, out),
                 cli("export", out, "--format", "text", "-o", tmp_path / "exp")):
        _one_line(proc, 6, "build.json", "emilia-pipe repair")  # before: JSONDecodeError traceback
    assert "restored build.json from build.json.bak" in cli("repair", out, check=0).stdout
    assert json.loads(cli("status", out, "--json", check=0).stdout)["sources"]["pending"] == 0
    # both damaged: repair asks for the build's own settings, then rebuilds the record from them
    (out / ".emilia/build.json").write_text("garbage")
    (out / ".emilia/build.json.bak").write_text("garbage")
    _one_line(cli("repair", out), 6, "give repair the build's own settings")
    cli("repair", out, "--set", "output.sources_per_shard=3", check=0)
    assert _run_cmd(inputs, out, check=0)
    assert published(out) == published(ref)


def test_a_deleted_plan_part_never_makes_a_new_input_done(base, tmp_path):
    inputs, ref = base
    out = _copy(base, tmp_path)
    for p in (out / ".emilia/ledger").glob("plan-*.parquet"):
        p.unlink()
    extra = standin.make_inputs(tmp_path / "more", 12)[8:]  # four inputs the build has never seen
    logged = []
    summary = standin.run([*inputs, *extra], out, SETTINGS, log=logged.append)
    # before: new inputs took the indices of done sources and were reported "already done", never processed
    assert summary["this_run"]["already_done"] == len(inputs) and summary["this_run"]["files"] == len(extra)
    assert summary["files"]["ok"] == len(inputs) + len(extra) and summary["files"]["skipped"] == 0
    assert any(f"{len(inputs)} input(s) changed on disk" in m for m in logged)  # recognised by their content
    assert {k: v for k, v in published(out).items() if k.startswith(("EN/EN_B00000", "DE/DE_B00000"))} == \
        {k: v for k, v in published(ref).items() if k.startswith(("EN/EN_B00000", "DE/DE_B00000"))}


@pytest.mark.parametrize("kind", ["sources", "clips"])
def test_a_deleted_sources_or_clips_part_makes_its_sources_pending_and_says_so(base, tmp_path, kind):
    inputs, ref = base
    out = _copy(base, tmp_path)
    parts = [*(out / ".emilia/ledger").glob(f"{kind}-*-w0-*.parquet"), *(out / ".emilia/ledger").glob(f"b{kind}-*")]
    victim = max(parts, key=lambda p: p.stat().st_size)
    victim.unlink()
    st = json.loads(cli("status", out, "--json", check=0).stdout)
    assert st["sources"]["pending"] >= 1 and st["incomplete"] == (st["sources"]["pending"] if kind == "clips" else 0)
    refilter = cli("refilter", out, check=0)
    assert "planned source(s) are not done" in refilter.stderr  # before: silently fewer clips published
    _run_cmd(inputs, out, check=0)
    assert published(out) == published(ref)


# --- changed and deleted inputs --------------------------------------------------------------------------------

def _same_size_other_content(path):
    """New bytes of the same length whose stand-in source has one clip, kept (DNSMOS OVRL 3.2 or more)."""
    import hashlib

    size = path.stat().st_size
    for k in range(10000):
        data = (f"changed {k}\n".encode() * size)[:size]
        sha = hashlib.sha256(data).hexdigest()
        if standin._seed(sha, 0) % 4 == 1 and standin._seed(sha, 200) % 150 >= 80:
            return data
    raise AssertionError


def _manifest_ids(out):
    return {json.loads(line)["id"] for m in out.glob("*/*_B*.jsonl") for line in m.read_text().splitlines()}


def _ids_of(out, name):
    return {json.loads(line)["id"] for m in out.glob("*/*_B*.jsonl") for line in m.read_text().splitlines()
            if json.loads(line)["source"].endswith(name)}


def test_an_input_changed_with_its_size_and_mtime_restored_is_redone_and_its_old_clips_withdrawn(base, tmp_path):
    import os

    inputs, ref = base
    out = _copy(base, tmp_path)
    target = next(p for p in inputs if _ids_of(out, p.name))
    old_ids, st = _ids_of(out, target.name), target.stat()
    saved = target.read_bytes()
    try:
        target.write_bytes(_same_size_other_content(target))  # cp -p / rsync -t: same size, same mtime
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert target.stat().st_size == st.st_size and target.stat().st_mtime_ns == st.st_mtime_ns
        summary = standin.run(inputs, out, SETTINGS)
        assert summary["this_run"]["files"] == 1  # before: 0 (taken as done by size and mtime)
        new_ids = _ids_of(out, target.name)
        assert new_ids and not (new_ids & old_ids) and not (old_ids & _manifest_ids(out))
        assert summary["inputs"]["withdrawn"] == {"input_changed": 1}
        assert json.loads(cli("status", out, "--json", check=0).stdout)["sources"]["withdrawn"] == 1
        from emilia_pipe.dataset.ledger import Ledger

        ledger = Ledger(out)
        assert old_ids <= set(ledger.clips()["id"])  # the old clips stay in the ledger's history
        sha = {json.loads(line)["path"]: json.loads(line)["sha256"] for line in (out / "sources.jsonl").read_text().splitlines()}
        import hashlib

        assert sha[str(target)] == hashlib.sha256(target.read_bytes()).hexdigest()
        assert not [p for p in out.rglob("*.mp3") if any(i in p.name for i in old_ids)]  # their audio is gone
        assert standin.run(inputs, out, SETTINGS)["this_run"]["files"] == 0  # and the next run reads nothing
    finally:
        target.write_bytes(saved)
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_an_input_touched_but_not_changed_is_hashed_not_redone(base, tmp_path):
    import os

    inputs, ref = base
    out = _copy(base, tmp_path)
    st = inputs[0].stat()
    try:
        os.utime(inputs[0], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        summary = standin.run(inputs, out, SETTINGS)
        assert summary["this_run"]["files"] == 0 and summary["this_run"]["already_done"] == len(inputs)
        assert published(out) == published(ref)
    finally:
        os.utime(inputs[0], ns=(st.st_atime_ns, st.st_mtime_ns))


def test_a_deleted_input_is_missing_not_pending_and_its_clips_stay_until_dropped(tmp_path):
    mine = standin.make_inputs(tmp_path / "in", 7)
    out = tmp_path / "out"
    late = mine.pop()
    standin.run(mine, out, SETTINGS)
    # a run killed before the new input is written: planned, not done
    crashed = _run_cmd([*mine, late], out, env={"EMILIA_PIPE_CRASH_AT": "mp3:1"})
    assert crashed.returncode == -9
    late.unlink()
    st = json.loads(cli("status", out, "--json", check=0).stdout)["sources"]
    assert st["missing"] == 1 and st["pending"] == 0  # before: pending 1, forever
    # a done input deleted: its clips stay published, the summary says so; --drop-missing withdraws them
    gone = next(p for p in mine if _ids_of(out, p.name))
    ids = _ids_of(out, gone.name)
    gone.unlink()
    rest = [p for p in mine if p != gone]
    summary = standin.run(rest, out, SETTINGS)
    assert summary["inputs"]["missing"] == 1 and summary["inputs"]["missing_published"] == 1
    assert ids <= _manifest_ids(out)
    summary = standin.run(rest, out, SETTINGS, drop_missing=True)
    assert summary["inputs"]["withdrawn"] == {"input_missing": 1} and not (ids & _manifest_ids(out))
    assert not [p for p in out.rglob("*.mp3") if any(i in p.name for i in ids)]
