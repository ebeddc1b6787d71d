"""Build state on disk, made to stay small and fast at millions of clips.

``OUT/.emilia/`` holds:

- ``build.json``: the config fingerprint (settings and library versions that shape the clips), the
  config itself and one line per run. A resume with a different fingerprint is refused unless asked.
- ``lock`` (+ ``lock.json``): an ``flock`` held by the one run (or refilter) using the build; the kernel
  drops it when that process dies, so a killed run never leaves it stuck.
- ``ledger/``: Parquet parts, each written whole to a temporary name and linked into place under a name
  no other part has (a part is never replaced): ``plan-<run>.parquet`` (every input's place: index, path,
  size, mtime), and per commit of a writer ``clips-<part>.parquet`` then ``sources-<part>.parquet``. A
  writer's part names hold its run, its slot and a random id drawn when the writer process starts (its
  incarnation), so a restarted writer never takes the name of a part its previous life committed. A
  clips part counts only once its sources part exists (the sources part is the commit marker), so a kill
  between the two loses nothing: the sources are simply not done and are redone on resume.
  ``failures-<part>.parquet`` records files that failed, per run. Rows are deduplicated by index on
  read, so a source committed twice (a redo after a crash, a compaction interrupted halfway) counts once.
- Buckets: while a run goes on (every 64 writer parts) and at its end, the writers' parts are merged into
  ``bclips-<first>-<last>-<seq>-<id>.parquet`` and ``bsources-...`` pairs, one pair per bucket of about
  ``BUCKET_SOURCES`` sources (whole shards, :func:`bucket_width`); each row keeps the writer part that
  committed it (``origin``). So the ledger holds about two files per thousand sources, whatever the number
  of commits; the done sources are read from the sources parts alone (a few columns of one row per
  source: a sources row counts when its clips part is there); and every pass over a build reads it one
  bucket at a time (``indices=range(...)``), never whole.
- ``tmp/``: temporary files on the same filesystem as the output; emptied when a run starts.
"""
from __future__ import annotations

import json
import re
import secrets
from pathlib import Path
from typing import Collection, Iterable, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401 - pa.compute
import pyarrow.parquet as pq

from emilia_pipe.dataset.errors import DamagedStateError
from emilia_pipe.dataset.schemas import (  # noqa: F401 - the ledger's schemas, imported from here too
    BUCKET_SOURCE_SCHEMA,
    FAILURE_SCHEMA,
    PLAN_SCHEMA,
    SOURCE_JSON_COLUMNS,
    SOURCE_SCHEMA,
    WITHDRAWN_SCHEMA,
    WORDS_TYPE,
    clip_schema,
    json_column_default,
    table_from_rows,
)
from emilia_pipe.records import STATE_DIR
from emilia_pipe.runtime.files import write_atomic, write_table_atomic

FORMAT_VERSION = 2


_BUCKET_PART = re.compile(r"b(clips|sources)-(\d{10})-(\d{10})-(\d{6})-[0-9a-f]+\.parquet")
_PARTNER = {"clips": "sources", "sources": "clips", "bclips": "bsources", "bsources": "bclips"}
BUCKET_SOURCES = 1000  # sources per ledger bucket (whole shards): the unit every pass over a build reads


def bucket_width(sources_per_shard: int) -> int:
    """Sources per bucket: whole shards, about BUCKET_SOURCES sources (a shard's manifests come from one
    bucket)."""
    return sources_per_shard * max(1, -(-BUCKET_SOURCES // sources_per_shard))



def part_name(run: int, kind: str) -> str:
    """A new part name, ``<run>-<kind>-<random>``: the run first, so parts sort by run; the random id so
    that no two processes (or lives of one) ever pick the same name."""
    return f"{run:06d}-{kind}-{secrets.token_hex(6)}"


# --- the ledger ----------------------------------------------------------------------------------

class Ledger:
    """Reads and writes the Parquet parts under ``OUT/.emilia/ledger``."""

    def __init__(self, out_dir: str | Path):
        self.out = Path(out_dir)
        self.state = self.out / STATE_DIR
        self.dir = self.state / "ledger"
        self.tmp = self.state / "tmp"

    def ensure(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)

    # writing
    def commit(self, part: str, sources: list[dict], clips: list[dict]) -> None:
        """Clips first, then the sources part that makes them count."""
        from emilia_pipe.runtime import failpoints

        if clips:
            write_table_atomic(self.dir / f"clips-{part}.parquet", table_from_rows(clips, clip_schema()), self.tmp,
                               exclusive=True)
        failpoints.hit("commit")
        write_table_atomic(self.dir / f"sources-{part}.parquet", table_from_rows(sources, SOURCE_SCHEMA), self.tmp,
                           exclusive=True)

    def record_failures(self, part: str, failures: list[dict]) -> None:
        if failures:
            write_table_atomic(self.dir / f"failures-{part}.parquet", table_from_rows(failures, FAILURE_SCHEMA), self.tmp,
                               exclusive=True)

    def withdraw(self, run: int, rows: list[dict]) -> None:
        """Sources taken out of the published tree for good (``index``, ``reason``, ``run``, ``time``)."""
        if rows:
            write_table_atomic(self.dir / f"withdrawn-{part_name(run, 'x')}.parquet",
                               table_from_rows(rows, WITHDRAWN_SCHEMA), self.tmp, exclusive=True)

    def withdrawn(self) -> dict[int, str]:
        """Withdrawn sources: index -> reason."""
        t = self._snapshot(lambda: self._read(self._parts("withdrawn"), WITHDRAWN_SCHEMA, ["index", "reason"]))
        return dict(zip(t.column("index").to_pylist(), t.column("reason").to_pylist()))

    def max_index(self) -> int:
        """The highest index any part names (-1 for none): a new input goes after it, so an index is never
        given twice even when a plan part is lost."""
        def read():
            found = [-1]
            for kind, schema, col in (("plan", PLAN_SCHEMA, "index"), ("sources", SOURCE_SCHEMA, "index"),
                                      ("failures", FAILURE_SCHEMA, "index"), ("clips", clip_schema(), "source_index")):
                parts = self._parts(kind) + (self._bucket_parts(kind) if kind in ("sources", "clips") else [])
                for part in parts:  # a part at a time: a column of a whole build is never read at once
                    t = self._read_part(part, schema, [col])
                    if t.num_rows:
                        found.append(int(pa.compute.max(t.column(col)).as_py()))
            return max(found)
        return self._snapshot(read)

    def append_plan(self, run: int, rows: list[dict]) -> None:
        if rows:
            write_table_atomic(self.dir / f"plan-{part_name(run, 'p')}.parquet", table_from_rows(rows, PLAN_SCHEMA),
                               self.tmp, exclusive=True)

    # reading: every reader lists the parts, then reads them; a part that a compaction removed in between
    # (it wrote the merged part first) makes the reader list again, so it reads one consistent snapshot
    def _parts(self, kind: str) -> list[Path]:
        """Parts writers committed (``clips``, ``sources``, ``plan``...), oldest first."""
        if not self.dir.is_dir():
            return []
        return sorted(p for p in self.dir.glob(f"{kind}-*.parquet"))

    def _bucket_parts(self, kind: str, lo: Optional[int] = None) -> list[Path]:
        """Compacted parts (``clips`` or ``sources``) of every bucket, or of the bucket starting at ``lo``, in
        bucket then merge order."""
        if not self.dir.is_dir():
            return []
        pattern = f"b{kind}-{lo:010d}-*.parquet" if lo is not None else f"b{kind}-*.parquet"
        return sorted(p for p in self.dir.glob(pattern) if _BUCKET_PART.fullmatch(p.name))

    def source_parts(self) -> list[Path]:
        """Every sources part in the order its rows take effect: buckets, then writers' newer parts."""
        return self._bucket_parts("sources") + self._parts("sources")

    @staticmethod
    def _part_id(path: Path) -> str:
        return path.stem.split("-", 1)[1]

    @staticmethod
    def partner(path: Path) -> Path:
        """The clips part of a sources part, and the other way round."""
        kind, pid = path.stem.split("-", 1)
        return path.with_name(f"{_PARTNER[kind]}-{pid}.parquet")

    def _read(self, paths: list[Path], schema: pa.Schema, columns: Optional[list[str]]) -> pa.Table:
        if not paths:
            return schema.empty_table() if columns is None else schema.empty_table().select(columns)
        return pa.concat_tables([self._read_part(p, schema, columns) for p in paths])

    def _read_part(self, path: Path, schema: pa.Schema, columns: Optional[list[str]]) -> pa.Table:
        try:
            t = pq.read_table(path)
            # parts written by an older version may lack newer columns: add them as nulls
            for f in schema:
                if f.name not in t.column_names:
                    t = t.append_column(f, pa.nulls(t.num_rows, f.type))
            t = t.select([f.name for f in schema]).cast(schema)
        except FileNotFoundError:
            raise _PartGone(path) from None
        except (pa.ArrowException, OSError, ValueError, KeyError) as exc:
            raise DamagedStateError(
                f"{path} is damaged ({type(exc).__name__}); run `emilia-pipe repair {self.out}`: it sets the part "
                "aside and the sources it held are done again by the next run") from None
        return t.select(columns) if columns else t

    def _paired(self, sources_part: Path) -> bool:
        """Whether a sources part's clips part is there. Compaction removes a sources part before its clips
        part, so a clips part missing beside a sources part that is still there is real damage."""
        if self.partner(sources_part).exists():
            return True
        if not sources_part.exists():
            raise _PartGone(sources_part)
        return False

    def _snapshot(self, read):
        for _ in range(20):
            try:
                return read()
            except _PartGone:
                continue
        return read()

    def plan(self, columns: Optional[list[str]] = None):
        return self._snapshot(lambda: self._read(self._parts("plan"), PLAN_SCHEMA, columns).to_pandas())

    def sources(self, columns: Optional[list[str]] = None, indices: Optional[Collection[int]] = None):
        """Committed sources (status ``done``, ``duplicate`` or ``skipped``), one row per index, in index order
        (with the ``index`` column whatever ``columns`` asks for); only those in ``indices`` when given (a
        ``range`` reads only the buckets it spans). A source whose clips part is gone is not committed: it
        is pending again. Reads the sources parts only (a few columns of one row per source)."""
        return self._snapshot(lambda: self._sources(columns, indices)[0])

    def incomplete(self) -> list[int]:
        """Sources whose sources row is committed but whose clips part is missing (set aside, deleted)."""
        return self._snapshot(lambda: self._sources(["index"])[1])

    def _sources(self, columns: Optional[list[str]], indices: Optional[Collection[int]] = None):
        cols = None if columns is None else list(dict.fromkeys(["index", "status", "clips", *columns]))
        tables = []
        for part in _spanning(self.source_parts(), indices):
            t = _only(self._read_part(part, SOURCE_SCHEMA, cols), "index", indices)
            tables.append(t.append_column("_paired", pa.array(np.full(t.num_rows, self._paired(part)))))
        schema = (SOURCE_SCHEMA if cols is None else pa.schema([SOURCE_SCHEMA.field(c) for c in cols]))
        df = (pa.concat_tables(tables) if tables else schema.append(pa.field("_paired", pa.bool_())).empty_table()).to_pandas()
        df = df.drop_duplicates("index", keep="last")
        short = (df["status"] == "done") & (df["clips"].fillna(0).astype("int64") > 0) & ~df["_paired"].astype(bool)
        missing = sorted(df.loc[short, "index"].astype(int).tolist())
        df = df[~short].drop(columns="_paired").sort_values("index", kind="stable").reset_index(drop=True)
        return (df if columns is None else df[list(dict.fromkeys(["index", *columns]))]), missing

    def clips(self, columns: Optional[list[str]] = None, indices: Optional[Collection[int]] = None):
        """Clips of committed parts only (orphan parts of a crash are ignored), one row per clip; only the
        clips of the sources in ``indices`` when given (a ``range`` reads only the buckets it spans)."""
        return self._snapshot(lambda: self._clips(columns, indices))

    def _clips(self, columns: Optional[list[str]], indices: Optional[Collection[int]] = None):
        parts = [self.partner(p) for p in _spanning(self.source_parts(), indices)]
        cols = None if columns is None else list(dict.fromkeys(["source_index", "clip_index", *columns]))
        tables = []
        for p in parts:
            try:
                tables.append(_only(self._read_part(p, clip_schema(), cols), "source_index", indices))
            except _PartGone:
                if not self.partner(p).exists():
                    raise  # compacted away meanwhile: read again
                continue  # a sources part without clips (none, or set aside): no clips to read
        schema = clip_schema() if cols is None else pa.schema([clip_schema().field(c) for c in cols])
        df = (pa.concat_tables(tables) if tables else schema.empty_table()).to_pandas()
        df = df.drop_duplicates(["source_index", "clip_index"], keep="last")
        return df.sort_values(["source_index", "clip_index"], kind="stable").reset_index(drop=True)

    def failures(self, done: Optional[Iterable[int]] = None):
        """The latest failure of each index that is not done (a later success clears a failure)."""
        df = self._snapshot(lambda: self._read(self._parts("failures"), FAILURE_SCHEMA, None).to_pandas())
        if df.empty:
            return df
        df = df.sort_values(["run", "time"], kind="stable").drop_duplicates("index", keep="last")
        if done is not None:
            df = df[~df["index"].isin(list(done))]
        return df.sort_values("index", kind="stable").reset_index(drop=True)

    def done_indices(self) -> set[int]:
        return set(self.sources(["index"])["index"].tolist())

    def committed_by(self, prefix: str) -> set[int]:
        """Indices committed by the writer parts whose names start with ``prefix`` (one writer life's
        commits), whether still in their own parts or already merged into a bucket (which keeps each row's
        ``origin``)."""
        def read():
            parts = [p for p in self._parts("sources") if self._part_id(p).startswith(prefix)]
            found = set(self._read(parts, SOURCE_SCHEMA, ["index"]).column("index").to_pylist())
            for p in self._bucket_parts("sources"):
                t = self._read_part(p, BUCKET_SOURCE_SCHEMA, ["index", "origin"])
                hit = pa.compute.starts_with(t.column("origin").fill_null(""), prefix)
                found.update(t.column("index").filter(hit).to_pylist())
            return found
        return self._snapshot(read)

    def damaged_parts(self) -> list[Path]:
        """Every part that cannot be read (for ``repair``)."""
        bad = []
        for kind, schema in (("plan", PLAN_SCHEMA), ("sources", SOURCE_SCHEMA), ("clips", clip_schema()),
                             ("failures", FAILURE_SCHEMA), ("withdrawn", WITHDRAWN_SCHEMA)):
            parts = self._parts(kind) + (self._bucket_parts(kind) if kind in ("sources", "clips") else [])
            for p in parts:
                try:
                    self._read_part(p, schema, None)
                except DamagedStateError:
                    bad.append(p)
                except _PartGone:
                    continue
        return bad

    def orphan_parts(self) -> list[Path]:
        """Clips parts whose sources part never landed (a crash between the two writes, or in a merge)."""
        return [p for p in self._parts("clips") + self._bucket_parts("clips") if not self.partner(p).exists()]

    def file_count(self) -> int:
        return sum(1 for _ in self.dir.iterdir()) if self.dir.is_dir() else 0


def _spanning(parts: list[Path], indices: Optional[Collection[int]]) -> list[Path]:
    """The parts that may hold ``indices``: a bucket part only where its span meets theirs."""
    if indices is None:
        return parts
    if not isinstance(indices, range):
        indices = sorted(indices)
    if not len(indices):
        return []
    lo, hi = indices[0], indices[-1]
    out = []
    for p in parts:
        m = _BUCKET_PART.fullmatch(p.name)
        if m is None or (int(m[2]) <= hi and int(m[3]) >= lo):
            out.append(p)
    return out


def _only(table: pa.Table, column: str, indices: Optional[Collection[int]]) -> pa.Table:
    if indices is None:
        return table
    col = table.column(column)
    if isinstance(indices, range):
        mask = pa.compute.and_(pa.compute.greater_equal(col, indices.start), pa.compute.less(col, indices.stop))
    else:
        mask = pa.compute.is_in(col, value_set=pa.array(sorted(indices), pa.int64()))
    return table.filter(mask)


class _PartGone(Exception):
    """A part listed a moment ago is gone (a compaction merged it): list again."""


BUILD_INFO = "build.json"
BUILD_INFO_COPY = "build.json.bak"  # the same record, written just before: `repair` restores from it


def read_build_info(out_dir: str | Path) -> Optional[dict]:
    """The build's record (``OUT/.emilia/build.json``), None for a folder that is not a build."""
    path = Path(out_dir) / STATE_DIR / BUILD_INFO
    if not path.exists():
        return None
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(info, dict) or not isinstance(info.get("fingerprint"), dict) or not isinstance(
                info.get("config"), dict) or not isinstance(info.get("runs"), list):
            raise ValueError("not a build record")
    except (ValueError, UnicodeDecodeError) as exc:
        raise DamagedStateError(f"{path} is damaged ({type(exc).__name__}: {str(exc)[:120]}); run `emilia-pipe repair "
                                f"{out_dir}`: it restores the copy in {BUILD_INFO_COPY}") from None
    return info


def write_build_info(out_dir: str | Path, info: dict, tmp_dir: Optional[Path] = None) -> None:
    """The record and, first, its copy: a damaged record can be restored from the other."""
    state = Path(out_dir) / STATE_DIR
    text = json.dumps(info, indent=2, ensure_ascii=False)
    write_atomic(state / BUILD_INFO_COPY, text, tmp_dir=tmp_dir)
    write_atomic(state / BUILD_INFO, text, tmp_dir=tmp_dir)


def is_build(out_dir: str | Path) -> bool:
    return (Path(out_dir) / STATE_DIR / "build.json").exists()
