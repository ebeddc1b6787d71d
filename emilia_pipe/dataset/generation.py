"""Publishing as one generation: the manifests, the reports and the audio moves of a finalize (end of a
run, ``refilter``) change together, and a kill at any moment never leaves a mix of two generations.

1. *Stage*: every new file is written under ``OUT/.emilia/publish/g<N>/`` with the buckets it is made of
   (``buckets.json``: :mod:`emilia_pipe.dataset.buckets`) and the audio moves (``moves.parquet``: clip id
   -> published / held / dropped). Only the manifests of buckets that changed are staged.
   A kill here leaves the published generation as it was; the staging folder is removed next time.
2. *Commit*: ``OUT/.emilia/publish.json`` is replaced by one naming generation N, state ``applying``,
   its manifests and the previous generation's. From here on generation N is decided.
3. *Apply* (a few renames, each idempotent): kept clips' MP3s into the published tree, the manifests
   into place, manifests of the previous generation that N does not list deleted, other MP3s out to
   the held tree, the reports into place, empty folders removed, every touched folder fsynced.
4. ``publish.json`` says ``done``.

A kill during 3 leaves ``applying``: the next command that takes the build's lock (``run``,
``refilter``, ``export``, ``repair``) completes it first; ``status`` reports it. Every name read back
(from ``publish.json``, the kept list, the moves) is checked against the build's layout before any file
is touched (:mod:`emilia_pipe.dataset.layout`), and only files of that layout are ever deleted."""
from __future__ import annotations

import json
import os
import re
import shutil
import stat
from pathlib import Path
from typing import Iterable, Iterator, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from emilia_pipe.dataset.errors import DamagedStateError
from emilia_pipe.dataset.layout import (
    UnsafePathError,
    check_manifest_name,
    check_top_file,
    clip_audio,
    held_root,
    remove_empty,
)
from emilia_pipe.records import STATE_DIR
from emilia_pipe.runtime import failpoints
from emilia_pipe.runtime.files import fsync_dir, write_atomic

STATE_FILE = "publish.json"
LEGACY_LIST = "manifests.json"  # builds of format 2 listed their manifests here
PUBLISHED, HELD, DROPPED = "published", "held", "dropped"
_MOVES = pa.schema([("id", pa.string()), ("to", pa.string())])
_GEN_DIR = re.compile(r"g(\d{6,})")


class PublishStateError(DamagedStateError):
    """``publish.json`` cannot be read or names something that is not this build's."""


class Generation:
    """The published generation as ``publish.json`` says (checked names only)."""

    def __init__(self, number: int, manifests: list[str], state: str, previous: list[str], files: list[str],
                 folder: Optional[Path] = None):
        self.number, self.manifests, self.state = number, manifests, state
        self.previous, self.files, self.folder = previous, files, folder

    def buckets(self) -> Optional[dict[str, str]]:
        """The stored buckets this generation is made of (first source, zero-padded -> folder name), None
        for a generation made before buckets."""
        path = self.folder / "buckets.json" if self.folder is not None and self.state == "done" else None
        if path is None or not path.is_file():
            return None
        data = _read_json(path)
        if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
            raise PublishStateError(f"{path} is damaged (not a list of buckets); run `emilia-pipe repair`")
        return data

    def legacy_kept(self) -> Optional[set[str]]:
        """The kept clips of a generation made before buckets (one list for the build), if known."""
        path = self.folder / "kept.parquet" if self.folder is not None and self.state == "done" else None
        if path is None or not path.is_file():
            return None
        return set(pq.read_table(path, columns=["id"]).column("id").to_pylist())

    @property
    def unfinished(self) -> bool:
        return self.state != "done"


def state_dir(out: Path) -> Path:
    return Path(out) / STATE_DIR / "publish"


def gen_dir(out: Path, number: int) -> Path:
    return state_dir(out) / f"g{int(number):06d}"


def current(out: str | Path) -> Generation:
    """The generation readers see now (number 0 with no manifests for a build never published)."""
    out = Path(out)
    path = out / STATE_DIR / STATE_FILE
    if not path.exists():
        legacy = out / STATE_DIR / LEGACY_LIST
        names = _read_json(legacy) if legacy.exists() else []
        return Generation(0, _manifests(names, legacy), "done", [], [])
    data = _read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("generation"), int):
        raise PublishStateError(f"{path} is damaged (not a publish record); run `emilia-pipe repair {out}`")
    files = [check_top_file(f) for f in data.get("files", [])]
    return Generation(data["generation"], _manifests(data.get("manifests", []), path), str(data.get("state")),
                      _manifests(data.get("previous", []), path), files, gen_dir(out, data["generation"]))


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, OSError) as exc:
        raise PublishStateError(f"{path} is damaged ({type(exc).__name__}); run `emilia-pipe repair "
                                f"{path.parent.parent}`") from None


def _manifests(names, where: Path) -> list[str]:
    if not isinstance(names, list):
        raise PublishStateError(f"{where} is damaged (no list of manifests); run `emilia-pipe repair "
                                f"{where.parent.parent}`")
    try:
        return [check_manifest_name(n) for n in names]
    except UnsafePathError as exc:
        raise PublishStateError(f"{where} names a file that is not this build's ({exc}): nothing was deleted; "
                                f"run `emilia-pipe repair {where.parent.parent}`") from None


class Stager:
    """Stages generation ``number``: files first, then :meth:`commit` makes it the published one."""

    def __init__(self, out: Path, number: int):
        self.out = Path(out)
        self.number = number
        self.dir = gen_dir(self.out, number)
        keep = {gen_dir(self.out, number - 1).name}
        for d in state_dir(self.out).glob("g*"):  # generations staged by a killed publish, never committed
            if _GEN_DIR.fullmatch(d.name) and d.name not in keep and d.is_dir() and not d.is_symlink():
                shutil.rmtree(d)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.manifests: list[str] = []
        self.staged: list[str] = []  # the manifests written here (the others stay as they are)
        self.files: list[str] = []
        self._moves: Optional[pq.ParquetWriter] = None

    def file(self, name: str, text: str) -> None:
        self._stage(check_top_file(name), text)
        self.files.append(name)

    def _stage(self, name: str, text: str) -> None:
        write_atomic(self.dir / name, text, tmp_dir=self.dir, sync_dir=False)

    def joined(self, name: str, pieces: Iterable[Path]) -> None:
        """A report made of stored pieces, copied one after another (never whole in memory)."""
        check_top_file(name)
        tmp = self.dir / f".{name}.tmp"
        with open(tmp, "wb") as dst:
            for piece in pieces:
                with open(piece, "rb") as src:
                    shutil.copyfileobj(src, dst, 1 << 20)
            dst.flush()
            os.fsync(dst.fileno())
        os.replace(tmp, self.dir / name)
        self.files.append(name)

    def moves(self, ids: list[str], places: list[str]) -> None:
        """Audio moves of one bucket (clip ids in order), added to ``moves.parquet``."""
        if self._moves is None:
            self._moves = pq.ParquetWriter(self.dir / "moves.parquet", _MOVES)
        if ids:
            self._moves.write_table(pa.table({"id": pa.array(ids, pa.string()), "to": pa.array(places, pa.string())},
                                             schema=_MOVES))

    def staged_manifests(self, names: list[str]) -> None:
        """Manifests a worker process wrote into this generation's folder."""
        for name in names:
            check_manifest_name(name)
            self.manifests.append(name)
            self.staged.append(name)
            failpoints.hit("manifest")

    def keep_manifests(self, names: Iterable[str]) -> None:
        """Every manifest of the generation: those staged and those of buckets it keeps as they are."""
        self.manifests = sorted({check_manifest_name(n) for n in names} | set(self.manifests))

    def buckets(self, folders: dict[str, str]) -> None:
        write_atomic(self.dir / "buckets.json", json.dumps(folders, indent=0, sort_keys=True), tmp_dir=self.dir,
                     sync_dir=False)

    def commit(self, previous: Generation) -> None:
        """Make the staged generation durable, name it in ``publish.json``, then apply it."""
        if self._moves is None:
            self.moves([], [])
        self._moves.close()
        with open(self.dir / "moves.parquet", "rb+") as fh:  # the staged texts were fsynced as they were written
            os.fsync(fh.fileno())
        for folder in sorted({self.dir, *((self.dir / m).parent for m in self.staged)}):
            fsync_dir(folder)
        fsync_dir(self.dir.parent)
        record = {"generation": self.number, "state": "applying", "manifests": sorted(self.manifests),
                  "previous": previous.manifests, "files": self.files}
        write_atomic(self.out / STATE_DIR / STATE_FILE, json.dumps(record, indent=1), tmp_dir=self.dir)
        failpoints.hit("publish")
        apply(self.out)


def apply(out: str | Path) -> None:
    """Put the committed generation in place (again: every step may have been done already)."""
    out = Path(out)
    gen = current(out)
    if not gen.unfinished:
        return
    _CHECKED.clear()
    staged, held = gen_dir(out, gen.number), held_root(out)
    moves = staged / "moves.parquet"
    for _ in _moves(moves, check=True):  # every name is checked before anything moves
        pass
    touched: set[str] = set()  # folders, as strings (pathlib keeps every path's parts for good: one per clip)
    for cid, to in _moves(moves):  # 1. kept clips' audio into the published tree: every listed clip has its MP3
        if to == PUBLISHED:
            _move(held, out, clip_audio(cid), touched)
    for name in gen.manifests:  # 2. the manifests
        _put(staged / name, out, name, touched)
    for name in sorted(set(gen.previous) - set(gen.manifests)):  # 3. those no longer wanted
        _safe_dir(out, name)
        (out / name).unlink(missing_ok=True)
        touched.add(str((out / name).parent))
    for cid, to in _moves(moves):  # 4. other audio out of the published tree
        if to == PUBLISHED:
            continue
        rel = clip_audio(cid)
        if to == HELD:
            _move(out, held, rel, touched)
        elif to == DROPPED:
            for root in (out, held):
                _safe_dir(root, rel)
                path = os.path.join(root, rel)
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
                touched.add(os.path.dirname(path))
    for name in gen.files:  # 5. the reports (summary.json last among them)
        _put(staged / name, out, name, touched)
    folders = {Path(t) for t in touched}
    remove_empty(out, [d for d in folders if out in d.parents and held not in d.parents and d != held])
    remove_empty(held, [d for d in folders if held in d.parents])
    for folder in sorted(folders | {p for d in folders for p in d.parents if out in p.parents or p == out}):
        if folder.is_dir():
            fsync_dir(folder)
    record = {"generation": gen.number, "state": "done", "manifests": gen.manifests, "files": gen.files}
    write_atomic(out / STATE_DIR / STATE_FILE, json.dumps(record, indent=1), tmp_dir=staged)
    (staged / "moves.parquet").unlink(missing_ok=True)
    remove_empty(staged, [staged / name for name in gen.manifests])  # the staged language folders
    (out / STATE_DIR / LEGACY_LIST).unlink(missing_ok=True)
    for d in state_dir(out).glob("g*"):  # earlier generations' kept lists
        if _GEN_DIR.fullmatch(d.name) and d != staged and d.is_dir() and not d.is_symlink():
            shutil.rmtree(d)


def _moves(path: Path, check: bool = False) -> Iterator[tuple[str, str]]:
    """The moves, a batch at a time (a first publish moves every clip of the build); ``check``: each
    checked (done once, before the first move: the staged file does not change meanwhile)."""
    if not path.exists():
        return
    for batch in pq.ParquetFile(path).iter_batches(batch_size=65536, columns=["id", "to"]):
        for cid, to in zip(batch.column(0).to_pylist(), batch.column(1).to_pylist()):
            if not check:
                yield cid, to
                continue
            try:
                clip_audio(cid)
                if to not in (PUBLISHED, HELD, DROPPED):
                    raise UnsafePathError(f"not a move of this build: {str(to)[:100]!r}")
            except UnsafePathError as exc:
                raise PublishStateError(f"{path} names a file that is not this build's ({exc}): nothing was moved; "
                                        f"run `emilia-pipe repair {path.parents[3]}`") from None
            yield cid, to


_CHECKED: set[str] = set()  # folders already found to be real folders (a publish touches each many times)


def _safe_dir(root: Path | str, rel: str) -> None:
    """Refuse to touch ``root/rel`` through a link: every folder on the way must be a real folder."""
    folder = str(root)
    for part in rel.split("/")[:-1]:
        folder = os.path.join(folder, part)
        if folder in _CHECKED:
            continue
        if os.path.islink(folder):
            raise UnsafePathError(f"{folder} is a link; the build never writes or deletes through one")
        if os.path.isdir(folder):
            _CHECKED.add(folder)


def _move(src_root: Path, dst_root: Path, rel: str, touched: set[str]) -> None:
    src, dst = os.path.join(src_root, rel), os.path.join(dst_root, rel)
    try:
        if not stat.S_ISREG(os.lstat(src).st_mode):
            return
    except (FileNotFoundError, NotADirectoryError):
        return  # moved already (a completed part of an interrupted publish), or never written
    _safe_dir(src_root, rel)
    _safe_dir(dst_root, rel)
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    os.replace(src, dst)
    touched.update((os.path.dirname(src), os.path.dirname(dst)))


def _put(staged: Path, out: Path, name: str, touched: set[str]) -> None:
    if staged.exists():  # else put in place by an earlier, interrupted apply
        _safe_dir(out, name)
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged, out / name)
        touched.add(str((out / name).parent))
        failpoints.hit("apply")
