"""The hostile-input corpus, generated (no committed binaries), and a stand-in executor that runs the
real standardize stage and writer but no model, so the whole corpus goes through the real planner,
driver, ledger and manifests in seconds.

``EXPECT`` is the outcome of every input: ``done`` (decoded and written), ``failed`` (failures.jsonl)
or ``skipped`` (skipped.jsonl), with the stage and a pattern of the reason."""
from __future__ import annotations

import os
import struct
from pathlib import Path

import av
import numpy as np
import soundfile as sf

SPEECH = Path(__file__).resolve().parent.parent / "sample_data/asr/en/en_ljspeech_LJ001-0001.wav"
GOOD = Path(__file__).resolve().parent.parent / "sample_data/asr/de/de_picovoice_test_de.wav"
NAMES = ["with space.wav", "quote's \"q\".wav", "$(touch pwned).wav", "`touch pwned`.wav", "new\nline.wav",
         "ünïcödé 語.wav", "-leading-dash.wav",
         # names that are not UTF-8 (any bytes but / and NUL are a name): recorded losslessly as file:// URLs
         os.fsdecode(b"bad\xff\xfe name.wav"), os.fsdecode(b"latin1 caf\xe9.wav"),
         # names that look like escapes, URLs, globs or options
         "back\\slash \\xff.wav", "percent %41%2F.wav", "file:colon.wav", "s3:__not_a_url.wav", "glob[ab]*?.wav",
         "tab\tand\rcr.wav", " leading and trailing .wav", "UPPER CASE.WAV", ".hidden.wav", "x" * 245 + ".wav"]
NOT_UTF8 = NAMES[7:9]
NONFINITE = 200  # NaN/Inf samples in nan_few.wav

EXPECT: dict[str, tuple[str, str | None, str | None]] = {
    "good.wav": ("done", None, None),
    "zero_bytes.wav": ("failed", "standardize", r"is empty \(0 bytes\)"),
    "random_bytes.mp3": ("failed", "standardize", r"cannot open|no audio stream|decod"),
    "truncated.wav": ("done", None, None),
    "header_only.wav": ("failed", "standardize", r"decoded to zero samples"),
    "absurd_rate.wav": ("failed", "standardize", r"sample rate 2147483647 Hz is not plausible"),
    "zero_channels.wav": ("failed", "standardize", r"has no channels"),
    "corrupt_frames.flac": ("done", None, None),
    "one_sample.wav": ("failed", "standardize", r"decoded to zero samples"),  # less than one output sample
    "half_second_speech.wav": ("done", None, None),
    "silence_10min.wav": ("done", None, None),
    "dc_offset.wav": ("done", None, None),
    "clipped_square.wav": ("done", None, None),
    "eight_channels.wav": ("done", None, None),
    "float32_192k.wav": ("done", None, None),
    "mulaw_8k.wav": ("done", None, None),
    "video_with_audio.mp4": ("done", None, None),
    "video_no_audio.mp4": ("failed", "standardize", r"has no audio stream"),
    "text.wav": ("failed", "standardize", r"cannot open"),
    "folder.wav": ("skipped", "input", r"is a folder, not an audio file"),
    "loop_a.wav": ("failed", "input", r"is a symlink loop"),
    "loop_b.wav": ("failed", "input", r"is a symlink loop"),
    "dangling.wav": ("failed", "input", r"is a dangling symlink"),
    "sparse_2gb.wav": ("failed", "standardize", r"longer than standardize\.max_duration_s"),
    "nan_few.wav": ("done", None, None),
    "nan_most.wav": ("failed", "standardize", r"NaN/Inf, more than standardize\.max_nonfinite_fraction"),
    "dup_a.wav": ("done", None, None),
    "dup_b.wav": ("skipped", "standardize", r"duplicate"),
    "fifo.wav": ("failed", "input", r"is a FIFO, not a regular file"),
    "unreadable.wav": ("done", None, None),  # root reads it; tests/test_inputs.py runs it unprivileged
    "link_to_good.wav": ("skipped", "input", r"is the same file as .*good\.wav"),
    "outside_file_link.wav": ("done", None, None),  # a link to a file is followed (once)
    "outside_dir_link": ("skipped", "input", r"symlink to a folder: not followed"),
    "mp3_named_wav.wav": ("done", None, None),  # the content decides, not the extension
    "two_streams_first_noise.mkv": ("done", None, None),  # no default stream: the first (recorded: 0 of 2)
    "two_streams_default_second.mkv": ("done", None, None),  # the stream marked default: 1 of 2
    "deep.wav": ("done", None, None),  # a file 40 folders down
    **{n: ("done", None, None) for n in NAMES},
}
# Hostile invocations (the command pointed at special files, odd folders, faults mid-run), each with the test
# that runs it: tests/test_hostile_invocations.py and tests/test_safe_inputs.py.
INVOCATIONS: dict[str, str] = {
    "every command from a folder holding argparse.py, json.py, typing.py, runpy.py, yaml.py, emilia_pipe/":
        "test_no_command_imports_code_from_the_working_folder",
    "Ray workers started from a folder holding colorsys.py": "test_ray_workers_do_not_import_from_the_working_folder",
    "@/dev/zero as an input list": "test_bad_invocations_exit_2_with_one_line",
    "--inputs-from a FIFO nobody writes": "test_bad_invocations_exit_2_with_one_line",
    "an input list in Latin-1": "test_bad_invocations_exit_2_with_one_line",
    "-c /dev/zero": "test_bad_invocations_exit_2_with_one_line",
    "-c a folder": "test_bad_invocations_exit_2_with_one_line",
    "--set with a value that is not YAML": "test_bad_invocations_exit_2_with_one_line",
    "-o ''": "test_bad_invocations_exit_2_with_one_line",
    "-o a path that is not UTF-8": "test_an_empty_output_path_or_one_that_is_not_utf8_is_refused",
    "export into a destination that is not UTF-8": "test_exports_refuse_paths_their_files_cannot_hold",
    "-o a folder of the user's own files": "test_bad_invocations_exit_2_with_one_line",
    "-o /sys/x": "test_bad_invocations_exit_2_with_one_line",
    "a list over inputs.max_list_mb, a config over 16 MiB": "test_lists_over_the_cap_are_refused_before_reading",
    "input lists in UTF-8 with a BOM and UTF-16 with a BOM":
        "test_lists_in_utf8_with_or_without_bom_and_utf16_with_bom_are_read",
    "an input list in UTF-16 without a BOM": "test_lists_in_other_encodings_get_one_line",
    "a config in Latin-1, with a YAML error": "test_configs_that_are_not_yaml_or_utf8_get_one_line",
    "an endless remote input": "test_an_endless_or_stalled_remote_input_fails_alone_and_keeps_the_disk",
    "a remote input that stalls": "test_an_endless_or_stalled_remote_input_fails_alone_and_keeps_the_disk",
    "an endless remote input on a disk with little room": "test_a_remote_input_never_fills_the_output_disk",
    "a name that is not UTF-8 beside a good file, given again as bytes and as its URL":
        "test_a_name_that_is_not_utf8_is_planned_processed_and_recorded_beside_a_good_file",
    "a name that is not UTF-8 on the command line itself": "test_a_name_that_is_not_utf8_on_the_command_line",
    "the output reached through a link, a glob, a link to a file in it, a bind mount":
        "test_the_output_is_never_read_however_it_is_reached",
    "disk full at each write of a run": "test_disk_full_or_a_folder_made_read_only_at_any_write_exits_5_and_resumes",
    "permission denied at each write of a run":
        "test_disk_full_or_a_folder_made_read_only_at_any_write_exits_5_and_resumes",
    "a real full filesystem": "test_a_real_full_disk_exits_5_and_a_read_only_build_still_exports",
    "export of a build on a read-only filesystem": "test_a_real_full_disk_exits_5_and_a_read_only_build_still_exports",
    "the build folder made read-only mid-run": "test_a_folder_made_read_only_mid_run_exits_5_and_resumes",
    "Ctrl-C mid-run": "test_ctrl_c_and_sigterm_stop_cleanly_say_how_to_resume_and_resume",
    "SIGTERM mid-run": "test_ctrl_c_and_sigterm_stop_cleanly_say_how_to_resume_and_resume",
    "kaldi export of a build whose path has a space": "test_exports_refuse_paths_their_files_cannot_hold",
    "list export into a destination with '|' or a line break": "test_exports_refuse_paths_their_files_cannot_hold",
    "lhotse / kaldi export of a build path that is not UTF-8": "test_exports_refuse_paths_their_files_cannot_hold",
    "hf export with word timestamps read by datasets 3.x": "test_hf_features_load_in_datasets_3_and_4",
    "eval --refs a FIFO or /dev/zero": "test_reference_lists_are_user_files_too",
    "an mkv with noise on stream 0 and speech on stream 1, by rule and by setting":
        "test_the_audio_stream_is_chosen_by_rule_or_setting_and_recorded",
    "a long input: deadline from its length": "test_deadlines_grow_with_the_audio_duration",
    "a long input: decoding progress": "test_decoding_a_long_input_reports_progress",
}
STREAMS = {"two_streams_first_noise.mkv": (0, 2), "two_streams_default_second.mkv": (1, 2), "good.wav": (0, 1)}


def _wav_header(rate: int, channels: int, bits: int, data_bytes: int) -> bytes:
    block = channels * bits // 8
    return (b"RIFF" + struct.pack("<I", 36 + data_bytes) + b"WAVEfmt "
            + struct.pack("<IHHIIHH", 16, 1, channels, rate, rate * block, block, bits)
            + b"data" + struct.pack("<I", data_bytes))


def two_stream_mkv(path: Path, first: np.ndarray, second: np.ndarray, rate: int, default: int | None) -> None:
    """A Matroska file with two mono audio streams (FLAC); ``default`` marks one of them as the default."""
    from fractions import Fraction

    with av.open(str(path), "w", format="matroska") as out:
        streams = [out.add_stream("pcm_s16le", rate=rate, layout="mono") for _ in range(2)]
        for i, s in enumerate(streams):
            s.disposition = av.stream.Disposition.default if i == default else av.stream.Disposition(0)
        step = rate // 10
        n = min(first.size, second.size)
        for start in range(0, n, step):
            for s, x in zip(streams, (first, second)):
                chunk = (np.clip(x[start:start + step], -1, 1) * 32767).astype(np.int16).reshape(1, -1)
                frame = av.AudioFrame.from_ndarray(chunk, format="s16", layout="mono")
                frame.sample_rate, frame.pts, frame.time_base = rate, start, Fraction(1, rate)
                for p in s.encode(frame):
                    out.mux(p)
        for s in streams:
            for p in s.encode(None):
                out.mux(p)


def _av_write(path: Path, samples: np.ndarray | None, rate: int, fmt: str, codec: str | None,
              video: bool = False) -> None:
    """Mono audio (and/or a tiny video stream) with PyAV."""
    with av.open(str(path), "w", format=fmt) as out:
        a = out.add_stream(codec, rate=rate, layout="mono") if codec else None
        v = None
        if video:
            v = out.add_stream("mpeg4", rate=10)
            v.width, v.height, v.pix_fmt = 64, 48, "yuv420p"
        if a is not None:
            frame = av.AudioFrame.from_ndarray(samples.astype(np.float32).reshape(1, -1), format="flt", layout="mono")
            frame.sample_rate = rate
            fmt_name = a.codec_context.format.name
            size = a.codec_context.frame_size or 1024
            conv = av.AudioResampler(format=fmt_name, layout="mono", rate=rate, frame_size=size)
            for f in conv.resample(frame) + conv.resample(None):
                for p in a.encode(f):
                    out.mux(p)
            for p in a.encode(None):
                out.mux(p)
        if v is not None:
            for i in range(20):
                img = av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24").reformat(format="yuv420p")
                img.pts = i
                for p in v.encode(img):
                    out.mux(p)
            for p in v.encode(None):
                out.mux(p)


def make_corpus(root: Path) -> Path:
    """Write every hostile input under ``root/in`` (plus ``root/outside`` for links that leave it)."""
    d = root / "in"
    d.mkdir(parents=True)
    outside = root / "outside"
    outside.mkdir()
    speech, rate = sf.read(SPEECH, dtype="float32")
    speech = speech[: 5 * rate]
    rng = np.random.default_rng(0)
    sf.write(d / "good.wav", *sf.read(GOOD, dtype="float32"))
    (d / "zero_bytes.wav").write_bytes(b"")
    (d / "random_bytes.mp3").write_bytes(rng.bytes(50_000))
    sf.write(d / "full.wav", speech, rate, subtype="PCM_16")
    data = (d / "full.wav").read_bytes()
    (d / "full.wav").unlink()
    (d / "truncated.wav").write_bytes(data[: len(data) // 2])
    (d / "header_only.wav").write_bytes(_wav_header(16000, 1, 16, 32000))
    (d / "absurd_rate.wav").write_bytes(_wav_header(2**31 - 1, 1, 16, 2000) + bytes(2000))
    (d / "zero_channels.wav").write_bytes(_wav_header(16000, 0, 16, 2000) + bytes(2000))
    sf.write(d / "corrupt_frames.flac", speech, rate)
    flac = bytearray((d / "corrupt_frames.flac").read_bytes())
    mid = len(flac) // 2
    flac[mid: mid + 4000] = rng.bytes(4000)
    (d / "corrupt_frames.flac").write_bytes(bytes(flac))
    sf.write(d / "one_sample.wav", np.array([0.5], np.float32), 16000)
    sf.write(d / "half_second_speech.wav", speech[rate: rate + rate // 2], rate)
    sf.write(d / "silence_10min.wav", np.zeros(600 * 16000, np.int16), 16000)
    sf.write(d / "dc_offset.wav", 0.5 * speech + 0.4, rate)
    sf.write(d / "clipped_square.wav", np.sign(np.sin(np.arange(2 * 16000) * 2 * np.pi * 220 / 16000)) * 1.0, 16000,
             subtype="PCM_16")
    eight = np.zeros((speech.size, 8), np.float32)
    eight[:, 0] = speech
    sf.write(d / "eight_channels.wav", eight, rate)
    from scipy.signal import resample_poly

    sf.write(d / "float32_192k.wav", resample_poly(speech, 1280, 147).astype(np.float32), 192000, subtype="FLOAT")
    _av_write(d / "mulaw_8k.wav", resample_poly(speech, 320, 882), 8000, "wav", "pcm_mulaw")
    _av_write(d / "video_with_audio.mp4", speech, rate, "mp4", "aac", video=True)
    _av_write(d / "video_no_audio.mp4", None, rate, "mp4", None, video=True)
    (d / "text.wav").write_text("This is a text file, not audio.\n" * 20)
    (d / "folder.wav").mkdir()
    os.symlink("loop_b.wav", d / "loop_a.wav")
    os.symlink("loop_a.wav", d / "loop_b.wav")
    os.symlink("missing_target.wav", d / "dangling.wav")
    with open(d / "sparse_2gb.wav", "wb") as fh:  # 2 GB of 16 kHz 16-bit mono: 17 h, over the tests' 4 h cap
        fh.write(_wav_header(16000, 1, 16, 2 * 10**9 - 44))
        fh.truncate(2 * 10**9)
    nan = speech.copy()
    nan[rng.choice(nan.size, NONFINITE, replace=False)] = [np.nan, np.inf, -np.inf, np.nan] * (NONFINITE // 4)
    sf.write(d / "nan_few.wav", nan, rate, subtype="FLOAT")
    most = speech.copy()
    most[::2] = np.nan
    sf.write(d / "nan_most.wav", most, rate, subtype="FLOAT")
    sf.write(d / "dup_a.wav", speech[: 3 * rate] * 0.8, rate)
    (d / "dup_b.wav").write_bytes((d / "dup_a.wav").read_bytes())
    os.mkfifo(d / "fifo.wav")
    sf.write(d / "unreadable.wav", speech[2 * rate:] * 0.7, rate)
    os.chmod(d / "unreadable.wav", 0)
    os.symlink("good.wav", d / "link_to_good.wav")
    sf.write(outside / "outside_target.wav", speech[: 4 * rate] * 0.6, rate)
    sf.write(outside / "canary.wav", speech[: 4 * rate] * 0.5, rate)  # only reachable through the folder link
    os.symlink(outside / "outside_target.wav", d / "outside_file_link.wav")
    os.symlink(outside, d / "outside_dir_link")
    for i, name in enumerate(NAMES):  # distinct content: each is decoded and written under its own name
        with open(os.path.join(os.fsencode(d), os.fsencode(name)), "wb") as fh:
            noise = (0.01 * np.random.default_rng(i + 1).standard_normal(16000)).astype(np.float32)
            sf.write(fh, noise, 16000, format="WAV")
    _av_write(d / "mp3_named_wav.wav", speech[: 2 * rate] * 0.9, rate, "mp3", "mp3")
    noise = (0.3 * rng.standard_normal(speech.size)).astype(np.float32)
    two_stream_mkv(d / "two_streams_first_noise.mkv", noise, speech, rate, default=None)
    two_stream_mkv(d / "two_streams_default_second.mkv", noise * 0.5, speech * 0.5, rate, default=1)
    deep = d.joinpath(*[f"d{i:02d}" for i in range(40)])
    deep.mkdir(parents=True)
    sf.write(deep / "deep.wav", speech[: rate] * 0.3, rate)
    return d


class StandardizeOnlyExecutor:
    """Real standardize stage and writer, no model: each decoded source is written with no clips. Each
    file runs under a deadline, so an input that blocks fails the test instead of hanging it."""

    def __init__(self, config, stages, out_dir, run):
        from emilia_pipe.dataset.writer import SourceWriter
        from emilia_pipe.stages.standardize import Standardizer

        self.stage = Standardizer(config)
        self.writer = SourceWriter(out_dir, config, f"{run:06d}-w0")

    def submit_file(self, task):
        from emilia_pipe.runners.calls import deadline, finish_file, run_file_stage

        with deadline(30):
            meta, audio = finish_file(run_file_stage(self.stage, task))
        return _Done(meta), _Done(audio)

    def submit_batch(self, clips, audio):  # pragma: no cover - sources have no clips
        raise AssertionError("no clips expected")

    def submit_write(self, job, audio):
        try:
            return _Done(self.writer.write(job, None))
        except Exception as exc:  # noqa: BLE001 - e.g. disk full: that source fails
            return _Done(exc, failed=True)

    def commit_writers(self):
        return [(self.writer.slot, self.writer.commit())]

    def wait(self, handles, timeout=None):
        return list(handles)

    def get(self, handle):
        if handle.failed:
            raise handle.value
        return handle.value

    def cancel(self, handle):
        pass

    def shutdown(self):
        pass


class _Done:
    def __init__(self, value, failed=False):
        self.value, self.failed = value, failed


def outcomes(out: Path) -> dict[str, dict]:
    """input name -> {"outcome": done|failed|skipped, "stage", "reason", "path", "record"} from a build's
    published files (the name is the path relative to the corpus folder)."""
    import json

    def rows(name):
        p = out / name
        return [json.loads(line) for line in p.read_text().splitlines()] if p.exists() else []

    from emilia_pipe.media.inputs import local_path

    def name(path):  # the name on disk, also of a name that is not UTF-8 (recorded as a file:// URL)
        return os.path.basename(local_path(path))

    result = {}
    for r in rows("sources.jsonl"):
        result[name(r["path"])] = {"outcome": "done", "stage": None, "reason": None, "path": r["path"], "record": r}
    for r in rows("failures.jsonl"):
        result[name(r["path"])] = {"outcome": "failed", "stage": r["stage"], "reason": r["error"], "path": r["path"],
                                   "record": r}
    for r in rows("skipped.jsonl"):
        result[name(r["path"])] = {"outcome": "skipped", "stage": r["stage"], "reason": r["reason"],
                                   "path": r["path"], "record": r}
    return result
