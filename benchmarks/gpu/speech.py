"""The benchmark's speech: a conversation of real recordings from sample_data/, N minutes long.

Two speakers alternate, 0.8 s apart: LJSpeech's reader (turns "a") and JFK followed by CMU Arctic's "aew"
(turns "b"), the conversation of tests/test_long_input.py. :func:`export_turns` writes the recordings as
16 kHz mono 16-bit WAV files plus turns.json (run where sample_data/ and soundfile are, e.g. by bundle.py);
:func:`write_inputs` builds the conversation from that folder and cuts it into input files with numpy and
scipy only, so it runs in a GPU image that has neither soundfile nor the repository.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

RATE = 16000
GAP_S = 0.8


def export_turns(sample_dir: Path, dest: Path) -> dict:
    """Write sample_dir's recordings of the two speakers to ``dest`` (a-NN.wav, b-NN.wav, turns.json with
    the most words any of them says, SOURCES.txt with each one's source and licence sidecar); returns the
    turns.json data."""
    import soundfile as sf
    from scipy.io import wavfile
    from scipy.signal import resample_poly

    asr = Path(sample_dir) / "asr" / "en"
    speakers = {"a": sorted(asr.glob("en_ljspeech_*.wav")),
                "b": [asr / "en_jfk_inaugural.flac", *sorted(asr.glob("en_cmu_arctic_us_aew_*.wav"))]}
    refs = csv.DictReader((Path(sample_dir) / "asr_references.tsv").open(), delimiter="\t")
    words = {Path(r["file"]).name: len(r["reference_text"].split()) for r in refs}
    dest.mkdir(parents=True, exist_ok=True)
    data: dict = {"rate": RATE, "turns": {}, "sources": {}, "max_words": 0}
    for speaker, files in speakers.items():
        data["turns"][speaker] = []
        for i, f in enumerate(files):
            x, sr = sf.read(f, dtype="float32", always_2d=True)
            x = x.mean(1)
            if sr != RATE:
                x = resample_poly(x, RATE, sr).astype(np.float32)
            name = f"{speaker}-{i:02d}.wav"
            wavfile.write(dest / name, RATE, np.round(np.clip(x, -1, 1) * 32767).astype(np.int16))
            data["turns"][speaker].append(name)
            data["sources"][name] = f.name
            data["max_words"] = max(data["max_words"], words[f.name])
    (dest / "turns.json").write_text(json.dumps(data, indent=1))
    sidecars = [f"{name} <- {src}\n{(asr / src).with_suffix('.txt').read_text().strip()}\n"
                for name, src in data["sources"].items()]
    (dest / "SOURCES.txt").write_text("Resampled to 16 kHz mono from emilia-pipe's sample_data/asr/en:\n\n"
                                      + "\n".join(sidecars))
    return data


def conversation(turns_dir: Path, seconds: float) -> np.ndarray:
    """At least ``seconds`` of alternating turns (16 kHz float32), each followed by GAP_S of silence."""
    from scipy.io import wavfile

    meta = json.loads((Path(turns_dir) / "turns.json").read_text())

    def load(name):
        _, x = wavfile.read(Path(turns_dir) / name)
        return x.astype(np.float32) / 32768

    a, b = ([load(n) for n in meta["turns"][s]] for s in ("a", "b"))
    gap = np.zeros(int(GAP_S * RATE), np.float32)
    parts, total, i = [], 0.0, 0
    while total < seconds:
        x = a[i // 2 % len(a)] if i % 2 == 0 else b[i // 2 % len(b)]
        parts += [x, gap]
        total += (x.size + gap.size) / RATE
        i += 1
    return np.concatenate(parts)


def write_inputs(turns_dir: Path, folder: Path, minutes: float, file_minutes: float) -> list[Path]:
    """N minutes of conversation cut into files of ``file_minutes`` (different audio each: the pipeline skips
    duplicates); a tail under 10 s is left out."""
    from scipy.io import wavfile

    folder.mkdir(parents=True, exist_ok=True)
    audio = conversation(turns_dir, minutes * 60)
    step = int(file_minutes * 60 * RATE)
    paths = []
    for i, lo in enumerate(range(0, audio.size, step)):
        part = audio[lo: lo + step]
        if part.size < 10 * RATE:
            continue
        paths.append(folder / f"conversation-{i:03d}.wav")
        wavfile.write(paths[-1], RATE, np.round(np.clip(part, -1, 1) * 32767).astype(np.int16))
    return paths


def token_cap(turns_dir: Path, tokens_per_word: float) -> int:
    """transcribe.max_new_tokens for the benchmark: ``tokens_per_word`` per word of the longest recording's
    reference transcript (the longest clip's text, near enough)."""
    import math

    return math.ceil(tokens_per_word * json.loads((Path(turns_dir) / "turns.json").read_text())["max_words"])
