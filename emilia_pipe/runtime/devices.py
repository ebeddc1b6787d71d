"""Which device a stage runs on: GPUs present, torch and onnxruntime device choice from the config's
``device`` settings, and one-line notes on stderr when a choice falls back."""
from __future__ import annotations

import sys


class DeviceError(RuntimeError):
    """A stage was told to use a device that is not there."""


def gpu_count() -> int:
    """CUDA devices, asked through CTranslate2 (a light import, unlike torch) where it is installed, else
    through torch (whose count asks NVML and leaves CUDA uninitialised, so forked workers still can use it)."""
    try:
        import ctranslate2
    except ImportError:  # the torch-only install (a GPU image's own torch, no CTranslate2)
        try:
            import torch

            return int(torch.cuda.device_count())
        except Exception:  # noqa: BLE001 - no CUDA runtime at all
            return 0
    try:
        return int(ctranslate2.get_cuda_device_count())
    except Exception:  # noqa: BLE001 - no CUDA runtime at all
        return 0


def torch_device(setting: str, stage: str) -> str:
    """``auto`` -> cuda when torch sees a GPU, else cpu; ``cuda`` without one is an error."""
    import torch

    if setting == "cpu":
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    if setting == "cuda":
        raise DeviceError(f"{stage}.device is cuda but torch sees no CUDA GPU; use {stage}.device=auto or cpu")
    return "cpu"


def onnx_providers(setting: str, available: list[str], gpus: int) -> tuple[list, str | None]:
    """onnxruntime providers for DNSMOS, and why it runs on CPU (None when it runs on CUDA)."""
    why = None
    if setting == "cpu":
        why = "score.device is cpu"
    elif "CUDAExecutionProvider" not in available:
        why = "onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu for it)"
    elif gpus == 0:
        why = "no CUDA GPU is present"
    if why is None:
        # heuristic cuDNN algorithm choice: an exhaustive search would rerun for every new batch shape
        return [("CUDAExecutionProvider", {"cudnn_conv_algo_search": "HEURISTIC"}), "CPUExecutionProvider"], None
    if setting == "cuda":
        raise DeviceError(f"score.device is cuda but {why}")
    return ["CPUExecutionProvider"], why


def note(message: str) -> None:
    """One line to the log (stderr; Ray forwards workers' stderr to the driver)."""
    print(f"[emilia-pipe] {message}", file=sys.stderr, flush=True)
