"""Exports of a finished build to the layouts training code reads.

One module per format, each with ``NAME``, ``HELP`` and ``export(build, dest, options, progress) ->
dict`` writing into ``dest`` (a staging folder, published by one rename when it returns), and, when its
files name paths, ``check_paths(build_dir, dest)`` refusing paths they cannot hold. A new format is one
module plus one line in ``FORMATS``.
"""
from __future__ import annotations

import os
from pathlib import Path

from emilia_pipe.exports import duplex, f5tts, hf, kaldi, lhotse, listfmt, text, webdataset
from emilia_pipe.exports.common import ExportError, PublishedBuild, refuse_unholdable, staging
from emilia_pipe.runtime.progress import Progress

FORMATS = [webdataset, lhotse, hf, kaldi, listfmt, f5tts, duplex, text]
BY_NAME = {m.NAME: m for m in FORMATS}


def export(out: str | Path, fmt: str, dest: str | Path, clips_per_shard: int = 2000) -> dict:
    """Export the kept clips of build ``out`` as ``fmt`` into ``dest`` (new or empty)."""
    from emilia_pipe.dataset.lock import BuildLock

    module = BY_NAME.get(fmt)
    if module is None:
        raise ExportError(f"unknown export format {fmt!r}; choose one of {', '.join(BY_NAME)}")
    if clips_per_shard < 1:
        raise ExportError(f"--clips-per-shard must be at least 1, got {clips_per_shard}")
    refuse_unholdable(Path(dest).resolve(), fmt, "destination", "", "")  # Parquet and JSON name files in UTF-8
    if hasattr(module, "check_paths"):  # before anything is read or written
        module.check_paths(Path(os.path.abspath(out)), Path(dest).resolve())
    # the lock keeps a run or refilter from rewriting the manifests while they are read; a publish that a
    # kill interrupted is completed first, so the export reads one generation
    with BuildLock(Path(os.path.abspath(out)), "export", reader=True):
        build = PublishedBuild(out)
        with staging(Path(dest)) as tmp:
            progress = Progress(f"export {fmt}", build.kept, "clips", every_s=5.0)
            stats = module.export(build, tmp, {"clips_per_shard": clips_per_shard, "dest": Path(dest).resolve()},
                                  progress)
            progress.finish()
    return stats
