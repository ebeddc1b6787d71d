"""``hf``: Parquet shards with an ``audio`` column in the Hugging Face ``Audio`` encoding.

``data/train-00000-of-00003.parquet`` ...: ``audio`` is a struct of ``bytes`` (the MP3) and ``path``
(its file name), the other columns are the manifest fields. The ``huggingface`` schema metadata declares
the features, so ``datasets.load_dataset("parquet", data_files=...)`` gives an ``Audio`` column
(decoded on access). Rows are written in small batches: memory stays flat. Why not ``datasets``' own
writer: it is no dependency of the product (the tests load the shards back with it)."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from emilia_pipe.exports.common import read_bytes

NAME = "hf"
HELP = "Hugging Face datasets: Parquet shards with an Audio column"
BATCH = 256
COLUMNS = [("id", pa.string()), ("text", pa.string()), ("duration", pa.float64()), ("speaker", pa.string()),
           ("language", pa.string()), ("dnsmos", pa.float64()), ("start", pa.float64()), ("end", pa.float64()),
           ("source", pa.string()), ("language_prob", pa.float64())]
WORD = pa.struct([("word", pa.string()), ("start", pa.float64()), ("end", pa.float64())])


def _value_feature(t: pa.DataType) -> dict:
    return {"dtype": "string" if t == pa.string() else "float64", "_type": "Value"}


def schema(sample_rate: int, words: bool) -> pa.Schema:
    fields = [pa.field("audio", pa.struct([("bytes", pa.binary()), ("path", pa.string())]))]
    fields += [pa.field(n, t) for n, t in COLUMNS]
    features = {"audio": {"sampling_rate": sample_rate, "_type": "Audio"}}
    features.update({n: _value_feature(t) for n, t in COLUMNS})
    if words:
        fields.append(pa.field("words", pa.list_(WORD)))
        # a plain JSON list is the list form both datasets 3.x and 4.x read ("_type": "List" is 4.x only, and
        # 4.x reads "Sequence" of a struct as a struct of lists)
        features["words"] = [{"word": _value_feature(pa.string()), "start": _value_feature(pa.float64()),
                              "end": _value_feature(pa.float64())}]
    meta = {"huggingface": json.dumps({"info": {"features": features}})}
    return pa.schema(fields, metadata=meta)


def export(build, dest: Path, options: dict, progress) -> dict:
    words = bool(build.config.get("transcribe", {}).get("word_timestamps"))
    sch = schema(build.sample_rate, words)
    data = dest / "data"
    data.mkdir()
    writer, shards, rows = None, [], []

    def flush():
        if rows:
            writer.write_table(pa.Table.from_pylist(rows, schema=sch))
            rows.clear()

    for n, row in enumerate(build.clips()):
        if n % options["clips_per_shard"] == 0:
            if writer is not None:
                flush()
                writer.close()
            shards.append(data / f"train-{len(shards):05d}.parquet")
            writer = pq.ParquetWriter(shards[-1], sch)
        rec = {name: row.get(name) for name, _ in COLUMNS}
        rec["audio"] = {"bytes": read_bytes(row["audio"]), "path": f"{row['id']}.mp3"}
        if words:
            rec["words"] = row.get("words") or []
        rows.append(rec)
        if len(rows) >= BATCH:
            flush()
        progress.step()
    if writer is not None:
        flush()
        writer.close()
    for i, path in enumerate(shards):  # the Hub's shard names need the count, known only now
        path.rename(data / f"train-{i:05d}-of-{len(shards):05d}.parquet")
    return {"clips": progress.done, "shards": len(shards)}
