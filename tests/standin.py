"""Stand-in stages for the tests that are about plumbing (the driver, executors, writers, the ledger and
publishing), not about models: each stage is the real stage's shape with a deterministic made-up result
drawn from the input file's bytes, so a build of a few small files takes a second and two builds of the
same files are byte-equal whatever runs them (local lanes, Ray actors, killed and resumed).

A file's sha256 decides its clips: 0-3 clips of 3-6 s, each a tone (so the real writer encodes real
MP3s), in English, German or Chinese, with a DNSMOS OVRL spread over 2.4-3.9 so that thresholds move
clips in and out. Used in-process (``run``) and as a script (``python tests/standin.py run IN... -o OUT
[--set K=V]...``), so a test can SIGKILL a build at a failpoint."""
from __future__ import annotations

import hashlib
import sys
from pathlib import Path

if __name__ == "__main__":  # run as a script: import this checkout's package
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from emilia_pipe.records import ANALYSIS_RATE, Clip, Source, Turn  # noqa: E402
from emilia_pipe.stages import Stage  # noqa: E402

LANGS = ("en", "de", "zh")


def _seed(sha: str, k: int) -> int:
    return int(hashlib.sha256(f"{sha}:{k}".encode()).hexdigest()[:8], 16)


def _tone(seconds: float, rate: int, freq: float) -> np.ndarray:
    t = np.arange(int(round(seconds * rate)), dtype=np.float64) / rate
    return (0.2 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


class Decode(Stage):
    name = "standardize"

    def __init__(self, config):
        self.rate = config.standardize.sample_rate

    def run(self, task) -> Source:
        data = Path(task.path).read_bytes()
        if data.startswith(b"broken"):
            raise ValueError("cannot decode this input (a stand-in failure)")
        sha = hashlib.sha256(data).hexdigest()
        n = _seed(sha, 0) % 4
        src = Source(source_id=sha[:16], path=task.path, sha256=sha, duration=0.0, orig_sample_rate=16000,
                     orig_channels=1, codec="pcm_s16le", container="wav", sample_rate=self.rate)
        start = 0.0
        for i in range(n):
            length = 3.0 + _seed(sha, i + 1) % 300 / 100.0
            freq = 200.0 + _seed(sha, i + 11) % 600
            src.clips.append(Clip(source_id=src.source_id, index=i, start=round(start, 3), end=round(start + length, 3),
                                  speaker="SPEAKER_00", audio=_tone(length, self.rate, freq),
                                  audio_16k=_tone(length, ANALYSIS_RATE, freq)))
            start += length + 0.5
        src.duration = round(start + 1.0, 3)
        src.turns = [Turn(0.0, round(start, 3), "SPEAKER_00")] if n else []
        src.timings = {"standardize": 0.001}
        return src


class PassThrough(Stage):
    def __init__(self, name: str):
        self.name = name

    def run(self, source: Source) -> Source:
        return source


class Transcribe(Stage):
    name = "transcribe"
    batched = True

    def __init__(self, config):
        pass

    def run(self, clips: list[Clip]) -> list[Clip]:
        for c in clips:
            seed = _seed(c.source_id, 100 + c.index)
            c.language = LANGS[seed % len(LANGS)]
            words = int((c.end - c.start) * 3)
            c.text = " ".join(f"w{(seed >> k) % 97}" for k in range(words))
            c.language_prob, c.avg_logprob, c.no_speech_prob, c.compression_ratio, c.temperature = 0.97, -0.2, 0.05, 1.3, 0.0
        return clips


class Score(Stage):
    name = "score"
    batched = True

    def __init__(self, config):
        pass

    def run(self, clips: list[Clip]) -> list[Clip]:
        for c in clips:
            seed = _seed(c.source_id, 200 + c.index)
            c.dnsmos_ovrl = round(2.4 + seed % 150 / 100.0, 4)
            c.dnsmos_sig, c.dnsmos_bak = round(c.dnsmos_ovrl + 0.3, 4), round(c.dnsmos_ovrl + 0.6, 4)
            c.chars = len(c.text.replace(" ", ""))
            c.sec_per_char = round(c.duration / c.chars, 5)
            c.speech_prob, c.repeat_ngram_frac, c.overlap_frac = 0.9, 0.0, 0.0
        return clips


def build_stage(name: str, config) -> Stage:
    """``stages.build_stage`` for the stand-ins (passed to the executors as ``stage_builder``)."""
    return {"standardize": Decode, "transcribe": Transcribe, "score": Score}.get(name, lambda c: PassThrough(name))(config)


def make_inputs(folder: Path, n: int, duplicates: int = 0) -> list[Path]:
    """``n`` small input files with their own bytes, plus ``duplicates`` copies of the first ones."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"in{i:03d}.wav"
        p.write_bytes(f"input {i}\n".encode() * 50)
        paths.append(p)
    for i in range(duplicates):
        p = folder / f"copy{i:03d}.wav"
        p.write_bytes(paths[i].read_bytes())
        paths.append(p)
    return paths


def local_factory(config, stages, out, run):
    from emilia_pipe.runners.choice import size_local
    from emilia_pipe.runners.local import LocalExecutor

    return LocalExecutor(size_local(config), stages, out, run, stage_builder=build_stage)


def ray_factory(address: str, executor_class=None):
    """Executors on the Ray cluster at ``address`` running the stand-in stages (pickled by value: the
    workers need not import this file)."""
    import ray.cloudpickle

    from emilia_pipe.runners.ray_executor import RayExecutor

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    cls = executor_class or RayExecutor

    def factory(config, stages, out, run):
        return cls(config, stages, out, run, address=address, log=lambda m: None, stage_builder=build_stage)
    return factory


def run(inputs, out, overrides=(), **kw) -> dict:
    """A build of ``inputs`` with the stand-in stages (local runner unless ``executor_factory``); returns
    the summary."""
    from emilia_pipe.config import load_config
    from emilia_pipe.runners.driver import run_pipeline

    config = load_config(overrides=["run.runner=local", "run.tune_malloc=false", *overrides])
    log = kw.pop("log", lambda m: None)
    factory = kw.pop("executor_factory", local_factory)
    return run_pipeline(list(inputs), out, config, executor_factory=factory, log=log, **kw)


def print_log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: list[str]) -> int:
    import argparse

    p = argparse.ArgumentParser()
    p.add_argument("command", choices=["run"])
    p.add_argument("inputs", nargs="+")
    p.add_argument("-o", "--out", required=True)
    p.add_argument("--set", action="append", default=[], dest="overrides")
    p.add_argument("--ray", metavar="ADDRESS", help="run the stages on this Ray cluster (default: local runner)")
    p.add_argument("--verbose", action="store_true", help="print the run's log")
    args = p.parse_args(argv)
    from emilia_pipe.cli import _EXIT_CODES, EXIT_CODES

    try:
        extra = {"executor_factory": ray_factory(args.ray)} if args.ray else {}
        summary = run(args.inputs, args.out, args.overrides,
                      filter_given=any(o.startswith("filter") for o in args.overrides),
                      log=print_log if args.verbose else (lambda m: None), **extra)
    except EXIT_CODES as exc:  # one line and the command's exit status, as `emilia-pipe run` does
        print(f"emilia-pipe: {exc}", file=sys.stderr)
        return next(code for types, code in _EXIT_CODES if isinstance(exc, types))
    return 1 if summary["this_run"]["failed"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
