"""emilia-pipe: raw in-the-wild audio -> Emilia-format speech training data."""
import os
import warnings

# pyannote.audio 4 sends telemetry by default; a data pipeline must not phone home.
os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "false")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# OpenMP threads that spin at barriers collapse (tens of times slower) when another busy process
# shares the cores, as Ray actors on a small machine do. Must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# We always hand pyannote in-memory audio, so its torchcodec file decoder is never needed.
warnings.filterwarnings("ignore", message=r"(?s).*torchcodec is not installed correctly.*")

__version__ = "0.1.0"
