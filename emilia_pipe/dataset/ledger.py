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
- ``tmp/``: temporary files on the same filesystem as the output; emptied when a run starts.
"""
from __future__ import annotations

import dataclasses
import json
import secrets
from pathlib import Path
from typing import Iterable, Optional

import pyarrow as pa
import pyarrow.compute  # noqa: F401 - pa.compute
import pyarrow.parquet as pq

from emilia_pipe.dataset.errors import DamagedStateError
from emilia_pipe.records import STATE_DIR
from emilia_pipe.runtime.files import write_atomic, write_table_atomic

FORMAT_VERSION = 2


# --- schemas -------------------------------------------------------------------------------------

def _arrow_type(annotation: str) -> pa.DataType:
    a = annotation.replace("Optional[", "").rstrip("]")
    if a.startswith("list"):
        return pa.list_(pa.string())
    return {"float": pa.float64(), "int": pa.int64(), "bool": pa.bool_(), "str": pa.string()}.get(a, pa.string())


# word timings of a clip (transcribe.word_timestamps): seconds from the clip's start
WORDS_TYPE = pa.list_(pa.struct([("word", pa.string()), ("start", pa.float64()), ("end", pa.float64())]))


def clip_schema() -> pa.Schema:
    """One row per clip: every scalar field of :class:`~emilia_pipe.records.Clip` plus its source's index."""
    from emilia_pipe.records import Clip

    hints = {f.name: f.type if isinstance(f.type, str) else f.type.__name__ for f in dataclasses.fields(Clip)}
    fields = [pa.field("source_index", pa.int64()), pa.field("clip_index", pa.int64())]
    for name, ann in hints.items():
        if name in ("audio", "audio_16k", "index", "source_index", "kept", "reasons"):
            continue
        if name == "words":
            fields.append(pa.field(name, WORDS_TYPE))
            continue
        fields.append(pa.field(name, _arrow_type(ann)))
    fields.append(pa.field("duration", pa.float64()))
    return pa.schema(fields)


SOURCE_SCHEMA = pa.schema([
    ("index", pa.int64()), ("status", pa.string()), ("duplicate_of", pa.int64()),
    ("source_id", pa.string()), ("path", pa.string()), ("sha256", pa.string()),
    ("duration", pa.float64()), ("orig_sample_rate", pa.int64()), ("orig_channels", pa.int64()),
    ("codec", pa.string()), ("container", pa.string()), ("gain_db", pa.float64()), ("separated", pa.bool_()),
    ("speech_turn_seconds", pa.float64()), ("primary_language", pa.string()), ("clips", pa.int64()),
    ("turns", pa.string()), ("dropped_segments", pa.string()), ("timings", pa.string()), ("run", pa.int64()),
    ("decode_errors", pa.string()), ("nonfinite_samples", pa.int64()),
    ("note", pa.string()),  # why a source is skipped (status "skipped": an input that is not an audio file)
    ("speech_yield", pa.string()),
    ("audio_stream", pa.int64()), ("audio_streams", pa.int64()),  # the input's audio stream used, of how many
])
FAILURE_SCHEMA = pa.schema([
    ("index", pa.int64()), ("path", pa.string()), ("stage", pa.string()), ("error", pa.string()),
    ("error_type", pa.string()), ("run", pa.int64()), ("time", pa.float64()),
])
PLAN_SCHEMA = pa.schema([
    ("index", pa.int64()), ("path", pa.string()), ("size", pa.int64()), ("mtime_ns", pa.int64()), ("run", pa.int64()),
    # the rest of a local input's identity (stat): a change of any of them has the file hashed again
    ("ctime_ns", pa.int64()), ("inode", pa.int64()), ("device", pa.int64()),
])
# sources taken out of the published tree for good (their input changed, or is gone and the user dropped it);
# their rows stay in the ledger's history
WITHDRAWN_SCHEMA = pa.schema([
    ("index", pa.int64()), ("reason", pa.string()), ("run", pa.int64()), ("time", pa.float64()),
])
SOURCE_JSON_COLUMNS = ("turns", "dropped_segments", "timings", "decode_errors", "speech_yield")


def json_column_default(key: str):
    """The value of a JSON column that a source (or a part written by an older version) lacks."""
    return {} if key in ("timings", "speech_yield") else []


def table_from_rows(rows: list[dict], schema: pa.Schema) -> pa.Table:
    cols = {f.name: [r.get(f.name) for r in rows] for f in schema}
    return pa.Table.from_pydict(cols, schema=schema)


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
                t = self._read(self._parts(kind), schema, [col])
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
        if not self.dir.is_dir():
            return []
        return sorted(p for p in self.dir.glob(f"{kind}-*.parquet"))

    @staticmethod
    def _part_id(path: Path) -> str:
        return path.stem.split("-", 1)[1]

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

    def _snapshot(self, read):
        for _ in range(20):
            try:
                return read()
            except _PartGone:
                continue
        return read()

    def plan(self, columns: Optional[list[str]] = None):
        return self._snapshot(lambda: self._read(self._parts("plan"), PLAN_SCHEMA, columns).to_pandas())

    def sources(self, columns: Optional[list[str]] = None):
        """Committed sources (status ``done``, ``duplicate`` or ``skipped``), one row per index, in index order
        (with the ``index`` column whatever ``columns`` asks for). A source whose clips are not all in the
        ledger (its clips part is gone) is not committed: it is pending again."""
        return self._snapshot(lambda: self._sources(columns)[0])

    def incomplete(self) -> list[int]:
        """Sources whose sources row is committed but whose clips part is missing (set aside, deleted)."""
        return self._snapshot(lambda: self._sources(["index"])[1])

    def _sources(self, columns: Optional[list[str]]):
        cols = None if columns is None else list(dict.fromkeys(["index", "status", "clips", *columns]))
        df = self._read(self._parts("sources"), SOURCE_SCHEMA, cols).to_pandas()
        df = df.drop_duplicates("index", keep="last")
        have = self._clips(["source_index", "clip_index"])["source_index"].value_counts()
        want = df["clips"].fillna(0).astype("int64")
        short = (df["status"] == "done") & (want > df["index"].map(have).fillna(0).astype("int64"))
        missing = sorted(df.loc[short, "index"].astype(int).tolist())
        df = df[~short].sort_values("index", kind="stable").reset_index(drop=True)
        return (df if columns is None else df[list(dict.fromkeys(["index", *columns]))]), missing

    def clips(self, columns: Optional[list[str]] = None):
        """Clips of committed parts only (orphan parts of a crash are ignored), one row per clip."""
        return self._snapshot(lambda: self._clips(columns))

    def _clips(self, columns: Optional[list[str]]):
        committed = {self._part_id(p) for p in self._parts("sources")}
        parts = [p for p in self._parts("clips") if self._part_id(p) in committed]
        cols = None if columns is None else list(dict.fromkeys(["source_index", "clip_index", *columns]))
        df = self._read(parts, clip_schema(), cols).to_pandas()
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
        """Indices in the sources parts whose names start with ``prefix`` (one writer life's commits)."""
        parts = [p for p in self._parts("sources") if self._part_id(p).startswith(prefix)]
        return set(self._snapshot(lambda: self._read(parts, SOURCE_SCHEMA, ["index"])).column("index").to_pylist())

    def damaged_parts(self) -> list[Path]:
        """Every part that cannot be read (for ``repair``)."""
        bad = []
        for kind, schema in (("plan", PLAN_SCHEMA), ("sources", SOURCE_SCHEMA), ("clips", clip_schema()),
                             ("failures", FAILURE_SCHEMA), ("withdrawn", WITHDRAWN_SCHEMA)):
            for p in self._parts(kind):
                try:
                    self._read_part(p, schema, None)
                except DamagedStateError:
                    bad.append(p)
                except _PartGone:
                    continue
        return bad

    def orphan_parts(self) -> list[Path]:
        """Clips parts whose sources part never landed (a crash between the two writes)."""
        committed = {self._part_id(p) for p in self._parts("sources")}
        return [p for p in self._parts("clips") if self._part_id(p) not in committed]

    def compact(self, run: int, min_parts: int = 8) -> None:
        """Merge many small parts into one per kind (new part first, then the old ones go: a crash in
        between leaves duplicate rows, which reading deduplicates)."""
        for p in self.orphan_parts():
            p.unlink(missing_ok=True)
        old_sources = self._parts("sources")
        if len(old_sources) >= min_parts:
            part = part_name(run, "c")
            clips, sources = self.clips(), self.sources()
            old_clips = self._parts("clips")
            write_table_atomic(self.dir / f"clips-{part}.parquet",
                               pa.Table.from_pandas(clips, schema=clip_schema(), preserve_index=False), self.tmp,
                               exclusive=True)
            write_table_atomic(self.dir / f"sources-{part}.parquet",
                               pa.Table.from_pandas(sources, schema=SOURCE_SCHEMA, preserve_index=False), self.tmp,
                               exclusive=True)
            for p in old_sources + old_clips:  # sources parts first: their clips stop counting with them
                p.unlink(missing_ok=True)
        old_failures = self._parts("failures")
        if len(old_failures) >= min_parts:
            table = self._read(old_failures, FAILURE_SCHEMA, None)
            write_table_atomic(self.dir / f"failures-{part_name(run, 'c')}.parquet", table, self.tmp, exclusive=True)
            for p in old_failures:
                p.unlink(missing_ok=True)


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
