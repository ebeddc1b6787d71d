"""One build folder over its life: lock, fingerprint check, plan, failure records, compaction.

The plan gives every input a fixed place (its index) the first time a build sees it: inputs are sorted,
so the same inputs get the same places whatever the order they are given in; inputs added by a later
run go after the existing ones. An input is recognised on resume by its path, size and modification
time, without reading it again. A file whose size or time changed keeps its place if it was never done
(e.g. a broken file that was replaced), and gets a new place if its old content is already published."""
from __future__ import annotations

import json
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Callable

from emilia_pipe.dataset.fingerprint import BuildMismatchError, fingerprint, fingerprint_diff, fingerprint_hash
from emilia_pipe.dataset.layout import language_dirs, place, source_dirs
from emilia_pipe.dataset.ledger import FORMAT_VERSION, Ledger, part_name, read_build_info
from emilia_pipe.dataset.lock import BuildLock
from emilia_pipe.media.disk import remove_spilled
from emilia_pipe.media.inputs import InputProblem, input_stat
from emilia_pipe.records import STATE_DIR, Failure, FileTask
from emilia_pipe.runtime.files import write_atomic

# settings that rename clips: never changeable on an existing build, even when asked
FROZEN = ("output.sources_per_shard",)


class Build:
    def __init__(self, out_dir: str | Path, config, allow_config_change: bool = False,
                 log: Callable[[str], None] = lambda m: print(m, file=sys.stderr)):
        self.out = Path(out_dir)
        self.cfg = config
        self.allow = allow_config_change
        self.log = log
        self.ledger = Ledger(self.out)
        self.lock = BuildLock(self.out, "run")
        self.run = 0
        self._failures: list[dict] = []
        self._paths: dict[int, str] = {}
        self.input_failures = 0  # inputs recorded as failed when planned (FIFOs, dangling links...)

    # --- open / close ------------------------------------------------------------------------
    def __enter__(self) -> "Build":
        self.out.mkdir(parents=True, exist_ok=True)
        self.lock.__enter__()
        try:
            self._open()
        except BaseException:
            self.lock.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.lock.__exit__()

    def _open(self) -> None:
        self.ledger.ensure()
        shutil.rmtree(self.ledger.tmp, ignore_errors=True)  # temporary files of a killed run
        self.ledger.tmp.mkdir(parents=True, exist_ok=True)
        fp = fingerprint(self.cfg)
        info = read_build_info(self.out)
        changed: list[str] = []
        if info is not None:
            changed = fingerprint_diff(info["fingerprint"], fp)
            frozen = [d for d in changed if d.split(":")[0] in FROZEN]
            if frozen or (changed and not self.allow):
                raise BuildMismatchError(
                    f"{self.out} was built with other settings or model versions:\n  " + "\n  ".join(changed)
                    + ("\n" + ", ".join(FROZEN) + " can never change in a build (it fixes the clip ids)." if frozen else
                       "\nUse the same settings, a new output folder, or --allow-config-change to continue anyway "
                       "(clips already made keep the settings they were made with)."))
        runs = info["runs"] if info else []
        self.run = len(runs)
        runs.append({"run": self.run, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": socket.gethostname(),
                     "argv": sys.argv, "fingerprint": fingerprint_hash(fp), "changed": changed})
        info = {"format": FORMAT_VERSION, "fingerprint": fp, "config": self.cfg.model_dump(mode="json"), "runs": runs}
        write_atomic(self.out / STATE_DIR / "build.json", json.dumps(info, indent=2, ensure_ascii=False),
                     tmp_dir=self.ledger.tmp)
        if changed:
            self.log("continuing with changed settings (--allow-config-change):\n  " + "\n  ".join(changed))

    # --- plan ----------------------------------------------------------------------------------
    def plan(self, files: list[str], problems: list[InputProblem] = ()) -> tuple[list[FileTask], int]:
        """Places for this run's inputs; returns the entries still to do and how many are done. Inputs
        that are not audio files (``problems``) get a place too and are recorded at once, stage
        ``input``: a failure, or a source skipped with its reason. They are never opened."""
        plan = self.ledger.plan()
        known: dict[str, tuple[int, int, int]] = {}
        for idx, path, size, mtime in zip(plan["index"], plan["path"], plan["size"], plan["mtime_ns"]):
            known[path] = (int(idx), int(size), int(mtime))  # later entries of a path win
        done = self.ledger.done_indices()
        next_index = int(plan["index"].max()) + 1 if len(plan) else 0
        new_rows, entries, skips, n_done = [], [], [], 0
        problem_of = {p.path: p for p in problems}
        for path in sorted({*map(str, files), *problem_of}):
            size, mtime = input_stat(path)
            prev = known.get(path)
            if prev is not None and prev[1:] == (size, mtime):
                index = prev[0]
            elif prev is not None and prev[0] not in done:  # changed before it was ever done: same place
                index = prev[0]
                new_rows.append({"index": index, "path": path, "size": size, "mtime_ns": mtime, "run": self.run})
                known[path] = (index, size, mtime)
            else:
                index = next_index
                next_index += 1
                new_rows.append({"index": index, "path": path, "size": size, "mtime_ns": mtime, "run": self.run})
                known[path] = (index, size, mtime)
            self._paths[index] = path
            problem = problem_of.get(path)
            if index in done:
                n_done += problem is None
            elif problem is None:
                entries.append(FileTask(index, path, str(self.ledger.tmp)))
            elif problem.failed:
                self.record_failure(Failure(path, "input", problem.reason, "InputError"), index)
                self.input_failures += 1
            else:
                skips.append({"index": index, "status": "skipped", "path": path, "note": problem.reason,
                              "run": self.run})
        self.ledger.append_plan(self.run, new_rows)
        if skips:  # recorded like a finished source, so it is not planned again until it changes
            self.ledger.commit(part_name(self.run, "i"), skips, [])
        self.flush_failures()
        return entries, n_done

    def path_of(self, index: int) -> str:
        return self._paths.get(index, "")

    def shas_done(self) -> dict[str, int]:
        src = self.ledger.sources(["sha256", "status"])
        src = src[src["status"] == "done"]
        out: dict[str, int] = {}
        for idx, sha in zip(src["index"].tolist(), src["sha256"].tolist()):
            out.setdefault(sha, int(idx))
        return out

    # --- failures ------------------------------------------------------------------------------
    def record_failure(self, failure: Failure, index: int) -> None:
        self._failures.append({**failure.to_record(), "index": index, "run": self.run, "time": time.time()})
        if len(self._failures) >= 256:
            self.flush_failures()

    def flush_failures(self) -> None:
        if self._failures:
            self.ledger.record_failures(part_name(self.run, "d"), self._failures)
            self._failures = []

    # --- after the run -------------------------------------------------------------------------
    def compact(self) -> None:
        self.ledger.compact(self.run)
        self.remove_orphans()

    def discard_audio(self, index: int) -> None:
        """A source that failed: remove its audio on disk (a long input's), if any is left."""
        remove_spilled(self.ledger.tmp, index)

    def remove_orphans(self) -> None:
        """MP3 folders of sources that are not done (a killed attempt, a failure after writing), and any
        long input's audio left in the temporary folder."""
        for path in self.ledger.tmp.glob("audio-*.f32"):
            path.unlink(missing_ok=True)
        plan = self.ledger.plan(["index"])
        done = self.ledger.done_indices()
        per_shard = self.cfg.output.sources_per_shard
        langs = language_dirs(self.out)
        for idx in plan["index"].tolist():
            if idx not in done:
                for d in source_dirs(self.out, *place(int(idx), per_shard), langs):
                    shutil.rmtree(d, ignore_errors=True)


def status(out_dir: str | Path) -> dict:
    """Done / failed / pending sources and hours of a build (reads only the ledger)."""
    ledger = Ledger(out_dir)
    plan = ledger.plan(["index", "path", "size"]).drop_duplicates("index", keep="last")
    sources = ledger.sources(["status", "duration"])
    done_idx = set(sources["index"].tolist())
    failures = ledger.failures(done=done_idx)
    failed_idx = set(failures["index"].tolist())
    pending = plan[~plan["index"].isin(done_idx | failed_idx)]
    info = read_build_info(out_dir) or {}
    ok = sources[sources["status"] == "done"]
    return {
        "sources": {"planned": int(len(plan)), "done": int(len(ok)),
                    "skipped": int((sources["status"] != "done").sum()),
                    "failed": int(len(failed_idx)), "pending": int(len(pending))},
        "hours_done": round(float(ok["duration"].sum()) / 3600, 6),
        "pending_bytes": int(pending["size"].clip(lower=0).sum()),
        "failed_by_stage": {str(k): int(v) for k, v in failures["stage"].value_counts().items()} if len(failures) else {},
        "runs": len(info.get("runs", [])),
    }
