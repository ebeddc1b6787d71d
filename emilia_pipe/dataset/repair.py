"""``emilia-pipe repair OUT``: make a build whose own state is damaged usable again, losing only what the
damage already lost. Nothing is deleted: what cannot be read is moved to ``OUT/.emilia/damaged/<time>/``.

- A ledger part that cannot be read is set aside with its partner (a clips part and the sources part
  that commits it): the sources it held are no longer done, so the next run does them again. A plan
  part set aside makes its inputs new to the build: the next run finds those already done by their
  content (their clips keep their ids) and plans the others after every index the build has used.
- ``build.json`` is restored from its copy (``build.json.bak``, written with it); when both are damaged,
  it is rebuilt from the settings given to ``repair`` (the build's own settings: ``-c``, ``--set``).
- ``publish.json`` is rebuilt from the manifests on disk that the build can prove it wrote (every line an
  id of that manifest's shard); the next publish checks every clip's audio against it.

Sources whose clips part is missing are not done (the ledger's reading says so); ``status`` counts them
as pending and the next run redoes them."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Optional

from emilia_pipe.dataset.errors import DamagedStateError
from emilia_pipe.dataset.fingerprint import fingerprint
from emilia_pipe.dataset.generation import STATE_FILE, current, state_dir
from emilia_pipe.dataset.layout import TOP_FILES, check_manifest_name, language_dirs
from emilia_pipe.dataset.ledger import (
    BUILD_INFO,
    BUILD_INFO_COPY,
    FORMAT_VERSION,
    Ledger,
    read_build_info,
    write_build_info,
)
from emilia_pipe.dataset.lock import BuildLock
from emilia_pipe.records import STATE_DIR, ClipId
from emilia_pipe.runtime.files import write_atomic


def repair(out_dir: str | Path, config=None) -> list[str]:
    """Set aside what cannot be read and rebuild the records; returns one line per thing done."""
    out = Path(out_dir)
    if not (out / STATE_DIR / BUILD_INFO).exists() and not (out / STATE_DIR / BUILD_INFO_COPY).exists():
        raise DamagedStateError(f"{out} is not a dataset written by emilia-pipe (no {STATE_DIR}/{BUILD_INFO})")
    done: list[str] = []
    aside = out / STATE_DIR / "damaged" / time.strftime("%Y%m%d-%H%M%S")
    with BuildLock(out, "repair"):
        _build_info(out, config, aside, done)
        _publish_record(out, aside, done)
        ledger = Ledger(out)
        for part in ledger.damaged_parts():
            kind = part.stem.split("-", 1)[0]
            group = [part] + ([ledger.partner(part)] if kind in ("clips", "sources", "bclips", "bsources") else [])
            for p in group:
                if p.exists():
                    _set_aside(p, aside)
            done.append(f"set aside {part.name}" + (" and its partner part" if len(group) > 1 else "")
                        + {"plan": ": its inputs are planned again by the next run",
                           "failures": ": those failures are forgotten; the next run tries those files again"}.get(
                               kind, ": its sources are done again by the next run"))
        missing = ledger.incomplete()
        if missing:
            done.append(f"{len(missing)} source(s) have no clips part (deleted?): pending, the next run redoes them")
    return done


def _set_aside(path: Path, aside: Path) -> None:
    aside.mkdir(parents=True, exist_ok=True)
    os.replace(path, aside / path.name)


def _build_info(out: Path, config, aside: Path, done: list[str]) -> None:
    try:
        if read_build_info(out) is not None:
            return
    except DamagedStateError:
        pass
    state = out / STATE_DIR
    copy: Optional[dict] = None
    try:
        candidate = json.loads((state / BUILD_INFO_COPY).read_text(encoding="utf-8"))
        if isinstance(candidate, dict) and {"fingerprint", "config", "runs"} <= set(candidate):
            copy = candidate
    except (OSError, ValueError, UnicodeDecodeError):
        pass
    if (state / BUILD_INFO).exists():
        _set_aside(state / BUILD_INFO, aside)
    if copy is not None:
        write_build_info(out, copy)
        done.append(f"restored {BUILD_INFO} from {BUILD_INFO_COPY}")
        return
    if config is None:
        raise DamagedStateError(
            f"{state / BUILD_INFO} and its copy are damaged: give repair the build's own settings (the -c files and "
            f"--set values of its runs), e.g. `emilia-pipe repair {out} -c my.yaml`, to rebuild it")
    data = config.model_dump(mode="json")
    write_build_info(out, {"format": FORMAT_VERSION, "fingerprint": fingerprint(config), "config": data, "runs": [],
                           "filter": {"settings": data["filter"], "set_by": "repair"},
                           "repaired": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    done.append(f"rebuilt {BUILD_INFO} from the settings given (its copy was damaged too)")


def _publish_record(out: Path, aside: Path, done: list[str]) -> None:
    try:
        current(out)
        return
    except DamagedStateError:
        pass
    record = out / STATE_DIR / STATE_FILE
    if record.exists():
        _set_aside(record, aside)
    legacy = out / STATE_DIR / "manifests.json"
    if legacy.exists():
        _set_aside(legacy, aside)
    manifests = [m for m in _manifests_on_disk(out)]
    numbers = [int(d.name[1:]) for d in state_dir(out).glob("g*") if d.name[1:].isdigit()]
    write_atomic(record, json.dumps({"generation": max(numbers, default=0) + 1, "state": "done", "manifests": manifests,
                                     "files": [f for f in TOP_FILES if (out / f).is_file()]}, indent=1))
    done.append(f"rebuilt {STATE_FILE} from the {len(manifests)} manifest(s) on disk this build wrote")


def _manifests_on_disk(out: Path):
    """``LANG/LANG_B#####.jsonl`` files whose every line is a clip of that language and shard."""
    for lang in language_dirs(out):
        for path in sorted((out / lang).glob(f"{lang}_B*.jsonl")):
            name = f"{lang}/{path.name}"
            try:
                check_manifest_name(name)
                shard = int(path.stem.split("_B")[1])
                ids = [ClipId.parse(json.loads(line)["id"]) for line in path.read_text(encoding="utf-8").splitlines()]
            except (DamagedStateError, ValueError, KeyError, TypeError, UnicodeDecodeError):
                continue  # not this build's
            if ids and all(i.language == lang and i.shard == shard for i in ids):
                yield name
