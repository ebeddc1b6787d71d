"""Cluster and container files cannot run here; they are checked statically: the KubeRay RayJob against
the fields the ray.io/v1 CRD requires, every shell script with shellcheck, every Dockerfile with hadolint."""
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _run(tool: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / tool), *map(str, args)], capture_output=True, text=True, timeout=120)


def _container(pod_template: dict) -> dict:
    containers = pod_template["spec"]["containers"]
    assert containers and all(c.get("name") and c.get("image") for c in containers)
    return containers[0]


def test_rayjob_manifest_has_what_kuberay_needs():
    doc = yaml.safe_load((ROOT / "workflows/kuberay-rayjob.yaml").read_text())
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayJob" and doc["metadata"]["name"]
    spec = doc["spec"]
    assert spec["entrypoint"].startswith("emilia-pipe run ") and "--ray-address auto" in spec["entrypoint"]
    cluster = spec["rayClusterSpec"]
    head = cluster["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict)
    assert all(isinstance(v, str) for v in head["rayStartParams"].values())  # the CRD wants strings
    _container(head["template"])
    for group in cluster["workerGroupSpecs"]:
        assert group["groupName"] and group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        worker = _container(group["template"])
        assert "nvidia.com/gpu" in worker["resources"]["limits"]
    # every mount names a declared volume (driver and workers share the output folder)
    for template in [head["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]:
        volumes = {v["name"] for v in template["spec"].get("volumes", [])}
        mounts = {m["name"] for c in template["spec"]["containers"] for m in c.get("volumeMounts", [])}
        assert mounts <= volumes and mounts
    lint = _run("yamllint", "-d", "{extends: relaxed, rules: {line-length: {max: 120}}}", ROOT / "workflows/kuberay-rayjob.yaml")
    assert lint.returncode == 0, lint.stdout


def test_shell_scripts_pass_shellcheck():
    scripts = sorted((ROOT / "workflows").glob("*.sh")) + sorted((ROOT / "workflows").glob("*.sbatch"))
    assert len(scripts) >= 3
    result = _run("shellcheck", "-S", "style", *scripts)
    assert result.returncode == 0, result.stdout


def test_dockerfiles_pass_hadolint():
    files = sorted((ROOT / "docker").glob("*.Dockerfile"))
    assert {f.name for f in files} >= {"cpu.Dockerfile", "gpu.Dockerfile"}
    assert "nvidia/cuda:12" in (ROOT / "docker/gpu.Dockerfile").read_text()
    for f in files:
        result = _run("hadolint", f)
        assert result.returncode == 0, (f, result.stdout)
