"""The hostile-input corpus (tests/corpus.py) through the real lite models, once, with the command line
(local runner): every input ends processed, failed or skipped with its stage and reason, the good files
next to the bad ones are written, nothing outside the inputs is run or read, and the run exits 1
because some inputs failed."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT
from corpus import EXPECT, make_corpus, outcomes

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile-real")
    src = make_corpus(root)
    out = root / "out"
    proc = subprocess.run([sys.executable, "-m", "emilia_pipe.cli", "run", str(src), "-o", str(out), "--runner", "local",
                           "--set", "standardize.max_duration_s=14400"],  # a user's cap: refuses sparse_2gb.wav
                          capture_output=True, text=True, timeout=1200, cwd=src,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "RAY_ADDRESS": ""})
    return root, src, out, proc


def test_exit_status_is_1_and_no_traceback(build):
    _, _, _, proc = build
    assert proc.returncode == 1, proc.stderr[-4000:]
    assert "Traceback" not in proc.stderr and "failed in this run" in proc.stdout


def test_every_input_has_its_outcome(build):
    _, src, out, _ = build
    got = outcomes(out)
    assert {n: (got[n]["outcome"], got[n]["stage"]) for n in EXPECT if n in got} == \
        {n: e[:2] for n, e in EXPECT.items()}
    for name, (outcome, _, _) in EXPECT.items():
        if outcome == "failed":
            assert name in got[name]["reason"], got[name]


def test_good_files_are_written_and_silence_is_rejected_with_its_reason(build):
    _, src, out, _ = build
    lines = [json.loads(line) for p in out.glob("*/*.jsonl") for line in p.read_text().splitlines()]
    rejected = [json.loads(line) for line in (out / "rejected.jsonl").read_text().splitlines()]
    good = str(src / "good.wav")
    clips = [(out, c) for c in lines if c["source"] == good] + \
        [(out / ".emilia/audio", c) for c in rejected if c["source"] == good and c["wav"]]  # not in the release
    assert clips, "good.wav gave no clip"
    for root, c in clips:
        assert (root / c["id"].split("_")[0] / c["wav"]).stat().st_size > 1000
    no_turns = {Path(r["source"]).name for r in rejected if r["reasons"] == ["no_speaker_turns"]}
    assert "silence_10min.wav" in no_turns
    # a square wave is not speech: whatever diarization makes of it, no clip of it is kept
    assert not [c for c in lines if Path(c["source"]).name == "clipped_square.wav"]
    assert not list((out / ".emilia/tmp").iterdir())


def test_nothing_outside_the_inputs_is_run_or_read(build):
    root, _, out, _ = build
    assert not list(root.rglob("pwned*"))
    text = "".join(p.read_text() for p in out.glob("*.jsonl"))
    assert "canary" not in text and "outside_target" not in text


def test_a_noise_stream_before_the_speech_is_noted_and_the_speech_stream_can_be_chosen(build, tmp_path):
    """An mkv whose first audio stream is noise and second is speech: by the rule (no stream marked default:
    the first) it gives no speaker turn, and sources.jsonl says it used stream 0 of 2 (before: nothing said
    so); standardize.audio_stream=1 gives the speech. Measured: 0 turns vs 2 turns, 9.1 s."""
    import numpy as np
    import soundfile as sf
    from corpus import SPEECH, two_stream_mkv

    from emilia_pipe.config import load_config
    from emilia_pipe.stages import build_stage

    _, _, out, _ = build
    rec = outcomes(out)["two_streams_first_noise.mkv"]["record"]
    assert (rec["audio_stream"], rec["audio_streams"], rec["turns"]) == (0, 2, [])
    speech, rate = sf.read(SPEECH, dtype="float32")
    noise = (0.3 * np.random.default_rng(0).standard_normal(speech.size)).astype(np.float32)
    two_stream_mkv(tmp_path / "film.mkv", noise, speech, rate, default=None)
    turns = {}
    for choice in ("auto", "1"):
        cfg = load_config(overrides=[f"standardize.audio_stream={choice}", "run.runner=local"])
        src = build_stage("diarize", cfg).run(build_stage("standardize", cfg).run(tmp_path / "film.mkv"))
        turns[choice] = sum(t.duration for t in src.turns)
    assert turns["auto"] == 0 and turns["1"] > 0.5 * speech.size / rate, turns
