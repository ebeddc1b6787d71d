"""Ledger compaction: the writers' small parts merged into one pair of parts per bucket.

Each bucket (``width`` sources, :func:`~emilia_pipe.dataset.ledger.bucket_width`) touched is rewritten as
one clips part and one sources part, so the ledger holds about two files per bucket whatever the number of
commits, and every pass can read a build bucket by bucket. It runs under the build's lock (one compaction
at a time), also while writers commit: it takes only the parts committed when it starts. New parts are
written before old ones go, sources parts before their clips parts, so a kill at any point leaves either
duplicate rows (reading deduplicates them; the next compaction finishes the job) or nothing lost."""
from __future__ import annotations

import secrets
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from emilia_pipe.dataset.ledger import (
    BUCKET_SOURCE_SCHEMA,
    FAILURE_SCHEMA,
    SOURCE_SCHEMA,
    Ledger,
    _only,
    clip_schema,
    part_name,
)
from emilia_pipe.runtime.files import write_table_atomic


def compact(ledger: Ledger, width: int, min_parts: int = 1, final: bool = True, group_rows: int = 500_000) -> int:
    """Merge the writers' sources parts (and their clips parts) into buckets once at least ``min_parts`` are
    there, ``group_rows`` clip rows at a time. ``final`` (no writer is running): clips parts with no
    sources part (a crash between a writer's two writes) are removed too. Returns the parts merged."""
    if final:
        for p in ledger.orphan_parts():
            p.unlink(missing_ok=True)
    fresh = ledger._parts("sources")
    merged = 0
    if fresh and len(fresh) >= min_parts:
        group: list[Path] = []
        rows = 0
        for part in fresh:
            group.append(part)
            rows += _row_count(ledger.partner(part))
            if rows >= group_rows:
                _merge(ledger, group, width)
                group, rows = [], 0
        if group:
            _merge(ledger, group, width)
        merged = len(fresh)
    old_failures = ledger._parts("failures")
    if len(old_failures) >= 8:
        table = ledger._read(old_failures, FAILURE_SCHEMA, None)
        write_table_atomic(ledger.dir / f"failures-{part_name(0, 'c')}.parquet", table, ledger.tmp, exclusive=True)
        for p in old_failures:
            p.unlink(missing_ok=True)
    return merged


def _merge(ledger: Ledger, fresh: list[Path], width: int) -> None:
    sources, clips = _tagged(ledger, fresh, from_writers=True)
    bucket_of = pc.divide(sources.column("index"), width)
    for b in sorted(set(bucket_of.to_pylist())):
        lo, hi = b * width, b * width + width - 1
        old = ledger._bucket_parts("sources", lo)
        old_sources, old_clips = _tagged(ledger, old, from_writers=False)
        s = pa.concat_tables([old_sources, sources.filter(pc.equal(bucket_of, b))])
        c = pa.concat_tables([old_clips, _only(clips, "source_index", range(lo, hi + 1))])
        s, c = _winners(s, c)
        seq = 1 + max([int(p.name.split("-")[3]) for p in old] or [0])
        name = f"{lo:010d}-{hi:010d}-{seq:06d}-{secrets.token_hex(6)}"
        if c.num_rows:
            write_table_atomic(ledger.dir / f"bclips-{name}.parquet", c.select(clip_schema().names), ledger.tmp,
                               exclusive=True)
        write_table_atomic(ledger.dir / f"bsources-{name}.parquet", s.select(BUCKET_SOURCE_SCHEMA.names),
                           ledger.tmp, exclusive=True)
        _remove(ledger, old)
    _remove(ledger, fresh)


def _remove(ledger: Ledger, sources_parts: list[Path]) -> None:
    for p in sources_parts:  # sources parts first: their clips stop counting with them
        p.unlink(missing_ok=True)
    for p in sources_parts:
        ledger.partner(p).unlink(missing_ok=True)


def _tagged(ledger: Ledger, parts: list[Path], from_writers: bool) -> tuple[pa.Table, pa.Table]:
    """Sources rows (with ``origin``: the writer part that committed them, ``commits``, ``_part`` and
    ``_paired``) and clips rows (with ``_part``) of the given sources parts and their clips parts."""
    s_tables, c_tables = [], []
    for part in parts:
        pid = ledger._part_id(part)
        t = ledger._read_part(part, SOURCE_SCHEMA if from_writers else BUCKET_SOURCE_SCHEMA, None)
        if from_writers:
            t = t.append_column("origin", pa.array([pid] * t.num_rows, pa.string()))
            t = t.append_column("commits", pa.array(np.ones(t.num_rows, np.int64)))
        paired = ledger.partner(part).exists()
        t = t.append_column("_part", pa.array([pid] * t.num_rows, pa.string()))
        s_tables.append(t.append_column("_paired", pa.array(np.full(t.num_rows, paired))))
        if paired:
            c = ledger._read_part(ledger.partner(part), clip_schema(), None)
            c_tables.append(c.append_column("_part", pa.array([pid] * c.num_rows, pa.string())))
    s_schema = BUCKET_SOURCE_SCHEMA.append(pa.field("_part", pa.string())).append(pa.field("_paired", pa.bool_()))
    c_schema = clip_schema().append(pa.field("_part", pa.string()))
    return (pa.concat_tables(s_tables) if s_tables else s_schema.empty_table(),
            pa.concat_tables(c_tables) if c_tables else c_schema.empty_table())


def _winners(sources: pa.Table, clips: pa.Table) -> tuple[pa.Table, pa.Table]:
    """The last row of each source, in index order, counting its commits, and exactly the clips committed
    with it. A sources row whose clips part is gone is left out: that source is pending again."""
    df = sources.select(["index", "status", "clips", "_part", "_paired", "commits"]).to_pandas()
    df["_row"] = np.arange(len(df))
    lost = (df["status"] == "done") & (df["clips"].fillna(0) > 0) & ~df["_paired"].astype(bool)
    df = df[~lost]
    commits = df.groupby("index")["commits"].sum(min_count=1).fillna(1).astype("int64")
    df = df.drop_duplicates("index", keep="last").sort_values("index")
    sources = sources.take(pa.array(df["_row"].to_numpy()))
    sources = sources.set_column(sources.schema.get_field_index("commits"), "commits",
                                 pa.array(df["index"].map(commits).to_numpy(), pa.int64()))
    part_of = dict(zip(df["index"].tolist(), df["_part"].tolist()))
    if clips.num_rows:
        want = pd.Series(clips.column("source_index").to_numpy()).map(part_of).to_numpy(dtype=object)
        keep = np.asarray(clips.column("_part").to_pylist(), dtype=object) == want
        clips = clips.filter(pa.array(keep)).sort_by([("source_index", "ascending"), ("clip_index", "ascending")])
    return sources, clips


def _row_count(path: Path) -> int:
    try:
        return pq.ParquetFile(path).metadata.num_rows
    except (FileNotFoundError, OSError, pa.ArrowException):
        return 0
