import json
import os
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
    from emilia_pipe.ledger import Ledger

    ledger = Ledger(out)
    sources = ledger.sources()
    clips = ledger.clips()
    result = {}
    for src in sources.to_dict("records"):
        rows = clips[clips["source_index"] == src["index"]].to_dict("records")
        result[Path(src["path"]).name] = {"source": src, "clips": rows}
    return result
