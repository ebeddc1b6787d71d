"""The source writer: one finished source's MP3s and ledger rows, committed together, in the process
that holds its audio (a Ray actor or the local write lane), so audio never travels to the driver."""
from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path
from typing import Optional

from emilia_pipe.config import PipelineConfig
from emilia_pipe.dataset.layout import held_root, lang_folder, place, primary_language, remove_source_audio
from emilia_pipe.dataset.ledger import SOURCE_JSON_COLUMNS, Ledger, json_column_default
from emilia_pipe.media.disk import remove_spilled
from emilia_pipe.media.mp3 import encode_mp3
from emilia_pipe.records import ClipAudio, ClipId
from emilia_pipe.runtime import failpoints
from emilia_pipe.runtime.files import fsync_dir, write_atomic


class WriterRetiredError(RuntimeError):
    """A writer that its executor gave up on (it hung) may no longer commit."""


class SourceWriter:
    """Names, encodes and commits finished sources; one per writer process. ``slot`` (``<run>-w<i>``)
    names the writer; every life of it (a Ray actor restarted, a local writer replaced) draws its own
    ``incarnation`` id, and its ledger parts are named ``<slot>-<incarnation>-<seq>``: no two writers,
    and no two lives of one writer, ever write a part of the same name.

    Results say which life answered and which sources its commits made durable, so the driver can tell
    the sources a writer acknowledged but lost with its life (buffered, not yet committed) and redo them."""

    def __init__(self, out_dir: str | Path, config: PipelineConfig, slot: str):
        self.out = Path(out_dir)
        self.cfg = config
        self.ledger = Ledger(self.out)
        self.ledger.ensure()
        self.held = held_root(self.out)  # MP3s are published (moved to OUT/<LANG>/...) by finalize
        self.slot = slot
        self.incarnation = self._claim_life()
        self.part = f"{slot}-{self.incarnation}"
        self.retired = False
        self.seq = 0
        self.sources: list[dict] = []
        self.clips: list[dict] = []
        self.dirty_dirs: set[Path] = set()
        self.last_commit = time.monotonic()

    def _claim_life(self) -> str:
        """This life's id: its number among the lives of this slot (claimed with an exclusive create, so
        lives sort in the order they started) and a random part, e.g. ``002-9f86d081``."""
        lives = self.ledger.tmp / "writer-lives"
        lives.mkdir(parents=True, exist_ok=True)
        for n in range(1000):
            try:
                os.close(os.open(lives / f"{self.slot}.{n:03d}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                continue
            return f"{n:03d}-{secrets.token_hex(4)}"
        return f"999-{secrets.token_hex(4)}"

    def write(self, job: dict, audio: Optional[ClipAudio]) -> dict:
        """``job``: index, run, status, duplicate_of, source (metadata dict), clips (record dicts)."""
        index, clips = job["index"], [dict(c) for c in job["clips"]]
        b, s = place(index, self.cfg.output.sources_per_shard)
        remove_source_audio(self.held, b, s)  # a redo after a crash: drop what the killed attempt wrote
        keep = self._provisional_keep(clips)
        main = primary_language(clips)
        speakers = sorted({c["speaker"] for c in clips})
        written = 0
        folders: set[Path] = set()  # this source's folders, to be fsynced (new ones into their parents)
        try:
            for c in clips:
                lang = lang_folder(c["language"])
                cid = ClipId(lang, b, s, c["index"])
                c["id"] = str(cid)
                c["speaker_id"] = f"{ClipId(main, b, s).source_name}_P{speakers.index(c['speaker']):02d}"
                c["wav"] = f"{cid.shard_name}/{cid.source_name}/mp3/{c['id']}.mp3" if keep[c["index"]] else None
                if c["wav"] and audio is not None:
                    path = self.held / lang / c["wav"]
                    mp3 = encode_mp3(audio.working[c["index"]], audio.sample_rate, self.cfg.output.mp3_bitrate_kbps)
                    write_atomic(path, mp3, tmp_dir=self.ledger.tmp, sync_dir=False)
                    folders.update(p for p in path.parents if self.out in p.parents)
                    written += 1
                    failpoints.hit("mp3")
                c["source_index"], c["clip_index"] = index, c.pop("index")
        except BaseException:  # e.g. disk full: no half-written source stays behind
            remove_source_audio(self.held, b, s)
            raise
        self.dirty_dirs |= folders
        remove_spilled(self.ledger.tmp, index)  # a long source's audio on disk: every MP3 is written
        meta = job["source"]
        row = {**meta, "index": index, "status": job.get("status", "done"), "duplicate_of": job.get("duplicate_of"),
               "primary_language": main, "clips": len(clips), "run": job["run"]}
        for key in SOURCE_JSON_COLUMNS:
            row[key] = json.dumps(meta.get(key, json_column_default(key)), ensure_ascii=False)
        self.sources.append(row)
        self.clips.extend(clips)
        committed: list[int] = []
        if (len(self.sources) >= self.cfg.run.commit_every_sources
                or time.monotonic() - self.last_commit >= self.cfg.run.commit_every_s):
            committed = self.commit()["committed"]
        return {"index": index, "clips": len(clips), "mp3": written, **self.identity(), "committed": committed}

    def identity(self) -> dict:
        return {"writer": self.slot, "incarnation": self.incarnation}

    def _provisional_keep(self, clips: list[dict]) -> dict[int, bool]:
        if self.cfg.output.keep_rejected_audio or not clips:
            return {c["index"]: True for c in clips}
        from emilia_pipe.dataset.filtering import apply_filters

        judged = apply_filters([{**c, "source_id": "this"} for c in clips], self.cfg.filter)
        # with iqr_scope=language the outlier bounds come from the whole build, known only at finalize:
        # keep the audio of a clip that only that rule rejects here, as the final verdict may keep it
        cross_source = {"sec_per_char_outlier"} if self.cfg.filter.iqr_scope == "language" else set()
        return {c["index"]: j["kept"] or set(j["reasons"]) <= cross_source for c, j in zip(clips, judged)}

    def commit(self) -> dict:
        """Make the MP3s' folder entries durable (each MP3 in its folder, each new folder in its parent, up
        to OUT), then commit the buffered records (clips, then sources). Returns this writer's identity and
        the indices committed."""
        if self.retired:
            raise WriterRetiredError(f"writer {self.part} was given up on; its buffered sources are redone")
        committed = [int(r["index"]) for r in self.sources]
        if committed:
            # deepest first: a folder made for this commit is durable in its parent before the ledger names it
            for d in sorted(self.dirty_dirs, key=lambda p: -len(p.parts)):
                fsync_dir(d)
            self.ledger.commit(f"{self.part}-{self.seq:06d}", self.sources, self.clips)
            self.seq += 1
            failpoints.hit("committed")
        self.sources, self.clips, self.dirty_dirs = [], [], set()
        self.last_commit = time.monotonic()
        return {**self.identity(), "committed": committed}
