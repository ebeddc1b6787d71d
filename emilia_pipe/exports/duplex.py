"""``duplex``: two-speaker conversations as stereo audio with per-channel word timings (Moshi, hertz-dev).

For every source whose kept clips come from exactly two diarized speakers: ``{source}.wav`` (16-bit
stereo at the build's rate, from 0 to the end of its last kept clip) with the speaker who talks more on
the left channel (Moshi's "main" channel) and the other on the right, each clip placed at its start time
in the source and silence elsewhere; ``{source}.json`` with ``alignments``: ``[word, [start, end],
"SPEAKER_MAIN" | "SPEAKER_OTHER"]`` in seconds of the conversation (moshi-finetune's transcript form)
plus which speaker id is on which channel; ``data.jsonl``: ``{"path", "duration"}`` a conversation
(moshi-finetune's dataset index). Needs word timestamps (``transcribe.word_timestamps: true``)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from emilia_pipe.exports.common import ExportError
from emilia_pipe.records import ClipId

NAME = "duplex"
HELP = "two-speaker sources as stereo WAV (one speaker a channel) + per-channel word timings"
BLOCK_S = 30.0  # the stereo file is written in blocks of this many seconds: long sources stay small in memory


def export(build, dest: Path, options: dict, progress) -> dict:
    if not build.config.get("transcribe", {}).get("word_timestamps"):
        raise ExportError("duplex needs word timestamps: build with --set transcribe.word_timestamps=true")
    conversations = 0
    with open(dest / "data.jsonl", "w", encoding="utf-8") as index:
        for rows in build.shards():
            for _, clips in build.by_source(rows):
                progress.step(len(clips))
                talk: dict[str, float] = {}
                for c in clips:
                    talk[c["speaker"]] = talk.get(c["speaker"], 0.0) + c["duration"]
                if len(talk) != 2:
                    continue
                main, other = sorted(talk, key=lambda s: (-talk[s], s))
                name = ClipId.parse(clips[0]["id"]).source_name
                stem = os.path.join(str(dest), name)  # a string: see exports.common on pathlib
                duration = write_conversation(stem + ".wav", clips, [main, other], build.sample_rate)
                meta = {"channels": {"left": main, "right": other}, "alignments": alignments(clips, main)}
                with open(stem + ".json", "w", encoding="utf-8") as fh:
                    fh.write(json.dumps(meta, ensure_ascii=False))
                index.write(json.dumps({"path": f"{name}.wav", "duration": duration}) + "\n")
                conversations += 1
    return {"clips": progress.done, "conversations": conversations}


def alignments(clips: list[dict], main: str) -> list:
    out = []
    for c in clips:
        who = "SPEAKER_MAIN" if c["speaker"] == main else "SPEAKER_OTHER"
        for w in c.get("words") or []:
            out.append([w["word"].strip(), [round(c["start"] + w["start"], 3), round(c["start"] + w["end"], 3)], who])
    return sorted(out, key=lambda a: a[1][0])


def write_conversation(path: str, clips: list[dict], channels: list[str], sr: int) -> float:
    """Mixes each clip into its speaker's channel block by block; a clip is decoded when the first block
    it touches is written and dropped after its last."""
    import soundfile as sf

    from emilia_pipe.media.audio import decode

    total = max(round(c["end"] * sr) for c in clips)
    block = int(BLOCK_S * sr)
    pending = sorted(clips, key=lambda c: c["start"])
    live: list[tuple[int, int, np.ndarray]] = []  # (channel, first sample, audio)
    with sf.SoundFile(path, "w", samplerate=sr, channels=2, subtype="PCM_16", format="WAV") as out:
        for b0 in range(0, total, block):
            b1 = min(b0 + block, total)
            while pending and round(pending[0]["start"] * sr) < b1:
                c = pending.pop(0)
                live.append((channels.index(c["speaker"]), round(c["start"] * sr), decode(c["audio"], sr).samples))
            buf = np.zeros((b1 - b0, 2), dtype=np.float32)
            for ch, s0, audio in live:
                lo, hi = max(s0, b0), min(s0 + audio.size, b1)
                if hi > lo:
                    buf[lo - b0:hi - b0, ch] += audio[lo - s0:hi - s0]
            out.write(np.clip(buf, -1.0, 1.0))
            live = [x for x in live if x[1] + x[2].size > b1]
    return round(total / sr, 3)
