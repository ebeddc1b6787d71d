"""GPU throughput of emilia-pipe's torch stages (Demucs separation, pyannote diarization, Silero VAD)
through the stage classes themselves, on 10 min of real speech from sample_data/. Demucs uses the
production HT-Demucs architecture with random weights (no weights ship offline; compute does not
depend on weight values). Run on a GPU machine: OUT=benchmarks/results python benchmarks/gpu/torch_stages.py"""
import json
import os
import sys
import time
import traceback

import numpy as np
import torch

OUT = os.environ.get("OUT", "/tmp")
res = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu", "torch": torch.__version__}

def save():
    with open(os.path.join(OUT, "gpu_bench.json"), "w") as f:
        json.dump(res, f, indent=2)

from emilia_pipe.media.audio import resample


def read(p):
    try:
        import soundfile as sf
        return sf.read(p, dtype="float32")
    except Exception:
        from scipy.io import wavfile
        sr, a = wavfile.read(p)
        a = a.astype(np.float32) / (32768.0 if a.dtype == np.int16 else 1.0)
        return a, sr
sys.stdout.reconfigure(line_buffering=True)
clips = []
for p in ["sample_data/diarization/ami_pyannote_dev00.wav", "sample_data/diarization/ami_pyannote_tst00.wav",
          "sample_data/speech_untranscribed/xx_silero_vad_test.wav"]:
    a, sr = read(p)
    clips.append(resample(a if a.ndim == 1 else a.mean(1), sr, 16000))
base16 = np.concatenate(clips)  # 120 s of real speech at 16 kHz
long16 = np.tile(base16, 5)      # 10 min
long24 = resample(long16, 16000, 24000)
print("audio", len(long16) / 16000, "s")

# --- Silero VAD: TorchScript on the GPU, many streams batched ---------------------------------
try:
    import silero_vad
    jit = os.path.join(os.path.dirname(silero_vad.__file__), "data", "silero_vad.jit")
    model = torch.jit.load(jit, map_location="cuda").eval()
    out = {}
    for B in (1, 64, 256):
        x = torch.from_numpy(long16[: (len(long16) // 512) * 512]).cuda()
        frames = x.view(-1, 512)
        n = min(frames.shape[0], 3000)
        batch = frames[:n].unsqueeze(0).expand(B, n, 512).contiguous()
        model.reset_states(B)
        torch.cuda.synchronize(); t0 = time.perf_counter()
        with torch.inference_mode():
            for i in range(n):
                model(batch[:, i], 16000)
        torch.cuda.synchronize(); dt = time.perf_counter() - t0
        out[f"batch{B}"] = round(B * n * 512 / 16000 / dt, 1)
    res["silero_gpu_audio_s_per_s"] = out
    print("silero", out)
except Exception:
    res["silero_error"] = traceback.format_exc()[-1500:]
save()

# --- our Segmenter's ONNX Silero on the node's CPU (what the pipeline runs) -------------------
try:
    from emilia_pipe.config import PipelineConfig
    from emilia_pipe.stages.segment import Segmenter
    seg = Segmenter(PipelineConfig())
    t0 = time.perf_counter(); spans = seg.speech_spans(long16); dt = time.perf_counter() - t0
    res["silero_onnx_cpu_audio_s_per_s"] = round(len(long16) / 16000 / dt, 1)
    print("silero onnx cpu", res["silero_onnx_cpu_audio_s_per_s"], len(spans))
except Exception:
    res["segment_error"] = traceback.format_exc()[-1500:]
save()

# --- Demucs: production-size HT-Demucs (random weights: compute does not depend on them) -------
try:
    from fractions import Fraction

    from demucs.htdemucs import HTDemucs
    model = HTDemucs(sources=["drums", "bass", "other", "vocals"], segment=Fraction(39, 5))
    args, kwargs = model._init_args_kwargs
    path = "/tmp/htdemucs_arch.th"
    torch.save({"klass": HTDemucs, "args": args, "kwargs": kwargs, "state": model.state_dict()}, path)
    from emilia_pipe.config import load_config
    from emilia_pipe.records import Source
    from emilia_pipe.stages.separate import Separator
    sep = Separator(load_config(overrides=["separate.enabled=true", f"models.separation={path}"]))
    out = {"params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1)}
    for label, audio in (("warmup_120s", long24[: 24000 * 120]), ("600s", long24)):
        src = Source(source_id="x", path="x", sha256="0", duration=len(audio) / 24000, orig_sample_rate=24000,
                     orig_channels=1, codec="pcm", container="wav", audio=audio.copy())
        torch.cuda.synchronize(); t0 = time.perf_counter(); sep.run(src); torch.cuda.synchronize()
        out[label] = round(len(audio) / 24000 / (time.perf_counter() - t0), 1)
    res["demucs_stage_audio_s_per_s"] = out
    print("demucs", out)
except Exception:
    res["demucs_error"] = traceback.format_exc()[-1500:]
save()

# --- pyannote diarization (segmentation-3.0 + CAM++), our Diarizer on CUDA ------------------------
try:
    from emilia_pipe.config import PipelineConfig
    from emilia_pipe.stages.diarize import Diarizer
    for step in (0.1, 0.5):
        cfg = PipelineConfig()
        cfg.diarize.segmentation_step = step
        if step == 0.5:
            cfg.diarize.min_cluster_size = 6
        d = Diarizer(cfg)
        out = {}
        for label in ("pass1", "pass2", "pass3"):
            torch.cuda.synchronize(); t0 = time.perf_counter(); turns = d.diarize(long16); torch.cuda.synchronize()
            out[label] = round(len(long16) / 16000 / (time.perf_counter() - t0), 1)
        out["speakers"] = len({t.speaker for t in turns})
        res[f"diarize_step{step}_audio_s_per_s"] = out
        print("diarize", step, out)
        save()
except Exception:
    res["diarize_error"] = traceback.format_exc()[-1500:]
save()
print(json.dumps(res, indent=1))
