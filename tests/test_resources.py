"""Devices and the Ray resource plan for GPU nodes (no GPU needed: pure arithmetic and monkeypatching)."""
import pytest

from emilia_pipe.config import ConfigError, load_config
from emilia_pipe.runners.ray_executor import check_plan
from emilia_pipe.runners.resources import GPU_SHARES, plan_resources, planned_config
from emilia_pipe.runtime.devices import DeviceError, onnx_providers, torch_device
from emilia_pipe.stages import STAGE_NAMES

FULL = list(STAGE_NAMES)
NO_SEPARATION = [s for s in STAGE_NAMES if s != "separate"]
PER_FILE = ("standardize", "separate", "diarize", "segment")


@pytest.mark.parametrize("gpus", [0, 1, 2, 8])
@pytest.mark.parametrize("cpus", [1, 2, 4, 8, 16, 32, 64, 128])
@pytest.mark.parametrize("stages", [FULL, NO_SEPARATION])
def test_plan_fits_the_node(gpus, cpus, stages):
    plan = plan_resources(gpus, cpus, stages)
    r = plan.resources
    assert set(r) == {*stages, "write"}
    assert all(p.actors >= 1 and p.num_cpus > 0 for p in r.values())
    cpu_total = sum(p.actors * p.num_cpus for p in r.values())
    assert cpu_total <= cpus + 1e-9
    if cpus >= 4:
        assert cpu_total <= cpus - 1 + 1e-9  # a core for the driver and Ray
    if cpus >= 8:
        assert cpu_total >= 0.6 * cpus  # the cores are used, not left idle
    gpu_pools = [s for s in stages if r[s].num_gpus > 0]
    if gpus == 0:
        assert not gpu_pools
    else:
        assert gpu_pools == [s for s in GPU_SHARES if s in stages]
        assert all(r[s].actors == gpus for s in gpu_pools)  # one of each GPU stage per GPU
        assert sum(r[s].num_gpus for s in gpu_pools) <= 1 + 1e-9  # they share each GPU
        assert sum(r[s].num_gpus * r[s].actors for s in gpu_pools) <= gpus + 1e-9
        assert all(r[s].num_cpus <= 1 for s in gpu_pools)
    # every per-file actor can have a file waiting; every transcribe actor a second batch
    per_file = sum(r[s].actors for s in PER_FILE if s in r)
    assert plan.max_files_in_flight >= 2 * per_file and plan.max_open_sources >= plan.max_files_in_flight
    assert plan.max_batches_in_flight >= 2 * r["transcribe"].actors
    assert plan.max_writes_in_flight >= 2 * r["write"].actors
    # the executor's own check accepts it on exactly that node
    cfg = planned_config(load_config(profile="full"), gpus, cpus, stages)
    check_plan(cfg, [*stages, "write"], {"CPU": cpus, "GPU": gpus}, has_gpu=gpus > 0)


def test_plan_scales_with_gpus_and_caps_cpu_actors():
    one, eight = plan_resources(1, 16, FULL), plan_resources(8, 128, FULL)
    assert one.resources["transcribe"].actors == 1 and eight.resources["transcribe"].actors == 8
    assert eight.max_files_in_flight > one.max_files_in_flight
    # CPU stages: at most 4 actors per GPU (more would wait on the GPU and cost memory)
    assert all(eight.resources[s].actors <= 32 for s in ("standardize", "segment", "write"))
    assert one.resources["standardize"].actors == 4


def test_planned_config_replaces_pools_and_bounds_only():
    cfg = load_config(profile="full", overrides=["run.resource_plan=auto"])
    out = planned_config(cfg, 1, 16, FULL)
    assert out.run.resources["transcribe"].num_gpus == GPU_SHARES["transcribe"]
    assert out.run.max_files_in_flight == plan_resources(1, 16, FULL).max_files_in_flight
    assert out.model_dump(exclude={"run"}) == cfg.model_dump(exclude={"run"})
    assert cfg.run.resources["standardize"].actors == 4  # the original is untouched


def test_onnx_provider_choice():
    cuda = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    providers, why = onnx_providers("auto", cuda, 1)
    assert providers[0][0] == "CUDAExecutionProvider" and why is None
    assert onnx_providers("auto", cuda, 0) == (["CPUExecutionProvider"], "no CUDA GPU is present")
    assert onnx_providers("auto", ["CPUExecutionProvider"], 2)[1].startswith("onnxruntime has no CUDAExecutionProvider")
    assert onnx_providers("cpu", cuda, 1) == (["CPUExecutionProvider"], "score.device is cpu")
    with pytest.raises(DeviceError):
        onnx_providers("cuda", ["CPUExecutionProvider"], 1)


def test_torch_device_choice(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert torch_device("auto", "separate") == "cuda" and torch_device("cpu", "separate") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert torch_device("auto", "diarize") == "cpu"
    with pytest.raises(DeviceError, match="diarize.device is cuda"):
        torch_device("cuda", "diarize")


@pytest.mark.parametrize("bad", ["score.device=gpu", "separate.precision=half", "separate.batch_size=0",
                                 "diarize.device=tpu", "score.gpu_batch_windows=0", "run.resource_plan=yes"])
def test_new_settings_are_validated(bad):
    with pytest.raises(ConfigError, match=bad.split("=")[0]):
        load_config(overrides=[bad])
