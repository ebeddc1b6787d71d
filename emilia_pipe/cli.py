"""Command line: ``emilia-pipe run | models | refilter``.

Exit status: 0 = every file went through; 1 = the run finished but some files failed (their count is
printed and in summary.json, their reasons in failures.jsonl); 2 = bad usage or configuration;
3 = a needed model is missing."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from emilia_pipe.config import ConfigError, PipelineConfig, apply_overrides, build_config, load_config
from emilia_pipe.models import ModelUnavailableError, model_statuses


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", action="append", default=[], metavar="FILE", help="YAML config file (repeatable)")
    p.add_argument("--profile", choices=("lite", "full"), help="model profile (default: lite, offline)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override one setting, e.g. --set filter.dnsmos_min=3.2 (repeatable)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="emilia-pipe", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="process audio files/folders into an Emilia-format dataset")
    run.add_argument("inputs", nargs="+", help="audio/video files or folders (searched recursively)")
    run.add_argument("-o", "--out", required=True, help="output dataset folder")
    run.add_argument("--ray-address", help="connect to an existing Ray cluster (default: start a local one)")
    run.add_argument("--runner", choices=("ray", "local"), help="'local' runs every stage in this process, without Ray")
    _config_args(run)

    models = sub.add_parser("models", help="list, verify or fetch the models of a profile")
    models.add_argument("action", choices=("list", "verify", "fetch"))
    _config_args(models)

    refilter = sub.add_parser("refilter", help="re-apply filter thresholds to a finished dataset (no models run)")
    refilter.add_argument("out", help="dataset folder written by 'emilia-pipe run'")
    refilter.add_argument("-c", "--config", action="append", default=[], metavar="FILE")
    refilter.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides")

    _config_args(sub.add_parser("config", help="print the effective configuration (profile, files, overrides applied)"))
    return parser


def _load(args) -> PipelineConfig:
    overrides = list(args.overrides)
    if getattr(args, "runner", None):
        overrides.append(f"run.runner={args.runner}")
    if getattr(args, "ray_address", None):
        overrides.append(f"run.ray_address={args.ray_address}")
    return load_config(args.config, overrides, args.profile)


def cmd_run(args) -> int:
    from emilia_pipe.runners.driver import run_pipeline

    config = _load(args)
    summary = run_pipeline(args.inputs, args.out, config)
    failed = summary["files"]["failed"]
    print(f"dataset written to {args.out} ({summary['clips']['kept']} clips kept, {failed} file(s) failed)")
    return 1 if failed else 0


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
        from emilia_pipe.stages import build_stage
        from emilia_pipe.runners.driver import active_stages

        if all(s.present for s in statuses):
            for name in active_stages(config):
                build_stage(name, config)  # loads each model for real
                print(f"  loaded {name}")
    return 0 if all(s.present for s in statuses) else 3


def cmd_refilter(args) -> int:
    from emilia_pipe.writer import WORK_DIR, finalize, format_summary, write_atomic

    out = Path(args.out)
    stored = out / WORK_DIR / "config.json"
    if not stored.exists():
        raise ConfigError(f"{out} is not a dataset written by emilia-pipe (no {stored})")
    data = json.loads(stored.read_text())
    for f in args.config:
        from emilia_pipe.config import _deep_merge, _read_yaml

        data = _deep_merge(data, _read_yaml(Path(f)))
    config = build_config(apply_overrides(data, args.overrides))
    previous = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else {}
    keep = {k: previous[k] for k in ("wall_seconds", "audio_hours_per_hour", "runner") if k in previous}
    summary = finalize(out, config, keep)
    write_atomic(stored, json.dumps(config.model_dump(mode="json"), indent=2))
    print(format_summary(summary))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return cmd_run(args)
        if args.command == "models":
            return cmd_models(args)
        if args.command == "refilter":
            return cmd_refilter(args)
        if args.command == "config":
            import yaml

            print(yaml.safe_dump(_load(args).model_dump(mode="json"), sort_keys=False))
            return 0
    except ConfigError as exc:
        print(f"emilia-pipe: {exc}", file=sys.stderr)
        return 2
    except ModelUnavailableError as exc:
        print(f"emilia-pipe: model missing:\n{exc}", file=sys.stderr)
        return 3
    except FileNotFoundError as exc:
        print(f"emilia-pipe: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
