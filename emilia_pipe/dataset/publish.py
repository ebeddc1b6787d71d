"""Output: the released Emilia layout, written so that nothing is half-written, lost or duplicated.

Two halves:

- :class:`SourceWriter` runs where a source finishes (a Ray writer actor, or the local process): it
  names the source's clips from its planned place, encodes and writes their MP3s, and commits the
  source's records to the ledger in batches (:mod:`emilia_pipe.dataset.ledger`). Audio never travels further.
- :func:`finalize` (end of a run, and ``emilia-pipe refilter``) reads the ledger one bucket at a time
  (:mod:`emilia_pipe.dataset.buckets`), judges again only the buckets that changed, and publishes, as
  one generation, the manifests
  ``OUT/<LANG>/<LANG>_B#####.jsonl`` (kept clips) with their MP3s beside them, ``rejected.jsonl`` (every
  rejected clip and dropped segment, with reasons; their MP3s stay in ``OUT/.emilia/audio/<LANG>/``),
  ``failures.jsonl``, ``skipped.jsonl``, ``sources.jsonl``, ``summary.json`` and ``datacard.html``.

Ids are fixed by the plan, not by the order in which work finishes: a source's plan index ``i`` gives
its shard ``B = i // output.sources_per_shard`` and its place ``S = i % sources_per_shard``; a clip's
``W`` is its index within the source. So ``EN_B00000_S00003_W000012`` = language EN, shard 0, source 3
of the shard, clip 12 of the source, whatever the number of workers or interruptions. Speakers are
``<L>_B#####_S#####_P##`` where ``L`` is the source's main language, so one speaker keeps one id across
the languages of its source."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import pyarrow as pa

from emilia_pipe.config import PipelineConfig
from emilia_pipe.dataset.buckets import (
    PIECES,
    Bucket,
    Task,
    aggregate,
    kept_ids,
    run_tasks,
    store,
    stored,
    stored_folder,
    sweep,
)
from emilia_pipe.dataset.compaction import compact
from emilia_pipe.dataset.datacard import add_cards
from emilia_pipe.dataset.datacard import render as render_datacard
from emilia_pipe.dataset.filtering import LanguageQuartiles
from emilia_pipe.dataset.generation import HELD, Stager, apply, current
from emilia_pipe.dataset.ledger import Ledger, bucket_width
from emilia_pipe.dataset.planning import missing_report
from emilia_pipe.dataset.summary import add_parts, build_summary
from emilia_pipe.records import ClipId


def finalize(out_dir: str | Path, config: PipelineConfig, run_info: dict[str, Any] | None = None,
             log: Callable[[str], None] = lambda m: None) -> dict:
    """(Re)write every manifest, report and the summary from the ledger, and move the clips' audio where
    their verdicts say, all as one generation (:mod:`emilia_pipe.dataset.generation`). Reads the build a
    bucket at a time (:mod:`emilia_pipe.dataset.buckets`) and judges again only the buckets that changed
    since the last publish. The caller holds the build lock."""
    out = Path(out_dir)
    ledger = Ledger(out)
    apply(out)  # a publish a kill interrupted is completed first
    width = bucket_width(config.output.sources_per_shard)
    compact(ledger, width)  # every writer part into its bucket: each bucket is then read from one pair of parts
    previous = current(out)
    sources = ledger.sources(["status", "sha256", "path", "note", "separated"])
    withdrawn = ledger.withdrawn()  # inputs changed or dropped: their clips leave the release
    gone_sources = sources["index"].isin(list(withdrawn))
    sources, withdrawn_sources = sources[~gone_sources], sources[gone_sources]
    done = sources[sources["status"] == "done"]
    # the same content under two names: the earliest place in the plan is published, the others skipped;
    # inputs that are not audio files (a folder named x.wav, a second name of one file) are skipped too
    dup = done["sha256"].duplicated(keep="first")
    skipped = pd.concat([sources[sources["status"].isin(["duplicate", "skipped"])], done[dup]])
    skipped = skipped.sort_values("index", kind="stable")  # whichever copy finished first
    first_by_sha = done[~dup].set_index("sha256")["index"]
    published = done[~dup][["index", "path", "sha256", "separated"]]
    dropped = np.sort(np.concatenate([skipped["index"].to_numpy(), withdrawn_sources["index"].to_numpy()]))

    bounds = None
    if config.filter.iqr_scope == "language":  # quartiles over the whole build: one pass over every bucket first
        quartiles = LanguageQuartiles(config.filter)
        for lo in _buckets(published["index"], width):
            quartiles.add(ledger.clips(["language", "language_prob", "sec_per_char"],
                                       indices=_within(published["index"].to_numpy(), lo, width).tolist()))
        bounds = quartiles.bounds()
    settings = {"filter": config.filter.model_dump(mode="json"), "words": config.transcribe.word_timestamps,
                "bounds": bounds}

    stager = Stager(out, previous.number + 1)
    was_buckets = previous.buckets() or {}
    legacy_kept = previous.legacy_kept() if not was_buckets else None
    folders: dict[str, str] = {}
    tasks: list[Task] = []
    part_names = [p.name for p in ledger.source_parts()]
    order = published["index"].to_numpy()  # in index order: each bucket is a slice
    for lo in _buckets(np.concatenate([order, dropped]), width):
        first, last = np.searchsorted(order, [lo, lo + width])
        bucket = Bucket(lo, lo + width - 1, published.iloc[first:last], _within(dropped, lo, width).tolist())
        digest = bucket.digest(part_names, settings)
        key = f"{lo:010d}"
        folder = stored(out, lo, digest)
        folders[key] = folder.name if folder is not None else ""
        if folder is None or was_buckets.get(key) != folder.name:
            # what this bucket had published: the last generation's stored bucket; nothing for a new bucket;
            # for a build published before buckets its one kept list, or None (unknown: every clip's audio moves)
            tasks.append(Task(out, bucket, digest, config, bounds, stager.dir, was_buckets.get(key),
                              None if was_buckets else legacy_kept))
    workers = config.run.publish_workers or min(8, os.cpu_count() or 1)
    if tasks:
        log(f"publish: judging {len(tasks)} of {len(folders)} bucket(s) (the others did not change)")
    shown = time.monotonic()
    for n, (task, (name, staged, ids, places)) in enumerate(
            zip(tasks, run_tasks(tasks, 1 if legacy_kept else workers)), 1):
        folders[f"{task.bucket.lo:010d}"] = name
        stager.staged_manifests(staged)
        stager.moves(ids, places)
        if time.monotonic() - shown > 30:
            log(f"publish: {n} of {len(tasks)} bucket(s) judged")
            shown = time.monotonic()
    judged_again = len(tasks)
    for key in sorted(set(was_buckets) - set(folders)):  # a bucket with nothing left: its clips' audio goes
        old = stored_folder(out, was_buckets[key])
        ids = sorted(kept_ids(old) or ()) if old is not None else []
        stager.moves(ids, [HELD] * len(ids))
    totals, card, manifests = add_parts([]), add_cards([]), []
    for name in folders.values():  # one bucket's shares in memory at a time
        part = aggregate(store(out) / name)
        manifests += part["manifests"]
        totals, card = add_parts([totals, part["summary"]]), add_cards([card, part["card"]])
    stager.keep_manifests(manifests)
    stager.buckets(folders)

    pieces = [store(out) / f for f in folders.values()]
    stager.joined("rejected.jsonl", [p / name for name in PIECES[:2] for p in pieces])
    failures = ledger.failures(done=[*sources["index"].tolist(), *withdrawn_sources["index"].tolist()])
    failure_rows = [{k: rec[k] for k in ("path", "stage", "error", "error_type")} for rec in failures.to_dict("records")]
    stager.file("failures.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in failure_rows))
    path_of = dict(zip(sources["index"].tolist(), sources["path"].tolist()))
    skipped_rows = [{"path": r["path"], "sha256": r["sha256"] if r["status"] != "skipped" else None,
                     "stage": "input" if r["status"] == "skipped" else "standardize",
                     "reason": r["note"] if r["status"] == "skipped" else "duplicate",
                     "duplicate_of": path_of.get(first_by_sha.get(r["sha256"])) if r["status"] != "skipped" else None}
                    for r in skipped.to_dict("records")]
    stager.file("skipped.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in skipped_rows))
    stager.joined("sources.jsonl", [p / PIECES[2] for p in pieces])

    summary = build_summary(totals, failures, len(skipped), config, run_info or {})
    away = missing_report(ledger)
    summary["inputs"] = {"missing": len(away["missing"]), "missing_published": len(away["published"]),
                         "withdrawn": {r: sum(1 for v in withdrawn.values() if v == r) for r in sorted(set(withdrawn.values()))}}
    stager.file("datacard.html", render_datacard(
        summary, card, failures, lambda bins: _kept_in_bins([store(out) / f for f in folders.values()], bins),
        lambda ids: _clip_rows(ledger, ids, config.output.sources_per_shard)))
    stager.file("summary.json", json.dumps(summary, indent=2, ensure_ascii=False))
    stager.commit(previous)
    sweep(out, set(folders.values()))
    finalize.judged_again = judged_again  # buckets judged by the last call (tests and the benchmark read it)
    return summary


def _buckets(indices, width: int) -> list[int]:
    """First sources of the buckets that hold ``indices``, in order."""
    values = np.asarray(indices, dtype=np.int64)
    return sorted({int(b) * width for b in np.unique(values // width)}) if len(values) else []


def _within(indices: np.ndarray, lo: int, width: int) -> np.ndarray:
    """The sorted ``indices`` in the bucket starting at ``lo``."""
    first, last = np.searchsorted(indices, [lo, lo + width])
    return indices[first:last]


def _kept_in_bins(folders: list[Path], bins: set[int]) -> list[dict]:
    """The kept clips (id, OVRL) whose OVRL bin is in ``bins``: where the data card's kept samples are."""
    import pyarrow.parquet as pq

    from emilia_pipe.dataset.datacard import _ovrl_bin

    rows = []
    for folder in folders:
        t = pq.read_table(folder / "kept.parquet")
        ovrl = t.column("dnsmos_ovrl").to_numpy(zero_copy_only=False)
        hit = np.flatnonzero(np.isin(_ovrl_bin(ovrl), list(bins)))
        ids = t.column("id").take(pa.array(hit)).to_pylist()
        rows += [{"id": i, "dnsmos_ovrl": float(o)} for i, o in zip(ids, ovrl[hit])]
    return rows


def _clip_rows(ledger: Ledger, ids: list[str], per_shard: int) -> dict[str, dict]:
    """A few clips' data card fields, read from their sources' buckets."""
    from emilia_pipe.dataset.datacard import SAMPLE_FIELDS, _sample

    sources = {ClipId.parse(i).shard * per_shard + ClipId.parse(i).source for i in ids}
    clips = ledger.clips([f for f in SAMPLE_FIELDS if f != "reasons"], indices=sorted(sources))
    return {r["id"]: _sample({**r, "reasons": []}) for r in clips[clips["id"].isin(ids)].to_dict("records")}
