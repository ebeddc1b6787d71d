"""Places for a run's inputs: which are done, which are new, which changed.

Every input has a fixed place (its plan index) from the first time the build sees it; inputs are sorted,
so the same inputs get the same places whatever order they are given in, and inputs added later go
after every index the build has ever used (even when a plan part was lost).

An input is recognised by its path and a cheap ``stat`` (size, mtime, ctime, inode, device; a URL has
size and time only). When the stat matches the plan, nothing is read. When it does not and the source
is done, the file is hashed again (in a few threads): the same content keeps its place and its clips
(the plan learns the new stat); other content is new: it gets a new place, and the old source is
*withdrawn*, its clips taken out of the published tree at the next publish (they stay in the ledger's
history). A URL whose size or time changed is taken as changed (hashing it means downloading it). An
input changed before it was ever done keeps its place (e.g. a broken file that was replaced).

A planned input that is no longer on disk is *missing*: not pending (``status`` and the summary say so),
and its clips, if any, stay published unless the user drops them (``--drop-missing``)."""
from __future__ import annotations

import concurrent.futures as cf
import os
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from emilia_pipe.dataset.ledger import Ledger
from emilia_pipe.media.identity import input_identities
from emilia_pipe.media.inputs import METADATA_THREADS, is_url, local_path
from emilia_pipe.runtime.files import sha256_of

IDENTITY = ("size", "mtime_ns", "ctime_ns", "inode", "device")
CHANGED, MISSING = "input_changed", "input_missing"


@dataclass
class Placed:
    """The outcome of planning: every input's index, what is already done, and what changed."""

    index: dict[str, int] = field(default_factory=dict)  # path -> plan index
    done: set[int] = field(default_factory=set)
    rows: list[dict] = field(default_factory=list)  # new plan rows
    withdrawn: list[dict] = field(default_factory=list)  # old sources of changed inputs
    rehashed: int = 0


def _same(path: str, known: list, new) -> bool:
    """Every part of the stat the plan knows equals this one (a part an older plan lacks: not the same)."""
    new = [int(v) for v in new]
    if is_url(path):
        return known[:2] == new[:2] and new[0] >= 0
    return all(v is not None and v >= 0 for v in known) and known == new


class _LatestPlan:
    """The plan's latest row of each path, kept as the plan's columns and a path -> row position map (a dict
    per row would cost several times the plan's size)."""

    def __init__(self, plan):
        self.row = dict(zip(plan["path"].tolist(), range(len(plan))))  # later rows of a path win
        self.index = plan["index"].to_numpy()
        self.ident = [plan[k].to_numpy() if k in plan.columns else None for k in IDENTITY]

    def index_of(self, path: str) -> int | None:
        i = self.row.get(path)
        return None if i is None else int(self.index[i])

    def unchanged(self, paths: list[str], stats: np.ndarray) -> np.ndarray:
        """Per path: whether the plan's latest row has this stat (:func:`_same`), for all paths at once when
        the plan's columns are whole integers (an older plan's nulls make them floats: one by one, as before)."""
        pos = np.fromiter((self.row.get(p, -1) for p in paths), dtype=np.int64, count=len(paths))
        if not self.row or not len(paths):
            return np.zeros(len(paths), dtype=bool)
        if stats.dtype == np.int64 and all(col is not None and col.dtype == np.int64 for col in self.ident):
            known = np.stack(self.ident, axis=1)[pos]
            url = np.fromiter((is_url(p) for p in paths), dtype=bool, count=len(paths))
            local_same = (known >= 0).all(axis=1) & (known == stats).all(axis=1)
            url_same = (known[:, :2] == stats[:, :2]).all(axis=1) & (stats[:, 0] >= 0)
            return (pos >= 0) & np.where(url, url_same, local_same)
        return np.array([i >= 0 and _same(p, [None if col is None else _native(col[i]) for col in self.ident], st)
                         for p, i, st in zip(paths, pos.tolist(), stats)], dtype=bool)


def _native(value):
    """A column's value as the plan's rows gave it (an int, or a float NaN where an older plan lacks it)."""
    return value.item() if hasattr(value, "item") else value


def place_inputs(ledger: Ledger, paths: list[str], run: int, log: Callable[[str], None], threads: int = 4,
                 metadata_threads: int = METADATA_THREADS) -> Placed:
    """``threads``: files hashed at once; ``metadata_threads``: inputs stat-ed (a URL: ``info``) at once."""
    latest = _LatestPlan(ledger.plan())
    sources = ledger.sources(["path", "sha256", "status"])
    withdrawn = ledger.withdrawn()
    live = sources[~sources["index"].isin(list(withdrawn))]
    sha_of = dict(zip(live["index"].astype(int), live["sha256"]))
    done_at_path = dict(zip(live["path"], live["index"].astype(int)))  # known even when its plan row is lost
    next_index = ledger.max_index() + 1
    out = Placed(done=set(sha_of))
    stats = input_identities(paths, metadata_threads)  # one row per path, in order
    same = latest.unchanged(paths, stats)

    def verdict(path, stat, unchanged):
        """(index to keep or None, whether the plan's stat matches, whether the content must be hashed to tell)."""
        prev = latest.index_of(path)
        if unchanged:
            return prev, True, False
        old = prev if prev is not None else done_at_path.get(path)
        if old is None or old in withdrawn:
            return None, False, False  # new to the build
        if old not in sha_of:
            return old, False, False  # never done: keeps its place whatever changed
        return old, False, not is_url(path) and stat[0] >= 0

    to_hash = [path for path, stat, unchanged in zip(paths, stats, same) if verdict(path, stat, unchanged)[2]]
    hashes = _hash_all(to_hash, threads, log)
    out.rehashed = len(to_hash)
    for path, stat, unchanged in zip(paths, stats, same):
        old, unchanged, hashed = verdict(path, stat, unchanged)
        if old is not None and (unchanged or old not in sha_of or (hashed and hashes.get(path) == sha_of[old])):
            index = old
        else:
            index = next_index
            next_index += 1
            if old is not None and old in sha_of:  # done with other content: its clips leave the release
                out.withdrawn.append({"index": old, "reason": CHANGED, "run": run, "time": time.time()})
                log(f"{path} changed since it was processed: processed again, its old clips withdrawn")
        if not unchanged or latest.index_of(path) != index:
            out.rows.append({"index": index, "path": path, "run": run, **dict(zip(IDENTITY, map(int, stat)))})
        out.index[path] = index
    out.done -= {w["index"] for w in out.withdrawn}
    return out


def _hash_all(paths: list[str], threads: int, log: Callable[[str], None]) -> dict[str, str]:
    """sha256 of each file whose stat changed (hashlib releases the GIL: a few threads overlap the reads);
    a file that cannot be read gets no hash (it is then taken as changed, and its read fails and is recorded)."""
    if not paths:
        return {}
    log(f"{len(paths)} input(s) changed on disk (size, time, ctime, inode or device) since they were processed: "
        "hashing them again")

    def one(path):
        try:
            return path, sha256_of(local_path(path))
        except OSError:
            return path, None

    with cf.ThreadPoolExecutor(max(1, min(threads, len(paths)))) as pool:
        return {p: h for p, h in pool.map(one, paths) if h is not None}


def latest_plan(ledger: Ledger):
    """One plan row per index (its latest)."""
    return ledger.plan(["index", "path", "size"]).drop_duplicates("index", keep="last")


def gone(paths) -> set[str]:
    """Local input paths that are no longer on disk (a URL is never checked here)."""
    return {p for p in paths if not is_url(p) and not os.path.lexists(local_path(p))}


def missing_report(ledger: Ledger) -> dict:
    """Inputs no longer on disk: not done (``missing``, instead of pending) and done (``published``: their
    clips stay published until dropped with ``--drop-missing``)."""
    plan = latest_plan(ledger)
    sources = ledger.sources(["status"])
    withdrawn = ledger.withdrawn()
    settled = set(sources["index"].tolist()) | set(ledger.failures()["index"].tolist())
    paths = dict(zip(plan["index"].astype(int), plan["path"]))
    away = gone(paths.values())
    done = set(sources.loc[sources["status"] == "done", "index"].astype(int)) - set(withdrawn)
    return {"missing": sorted(i for i, p in paths.items() if p in away and i not in settled and i not in withdrawn),
            "published": sorted(i for i, p in paths.items() if p in away and i in done)}


def drop_missing(ledger: Ledger, run: int, log: Callable[[str], None]) -> int:
    """Withdraw the done sources whose input is gone (``--drop-missing``); returns how many."""
    report = missing_report(ledger)
    rows = [{"index": i, "reason": MISSING, "run": run, "time": time.time()} for i in report["published"]]
    ledger.withdraw(run, rows)
    if rows:
        log(f"{len(rows)} source(s) whose input is gone withdrawn from the published tree (--drop-missing)")
    return len(rows)
