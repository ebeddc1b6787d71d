"""``kaldi``: a Kaldi / ESPnet / CosyVoice data folder.

``wav.scp`` (utterance -> absolute MP3 path into the build), ``text``, ``utt2spk``, ``spk2utt``,
``utt2dur``, ``utt2lang``. Utterance ids are ``{speaker}-{clip id}`` so that sorting by utterance also
sorts by speaker, as Kaldi's ``validate_data_dir.sh`` requires; every file is sorted in C (byte) order.
Files are sorted on disk in runs (external merge sort), so a build of millions of clips never sits in
memory. For Kaldi binaries, which do not read MP3, turn a line into a pipe:
``utt ffmpeg -nostdin -i /path.mp3 -f wav -ar 16000 - |``. A build whose path holds whitespace (or bytes
that are not UTF-8) is refused with one line: give a link to it without them."""
from __future__ import annotations

import heapq
import tempfile
from contextlib import ExitStack
from pathlib import Path

from emilia_pipe.exports.common import one_line, refuse_unholdable

NAME = "kaldi"
HELP = "Kaldi data dir: wav.scp, text, utt2spk, spk2utt, utt2dur, utt2lang (sorted)"
RUN_LINES = 200_000  # lines sorted in memory at a time
FAN_IN = 64  # sorted runs merged at once (each an open file and its buffer)
FILES = ("wav.scp", "text", "utt2spk", "utt2dur", "utt2lang")


def check_paths(build_dir: Path, dest: Path) -> None:
    """wav.scp names each MP3 by its path in the build: Kaldi reads a line as whitespace-separated fields."""
    refuse_unholdable(build_dir, NAME, "build", " \t\n\r\v\f",
                      "Kaldi's wav.scp cannot hold (it splits each line at whitespace)")


def utt_id(row: dict) -> str:
    return f"{row['speaker']}-{row['id']}"


class ExternalSort:
    """Lines in, one C-sorted file out: sorted runs on disk, then a k-way merge."""

    def __init__(self, tmp: Path):
        self.tmp, self.runs, self.buf = tmp, [], []

    def add(self, line: str) -> None:
        self.buf.append(line)
        if len(self.buf) >= RUN_LINES:
            self._spill()

    def _spill(self) -> None:
        if self.buf:
            run = self.tmp / f"run{len(self.runs):05d}"
            run.write_bytes(b"".join(sorted(l.encode("utf-8") for l in self.buf)))
            self.runs.append(run)
            self.buf = []

    def write(self, path: Path) -> None:
        self._spill()
        while len(self.runs) > FAN_IN:  # merge the oldest runs into one: open files and buffers stay bounded
            merged = self.tmp / f"run{len(self.runs):05d}m"
            self._merge(self.runs[:FAN_IN], merged)
            self.runs = self.runs[FAN_IN:] + [merged]
        self._merge(self.runs, path)
        self.runs = []

    @staticmethod
    def _merge(runs: list[Path], path: Path) -> None:
        with ExitStack() as stack, open(path, "wb") as out:
            out.writelines(heapq.merge(*(stack.enter_context(open(r, "rb")) for r in runs)))
        for r in runs:
            r.unlink()


def export(build, dest: Path, options: dict, progress) -> dict:
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        sorters = {name: ExternalSort(Path(tmp) / name.replace(".", "_")) for name in FILES}
        for s in sorters.values():
            s.tmp.mkdir()
        for row in build.clips():
            utt = utt_id(row)
            sorters["wav.scp"].add(f"{utt} {row['audio']}\n")
            sorters["text"].add(f"{utt} {one_line(row['text'])}\n")
            sorters["utt2spk"].add(f"{utt} {row['speaker']}\n")
            sorters["utt2dur"].add(f"{utt} {row['duration']}\n")
            sorters["utt2lang"].add(f"{utt} {row['language']}\n")
            progress.step()
        for name, s in sorters.items():
            s.write(dest / name)
    speakers = _spk2utt(dest / "utt2spk", dest / "spk2utt")
    return {"clips": progress.done, "speakers": speakers}


def _spk2utt(utt2spk: Path, out: Path) -> int:
    """Streamed from the sorted utt2spk: an utterance id starts with its speaker, so one speaker's
    utterances are adjacent and speakers come in sorted order."""
    n, current, utts = 0, None, []
    with open(utt2spk, encoding="utf-8") as src, open(out, "w", encoding="utf-8") as dst:
        for line in src:
            utt, spk = line.split()
            if spk != current and current is not None:
                dst.write(f"{current} {' '.join(utts)}\n")
                n, utts = n + 1, []
            current = spk
            utts.append(utt)
        if current is not None:
            dst.write(f"{current} {' '.join(utts)}\n")
            n += 1
    return n
