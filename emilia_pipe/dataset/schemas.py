"""The ledger's Parquet schemas: one row per clip, per source, per failure, per planned input, per
withdrawn source; and the extra columns a bucket's sources part keeps."""
from __future__ import annotations

import dataclasses

import pyarrow as pa


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



# a bucket's sources part keeps, per row, the writer part that committed it (exactly-once checks read it)
# and how many times writers committed it (more than once: a redo after a lost writer or a crash)
BUCKET_SOURCE_SCHEMA = SOURCE_SCHEMA.append(pa.field("origin", pa.string())).append(pa.field("commits", pa.int64()))
