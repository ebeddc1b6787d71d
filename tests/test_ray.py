"""The Ray path end to end: actor pools per stage, embedded local Ray, same result as in-process."""
import json
from pathlib import Path

import pytest

from emilia_pipe.config import load_config
from emilia_pipe.runners.driver import run_pipeline

pytestmark = pytest.mark.integration

FILES = ["asr/en/en_jfk_inaugural.flac", "asr/de/de_picovoice_test_de.wav", "asr/en/en_ljspeech_LJ001-0001.wav",
         "nonspeech/animal_robin_bird_whistle.ogg"]


def _clips(out: Path) -> set:
    from conftest import load_build

    recs = load_build(out).values()
    return {(r["source"]["sha256"], c["start"], c["end"], c["language"], c["text"]) for r in recs for c in r["clips"]}


def test_ray_runner_matches_local_runner(tmp_path, sample_dir):
    inputs = [sample_dir / f for f in FILES]
    ray_cfg = load_config(overrides=["run.runner=ray", "transcribe.batch_size=2", "run.max_files_in_flight=2"])
    s_ray = run_pipeline(inputs, tmp_path / "ray", ray_cfg)
    local_cfg = load_config(overrides=["run.runner=local", "transcribe.batch_size=2"])
    s_local = run_pipeline(inputs, tmp_path / "local", local_cfg)
    assert s_ray["runner"] == "ray" and s_local["runner"] == "local"
    assert s_ray["files"] == s_local["files"] == {"ok": 4, "failed": 0, "skipped": 0, "failed_by_stage": {}}
    assert _clips(tmp_path / "ray") == _clips(tmp_path / "local")
    assert s_ray["clips"] == s_local["clips"] and s_ray["clips"]["total"] >= 3
