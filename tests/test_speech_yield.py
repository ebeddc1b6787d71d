"""Where the speech goes: the segment stage's account of VAD speech per source (kept in clips or lost to a
named cutting rule) and its sum in the build summary and data card. No model but Silero's small VAD."""
import numpy as np
import pytest

from emilia_pipe.records import CUTTING_RULES, Turn
from emilia_pipe.stages.speech_time import intersect, speech_yield, subtract, union


def test_span_arithmetic():
    assert union([(5, 6), (0, 2), (1, 3), (4, 4)]) == [(0, 3), (5, 6)]
    assert intersect([(0, 3), (5, 9)], [(2, 6), (8, 10)]) == [(2, 3), (5, 6), (8, 9)]
    assert subtract([(0, 10)], [(1, 2), (3, 4), (9, 12)]) == [(0, 1), (2, 3), (4, 9)]
    assert subtract([(0, 1), (5, 6)], []) == [(0, 1), (5, 6)]


def test_each_second_of_speech_is_charged_once_to_clips_or_one_dropped_segment():
    spans = [(0.0, 2.5), (4.0, 9.0), (20.0, 21.0)]
    turns = [Turn(0, 2.0, "A"), Turn(1.0, 2.5, "B"), Turn(4, 9, "A"), Turn(5, 6, "B"), Turn(20, 21, "A")]
    clips = [Turn(3.75, 9.25, "A")]
    dropped = [{"start": 0.0, "end": 2.0, "speaker": "A", "reason": "too_short"},
               {"start": 1.0, "end": 2.5, "speaker": "B", "reason": "too_short"},
               {"start": 0.5, "end": 1.5, "speaker": "B", "reason": "inside_previous_turn"},
               {"start": 5.0, "end": 6.0, "speaker": "B", "reason": "inside_previous_turn"},
               {"start": 20.0, "end": 21.0, "speaker": "A", "reason": "too_short"}]
    got = speech_yield(spans, turns, clips, dropped)
    assert got == {"vad_speech_s": 8.5, "speech_in_turns_s": 8.5, "speech_in_clips_s": 5.0}
    # overlapping too-short pieces share 1-2 s: the earlier one has it; turns inside another lose nothing
    assert [d["speech_s"] for d in dropped] == [2.0, 0.5, 0.0, 0.0, 1.0]
    assert got["speech_in_clips_s"] + sum(d["speech_s"] for d in dropped) == got["speech_in_turns_s"]


@pytest.fixture(scope="module")
def segmenter(lite_config):
    from emilia_pipe.stages.segment import Segmenter

    return Segmenter(lite_config)


def test_the_segment_stage_keeps_a_files_short_first_sentence_and_accounts_for_every_rule(segmenter):
    # a file's first sentence (2.1 s) and a pause, the rest of the speaker's turn, a second speaker's
    # interjection inside it, a turn with no VAD speech, and a lone short sentence 3.8 s after the others
    turns = [Turn(0.5, 2.6, "A"), Turn(2.9, 8.2, "A"), Turn(3.0, 4.0, "B"), Turn(9.0, 9.5, "B"), Turn(12.0, 13.0, "A")]
    spans = [(0.5, 2.6), (2.9, 8.2), (12.0, 13.0)]
    clips, dropped, yields = segmenter.cut(turns, spans, np.zeros(14 * 16000, np.float32))
    pad = segmenter.cfg.edge_pad_s
    assert [(round(c.start, 3), round(c.end, 3), c.speaker) for c in clips] == [(0.5 - pad, 8.2 + pad, "A")]
    assert sorted((d["reason"], d["start"], d["speech_s"]) for d in dropped) == [
        ("inside_previous_turn", 3.0, 0.0), ("no_speech_in_turn", 9.0, 0.0), ("too_short", 12.0, 1.0)]
    assert yields == {"vad_speech_s": 8.4, "speech_in_turns_s": 8.4, "speech_in_clips_s": 7.4}


def _source_row(yields, dropped):
    return {"speech_yield": yields, "dropped_segments": dropped, "turns": [{}], "duration": 60.0, "timings": {}}


def test_the_summary_and_the_data_card_add_up_the_sources_figures():
    from emilia_pipe.dataset.datacard import _speech_yield
    from emilia_pipe.dataset.summary import format_summary, speech_yield as total

    rows = [_source_row({"vad_speech_s": 50.0, "speech_in_turns_s": 40.0, "speech_in_clips_s": 36.0},
                        [{"start": 0, "end": 2, "speaker": "A", "reason": "too_short", "speech_s": 1.5},
                         {"start": 5, "end": 6, "speaker": "B", "reason": "inside_previous_turn", "speech_s": 0.0},
                         {"start": 9, "end": 12, "speaker": "A", "reason": "too_short", "speech_s": 2.5}]),
            _source_row({"vad_speech_s": 10.0, "speech_in_turns_s": 10.0, "speech_in_clips_s": 10.0}, []),
            _source_row({}, [{"start": 0, "end": 1, "speaker": "A", "reason": "too_short"}])]  # an older version's
    y = total(rows)
    assert y["speech_in_turns_s"] == 50.0 and y["speech_in_clips_s"] == 46.0 and y["vad_speech_s"] == 60.0
    assert y["in_clips_share"] == 0.92 and y["sources_without_figures"] == 1
    assert list(y["dropped"]) == list(CUTTING_RULES)  # every rule is listed, zero or not
    assert y["dropped"]["too_short"] == {"segments": 2, "speech_s": 4.0}
    assert y["dropped"]["no_speech_in_turn"] == {"segments": 0, "speech_s": 0.0}
    summary = {"files": {"ok": 3, "failed": 0, "skipped": 0}, "separation": False, "languages": {}, "drop_reasons": {},
               "hours": dict.fromkeys(("input", "after_diarization", "after_segmentation", "after_asr_language", "kept"), 0.0),
               "clips": {"total": 0, "kept": 0, "rejected": 0}, "speech_yield": y}
    text = format_summary(summary)
    assert "  in clips (kept+rejected)            46.0    92.0 %" in text
    assert "  dropped: too_short                   4.0     8.0 %  (2 segments)" in text
    card = _speech_yield(y)
    assert "id=speech-yield" in card and "<td>dropped: too_short</td><td class=\"n\">4.0</td>" in card
