"""The build's fingerprint holds every setting and library version that can change a clip, a text or a
score, including what the device settings resolve to; a resume on other numerics is refused with the
difference named unless --allow-config-change. Builds use the stand-in stages (tests/standin.py)."""
import json

import pytest
import standin

from emilia_pipe.config import load_config
from emilia_pipe.dataset.fingerprint import BuildMismatchError, fingerprint
from emilia_pipe.runners.choice import active_stages, resolve_numerics


def test_the_fingerprint_holds_library_versions_and_resolved_numerics():
    cfg = load_config(overrides=["run.runner=local"])
    fp = fingerprint(cfg, resolve_numerics(cfg, active_stages(cfg), cluster_gpus=0))
    for pkg in ("numpy", "scipy", "transformers", "onnx", "onnxruntime", "ctranslate2", "torch"):
        assert f"version.{pkg}" in fp, pkg  # before: numpy, scipy, transformers, onnx were missing
    assert fp["resolved.transcribe.device"] == "cpu" and fp["resolved.transcribe.compute_type"] == "int8"
    assert fp["resolved.diarize.device"] == fp["resolved.score.device"] == "cpu"
    # the filter settings the score stage reads (skip_rejected's rules, the refine margin's threshold)
    assert fp["score.filter.dnsmos_min"] == 3.0 and fp["score.skip_rejected"] is True
    assert fp["score.short_clip_refine_margin"] == 0.25


def test_compute_type_auto_resolves_per_device_and_pool():
    cfg = load_config(overrides=["run.resources.transcribe={actors: 1, num_gpus: 0.5}"])
    on_gpu = resolve_numerics(cfg, ["transcribe", "score"], cluster_gpus=1)
    assert on_gpu["resolved.transcribe.device"] == "cuda" and on_gpu["resolved.transcribe.compute_type"] == "float16"
    assert on_gpu["resolved.score.device"] in ("cpu", "cuda")  # cuda only with onnxruntime-gpu installed
    no_gpu_asked = resolve_numerics(load_config(), ["transcribe"], cluster_gpus=1)  # the pool asks for no GPU
    assert no_gpu_asked["resolved.transcribe.compute_type"] == "int8"
    torch_cpu = resolve_numerics(load_config(overrides=["transcribe.backend=torch"]), ["transcribe"], cluster_gpus=0)
    assert torch_cpu["resolved.transcribe.compute_type"] == "float32"
    pinned = resolve_numerics(load_config(overrides=["transcribe.compute_type=int8_float16"]), ["transcribe"], 1)
    assert pinned["resolved.transcribe.compute_type"] == "int8_float16"


def _pretend_gpu(monkeypatch):
    monkeypatch.setattr("emilia_pipe.runners.choice.gpu_count", lambda: 1)
    monkeypatch.setattr("emilia_pipe.runners.choice._onnx_has_cuda", lambda: True)


def test_a_cpu_build_resumed_on_a_gpu_is_refused_naming_the_numerics(tmp_path, monkeypatch):
    inputs = standin.make_inputs(tmp_path / "in", 3)
    out = tmp_path / "out"
    standin.run(inputs[:2], out)
    _pretend_gpu(monkeypatch)  # the same build resumed where `auto` means CUDA
    with pytest.raises(BuildMismatchError) as err:
        standin.run(inputs, out)  # before: resumed, mixing int8 and float16 transcripts
    text = str(err.value)
    assert "resolved.transcribe.compute_type: 'int8' (build) -> 'float16' (this run)" in text
    assert "resolved.transcribe.device: 'cpu' (build) -> 'cuda' (this run)" in text
    assert "--allow-config-change" in text
    standin.run(inputs, out, allow_config_change=True)
    runs = json.loads((out / ".emilia/build.json").read_text())["runs"]
    assert "resolved.transcribe.compute_type: 'int8' (build) -> 'float16' (this run)" in runs[-1]["changed"]


def test_another_numpy_is_refused(tmp_path, monkeypatch):
    from importlib import metadata

    inputs = standin.make_inputs(tmp_path / "in", 2)
    out = tmp_path / "out"
    standin.run(inputs, out)
    real = metadata.version
    monkeypatch.setattr(metadata, "version", lambda pkg: "0.0.1" if pkg == "numpy" else real(pkg))
    with pytest.raises(BuildMismatchError, match=r"version\.numpy: '[\d.]+' \(build\) -> '0\.0\.1' \(this run\)"):
        standin.run(inputs, out)


def test_the_filter_settings_the_score_stage_reads_are_fixed_by_the_first_run(tmp_path):
    inputs = standin.make_inputs(tmp_path / "in", 3)
    out = tmp_path / "out"
    standin.run(inputs[:2], out)
    logged = []
    summary = standin.run(inputs, out, ["filter.dnsmos_min=3.5"], filter_given=True, log=logged.append)
    info = json.loads((out / ".emilia/build.json").read_text())
    assert summary["filter"]["dnsmos_min"] == 3.5  # published with the given threshold
    assert info["scoring_filter"]["dnsmos_min"] == 3.0 and info["fingerprint"]["score.filter.dnsmos_min"] == 3.0
    assert any("scoring keeps the filter settings of the build's first run" in m for m in logged)
    # asked for: new clips are scored with them too, and the change is recorded
    standin.run(standin.make_inputs(tmp_path / "in", 4), out, ["filter.dnsmos_min=3.5"], filter_given=True,
                allow_config_change=True)
    info = json.loads((out / ".emilia/build.json").read_text())
    assert info["scoring_filter"]["dnsmos_min"] == 3.5
    assert "score.filter.dnsmos_min: 3.0 (build) -> 3.5 (this run)" in info["runs"][-1]["changed"]
