"""Command line: ``emilia-pipe run | status | refilter | repair | eval | export | models | config``.

Exit status: 0 = every file went through; 1 = the run finished but some files of this run failed (their
count is printed and in summary.json, their reasons in failures.jsonl); 2 = bad usage or configuration
(also: resuming a build with other settings; an input that names nothing; an output that is a file or
read-only); 3 = a needed model is missing; 4 = the build folder is in use by another run; 5 = the output
could not be written (disk full): the same command resumes the build; 6 = the build folder's own state is
damaged (the message names the file and the fix, most often `emilia-pipe repair OUT`)."""
from __future__ import annotations

import argparse
import errno
import json
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
        restart_tuned_if_local(config, ["-m", "emilia_pipe.cli", *restart_argv])
    summary = run_pipeline(inputs, args.out, config, allow_config_change=args.allow_config_change,
                           filter_given=_filter_given(args), drop_missing=args.drop_missing)
    failed = summary["this_run"]["failed"]
    print(f"dataset written to {args.out} ({summary['clips']['kept']} clips kept, {failed} file(s) failed in this run, "
          f"{summary['files']['failed']} failed in the build)")
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
        summary = finalize(out, config, keep)
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
_WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG)  # exit 5: the output could not be written


def console_main() -> int:
    """The ``emilia-pipe`` command: ``main``, which may restart the process once to tune glibc's malloc."""
    return main(sys.argv[1:], may_restart=True)


def main(argv: list[str] | None = None, may_restart: bool = False) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return cmd_run(args, (sys.argv[1:] if argv is None else argv) if may_restart else None)
        if args.command == "models":
            return cmd_models(args)
        if args.command == "refilter":
            return cmd_refilter(args)
        if args.command == "status":
            return cmd_status(args)
        if args.command == "eval":
            return cmd_eval(args)
        if args.command == "repair":
            return cmd_repair(args)
        if args.command == "export":
            return cmd_export(args)
        if args.command == "config":
            import yaml

            print(yaml.safe_dump(_load(args).model_dump(mode="json"), sort_keys=False))
            return 0
    except EXIT_CODES as exc:
        code = next(c for types, c in _EXIT_CODES if isinstance(exc, types))
        prefix = "model missing:\n" if isinstance(exc, ModelUnavailableError) else ""
        print(f"emilia-pipe: {prefix}{exc}", file=sys.stderr)
        return code
    except OSError as exc:
        if exc.errno not in _WRITE_ERRNOS:
            raise
        # the build stays consistent (every file is published by rename): the same command resumes it
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"emilia-pipe: cannot write the output: {exc.strerror or exc}{where}; free space (or fix the folder) "
              "and run the same command again, the build resumes", file=sys.stderr)
        return 5
    return 0


if __name__ == "__main__":
    sys.exit(main())  # also the restarted process (restart_tuned runs `python -m emilia_pipe.cli`)
