"""cuda_libs: finding CUDA 12 cuBLAS / cuDNN 9 in (fake) site-packages and preloading them in order."""
import ctypes

import pytest

from emilia_pipe.runtime import cuda_libs
from emilia_pipe.runtime.cuda_libs import LIBRARIES, CudaLibraryError, find_cuda_libs, preload_cuda_libs


def _site(root, libs):
    """A fake site-packages with dummy nvidia/<package>/lib/<library> files."""
    for package, name in libs:
        lib = root / "nvidia" / package / "lib"
        lib.mkdir(parents=True, exist_ok=True)
        (lib / name).write_bytes(b"")
    return str(root)


ALL = [(p, n) for p, n, _ in LIBRARIES]
REQUIRED = [(p, n) for p, n, r in LIBRARIES if r]


@pytest.fixture(autouse=True)
def fresh_process(monkeypatch):
    monkeypatch.setattr(cuda_libs, "_loaded", {})  # as if nothing was loaded in this process yet


class Recorder:
    def __init__(self, fail=()):
        self.calls, self.fail = [], fail

    def __call__(self, name, mode=0):
        assert mode == ctypes.RTLD_GLOBAL  # later dlopen by name must see them
        self.calls.append(name)
        if any(name.endswith(f) for f in self.fail):
            raise OSError(f"{name}: cannot open shared object file")
        return object()


def test_every_library_loads_from_site_packages_in_dependency_order(tmp_path):
    site = _site(tmp_path / "site", ALL)
    loader = Recorder()
    report = preload_cuda_libs([site], loader=loader)
    names = [c.rsplit("/", 1)[1] for c in loader.calls]
    assert names == [n for _, n in ALL]
    assert names.index("libcublasLt.so.12") < names.index("libcublas.so.12")
    assert names.index("libcudnn_graph.so.9") < names.index("libcudnn_ops.so.9") < names.index("libcudnn_cnn.so.9")
    assert report.loaded == loader.calls and not report.from_system
    assert "preloaded 12 CUDA libraries" in report.message


def test_the_first_site_packages_in_path_order_wins_per_library(tmp_path):
    first = _site(tmp_path / "user", [("cublas", "libcublasLt.so.12"), ("cublas", "libcublas.so.12")])
    second = _site(tmp_path / "venv", ALL)
    found, roots = find_cuda_libs([str(tmp_path / "nothing"), first, second])
    where = {name: path for name, path, _ in found}
    assert roots == [tmp_path / "user" / "nvidia", tmp_path / "venv" / "nvidia"]
    assert where["libcublas.so.12"] == tmp_path / "user/nvidia/cublas/lib/libcublas.so.12"
    assert where["libcudnn.so.9"] == tmp_path / "venv/nvidia/cudnn/lib/libcudnn.so.9"  # only there
    # a duplicate entry (same folder twice on sys.path) is searched once
    assert find_cuda_libs([first, first])[1] == [tmp_path / "user" / "nvidia"]


def test_optional_libraries_are_skipped_when_absent(tmp_path):
    site = _site(tmp_path / "site", REQUIRED)
    loader = Recorder()
    report = preload_cuda_libs([site], loader=loader)
    assert [c.rsplit("/", 1)[1] for c in loader.calls] == ["libcublasLt.so.12", "libcublas.so.12", "libcudnn.so.9"]
    assert len(report.loaded) == 3


def test_loading_twice_opens_each_library_once(tmp_path):
    site = _site(tmp_path / "site", REQUIRED)
    loader = Recorder()
    preload_cuda_libs([site], loader=loader)
    again = preload_cuda_libs([site], loader=loader)
    assert len(loader.calls) == 3 and len(again.loaded) == 3


def test_none_in_site_packages_falls_back_to_the_system_loader(tmp_path):
    loader = Recorder()
    report = preload_cuda_libs([str(tmp_path)], loader=loader)
    assert loader.calls == ["libcublasLt.so.12", "libcublas.so.12", "libcudnn.so.9"]  # bare names: dlopen searches
    assert report.from_system == loader.calls and not report.loaded
    assert "pip install nvidia-cublas-cu12 nvidia-cudnn-cu12" in report.message


def test_missing_everywhere_names_the_pip_packages(tmp_path):
    with pytest.raises(CudaLibraryError) as err:
        preload_cuda_libs([str(tmp_path)], loader=Recorder(fail=("libcublasLt.so.12",)))
    msg = str(err.value)
    assert "libcublasLt.so.12" in msg and "pip install nvidia-cublas-cu12 nvidia-cudnn-cu12" in msg
    assert "transcribe.device=cpu" in msg


def test_a_broken_library_in_site_packages_is_a_clear_error(tmp_path, monkeypatch):
    site = _site(tmp_path / "site", ALL)

    def broken(name, mode=0):
        if name.endswith("libcudnn_ops.so.9"):
            raise OSError("libcudnn_ops.so.9: invalid ELF header")
        return object()

    monkeypatch.setattr(ctypes, "CDLL", broken)
    with pytest.raises(CudaLibraryError, match=r"cannot load .*libcudnn_ops\.so\.9 \(.*invalid ELF header\).*reinstall"):
        preload_cuda_libs([site])


def test_pick_device_preloads_only_for_ctranslate2_on_cuda(monkeypatch):
    from emilia_pipe.stages import transcribe

    calls = []
    monkeypatch.setattr(cuda_libs, "preload_cuda_libs", lambda: calls.append(1) or cuda_libs.PreloadReport())
    assert transcribe.pick_device("cpu") == "cpu" and not calls
    assert transcribe.pick_device("cuda", "torch") == "cuda" and not calls
    assert transcribe.pick_device("cuda") == "cuda" and calls == [1]
    import ctranslate2

    monkeypatch.setattr(ctranslate2, "get_cuda_device_count", lambda: 1)  # auto-pick on a GPU machine
    assert transcribe.pick_device("auto") == "cuda" and calls == [1, 1]
    monkeypatch.setattr(ctranslate2, "get_cuda_device_count", lambda: 0)
    assert transcribe.pick_device("auto") == "cpu" and calls == [1, 1]
