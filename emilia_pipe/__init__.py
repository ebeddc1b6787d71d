"""emilia-pipe: raw in-the-wild audio -> Emilia-format speech training data."""
import os
import warnings

# pyannote.audio 4 sends telemetry by default; a data pipeline must not phone home.
os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "false")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# We always hand pyannote in-memory audio, so its torchcodec file decoder is never needed.
warnings.filterwarnings("ignore", message=r"(?s).*torchcodec is not installed correctly.*")

__version__ = "0.1.0"
