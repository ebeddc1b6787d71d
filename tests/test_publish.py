"""Publishing: the published language folders hold exactly the release layout; manifests, reports and
audio change as one generation, so a refilter, end-of-run finalize or export killed at any moment leaves
readers the old or the new generation; names read from the build folder are checked before anything is
deleted. Builds use the stand-in stages (tests/standin.py): real writer, ledger and publish, no model."""
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import standin
from conftest import cli, published

SETTINGS = ["output.sources_per_shard=3"]
LOOSE = ["--set", "filter.dnsmos_min=2.6"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    folder = tmp_path_factory.mktemp("base")
    inputs = standin.make_inputs(folder / "in", 10, duplicates=1)
    out = folder / "out"
    standin.run(inputs, out, SETTINGS)
    return inputs, out


@pytest.fixture(scope="module")
def loose(tmp_path_factory, base):
    """The base build refiltered, uninterrupted: what a killed refilter must end as."""
    out = tmp_path_factory.mktemp("loose") / "out"
    shutil.copytree(base[1], out, symlinks=True)
    cli("refilter", out, *LOOSE, check=0)
    return published(out), _export(out, tmp_path_factory.mktemp("exp"))


def _copy(base, tmp_path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(base[1], out, symlinks=True)
    return out


def _export(out: Path, where: Path, check=0) -> str:
    dest = where / f"text{len(list(where.iterdir()))}"
    proc = cli("export", out, "--format", "text", "-o", dest, check=check)
    return (dest / "all.tsv").read_text() if proc.returncode == 0 else proc


def layout_problems(out: Path) -> list[str]:
    """What keeps the language folders from being the Emilia release layout: a shard folder without its
    manifest beside it, an MP3 no manifest lists, a listed MP3 that is not there."""
    problems, listed = [], set()
    for lang in sorted(p for p in out.iterdir() if p.is_dir() and re.fullmatch(r"[A-Z]{1,8}", p.name)):
        for entry in sorted(lang.iterdir()):
            if entry.is_dir() and not (lang / f"{entry.name}.jsonl").is_file():
                problems.append(f"{entry.relative_to(out)}: no manifest beside it")
            if entry.suffix == ".jsonl":
                for line in entry.read_text().splitlines():
                    mp3 = lang / json.loads(line)["wav"]
                    listed.add(mp3)
                    if not mp3.is_file():
                        problems.append(f"{mp3.relative_to(out)}: listed, missing")
        problems += [f"{m.relative_to(out)}: not listed" for m in sorted(lang.rglob("*.mp3")) if m not in listed]
    return problems


def _rejected_audio(out: Path) -> list[Path]:
    rows = [json.loads(line) for line in (out / "rejected.jsonl").read_text().splitlines()]
    return [out / ".emilia/audio" / r["id"].split("_")[0] / r["wav"] for r in rows if r["wav"]]


def test_published_language_folders_hold_exactly_the_release_layout(base, tmp_path):
    out = _copy(base, tmp_path)
    summary = json.loads((out / "summary.json").read_text())
    assert 0 < summary["clips"]["kept"] < summary["clips"]["total"]  # some clips of the build are rejected
    assert layout_problems(out) == []  # before: shard folders holding rejected clips' MP3s, no manifest beside
    held = _rejected_audio(out)
    assert held and all(p.is_file() for p in held)  # rejected audio kept for refilter, out of the release
    original = published(out)
    for threshold, check in (("0", lambda s: s["clips"]["kept"] == s["clips"]["total"]),
                             ("9", lambda s: s["clips"]["kept"] == 0), ("3.0", None)):
        cli("refilter", out, "--set", f"filter.dnsmos_min={threshold}", check=0)
        s = json.loads((out / "summary.json").read_text())
        assert check is None or check(s), s["clips"]
        assert layout_problems(out) == [], threshold
        assert all(p.is_file() for p in _rejected_audio(out))
    assert published(out) == original  # back to the first threshold: the same files, byte for byte


def test_a_strict_refilter_leaves_no_language_folder(base, tmp_path):
    out = _copy(base, tmp_path)
    cli("refilter", out, "--set", "filter.dnsmos_min=9", check=0)
    assert not [p for p in out.iterdir() if re.fullmatch(r"[A-Z]{1,8}", p.name)]


@pytest.mark.parametrize("where, names", [("manifests.json", ["../victim.txt", "ABSOLUTE"]),
                                          ("publish.json", ["EN/../../victim.txt"]),
                                          ("publish.json", ["EN/EN_B00000.jsonl", "ABSOLUTE", 7])])
def test_a_manifest_list_naming_other_files_deletes_nothing(base, tmp_path, names, where):
    out = _copy(base, tmp_path)
    victim, absolute = tmp_path / "victim.txt", tmp_path / "absolute.txt"
    for p in (victim, absolute):
        p.write_text("mine\n")
    names = [str(absolute) if n == "ABSOLUTE" else n for n in names]
    state = out / ".emilia"
    if where == "manifests.json":  # a build folder of the layout before generations, copied from elsewhere
        (state / "publish.json").unlink()
        (state / "manifests.json").write_text(json.dumps(names))
    else:
        (state / "publish.json").write_text(json.dumps({"generation": 3, "state": "applying", "manifests": [],
                                                        "previous": names, "files": []}))
    before = published(out)
    proc = cli("refilter", out, *LOOSE)
    assert proc.returncode == 6 and "not this build's" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert victim.read_text() == absolute.read_text() == "mine\n"  # before: refilter deleted both
    assert published(out) == before
    if where == "publish.json":
        exported = cli("export", out, "--format", "text", "-o", tmp_path / "exp")
        assert exported.returncode == 6 and "Traceback" not in exported.stderr, exported.stderr


def test_a_move_list_naming_other_files_moves_nothing(base, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = _copy(base, tmp_path)
    state = json.loads((out / ".emilia/publish.json").read_text())
    staged = out / ".emilia/publish" / f"g{state['generation'] + 1:06d}"
    staged.mkdir()
    pq.write_table(pa.table({"id": ["../../../victim"], "to": ["dropped"]}), staged / "moves.parquet")
    (out / ".emilia/publish.json").write_text(json.dumps({**state, "generation": state["generation"] + 1,
                                                          "state": "applying", "previous": state["manifests"]}))
    (tmp_path / "victim").write_text("mine\n")
    proc = cli("refilter", out, *LOOSE)
    assert proc.returncode == 6 and "not this build's" in proc.stderr, proc.stderr
    assert (tmp_path / "victim").read_text() == "mine\n"


BEFORE_COMMIT = ["manifest:1", "manifest:3"]
AFTER_COMMIT = ["publish:1", "apply:1", "apply:4", "apply:9"]


@pytest.mark.parametrize("point", BEFORE_COMMIT + AFTER_COMMIT)
def test_a_killed_refilter_leaves_the_old_or_the_new_generation(base, loose, tmp_path, point):
    out = _copy(base, tmp_path)
    old, old_export = published(out), _export(out, _mk(tmp_path / "e0"))
    crashed = cli("refilter", out, *LOOSE, env={"EMILIA_PIPE_CRASH_AT": point})
    assert crashed.returncode == -9, crashed.stderr[-2000:]
    status = json.loads(cli("status", out, "--json", check=0).stdout)
    if point in BEFORE_COMMIT:  # nothing of the new generation is visible
        assert published(out) == old and not status["publish"]["unfinished"]
        assert _export(out, _mk(tmp_path / "e1")) == old_export  # before: 26 clips of a build whose summary says 20
        cli("refilter", out, *LOOSE, check=0)
    else:  # decided: any command that takes the lock completes it first; status says so
        assert status["publish"]["unfinished"]
        assert _export(out, _mk(tmp_path / "e1")) == loose[1]
    assert published(out) == loose[0]
    assert not list((out / ".emilia/publish").glob("g*/moves.parquet"))


def _mk(p: Path) -> Path:
    p.mkdir()
    return p


@pytest.mark.parametrize("point", ["manifest:2", "publish:1", "apply:3"])
def test_a_run_killed_while_publishing_resumes_to_the_same_build(base, tmp_path, point):
    inputs, reference = base
    out = tmp_path / "out"
    script = [sys.executable, str(Path(standin.__file__)), "run", *map(str, inputs), "-o", str(out),
              *[a for s in SETTINGS for a in ("--set", s)]]
    crashed = subprocess.run(script, capture_output=True, text=True, env={**_env(), "EMILIA_PIPE_CRASH_AT": point})
    assert crashed.returncode == -9, crashed.stderr[-2000:]
    resumed = subprocess.run(script, capture_output=True, text=True, env=_env())
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert published(out) == published(reference) and layout_problems(out) == []


def test_a_killed_export_leaves_no_staging_folder_behind(base, tmp_path):
    out = _copy(base, tmp_path)
    crashed = cli("export", out, "--format", "text", "-o", tmp_path / "exp", env={"EMILIA_PIPE_CRASH_AT": "export:2"})
    assert crashed.returncode == -9 and not (tmp_path / "exp").exists()
    assert _export(out, _mk(tmp_path / "again")) == _export(out, _mk(tmp_path / "clean"))
    cli("export", out, "--format", "text", "-o", tmp_path / "exp", check=0)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".exp")) == []


def test_export_reads_only_the_manifests_its_generation_lists(base, tmp_path):
    out = _copy(base, tmp_path)
    clean = _export(out, _mk(tmp_path / "e0"))
    mine = out / "EN" / "EN_B00099.jsonl"  # a user's file that looks like a manifest
    mine.write_text(json.dumps({"id": "EN_B00099_S00000_W000000", "wav": "x.mp3", "text": "mine", "language": "en",
                                "speaker": "s", "source": "x", "start": 0}) + "\n")
    assert _export(out, _mk(tmp_path / "e1")) == clean  # before: the user's line was exported too
    cli("refilter", out, *LOOSE, check=0)
    assert mine.exists()


def _env():
    import os

    return {**os.environ, "RAY_ADDRESS": ""}
