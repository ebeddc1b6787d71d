"""The driver with stand-in executors: worker deaths and failing batches are recorded, never fatal."""
import json

import numpy as np

from emilia_pipe.config import load_config
from emilia_pipe.records import Clip, Source
from emilia_pipe.runners.calls import BatchFailure
from emilia_pipe.runners.driver import run_pipeline


def _source(path: str, n_clips: int) -> Source:
    sid = f"{abs(hash(path)) % 16**16:016x}"
    src = Source(source_id=sid, path=path, sha256=sid * 4, duration=10.0, orig_sample_rate=24000,
                 orig_channels=1, codec="pcm", container="wav")
    src.clips = [Clip(source_id=sid, index=i, start=3.0 * i, end=3.0 * i + 3.0, speaker="SPEAKER_00",
                      audio=np.zeros(72000, np.float32), audio_16k=np.zeros(48000, np.float32)) for i in range(n_clips)]
    return src


class _Handle:  # hashable like a Ray ObjectRef
    def __init__(self, kind, value):
        self.kind, self.value = kind, value


class ScriptedExecutor:
    """Per-file results from a table; a path in `die` raises on get (as a dead Ray actor does)."""

    def __init__(self, die=(), fail_batches=False):
        self.die, self.fail_batches = set(die), fail_batches

    def submit_file(self, path):
        return _Handle("file", str(path))

    def submit_batch(self, clips):
        return _Handle("batch", clips)

    def wait(self, handles):
        return handles[:1]

    def get(self, handle):
        kind, value = handle.kind, handle.value
        if kind == "file":
            if value.endswith(tuple(self.die)):
                raise RuntimeError(f"actor died while processing {value}")
            return _source(value, 2)
        if self.fail_batches:
            return BatchFailure("transcribe", "CUDA error: out of memory")
        for c in value:
            c.text, c.language, c.language_prob, c.dnsmos_ovrl, c.chars, c.sec_per_char = "hello there", "en", 0.99, 3.5, 10, 0.3
        return value, {"transcribe": 0.1, "score": 0.1}

    def shutdown(self):
        pass


def _inputs(tmp_path, names):
    paths = []
    for n in names:
        p = tmp_path / n
        p.write_bytes(n.encode())
        paths.append(p)
    return paths


def test_dead_worker_fails_only_its_file(tmp_path):
    cfg = load_config(overrides=["run.runner=local"])
    files = _inputs(tmp_path, ["a.wav", "b.wav", "c.wav"])
    summary = run_pipeline(files, tmp_path / "out", cfg, executor_factory=lambda c, s: ScriptedExecutor(die=["b.wav"]))
    failures = [json.loads(l) for l in (tmp_path / "out/failures.jsonl").read_text().splitlines()]
    assert [(f["stage"], f["path"].endswith("b.wav")) for f in failures] == [("worker", True)]
    assert "actor died" in failures[0]["error"]
    assert summary["files"] == {"ok": 2, "failed": 1, "failed_by_stage": {"worker": 1}}
    assert summary["clips"]["total"] == 4 and summary["clips"]["kept"] == 4


def test_failed_batch_fails_its_sources_and_the_run_finishes(tmp_path):
    cfg = load_config(overrides=["run.runner=local"])
    files = _inputs(tmp_path, ["a.wav", "b.wav"])
    summary = run_pipeline(files, tmp_path / "out", cfg, executor_factory=lambda c, s: ScriptedExecutor(fail_batches=True))
    assert summary["files"]["failed"] == 2 and summary["files"]["failed_by_stage"] == {"transcribe": 2}
    assert summary["clips"]["total"] == 0
