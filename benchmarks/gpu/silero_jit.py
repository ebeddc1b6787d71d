"""Silero VAD (TorchScript) throughput on a GPU with many streams batched.
Run on a GPU machine: python benchmarks/gpu/silero_jit.py  (OUT=folder for the JSON report)."""
import json
import os
import time

import silero_vad
import torch

JIT = os.path.join(os.path.dirname(silero_vad.__file__), "data", "silero_vad.jit")
model = torch.jit.load(JIT, map_location="cuda").eval()
res = {"device": torch.cuda.get_device_name(0)}
n = 1875  # 60 s of 32 ms frames
for B in (1, 64, 512):
    x = torch.randn(B, n, 512, device="cuda") * 0.1
    model.reset_states()
    with torch.inference_mode():
        for i in range(20):
            model(x[:, i], 16000)
        model.reset_states()
        torch.cuda.synchronize(); t0 = time.perf_counter()
        for i in range(n):
            model(x[:, i], 16000)
        torch.cuda.synchronize(); dt = time.perf_counter() - t0
    res[f"batch{B}_audio_s_per_s"] = round(B * n * 512 / 16000 / dt, 1)
    print(B, res[f"batch{B}_audio_s_per_s"], flush=True)
json.dump(res, open(os.path.join(os.environ.get("OUT", "benchmarks/results"), "silero_gpu.json"), "w"))
