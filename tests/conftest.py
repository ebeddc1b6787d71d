import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a model hub
os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "false")

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample_data"


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    return SAMPLE


@pytest.fixture(scope="session")
def sample_manifest() -> list[dict]:
    return [json.loads(line) for line in (SAMPLE / "manifest.jsonl").read_text().splitlines() if line.strip()]


@pytest.fixture(scope="session")
def lite_config():
    from emilia_pipe.config import load_config

    return load_config(overrides=["run.runner=local"])


def load_build(out: Path) -> dict[str, dict]:
    """file name -> {"source": source row, "clips": [clip rows]} read from a build's ledger."""
    from emilia_pipe.dataset.ledger import Ledger

    ledger = Ledger(out)
    sources = ledger.sources()
    clips = ledger.clips()
    result = {}
    for src in sources.to_dict("records"):
        rows = clips[clips["source_index"] == src["index"]].to_dict("records")
        result[Path(src["path"]).name] = {"source": src, "clips": rows}
    return result


def published(out: Path) -> dict:
    """Everything a user of the build sees, with timing fields removed."""
    view = {}
    for path in sorted(out.rglob("*")):
        rel = path.relative_to(out).as_posix()
        if rel.startswith(".emilia") or path.is_dir():
            continue
        if rel == "summary.json":
            s = json.loads(path.read_text())
            view[rel] = {k: s[k] for k in ("files", "hours", "clips", "languages", "drop_reasons")}
        elif rel == "sources.jsonl":
            view[rel] = [{k: v for k, v in json.loads(l).items() if k != "timings"} for l in path.read_text().splitlines()]
        elif path.suffix == ".mp3":
            view[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            view[rel] = path.read_text()
    return view


def cli(*args, env=None, check=None) -> subprocess.CompletedProcess:
    """Run ``emilia-pipe ARGS`` in a fresh interpreter (never against an ambient Ray cluster)."""
    proc = subprocess.run([sys.executable, "-m", "emilia_pipe.cli", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "RAY_ADDRESS": "", "RAY_AUTH_MODE": "disabled", **(env or {})},
                          timeout=1200)
    if check is not None:
        assert proc.returncode == check, proc.stderr[-4000:]
    return proc


def copy_inputs(folder: Path, names: list[str]) -> Path:
    """Copy sample_data files (relative names) flat into ``folder``."""
    for f in names:
        shutil.copy(SAMPLE / f, folder / Path(f).name)
    return folder


def known_texts(golden_row: dict) -> list[str]:
    """A golden clip's text and the variants other CPUs gave for it (tests/golden/make_golden.py)."""
    return [golden_row["text"], *(v["text"] for v in golden_row.get("variants", []))]


def kept_clips(out: Path) -> list[dict]:
    """The kept clips of a build: source file, span, language, text, DNSMOS (what tests/golden compares)."""
    rows = []
    for manifest in sorted(out.glob("*/*_B*.jsonl")):
        for line in manifest.read_text().splitlines():
            r = json.loads(line)
            rows.append({"source": Path(r["source"]).name, "start": r["start"], "end": r["end"], "language": r["language"],
                         "text": r["text"], "dnsmos_sig": r["dnsmos_sig"], "dnsmos_bak": r["dnsmos_bak"],
                         "dnsmos_ovrl": r["dnsmos_ovrl"]})
    return sorted(rows, key=lambda r: (r["source"], r["start"]))
