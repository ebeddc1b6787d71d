import pytest

from emilia_pipe.config import ConfigError, load_config


def test_defaults_are_the_reference_recipe():
    cfg = load_config()
    assert cfg.profile == "lite"
    assert cfg.standardize.sample_rate == 24000
    assert (cfg.standardize.target_dbfs, cfg.standardize.max_gain_db) == (-20.0, 3.0)
    assert (cfg.segment.merge_gap_s, cfg.segment.min_clip_s, cfg.segment.max_clip_s) == (2.0, 3.0, 30.0)
    assert cfg.filter.languages == ["zh", "en", "fr", "ja", "ko", "de"]
    assert cfg.filter.language_prob_min == 0.8
    assert cfg.filter.dnsmos_min == 3.0
    assert cfg.filter.min_chars == 2
    assert cfg.filter.iqr_scope == "file" and cfg.filter.iqr_k == 1.5
    assert (cfg.score.window_s, cfg.score.hop_s) == (9.01, 1.0)
    assert (cfg.transcribe.batch_size, cfg.transcribe.beam_size, cfg.transcribe.best_of) == (16, 5, 5)
    assert not cfg.separation_enabled  # no Demucs weights offline


def test_full_profile_names_gpu_models():
    cfg = load_config(profile="full")
    assert cfg.models.separation == "htdemucs"
    assert cfg.separation_enabled
    assert cfg.models.diarization.startswith("pyannote/")
    assert cfg.run.resources["transcribe"].num_gpus > 0


def test_overrides_are_typed():
    cfg = load_config(overrides=["filter.dnsmos_min=3.2", "filter.languages=[en, de]", "output.mp3_bitrate_kbps=96"])
    assert cfg.filter.dnsmos_min == 3.2
    assert cfg.filter.languages == ["en", "de"]
    assert cfg.output.mp3_bitrate_kbps == 96


def test_unknown_key_is_rejected_with_its_path():
    with pytest.raises(ConfigError, match=r"filter\.dnsmos_minimum: unknown key"):
        load_config(overrides=["filter.dnsmos_minimum=3"])


def test_unknown_key_in_yaml_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("segment:\n  max_clip: 20\n")
    with pytest.raises(ConfigError, match="segment.max_clip: unknown key"):
        load_config([f])


def test_inconsistent_values_are_rejected():
    with pytest.raises(ConfigError, match="min_clip_s must be below"):
        load_config(overrides=["segment.min_clip_s=40", "segment.max_clip_s=30"])
    with pytest.raises(ConfigError, match="unknown pool"):
        load_config(overrides=["run.resources={transcriber: {actors: 2}}"])


def test_bad_profile_and_missing_file():
    with pytest.raises(ConfigError, match="unknown profile"):
        load_config(profile="huge")
    with pytest.raises(ConfigError, match="not found"):
        load_config(["/nonexistent/config.yaml"])


def test_cli_prints_effective_config_and_rejects_bad_keys(capsys):
    from emilia_pipe.cli import main

    assert main(["config", "--profile", "full", "--set", "filter.dnsmos_min=2.5"]) == 0
    out = capsys.readouterr().out
    assert "dnsmos_min: 2.5" in out and "separation: htdemucs" in out
    assert main(["config", "--set", "transcribe.beam=3"]) == 2
    assert "transcribe.beam: unknown key" in capsys.readouterr().err


def test_cli_missing_model_exits_3_before_any_work(tmp_path, capsys, monkeypatch):
    from emilia_pipe.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    wav = tmp_path / "in.wav"
    wav.write_bytes(b"")
    rc = main(["run", str(wav), "-o", str(tmp_path / "out"), "--set", "models.asr=/nonexistent/whisper"])
    assert rc == 3
    assert "asr" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_analysis_rate_other_than_16k_is_rejected():
    # every analysis model (VAD, diarization, Whisper, DNSMOS) was trained on 16 kHz audio
    with pytest.raises(ConfigError, match=r"standardize\.analysis_rate: .*16000.*models"):
        load_config(overrides=["standardize.analysis_rate=22050"])
    assert load_config(overrides=["standardize.analysis_rate=16000"]).standardize.analysis_rate == 16000


def test_stages_take_the_analysis_rate_from_one_place():
    import re
    from pathlib import Path

    import emilia_pipe

    pkg = Path(emilia_pipe.__file__).parent
    files = sorted(pkg.glob("stages/*.py")) + [pkg / "models" / "diarization.py"]
    stray = [f"{f.name}:{n}" for f in files for n, line in enumerate(f.read_text().splitlines(), 1)
             if re.search(r"\b16_?000\b", line.split("#")[0])]
    assert not stray, f"hard-coded 16 kHz in {stray}; use emilia_pipe.records.ANALYSIS_RATE"
