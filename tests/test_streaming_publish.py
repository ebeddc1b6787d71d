"""Issue 23: the publish reads a build bucket by bucket, judges again only the buckets that changed, and the
ledger compacts writers' parts into buckets. Held to the outputs of the in-memory finalize it replaced
(tests/golden/streaming_publish.json, recorded at cff3a33 by tests/golden/make_streaming_golden.py)."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "golden"))

from synthetic_build import config, make_build  # noqa: E402

import emilia_pipe.dataset.ledger as ledger_module  # noqa: E402
from emilia_pipe.dataset.compaction import compact  # noqa: E402
from emilia_pipe.dataset.ledger import Ledger, part_name  # noqa: E402
from emilia_pipe.dataset.publish import finalize  # noqa: E402

GOLDEN = json.loads((Path(__file__).parent / "golden/streaming_publish.json").read_text())


def _numbers_close(a, b, tol: float) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_numbers_close(a[k], b[k], tol) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_numbers_close(x, y, tol) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and abs(a - b) <= tol
    return a == b


@pytest.mark.parametrize("bucket_sources", [1000, 6])
def test_streaming_publish_gives_the_in_memory_outputs(tmp_path, monkeypatch, bucket_sources):
    """Five publishes (first, two refilters, more sources, a third refilter) in one bucket and in eight
    (sources 0-46, 6 per bucket): every manifest, rejected.jsonl, failures, skipped, the data card (its
    samples too) and the published audio are byte-identical to the in-memory finalize's. Two differences,
    both known: sources.jsonl prints integer fields as integers (the old one printed 44100.0 once any
    non-audio input was in the build) and, with several buckets, a summary float summed bucket by bucket
    may differ in its last printed digit (1e-6 h)."""
    from make_streaming_golden import run_steps

    monkeypatch.setattr(ledger_module, "BUCKET_SOURCES", bucket_sources)
    out = tmp_path / "build"
    got = run_steps(out)
    assert got.keys() == GOLDEN.keys()
    for step, want in GOLDEN.items():
        files = got[step]["files"]
        assert sorted(files) == sorted(want["files"]), step
        differ = [f for f in files if files[f] != want["files"][f]]
        assert set(differ) <= {"sources.jsonl", "summary.json"}, (step, differ)
        assert got[step]["published_audio"] == want["published_audio"], step
        if bucket_sources == 1000:  # one bucket: the summary too, byte for byte
            assert "summary.json" not in differ, step
    assert len(list((out / ".emilia/publish/buckets").iterdir())) == (1 if bucket_sources == 1000 else 8)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["clips"]["total"] > 200 and 0 < summary["clips"]["kept"] < summary["clips"]["total"]


def test_sources_and_summary_equal_the_old_values(tmp_path, monkeypatch):
    """What the hashes above leave out, by value: sources.jsonl rows equal the old ones as numbers, and the
    summary of an eight-bucket build is within 1e-6 of the one-bucket summary (which the golden pins
    byte for byte)."""
    monkeypatch.setattr(ledger_module, "BUCKET_SOURCES", 1000)
    one, many = tmp_path / "one", tmp_path / "many"
    make_build(one, 40)
    s_one = finalize(one, config(), {})
    monkeypatch.setattr(ledger_module, "BUCKET_SOURCES", 6)
    make_build(many, 40)
    s_many = finalize(many, config(), {})
    assert _numbers_close(s_one, s_many, 1.5e-6)
    assert not _numbers_close(s_one, {**s_many, "clips": {**s_many["clips"], "kept": 0}}, 1.5e-6)  # the check can fail
    assert (one / "sources.jsonl").read_bytes() == (many / "sources.jsonl").read_bytes()
    rows = [json.loads(line) for line in (one / "sources.jsonl").read_text().splitlines()]
    assert rows and all(type(r["orig_sample_rate"]) is int for r in rows)


def _stamps(out: Path) -> dict[str, tuple]:
    return {p.relative_to(out).as_posix(): (p.stat().st_ino, p.stat().st_mtime_ns)
            for p in out.glob("*/*.jsonl")}


def test_a_publish_rewrites_only_the_shards_that_changed(tmp_path, monkeypatch):
    """One source added to a seven-bucket build: only its bucket is judged again, and only manifests of
    its shards are replaced; every other manifest keeps its inode and mtime. A refilter that changes
    nothing judges nothing again; one that changes a threshold judges every bucket."""
    monkeypatch.setattr(ledger_module, "BUCKET_SOURCES", 6)
    out = tmp_path / "build"
    make_build(out, 40)
    finalize(out, config(), {})
    assert finalize.judged_again == 7  # sources 0-39, 6 per bucket
    before = _stamps(out)
    assert len(before) > 10

    finalize(out, config(), {})  # nothing changed
    assert finalize.judged_again == 0
    assert _stamps(out) == before

    make_build(out, 1, first=41, run=1)  # source 41: bucket 36-41, shards 12 (36-38) and 13 (39-41)
    finalize(out, config(), {})
    assert finalize.judged_again == 1
    after = _stamps(out)
    changed = {m for m in set(before) | set(after) if before.get(m) != after.get(m)}
    assert changed and all(m.split("_B")[1] in ("00012.jsonl", "00013.jsonl") for m in changed), changed
    assert any(m.endswith("00013.jsonl") for m in after)

    finalize(out, config("filter.dnsmos_min=3.3"), {})
    assert finalize.judged_again == 7


def test_ledger_compaction_bounds_the_file_count_and_keeps_every_row(tmp_path, monkeypatch):
    """60 writer commits of one source each become two parts per bucket (10 buckets of 6 sources); the
    sources, their clips and each writer life's commits read the same before and after."""
    monkeypatch.setattr(ledger_module, "BUCKET_SOURCES", 6)
    out = tmp_path / "build"
    make_build(out, 60)  # commits in parts of 5 sources: 12 writer parts (+ failures, plan, withdrawn)
    ledger = Ledger(out)
    for i in range(60, 120):  # and 60 more commits of one source each, by "writer life" w7-abc
        ledger.commit(part_name(0, "w7-abc"), [{"index": i, "status": "skipped", "path": f"/x/{i}", "note": "n",
                                                 "run": 0}], [])
    sources, clips = ledger.sources(), ledger.clips()
    mine = ledger.committed_by("000000-w7-abc")
    files_before = ledger.file_count()
    merged = compact(ledger, 6)
    assert merged == 72
    # 20 sources parts, 10 clips parts (sources 60-119 have none), plan, failures, withdrawn
    assert (files_before, ledger.file_count()) == (87, 33)
    assert len(list(ledger.dir.glob("bsources-*"))) == 20  # 120 sources, 6 per bucket
    assert ledger.sources().equals(sources)
    assert ledger.clips().equals(clips)
    assert ledger.committed_by("000000-w7-abc") == mine == set(range(60, 120))
    assert ledger.incomplete() == []


def test_a_bucket_whose_clips_part_is_lost_is_pending_again(tmp_path, monkeypatch):
    """A compacted clips part set aside (repair) or deleted: the sources it held count as not done, are
    listed as incomplete, and the next compaction does not carry them as done."""
    monkeypatch.setattr(ledger_module, "BUCKET_SOURCES", 6)
    out = tmp_path / "build"
    make_build(out, 12)
    ledger = Ledger(out)
    compact(ledger, 6)
    done = set(ledger.sources()["index"])
    clips_part = sorted(ledger.dir.glob("bclips-0000000000-*"))[0]
    lost = {i for i in ledger.sources(indices=range(0, 6)).query("status == 'done' and clips > 0")["index"]}
    assert lost
    os.unlink(clips_part)
    assert set(ledger.incomplete()) == lost
    assert set(ledger.sources()["index"]) == done - lost
    ledger.commit(part_name(1, "w0-x"), [{"index": 3, "status": "skipped", "path": "/x", "note": "n", "run": 1}], [])
    compact(ledger, 6)
    assert set(ledger.sources()["index"]) == (done - lost) | {3}


def test_compaction_interrupted_before_removing_old_parts_reads_each_row_once(tmp_path, monkeypatch):
    """A kill after the merged parts are written but before the writers' parts are removed leaves both:
    reading deduplicates, and the next compaction finishes the job."""
    monkeypatch.setattr(ledger_module, "BUCKET_SOURCES", 6)
    out = tmp_path / "build"
    make_build(out, 20)
    ledger = Ledger(out)
    sources, clips = ledger.sources(), ledger.clips()
    saved = {p: p.read_bytes() for p in ledger.dir.glob("*.parquet") if p.name.startswith(("sources-", "clips-"))}
    compact(ledger, 6)
    for p, data in saved.items():  # as if the removal never happened
        p.write_bytes(data)
    assert ledger.sources().equals(sources) and ledger.clips().equals(clips)
    compact(ledger, 6)
    assert not list(ledger.dir.glob("sources-*")) and ledger.sources().equals(sources)
    assert ledger.clips().equals(clips)


def test_a_damaged_stored_bucket_is_judged_again_never_trusted(tmp_path, monkeypatch):
    """What a publish stores per bucket is read back as data: a garbage aggregate or kept list, or one
    naming a file that is not this build's, makes that bucket judged again, with the same outputs."""
    monkeypatch.setattr(ledger_module, "BUCKET_SOURCES", 6)
    out = tmp_path / "build"
    make_build(out, 20)
    finalize(out, config(), {})
    first = {p.name: p.read_bytes() for p in out.glob("*.json*")}
    folders = sorted((out / ".emilia/publish/buckets").iterdir())
    (folders[0] / "aggregate.json").write_text("{garbage")
    (folders[1] / "kept.parquet").write_bytes(b"garbage")
    finalize(out, config(), {})
    assert finalize.judged_again == 2  # before: json.JSONDecodeError / ArrowInvalid tracebacks
    assert {p.name: p.read_bytes() for p in out.glob("*.json*")} == first
    folders = sorted((out / ".emilia/publish/buckets").iterdir())
    data = json.loads((folders[0] / "aggregate.json").read_text())
    data["manifests"].append("../../etc/passwd.jsonl")
    (folders[0] / "aggregate.json").write_text(json.dumps(data))
    finalize(out, config(), {})
    assert finalize.judged_again == 1
    assert {p.name: p.read_bytes() for p in out.glob("*.json*")} == first


def test_eval_reads_only_the_sources_its_references_name(tmp_path, monkeypatch):
    """`eval` against a transcript list naming two sources (one by path, one by a clip id) reads the clips
    of those two sources only (before: every clip of the build), and scores them the same as a full read."""
    from emilia_pipe.dataset import evaluation

    monkeypatch.setattr(ledger_module, "BUCKET_SOURCES", 6)
    out = tmp_path / "build"
    make_build(out, 30)
    finalize(out, config(), {})
    clip = Ledger(out).clips(["id"], indices=[25])["id"].iloc[0]
    refs = tmp_path / "refs.tsv"
    refs.write_text(f"/data/raw/00001.mp3\twörd ünï cöde\n{clip}\twörd\n", encoding="utf-8")
    asked = []
    real = Ledger.clips

    def recording(self, columns=None, indices=None):
        asked.append(None if indices is None else sorted(indices))
        return real(self, columns, indices)

    monkeypatch.setattr(Ledger, "clips", recording)
    report = evaluation.evaluate(out, [refs])
    assert asked == [[1, 25]]
    monkeypatch.setattr(Ledger, "clips", real)
    full = evaluation.evaluate_transcripts(Ledger(out).clips(["id", "source_index", "start", "text", "language"]),
                                           Ledger(out).sources(["path", "status"]), refs)
    assert report["asr"][0] == full and full["overall"]["files"] == 2
