"""One build folder over its life: lock, fingerprint check, plan, failure records, compaction.

Where each input goes (its place in the plan, whether it changed) is decided by
:mod:`emilia_pipe.dataset.planning`."""
from __future__ import annotations

import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Callable, Optional

from emilia_pipe.config import FilterConfig
from emilia_pipe.dataset.compaction import compact
from emilia_pipe.dataset.fingerprint import BuildMismatchError, fingerprint, fingerprint_diff, fingerprint_hash
from emilia_pipe.dataset.generation import apply as apply_publish
from emilia_pipe.dataset.generation import current as current_publish
from emilia_pipe.dataset.layout import held_root, language_dirs, place, remove_source_audio
from emilia_pipe.dataset.ledger import (
    FORMAT_VERSION,
    Ledger,
    bucket_width,
    part_name,
    read_build_info,
    write_build_info,
)
from emilia_pipe.dataset.lock import BuildLock
from emilia_pipe.dataset.planning import gone, latest_plan, place_inputs
from emilia_pipe.media.disk import remove_spilled
from emilia_pipe.media.inputs import InputProblem
from emilia_pipe.records import Failure, FileTask, utf8_text

# settings that rename clips: never changeable on an existing build, even when asked
FROZEN = ("output.sources_per_shard",)


class Build:
    """``filter_given``: the run was given filter settings (on the command line or in a config file); else
    it keeps the filter settings in force in the build (set by its last ``refilter``, or by the last run
    given filter settings), so a run never undoes a refilter. ``cfg`` is the config the run publishes with;
    ``stage_cfg`` the one its stages and writers run with: the same, but with the filter settings the score
    stage reads fixed by the build's first run (so every clip of a build is scored by one rule).
    ``resolved``: what the device settings resolve to where the stages run (runners.choice.resolve_numerics)."""

    def __init__(self, out_dir: str | Path, config, allow_config_change: bool = False,
                 log: Callable[[str], None] = lambda m: print(m, file=sys.stderr), filter_given: bool = False,
                 resolved: Optional[dict] = None):
        self.out = Path(out_dir)
        self.cfg = self.stage_cfg = config
        self.resolved = resolved or {}
        self.allow = allow_config_change
        self.filter_given = filter_given
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
        apply_publish(self.out)  # a publish a kill interrupted is completed before anything else
        info = read_build_info(self.out)
        filter_record = self._filter_in_force(info)
        scoring = self._scoring_filter(info)
        fp = fingerprint(self.stage_cfg, self.resolved)
        changed: list[str] = []
        if info is not None:
            changed = fingerprint_diff(info["fingerprint"], fp)
            if info.get("repaired"):  # rebuilt from given settings: what it could not know is this run's
                changed = [d for d in changed if d.split(":")[0] in info["fingerprint"]]
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
                     "argv": [utf8_text(a) for a in sys.argv], "fingerprint": fingerprint_hash(fp), "changed": changed})
        info = {"format": FORMAT_VERSION, "fingerprint": fp, "config": self.cfg.model_dump(mode="json"), "runs": runs,
                "filter": filter_record, "scoring_filter": scoring}
        write_build_info(self.out, info, tmp_dir=self.ledger.tmp)
        if changed:
            self.log("continuing with changed settings (--allow-config-change):\n  " + "\n  ".join(changed))

    def _filter_in_force(self, info: Optional[dict]) -> dict:
        """Settle the filter settings of this run (``self.cfg.filter``); returns build.json's record of them."""
        mine = self.cfg.filter.model_dump(mode="json")
        record = (info or {}).get("filter") or {}
        stored = record.get("settings") or ((info or {}).get("config") or {}).get("filter")
        if stored is None or stored == mine:
            return record if stored == mine and record else {"settings": mine, "set_by": f"run {self._next_run(info)}"}
        diff = fingerprint_diff({f"filter.{k}": v for k, v in stored.items()}, {f"filter.{k}": v for k, v in mine.items()})
        set_by = record.get("set_by", "an earlier run")
        if self.filter_given:
            self.log(f"filter settings given to this run replace the build's (set by {set_by}):\n  " + "\n  ".join(diff))
            return {"settings": mine, "set_by": f"run {self._next_run(info)}"}
        self.log(f"filter settings: keeping the build's (set by {set_by}) over this run's defaults:\n  "
                 + "\n  ".join(d.replace("(this run)", "(default)") for d in diff)
                 + "\n  give filter settings (--set filter.KEY=VALUE, or a filter: section in -c FILE) to change them")
        self.cfg = self.cfg.model_copy(update={"filter": FilterConfig.model_validate(stored)})
        return {**record, "settings": stored}

    def _scoring_filter(self, info: Optional[dict]) -> dict:
        """The filter settings the score stage reads (``stage_cfg.filter``): the build's first run's. Filter
        settings given to a later run replace them only with --allow-config-change (the fingerprint names it)."""
        mine = self.cfg.filter.model_dump(mode="json")
        pinned = (info or {}).get("scoring_filter") or ((info or {}).get("config") or {}).get("filter") or mine
        if pinned != mine and self.filter_given:
            if self.allow:
                pinned = mine
            else:
                self.log("scoring keeps the filter settings of the build's first run (which clips score.skip_rejected "
                         "leaves unscored, where short clips are refined); these apply to what is published. "
                         "--allow-config-change scores new clips with them too")
        self.stage_cfg = self.cfg.model_copy(update={"filter": FilterConfig.model_validate(pinned)})
        return pinned

    @staticmethod
    def _next_run(info: Optional[dict]) -> int:
        return len((info or {}).get("runs", []))

    # --- plan ----------------------------------------------------------------------------------
    def plan(self, files: list[str], problems: list[InputProblem] = ()) -> tuple[list[FileTask], int]:
        """Places for this run's inputs (:mod:`emilia_pipe.dataset.planning`); returns the entries still to
        do and how many are done. Inputs that are not audio files (``problems``) get a place too and are
        recorded at once, stage ``input``: a failure, or a source skipped with its reason. They are never
        opened."""
        problem_of = {p.path: p for p in problems}
        placed = place_inputs(self.ledger, sorted({*map(str, files), *problem_of}), self.run, self.log,
                              metadata_threads=self.cfg.inputs.metadata_threads)
        incomplete = self.ledger.incomplete()
        if incomplete:
            self.log(f"{len(incomplete)} source(s) have lost their clips part (deleted or set aside): done again")
        self.ledger.withdraw(self.run, placed.withdrawn)
        self.ledger.append_plan(self.run, placed.rows)
        entries, skips, n_done = [], [], 0
        tmp = str(self.ledger.tmp)  # one string for every task
        for path, index in placed.index.items():
            self._paths[index] = path
            problem = problem_of.get(path)
            if index in placed.done:
                n_done += problem is None
            elif problem is None:
                entries.append(FileTask(index, path, tmp))
            elif problem.failed:
                self.record_failure(Failure(path, "input", problem.reason, "InputError"), index)
                self.input_failures += 1
            else:
                skips.append({"index": index, "status": "skipped", "path": path, "note": problem.reason,
                              "run": self.run})
        if skips:  # recorded like a finished source, so it is not planned again until it changes
            self.ledger.commit(part_name(self.run, "i"), skips, [])
        self.flush_failures()
        return entries, n_done

    def path_of(self, index: int) -> str:
        return self._paths.get(index, "")

    def shas_done(self) -> dict[str, int]:
        src = self.ledger.sources(["sha256", "status"])
        src = src[(src["status"] == "done") & ~src["index"].isin(list(self.ledger.withdrawn()))]
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
        """After the run (no writer left): every writer part into its bucket, and leftovers removed."""
        compact(self.ledger, bucket_width(self.cfg.output.sources_per_shard))
        self.remove_orphans()

    def compact_running(self, min_parts: int = 64) -> int:
        """While writers commit: merge their parts into buckets once ``min_parts`` have piled up, so the
        ledger's file count stays near two per bucket however long the run (the driver holds the lock)."""
        return compact(self.ledger, bucket_width(self.cfg.output.sources_per_shard), min_parts=min_parts,
                       final=False)

    def discard_audio(self, index: int) -> None:
        """A source that failed: remove its audio on disk (a long input's), if any is left."""
        remove_spilled(self.ledger.tmp, index)

    def remove_orphans(self) -> None:
        """Held MP3s of sources that are not done (a killed attempt, a failure after writing), and any
        long input's audio left in the temporary folder."""
        for path in self.ledger.tmp.glob("audio-*.f32"):
            path.unlink(missing_ok=True)
        shutil.rmtree(self.ledger.tmp / "writer-lives", ignore_errors=True)  # the writers of this run are gone
        plan = self.ledger.plan(["index"])
        done = self.ledger.done_indices()
        per_shard = self.cfg.output.sources_per_shard
        held = held_root(self.out)
        langs = language_dirs(held)
        for idx in plan["index"].tolist():
            if idx not in done:
                remove_source_audio(held, *place(int(idx), per_shard), langs)


def status(out_dir: str | Path) -> dict:
    """Done / failed / pending / missing sources and hours of a build (reads the ledger; stats the inputs
    that are not done). Reads a consistent snapshot without the lock, so it works while a run holds it."""
    ledger = Ledger(out_dir)
    info = read_build_info(out_dir) or {}
    plan = latest_plan(ledger)
    sources = ledger.sources(["status", "duration"])
    withdrawn = set(ledger.withdrawn())
    settled = set(sources["index"].tolist())
    failures = ledger.failures(done=settled)
    failed_idx = set(failures["index"].tolist())
    open_plan = plan[~plan["index"].isin(settled | failed_idx | withdrawn)]
    away = gone(open_plan["path"].tolist())
    missing = open_plan[open_plan["path"].isin(away)]
    pending = open_plan[~open_plan["path"].isin(away)]
    live = sources[~sources["index"].isin(withdrawn)]
    ok = live[live["status"] == "done"]
    generation = current_publish(out_dir)
    return {
        "sources": {"planned": int(len(set(plan["index"].tolist()) | settled)), "done": int(len(ok)),
                    "skipped": int((live["status"] != "done").sum()), "failed": int(len(failed_idx)),
                    "pending": int(len(pending)), "missing": int(len(missing)), "withdrawn": len(withdrawn)},
        "hours_done": round(float(ok["duration"].sum()) / 3600, 6),
        "pending_bytes": int(pending["size"].clip(lower=0).sum()),
        "failed_by_stage": {str(k): int(v) for k, v in failures["stage"].value_counts().items()} if len(failures) else {},
        "incomplete": len(ledger.incomplete()),
        "runs": len(info.get("runs", [])),
        "publish": {"generation": generation.number, "unfinished": generation.unfinished},
    }
