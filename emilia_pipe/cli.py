"""Command line: ``emilia-pipe run | status | refilter | repair | eval | export | models | config``.

Exit status: 0 = every file went through; 1 = the run finished but some files of this run failed (their
count is printed and in summary.json, their reasons in failures.jsonl); 2 = bad usage or configuration
(also: resuming a build with other settings; an input that names nothing; a list or config that is not a
regular UTF-8 / UTF-16 file or is too large; an output that is empty, a file, read-only, or a folder of
other files without --force); 3 = a needed model is missing; 4 = the build folder is in use by another
run; 5 = the output could not be written (disk full, a folder made read-only, any other write error): the
same command resumes the build; 6 = the build folder's own state is damaged (the message names the file and
the fix, most often `emilia-pipe repair OUT`); 130 / 143 = stopped by Ctrl-C / SIGTERM: what was committed
is kept and the same command resumes. Every error is one line on stderr, never a traceback."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import sys
import time
from pathlib import Path

from emilia_pipe.config import ConfigError, PipelineConfig, apply_overrides, build_config, load_config
from emilia_pipe.dataset.errors import DamagedStateError
from emilia_pipe.dataset.fingerprint import BuildMismatchError
from emilia_pipe.dataset.lock import BuildLockedError
from emilia_pipe.media.inputs import InputError, OutputError
from emilia_pipe.models.refs import ModelUnavailableError
from emilia_pipe.models.registry import model_statuses
from emilia_pipe.runners.ray_executor import ResourcePlanError
from emilia_pipe.runtime.files import DISK_FULL, NOT_WRITABLE, output_fault
from emilia_pipe.runtime.userfiles import shown


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", action="append", default=[], metavar="FILE", help="YAML config file (repeatable)")
    p.add_argument("--profile", choices=("lite", "full"), help="model profile (default: lite, offline)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override one setting, e.g. --set filter.dnsmos_min=3.2 (repeatable)")


def _parser() -> argparse.ArgumentParser:
    from emilia_pipe import __version__

    parser = argparse.ArgumentParser(prog="emilia-pipe", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"emilia-pipe {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="process audio files/folders into an Emilia-format dataset")
    run.add_argument("inputs", nargs="*", help="audio/video files, folders (searched recursively), quoted globs "
                     "('data/**/*.wav'), @LIST files (one path or URL a line) or URLs (s3://, gs://, https://)")
    run.add_argument("--inputs-from", action="append", default=[], metavar="FILE",
                     help="read inputs from FILE, one path or URL a line, # comments (repeatable)")
    run.add_argument("-o", "--out", required=True, help="output dataset folder")
    run.add_argument("--ray-address", help="connect to an existing Ray cluster (default: start a local one)")
    run.add_argument("--runner", choices=("auto", "ray", "local"),
                     help="'local' runs every stage in this process, without Ray; 'auto' (default) picks local on a "
                          "CPU machine, ray with a GPU or --ray-address")
    run.add_argument("--allow-config-change", action="store_true",
                     help="resume a build whose settings or model versions differ from this run's")
    run.add_argument("--force", action="store_true",
                     help="write the build into an existing folder of other files (refused otherwise; files of the "
                          "build's names there, e.g. summary.json, are replaced)")
    run.add_argument("--drop-missing", action="store_true",
                     help="withdraw from the published tree the clips of inputs that are no longer on disk "
                          "(by default they stay published, and status reports the inputs as missing)")
    _config_args(run)

    st = sub.add_parser("status", help="done / failed / pending sources and hours of a build")
    st.add_argument("out", help="dataset folder written by 'emilia-pipe run'")
    st.add_argument("--json", action="store_true", help="print JSON")

    models = sub.add_parser("models", help="list, verify or fetch the models of a profile")
    models.add_argument("action", choices=("list", "verify", "fetch"))
    _config_args(models)

    refilter = sub.add_parser("refilter", help="re-apply filter thresholds to a finished dataset (no models run)")
    refilter.add_argument("out", help="dataset folder written by 'emilia-pipe run'")
    refilter.add_argument("-c", "--config", action="append", default=[], metavar="FILE")
    refilter.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides")
    refilter.add_argument("--drop-missing", action="store_true",
                          help="also withdraw the clips of inputs that are no longer on disk")

    rep = sub.add_parser("repair", help="set aside damaged build state (unreadable ledger parts, build.json, "
                         "publish.json) so that the next run redoes what it held")
    rep.add_argument("out", help="dataset folder written by 'emilia-pipe run'")
    _config_args(rep)

    ev = sub.add_parser("eval", help="WER/CER per language and DER of a build against your labelled references")
    ev.add_argument("out", help="dataset folder written by 'emilia-pipe run'")
    ev.add_argument("--refs", action="append", required=True, metavar="REFS",
                    help="a transcript list (TSV: path-or-id<TAB>text, or with a header as sample_data/asr_references.tsv) "
                         "or a folder of .rttm files matched to sources by file stem (repeatable)")
    ev.add_argument("--json", action="store_true", help="print JSON")

    exp = sub.add_parser("export", help="export the kept clips of a finished build for training code")
    exp.add_argument("out", help="dataset folder written by 'emilia-pipe run'")
    exp.add_argument("--format", required=True, metavar="NAME", dest="fmt",
                     help="webdataset, lhotse, hf, kaldi, list, f5tts, duplex or text (see README)")
    exp.add_argument("-o", "--dest", required=True, help="new (or empty) folder to write")
    exp.add_argument("--clips-per-shard", type=int, default=2000, help="clips per tar / Parquet / Shar shard")

    _config_args(sub.add_parser("config", help="print the effective configuration (profile, files, overrides applied)"))
    return parser


def _load(args) -> PipelineConfig:
    overrides = list(args.overrides)
    if getattr(args, "runner", None):
        overrides.append(f"run.runner={args.runner}")
    if getattr(args, "ray_address", None):
        overrides.append(f"run.ray_address={args.ray_address}")
    return load_config(args.config, overrides, args.profile)


def cmd_run(args, restart_argv: list[str] | None = None) -> int:
    from emilia_pipe.runners.choice import restart_tuned_if_local
    from emilia_pipe.runners.driver import run_pipeline

    inputs = list(args.inputs) + [f"@{f}" for f in args.inputs_from]
    if not inputs:
        raise InputError("no inputs given; name files, folders, globs or URLs, or use --inputs-from FILE")
    config = _load(args)
    if restart_argv is not None:  # the models' threads must find malloc tuned from the first allocation
        restart_tuned_if_local(config, ["-c", RESTART_CODE, *restart_argv])
    summary = run_pipeline(inputs, args.out, config, allow_config_change=args.allow_config_change,
                           force_output=args.force, filter_given=_filter_given(args),
                           drop_missing=args.drop_missing)
    failed = summary["this_run"]["failed"]
    print(f"dataset written to {shown(args.out)} ({summary['clips']['kept']} clips kept, {failed} file(s) failed in "
          f"this run, {summary['files']['failed']} failed in the build)")
    return 1 if failed else 0


def _filter_given(args) -> bool:
    """Whether this command was given filter settings (``--set filter.*`` or a ``filter:`` section of a
    config file): only then does a run replace the filter settings in force in its build."""
    from emilia_pipe.config import _deep_merge, _read_yaml

    user: dict = {}
    for f in args.config:
        user = _deep_merge(user, _read_yaml(Path(f)))
    return "filter" in apply_overrides(user, args.overrides)


def cmd_status(args) -> int:
    from emilia_pipe.dataset.build import status
    from emilia_pipe.dataset.ledger import is_build

    if not is_build(args.out):
        raise ConfigError(f"{args.out} is not a dataset written by emilia-pipe (no .emilia/build.json)")
    st = status(args.out)
    if args.json:
        print(json.dumps(st, indent=2))
        return 0
    s = st["sources"]
    print(f"{args.out}: {s['planned']} planned, {s['done']} done ({st['hours_done']:.3f} h), {s['failed']} failed, "
          f"{s['pending']} pending ({st['pending_bytes'] / 2**30:.2f} GiB), {s['skipped']} skipped (duplicates), "
          f"{s['missing']} missing (input gone), {s['withdrawn']} withdrawn (input changed or dropped); "
          f"{st['runs']} run(s)")
    if st["incomplete"]:
        print(f"  {st['incomplete']} source(s) lost their clips part: pending, the next run redoes them")
    for stage, n in st["failed_by_stage"].items():
        print(f"  failed at {stage}: {n}")
    if st["publish"]["unfinished"]:
        print(f"  the last publish (generation {st['publish']['generation']}) did not finish: the next run, refilter "
              "or export completes it first")
    return 0


def cmd_models(args) -> int:
    config = _load(args)
    statuses = model_statuses(config, download=args.action == "fetch")
    print(f"profile: {config.profile}")
    for s in statuses:
        mark = "ok     " if s.present else "MISSING"
        print(f"  {mark} {s.role:<12} {s.ref:<48} [{s.origin}] {s.location}")
        if s.note:
            print(f"          {s.note}")
    if args.action == "verify":
        from emilia_pipe.runners.choice import active_stages
        from emilia_pipe.stages import build_stage

        if all(s.present for s in statuses):
            for name in active_stages(config):
                build_stage(name, config)  # loads each model for real
                print(f"  loaded {name}")
    return 0 if all(s.present for s in statuses) else 3


def cmd_export(args) -> int:
    from emilia_pipe.exports import export

    stats = export(args.out, args.fmt, args.dest, args.clips_per_shard)
    print(f"{args.fmt} export written to {args.dest}: " + ", ".join(f"{v} {k}" for k, v in stats.items()))
    return 0


def cmd_refilter(args) -> int:
    from emilia_pipe.config import _deep_merge, _read_yaml
    from emilia_pipe.dataset.build import status
    from emilia_pipe.dataset.ledger import Ledger, read_build_info, write_build_info
    from emilia_pipe.dataset.lock import BuildLock
    from emilia_pipe.dataset.planning import drop_missing
    from emilia_pipe.dataset.publish import finalize
    from emilia_pipe.dataset.summary import format_summary
    from emilia_pipe.records import STATE_DIR

    out = Path(args.out)
    if read_build_info(out) is None:
        raise ConfigError(f"{out} is not a dataset written by emilia-pipe (no {out / STATE_DIR / 'build.json'})")
    change: dict = {}
    for f in args.config:
        change = _deep_merge(change, _read_yaml(Path(f)))
    change = apply_overrides(change, args.overrides)
    other = sorted(k for k in change if k != "filter")
    if other:
        raise ConfigError(f"refilter changes only filter.* settings (got {', '.join(other)}); "
                          "other settings shape the clips and need a new run")
    with BuildLock(out, "refilter"):
        info = read_build_info(out)  # under the lock: a run may have changed it since
        config = build_config(_deep_merge(info["config"], change))
        previous = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else {}
        keep = {k: previous[k] for k in ("wall_seconds", "audio_hours_per_hour", "runner", "this_run") if k in previous}
        # the settings first: a kill before the publish below is done leaves them to the next run's publish
        info["config"] = config.model_dump(mode="json")
        info["filter"] = {"settings": info["config"]["filter"], "set_by": f"refilter {time.strftime('%Y-%m-%d %H:%M:%S')}"}
        write_build_info(out, info)
        if args.drop_missing:
            drop_missing(Ledger(out), len(info["runs"]), lambda m: print(m, file=sys.stderr))
        summary = finalize(out, config, keep, log=lambda m: print(m, file=sys.stderr))
        st = status(out)
    print(format_summary(summary))
    open_work = st["sources"]["pending"] + st["sources"]["missing"]
    if open_work:  # never a silent "done": say what the published clips leave out
        print(f"emilia-pipe: {open_work} planned source(s) are not done ({st['sources']['pending']} pending, "
              f"{st['sources']['missing']} missing; {st['incomplete']} lost their clips part): the published clips "
              "leave them out; run the build again to process them", file=sys.stderr)
    return 0


def cmd_repair(args) -> int:
    from emilia_pipe.dataset.repair import repair

    given = args.config or args.overrides or args.profile
    done = repair(args.out, _load(args) if given else None)
    print("\n".join(done) if done else f"{args.out}: nothing to repair")
    return 0


def cmd_eval(args) -> int:
    from emilia_pipe.dataset.evaluation import evaluate, format_report
    from emilia_pipe.dataset.ledger import is_build

    if not is_build(args.out):
        raise ConfigError(f"{args.out} is not a dataset written by emilia-pipe (no .emilia/build.json)")
    try:
        report = evaluate(args.out, args.refs)
    except ValueError as exc:  # a malformed reference list
        raise ConfigError(str(exc)) from None
    print(json.dumps(report, indent=2, ensure_ascii=False) if args.json else format_report(report))
    return 0


# errors that end a command with a one-line message (no traceback) and a documented exit status
_EXIT_CODES = (
    ((ConfigError, BuildMismatchError, ResourcePlanError, FileNotFoundError, InputError, OutputError), 2),
    ((ModelUnavailableError,), 3),
    ((BuildLockedError,), 4),
    ((DamagedStateError,), 6),
)
EXIT_CODES = tuple(t for types, _ in _EXIT_CODES for t in types)
STOPPED = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + the signal, as a shell reports it


class Stopped(KeyboardInterrupt):
    """SIGTERM, raised where the process is, so that the same cleanup as for Ctrl-C runs."""

    signum = signal.SIGTERM


# What the restarted process runs. Not `python -m emilia_pipe.cli`: -m and -c put the working folder first on
# sys.path (as ''), so an argparse.py or json.py lying in the folder a user runs from would be imported and
# run. The code below takes that entry out before it imports anything.
RESTART_CODE = ("import sys\n"
                "if sys.path and sys.path[0] == '': del sys.path[0]\n"
                "from emilia_pipe.cli import main\n"
                "sys.exit(main(sys.argv[1:]))\n")


def console_main() -> int:
    """The ``emilia-pipe`` command: ``main``, which may restart the process once to tune glibc's malloc."""
    return main(sys.argv[1:], may_restart=True)


def _dispatch(args, argv: list[str] | None, may_restart: bool) -> int:
    if args.command == "run":
        return cmd_run(args, (sys.argv[1:] if argv is None else argv) if may_restart else None)
    if args.command == "config":
        import yaml

        print(yaml.safe_dump(_load(args).model_dump(mode="json"), sort_keys=False))
        return 0
    return {"models": cmd_models, "refilter": cmd_refilter, "status": cmd_status, "eval": cmd_eval,
            "repair": cmd_repair, "export": cmd_export}[args.command](args)


def main(argv: list[str] | None = None, may_restart: bool = False) -> int:
    for stream in (sys.stdout, sys.stderr):  # a name with bytes that are not UTF-8 is printed, not a crash
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(errors="backslashreplace")
    args = _parser().parse_args(argv)
    previous = _raise_on_sigterm()
    try:
        return _dispatch(args, argv, may_restart)
    except EXIT_CODES as exc:
        if isinstance(exc, FileNotFoundError) and output_fault(exc) is None and _writing(exc, args):
            return _cannot_write(exc, args)
        code = next(c for types, c in _EXIT_CODES if isinstance(exc, types))
        prefix = "model missing:\n" if isinstance(exc, ModelUnavailableError) else ""
        print(f"emilia-pipe: {prefix}{exc}", file=sys.stderr)
        return code
    except KeyboardInterrupt as exc:
        signum = getattr(exc, "signum", signal.SIGINT)
        what = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
        again = "emilia-pipe " + shlex.join(sys.argv[1:] if argv is None else argv)
        done = ("the files finished so far are kept; to resume, run the same command again: " if args.command == "run"
                else "nothing half-written was left; run it again: ")
        print(f"emilia-pipe: stopped by {what}; {done}{again}", file=sys.stderr)
        return STOPPED[signum]
    except OSError as exc:
        return _cannot_write(exc, args)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _raise_on_sigterm():
    """SIGTERM stops the command like Ctrl-C (exit 143); returns the handler to put back (None: not the main
    thread, where no handler can be set)."""
    def stop(signum, frame):
        raise Stopped()

    try:
        return signal.signal(signal.SIGTERM, stop)
    except ValueError:
        return None


def _writing(exc: OSError, args) -> bool:
    """Whether a missing file is one of the output's (a folder removed under a running build), not an input."""
    out = getattr(args, "dest", None) or getattr(args, "out", None)
    name = getattr(exc, "filename", None)
    if not out or not name:
        return False
    return os.path.abspath(str(name)).startswith(os.path.abspath(str(out)) + os.sep)


def _cannot_write(exc: OSError, args) -> int:
    """Exit 5, one line: the output could not be written. Every file of a build is published by rename, so the
    build stays whole and the same command resumes it."""
    fault = output_fault(exc) or exc
    where = f" ({shown(fault.filename)})" if getattr(fault, "filename", None) else ""
    reason = fault.strerror or str(fault)
    if fault.errno in DISK_FULL:
        fix = "free space"
    elif fault.errno in NOT_WRITABLE:
        fix = "make the folder writable (read-only or no permission)"
    else:
        fix = "fix the folder"
    resume = ", the build resumes where it stopped" if args.command == "run" else ""
    print(f"emilia-pipe: cannot write the output: {reason}{where}; {fix} and run the same command again{resume}",
          file=sys.stderr)
    return 5


if __name__ == "__main__":
    sys.exit(main())
