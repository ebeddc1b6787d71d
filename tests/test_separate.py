"""Demucs separation plumbing with a tiny random-weight HT-Demucs built here (no Demucs weights ship
on PyPI, so the real htdemucs runs only where it was fetched; see the GPU section of docs/performance.md)."""
import numpy as np
import pytest
import torch

from emilia_pipe.config import load_config
from emilia_pipe.models.refs import ModelUnavailableError
from emilia_pipe.records import Source


@pytest.fixture(scope="module")
def tiny_demucs(tmp_path_factory):
    from demucs.htdemucs import HTDemucs

    torch.manual_seed(0)  # test-only weights: exercises our plumbing, never used by the product
    # depth 3, not 2: at depth 2 the cross-transformer attends over ~11k time steps of a 4 s segment, and one
    # 6 s separation took 40 s and 15.6 GB (measured), enough to OOM-kill the suite; depth 3: 5 s, 1.6 GB
    model = HTDemucs(sources=["drums", "bass", "other", "vocals"], audio_channels=2, channels=8, depth=3,
                     t_layers=1, nfft=1024, segment=4, samplerate=44100)
    path = tmp_path_factory.mktemp("demucs") / "tiny_htdemucs.th"
    args, kwargs = model._init_args_kwargs  # the package layout demucs.states.load_model reads
    torch.save({"klass": HTDemucs, "args": args, "kwargs": kwargs, "state": model.state_dict()}, path)
    return path


def test_separator_returns_vocals_at_the_working_rate(tiny_demucs):
    from emilia_pipe.stages.separate import Separator

    cfg = load_config(overrides=["separate.enabled=true", f"models.separation={tiny_demucs}"])
    assert cfg.separation_enabled
    sep = Separator(cfg)
    t = np.arange(24000 * 6) / 24000
    audio = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    src = Source(source_id="x", path="x.wav", sha256="0" * 64, duration=6.0, orig_sample_rate=24000,
                 orig_channels=1, codec="pcm", container="wav", audio=audio.copy(), audio_16k=None)
    out = sep.run(src)
    assert out.separated and out.audio.shape == audio.shape and out.audio.dtype == np.float32
    assert out.audio_16k.size == pytest.approx(audio.size * 2 / 3, abs=2)
    assert np.isfinite(out.audio).all() and not np.allclose(out.audio, audio)  # the model really ran
    assert out.timings["separate"] > 0


def test_named_model_missing_offline_is_a_clear_error(tmp_path, monkeypatch):
    from emilia_pipe.stages.separate import Separator

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # empty cache
    cfg = load_config(profile="full")
    with pytest.raises(ModelUnavailableError, match="htdemucs.*models fetch"):
        Separator(cfg)
    with pytest.raises(ModelUnavailableError, match="does not exist"):
        Separator(load_config(overrides=["separate.enabled=true", "models.separation=/nonexistent/x.th"]))
    with pytest.raises(ModelUnavailableError, match="not a Demucs model name"):
        Separator(load_config(overrides=["separate.enabled=true", "models.separation=htdemucs_nope"]))


def test_long_source_is_separated_chunk_by_chunk_on_disk(tiny_demucs, tmp_path):
    """A DiskAudio source (a long input): vocals come back on disk at both rates, same length, and the
    mix's files are removed. The stitching is checked exactly with the model's call replaced by a known
    gain (the tiny model takes minutes on 65 s of CPU audio; the model call itself is tested above): a
    chunk edge that repeated or lost samples would break the equality."""
    from emilia_pipe.media.audio import resample
    from emilia_pipe.media.disk import DiskAudio, spill_path
    from emilia_pipe.stages.separate import Separator

    cfg = load_config(overrides=["separate.enabled=true", f"models.separation={tiny_demucs}",
                                 "long_input.chunk_s=60", "long_input.overlap_s=4"])
    rng = np.random.default_rng(0)
    audio = (0.1 * rng.standard_normal(24000 * 150)).astype(np.float32)
    mix = DiskAudio.create(spill_path(tmp_path, 7, "working"), 24000)
    mix.append(audio)
    mix16 = DiskAudio.create(spill_path(tmp_path, 7, "analysis"), 16000)
    mix16.append(resample(audio, 24000, 16000))
    src = Source(source_id="x", path="x.wav", sha256="0" * 64, duration=150.0, orig_sample_rate=24000,
                 orig_channels=1, codec="pcm", container="wav", audio=mix, audio_16k=mix16)
    sep = Separator(cfg)
    calls = []
    sep.vocals_of = lambda x, sr: calls.append(x.size) or x * np.float32(0.5)
    out = sep.run(src)
    assert len(calls) == 3 and max(calls) <= 24000 * (50 + 4)  # three 50 s chunks, each with 2 s each side
    assert isinstance(out.audio, DiskAudio) and out.audio.size == audio.size
    assert np.array_equal(out.audio[0:audio.size], audio * np.float32(0.5))
    assert abs(out.audio_16k.size - 16000 * 150) <= 3
    got16, want16 = out.audio_16k[0:out.audio_16k.size], resample(audio * np.float32(0.5), 24000, 16000)
    n = min(got16.size, want16.size)
    assert np.abs(got16[:n] - want16[:n]).max() < 1e-3  # per-chunk resampling, edges inside the dropped margin
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audio-000000007-analysis-vocals.f32",
                                                         "audio-000000007-working-vocals.f32"]


@pytest.fixture(scope="module")
def small_demucs(tmp_path_factory):
    """A tiny HT-Demucs at 16 kHz with 2 s segments: a few segments cost seconds on CPU."""
    from demucs.htdemucs import HTDemucs

    torch.manual_seed(1)  # test-only weights
    model = HTDemucs(sources=["drums", "bass", "other", "vocals"], audio_channels=2, channels=8, depth=3,
                     t_layers=1, nfft=512, segment=2, samplerate=16000)
    path = tmp_path_factory.mktemp("demucs") / "small_htdemucs.th"
    args, kwargs = model._init_args_kwargs
    torch.save({"klass": HTDemucs, "args": args, "kwargs": kwargs, "state": model.state_dict()}, path)
    return path


def test_batched_segments_equal_one_at_a_time(small_demucs):
    from emilia_pipe.stages.separate import Separator

    audio = (0.2 * np.random.default_rng(0).standard_normal(24000 * 5)).astype(np.float32)
    base = ["separate.enabled=true", f"models.separation={small_demucs}"]
    one = Separator(load_config(overrides=base)).vocals_of(audio, 24000)  # demucs' own apply_model
    for n in (3, 16):  # 16 > the 4 segments: one forward pass
        many = Separator(load_config(overrides=[*base, f"separate.batch_size={n}"])).vocals_of(audio, 24000)
        assert many.shape == one.shape
        np.testing.assert_allclose(many, one, atol=1e-5 * np.abs(one).max())


def test_batched_bag_of_models_equals_apply_model(small_demucs):
    from demucs.apply import BagOfModels, apply_model
    from demucs.states import load_model

    from emilia_pipe.stages.separate import apply_batched

    # two models with per-source weights: the bag weighting must match demucs'
    bag = BagOfModels([load_model(str(small_demucs)).eval(), load_model(str(small_demucs)).eval()],
                      weights=[[1.0, 0.0, 1.0, 2.0], [1.0, 1.0, 0.0, 1.0]])
    torch.manual_seed(2)
    for p in bag.models[1].parameters():
        p.data += 0.01 * torch.randn_like(p)
    mix = torch.randn(1, 2, 16000 * 3)
    with torch.inference_mode():
        ref = apply_model(bag, mix, shifts=0, split=True, overlap=0.25, progress=False, device="cpu")
        out = apply_batched(bag, mix, 0.25, None, 4, "cpu")
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)


def test_half_precision_is_ignored_on_cpu_and_cuda_needs_a_gpu(small_demucs, capsys, monkeypatch):
    from emilia_pipe.runtime.devices import DeviceError
    from emilia_pipe.stages.separate import Separator

    base = ["separate.enabled=true", f"models.separation={small_demucs}"]
    sep = Separator(load_config(overrides=[*base, "separate.precision=float16"]))
    assert sep.device == "cpu" and sep.autocast is None
    assert "precision float16 applies on CUDA only" in capsys.readouterr().err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match="separate.device is cuda"):
        Separator(load_config(overrides=[*base, "separate.device=cuda"]))
