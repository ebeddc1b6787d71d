"""The GPU path (transcribe.backend torch, Demucs, pyannote, Silero, DNSMOS on onnxruntime, the local runner)
imports neither WhisperX, faster-whisper, CTranslate2 nor Ray, so it runs in a GPU image that has none of them
(tests/test_gpu_bundle.py runs it in such an environment end to end).

Its Whisper features and prompt tokens are our own (models/whisper_text.py): they must equal what WhisperX's
log_mel_spectrogram and faster-whisper's Tokenizer give, which this test environment has."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
BLOCKED = ("ray", "whisperx", "ctranslate2", "faster_whisper")

# Runs in a fresh interpreter in which importing any BLOCKED module raises, as where they are not installed.
BLOCKER = textwrap.dedent("""
    import importlib.abc, sys
    BLOCKED = set(sys.argv[1].split(","))

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
            return None

    sys.meta_path.insert(0, Blocker())
""")

GPU_PATH = BLOCKER + textwrap.dedent("""
    import contextlib, io, json, pkgutil, importlib
    import numpy as np
    import emilia_pipe

    # every module of the package imports (the CTranslate2 / Ray paths import those lazily, where they run)
    names = [m.name for m in pkgutil.walk_packages(emilia_pipe.__path__, "emilia_pipe.")]
    for name in names:
        importlib.import_module(name)

    from emilia_pipe.cli import main
    for argv in (["--help"], ["config", "--profile", "full", "--set", "transcribe.backend=torch"]):
        with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.suppress(SystemExit):
            main(argv)
        assert out.getvalue().strip(), argv

    from emilia_pipe.config import ConfigError, load_config
    from emilia_pipe.runners.choice import choose_runner
    assert choose_runner(load_config(overrides=["run.runner=auto"])) == "local"
    try:
        choose_runner(load_config(profile="full"))  # the full profile asks for Ray
        raise AssertionError("run.runner=ray without Ray was accepted")
    except ConfigError as exc:
        assert "--runner local" in str(exc), exc

    # the torch backend transcribes (a random tiny Whisper; the stages' own models load too)
    from emilia_pipe.records import Clip
    from emilia_pipe.stages.diarize import Diarizer
    from emilia_pipe.stages.score import Scorer
    from emilia_pipe.stages.segment import Segmenter
    from emilia_pipe.stages.transcribe import Transcriber
    config = load_config(overrides=["transcribe.backend=torch", f"models.asr={sys.argv[2]}", "transcribe.device=cpu",
                                    "transcribe.max_new_tokens=4", "transcribe.temperatures=[0.0]"])
    stage = Transcriber(config)
    audio = (0.1 * np.sin(np.arange(32000) * 0.05)).astype(np.float32)
    clip = Clip(source_id="s", index=0, start=0.0, end=2.0, speaker="S", audio_16k=audio)
    stage.run([clip])
    assert clip.language and clip.text is not None
    Diarizer(config), Segmenter(config), Scorer(config)
    print(json.dumps({"modules": len(names), "loaded": sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)}))
""")


@pytest.fixture(scope="module")
def tiny_whisper(tmp_path_factory) -> Path:
    sys.path.insert(0, str(ROOT / "benchmarks" / "gpu"))
    from random_models import save_whisper

    from emilia_pipe.models.registry import cache_dir, whisper_base_from_wheels

    folder = tmp_path_factory.mktemp("whisper") / "tiny-random"
    save_whisper(folder, whisper_base_from_wheels(cache_dir()) / "tokenizer.json", "tiny")
    return folder


def test_the_gpu_path_runs_without_whisperx_ctranslate2_and_ray(tiny_whisper):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_ADDRESS": "", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", GPU_PATH, ",".join(BLOCKED), str(tiny_whisper)], capture_output=True,
                          text=True, timeout=600, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = proc.stdout.strip().splitlines()[-1]
    assert '"loaded": []' in report and '"modules": ' in report, report


def test_the_blocker_blocks():
    """The baseline of the test above: with the blocker, code that needs a blocked module fails."""
    code = BLOCKER + "import emilia_pipe.runners.ray_executor as r; r.init_ray(None, {})"
    proc = subprocess.run([sys.executable, "-c", code, "ray"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)
    assert proc.returncode != 0 and "No module named 'ray' (blocked)" in proc.stderr


@pytest.mark.parametrize("n_mels", [80, 128])
def test_log_mel_features_equal_whisperx(n_mels):
    from whisperx.audio import log_mel_spectrogram as whisperx_log_mel
    from whisperx.audio import mel_filters as whisperx_filters

    from emilia_pipe.models.whisper_text import log_mel_spectrogram, mel_filters

    assert np.array_equal(mel_filters(n_mels), whisperx_filters("cpu", n_mels).numpy())
    rng = np.random.default_rng(n_mels)
    for seconds in (0.3, 7.0, 30.0):
        audio = (0.1 * rng.standard_normal(int(seconds * 16000))).astype(np.float32)
        pad = 480000 - audio.size
        ours = log_mel_spectrogram(audio, n_mels, pad).numpy()
        assert np.array_equal(ours, whisperx_log_mel(audio, n_mels=n_mels, padding=pad).numpy()), seconds
    other = log_mel_spectrogram(np.roll(audio, 160), n_mels, pad).numpy()  # baseline: a 10 ms shift differs
    assert not np.array_equal(ours, other)


@pytest.mark.parametrize("multilingual", [True, False])
def test_prompt_tokens_equal_faster_whisper(multilingual):
    from faster_whisper.tokenizer import Tokenizer
    from tokenizers import Tokenizer as HFTokenizer

    from emilia_pipe.models.registry import cache_dir, whisper_base_from_wheels
    from emilia_pipe.models.whisper_text import WhisperTokenizer

    hf = HFTokenizer.from_file(str(whisper_base_from_wheels(cache_dir()) / "tokenizer.json"))
    text = " um, uh, So uhm, yeaah. Ça va? 你好，世界"
    for language in ("en", "fr", "zh", "ja"):
        ours = WhisperTokenizer(hf, multilingual, "transcribe", language)
        theirs = Tokenizer(hf, multilingual, task="transcribe", language=language)
        assert ours.sot_sequence == theirs.sot_sequence
        assert (ours.sot_prev, ours.no_timestamps, ours.eot) == (theirs.sot_prev, theirs.no_timestamps, theirs.eot)
        tokens = ours.encode(text)
        assert tokens == theirs.encode(text) and ours.decode(tokens + [ours.eot, ours.sot]) == theirs.decode(tokens)
    if multilingual:
        with pytest.raises(ValueError, match="xx"):
            WhisperTokenizer(hf, True, "transcribe", "xx")


def test_the_local_runner_gives_a_gpu_stage_one_batch_at_a_time(monkeypatch, tmp_path):
    """On a GPU the local runner's batch lane runs a stage one batch at a time (a second Whisper batch would
    double its GPU memory); a CPU stage still runs several at once (the baseline: the lane is concurrent)."""
    import threading
    import time

    import emilia_pipe.runners.local as local
    from emilia_pipe.config import load_config

    class FakeStage:
        batched = True

        def __init__(self, name, device):
            self.name, self.device, self.active, self.most = name, device, 0, 0
            self.guard, self.meet = threading.Lock(), threading.Barrier(2, timeout=10)

        def run(self, clips):
            with self.guard:
                self.active += 1
                self.most = max(self.most, self.active)
            time.sleep(0.05)
            if self.device == "cpu":
                self.meet.wait()  # two batches must be in here together, or this raises
            with self.guard:
                self.active -= 1
            return clips

    stages = {"transcribe": FakeStage("transcribe", "cuda"), "score": FakeStage("score", "cpu")}
    monkeypatch.setattr(local, "SourceWriter", lambda *args, **kwargs: None)
    executor = local.LocalExecutor(load_config(overrides=["run.max_batches_in_flight=4"]), ["transcribe", "score"],
                                   tmp_path, 0, stage_builder=lambda name, config: stages[name])
    results = [executor.get(f) for f in [executor.submit_batch([], []) for _ in range(8)]]
    executor.shutdown()
    assert all(isinstance(r, tuple) for r in results), results  # no BatchFailure: the CPU stage's pairs met
    assert stages["transcribe"].most == 1 and stages["score"].most >= 2
