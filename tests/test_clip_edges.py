"""Clip edges never cut into words (issue: LJ001-0001's clip started at 0.26 s, inside "Printing").

Real models on sample_data's single-utterance recordings (benchmarks/clip_edges.py): each recording is
transcribed whole with word timestamps, then cut by the default stages and each clip transcribed alone.
Measured on asr/ (21 recordings, 16 clips): with clips ending at the VAD edges (segment.edge_pad_s=0, the
code before the fix) 1 clip lost its first word and 8 of 32 edges lay in sound (>15 dB over the
recording's noise floor); with the default 0.25 s pad, 0 and 1."""
import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))

from clip_edges import measure  # noqa: E402


def test_no_clip_loses_its_first_or_last_word():
    report = measure([], patterns=["asr/*/*.wav", "asr/*/*.flac"])
    assert report["clips"] >= 14  # the recordings long enough to be clips (3 s) all gave one
    lost = [r for r in report["rows"] if any(k.startswith("lost_") for k in r)]
    assert report["edge_words_lost"] == 0, lost
    # edges in sound: 8 of 32 at the bare VAD edges, 1 with the pad
    assert report["edges_in_sound"] <= 2, [r for r in report["rows"] if any(k.endswith("_db") for k in r)]
    ljspeech = next(r for r in report["rows"] if r["file"] == "en_ljspeech_LJ001-0001.wav")
    assert ljspeech["start"] < 0.1 and ljspeech["text"].split()[0].strip(",").lower() == "printing"
