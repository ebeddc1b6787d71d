"""Make CUDA 12 cuBLAS and cuDNN 9 visible to CTranslate2 before it runs on a GPU.

CTranslate2's wheels are built against CUDA 12: they ``dlopen`` ``libcublas.so.12`` (and cuDNN 9 for
convolutions) at run time. A machine whose system CUDA is 13 has neither, but torch's CUDA 12 wheels
install them as pip packages (``nvidia-cublas-cu12``, ``nvidia-cudnn-cu12``) under
``site-packages/nvidia/<package>/lib``, a folder the dynamic loader does not search. Loading them once
with ``RTLD_GLOBAL``, each after the libraries it needs, makes CTranslate2's later ``dlopen`` by name
find the copies already in the process.

:func:`preload_cuda_libs` does that and reports what it loaded. A required library found in no
site-packages folder is left to the system loader (a CUDA 12 install on ``LD_LIBRARY_PATH`` works as
before); when that fails too, :class:`CudaLibraryError` says to
``pip install nvidia-cublas-cu12 nvidia-cudnn-cu12``. Nothing is loaded unless it is called, and the
transcribe stage calls it only for CTranslate2 on cuda, so a machine without a GPU never loads them.
"""
from __future__ import annotations

import ctypes
import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional

PIP_HINT = "pip install nvidia-cublas-cu12 nvidia-cudnn-cu12"

# (pip package folder under nvidia/, library, required) in load order: each one's own dependencies
# (readelf NEEDED) come before it. The cuDNN 9 sub-libraries are opened by libcudnn.so.9 on demand;
# preloading them spares the loader a search it would fail. nvrtc serves cuDNN's runtime-compiled engines.
LIBRARIES = (
    ("cuda_runtime", "libcudart.so.12", False),
    ("cublas", "libcublasLt.so.12", True),
    ("cublas", "libcublas.so.12", True),
    ("cuda_nvrtc", "libnvrtc.so.12", False),
    ("cudnn", "libcudnn_graph.so.9", False),
    ("cudnn", "libcudnn_engines_precompiled.so.9", False),
    ("cudnn", "libcudnn_engines_runtime_compiled.so.9", False),
    ("cudnn", "libcudnn_heuristic.so.9", False),
    ("cudnn", "libcudnn_ops.so.9", False),
    ("cudnn", "libcudnn_cnn.so.9", False),
    ("cudnn", "libcudnn_adv.so.9", False),
    ("cudnn", "libcudnn.so.9", True),
)


class CudaLibraryError(RuntimeError):
    """A CUDA library CTranslate2 needs cannot be loaded; the message says which and how to get it."""


@dataclass
class PreloadReport:
    loaded: list[str] = field(default_factory=list)  # paths loaded from site-packages
    from_system: list[str] = field(default_factory=list)  # required libraries the system loader found
    searched: list[str] = field(default_factory=list)  # the nvidia/ folders looked in

    @property
    def message(self) -> str:
        parts = []
        if self.loaded:
            parts.append(f"preloaded {len(self.loaded)} CUDA libraries from site-packages ({', '.join(self.loaded)})")
        if self.from_system:
            parts.append(f"{', '.join(self.from_system)} not in site-packages (looked in "
                         f"{', '.join(self.searched) or 'no nvidia/ folder'}); using the system's copy "
                         f"(to use pip's: {PIP_HINT})")
        return "; ".join(parts) or "no CUDA libraries needed loading"


def nvidia_roots(paths: Optional[Iterable[str]] = None) -> list[Path]:
    """The ``nvidia`` folders of site-packages, in import order: the ``nvidia`` namespace package's
    locations when ``paths`` is None (sys.path otherwise scanned as well), else ``<path>/nvidia``."""
    candidates: list[Path] = []
    if paths is None:
        spec = importlib.util.find_spec("nvidia")
        if spec is not None and spec.submodule_search_locations:
            candidates += [Path(p) for p in spec.submodule_search_locations]
        paths = sys.path
    candidates += [Path(p) / "nvidia" for p in paths if p]
    roots: list[Path] = []
    for root in candidates:
        if root.is_dir() and root.resolve() not in [r.resolve() for r in roots]:
            roots.append(root)
    return roots


def find_cuda_libs(paths: Optional[Iterable[str]] = None) -> tuple[list[tuple[str, Optional[Path], bool]], list[Path]]:
    """Each library of LIBRARIES with the first copy found (None when none), and the folders searched."""
    roots = nvidia_roots(paths)
    found = []
    for package, name, required in LIBRARIES:
        path = next((r / package / "lib" / name for r in roots if (r / package / "lib" / name).is_file()), None)
        found.append((name, path, required))
    return found, roots


_loaded: dict[str, object] = {}  # path -> handle: loaded once per process, kept open


def preload_cuda_libs(paths: Optional[Iterable[str]] = None,
                      loader: Optional[Callable[..., object]] = None) -> PreloadReport:
    """Load the CUDA 12 libraries CTranslate2 needs, from site-packages where they are (see module doc).
    ``paths``: folders to look in instead of sys.path; ``loader``: ctypes.CDLL unless given."""
    loader = loader or ctypes.CDLL
    found, roots = find_cuda_libs(paths)
    report = PreloadReport(searched=[str(r) for r in roots])
    for name, path, required in found:
        if path is None:
            if required:
                try:  # a system install (LD_LIBRARY_PATH, ldconfig) serves as well
                    _loaded.setdefault(name, loader(name, mode=ctypes.RTLD_GLOBAL))
                except OSError as exc:
                    raise CudaLibraryError(
                        f"CTranslate2 on cuda needs {name} (CUDA 12), found neither in site-packages (looked in "
                        f"{', '.join(report.searched) or 'no nvidia/ folder'}) nor by the system loader ({exc}). "
                        f"Install it: {PIP_HINT}; or use transcribe.backend=torch or transcribe.device=cpu"
                    ) from None
                report.from_system.append(name)
            continue
        key = str(path)
        if key not in _loaded:
            try:
                _loaded[key] = loader(key, mode=ctypes.RTLD_GLOBAL)
            except OSError as exc:
                raise CudaLibraryError(
                    f"cannot load {path} ({exc}); the CUDA 12 pip libraries look broken or incomplete: "
                    f"reinstall them ({PIP_HINT} --force-reinstall)"
                ) from None
        report.loaded.append(key)
    return report
