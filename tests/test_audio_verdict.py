"""output.keep_rejected_audio=false: the verdict that decides which MP3s to write must never leave a
kept clip without audio. A refilter that admits a clip whose MP3 was not written rejects it with the
reason ``audio_not_kept`` instead of publishing ``wav: null``."""
import json

from conftest import cli, copy_inputs


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_refilter_never_publishes_a_clip_without_audio(tmp_path):
    (tmp_path / "in").mkdir()
    src = copy_inputs(tmp_path / "in", ["diarization/ami_pyannote_dev00.wav"])
    out = tmp_path / "out"
    # every clip rejected when written (no DNSMOS reaches 4.9), so no MP3 is written
    cli("run", src, "-o", out, "--runner", "local", "--set", "output.keep_rejected_audio=false",
        "--set", "filter.dnsmos_min=4.9", check=0)
    assert not list(out.rglob("*.mp3"))
    first = _lines(out / "rejected.jsonl")
    clips = [r for r in first if r.get("id")]
    assert clips and all(r["wav"] is None for r in clips)
    # admit everything: the clips would be kept, but they have no audio
    admit_all = ["filter.dnsmos_min=0", "filter.languages=[en, de, fr, ja, ko, zh, nl, es]", "filter.language_prob_min=0",
                 "filter.iqr_scope=none", "filter.min_chars=0", "filter.speech_prob_min=null",
                 "filter.no_speech_prob_max=null", "filter.compression_ratio_max=null", "filter.avg_logprob_min=null",
                 "filter.chars_per_s_min=null", "filter.chars_per_s_max=null", "filter.repeat_ngram_max=null"]
    cli("refilter", out, *[x for kv in admit_all for x in ("--set", kv)], check=0)
    manifests = [r for p in out.glob("*/*.jsonl") for r in _lines(p)]
    assert all(r["wav"] for r in manifests), [r for r in manifests if not r["wav"]][:2]
    rejected = {r["id"]: r for r in _lines(out / "rejected.jsonl") if r.get("id")}
    assert {r["id"] for r in clips} <= set(rejected)  # nothing lost, nothing published without audio
    # every clip the new filters would keep is named as such; a clip never scored (its language was
    # rejected when written, so DNSMOS did not run) stays dnsmos_low
    reasons = {r["id"]: rejected[r["id"]]["reasons"] for r in clips}
    assert all(v == ["audio_not_kept"] or (v == ["dnsmos_low"] and rejected[k]["dnsmos"] is None)
               for k, v in reasons.items()), reasons
    assert sum(v == ["audio_not_kept"] for v in reasons.values()) >= 1
