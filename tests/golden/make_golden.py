"""Regenerate sample_data_kept.json: the kept clips of a default build of sample_data/ (texts, spans,
scores). Run only when a change is *meant* to change results, and say which in the commit:
    .venv/bin/python tests/golden/make_golden.py"""
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from conftest import kept_clips  # noqa: E402
from emilia_pipe.config import load_config  # noqa: E402
from emilia_pipe.runners.driver import run_pipeline  # noqa: E402


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        run_pipeline([ROOT / "sample_data"], Path(tmp) / "out", load_config(overrides=["run.runner=local"]))
        rows = kept_clips(Path(tmp) / "out")
    dest = Path(__file__).with_name("sample_data_kept.json")
    dest.write_text(json.dumps(rows, indent=1, ensure_ascii=False) + "\n")
    print(f"{len(rows)} kept clips -> {dest}")
