"""The cutting rules as pure functions (no model), and the Silero VAD probabilities that feed them."""
import numpy as np

from emilia_pipe.records import Turn
from emilia_pipe.stages.segment import (
    Piece,
    force_cut,
    merge_short,
    skip_contained_turns,
    split_at_largest_gaps,
    widen_edges,
)


def test_turns_inside_previous_turn_are_skipped():
    turns = [Turn(0, 10, "A"), Turn(2, 8, "B"), Turn(9, 12, "B")]
    assert [(t.start, t.end) for t in skip_contained_turns(turns)] == [(0, 10), (9, 12)]


def test_long_speech_is_split_at_the_widest_silence():
    spans = [(0, 5), (5.2, 9), (12, 18), (18.3, 25)]  # widest gap 9 -> 12
    assert split_at_largest_gaps(spans, 20) == [(0, 9), (12, 25)]
    assert split_at_largest_gaps(spans, 30) == [(0, 25)]


def test_force_cut_prefers_the_least_speechlike_frame():
    frame = 512 / 16000
    probs = np.full(int(70 / frame), 0.95, dtype=np.float32)
    quiet = int(22.0 / frame)
    probs[quiet] = 0.05
    pieces = force_cut(0.0, 70.0, 30.0, probs)
    assert abs(pieces[0][1] - 22.0) < 0.05  # cut at the dip, not at 30 s
    assert all(e - s <= 30.0 + 1e-6 for s, e in pieces)
    assert pieces[-1][1] == 70.0
    # without probabilities it still bounds every piece
    assert all(e - s <= 30.0 for s, e in force_cut(0.0, 95.0, 30.0, None))


def test_short_pieces_merge_with_same_speaker_or_are_dropped():
    pieces = [Piece(0, 5, "A"), Piece(5.5, 6.5, "A"), Piece(10, 11, "B"), Piece(20, 22, "A")]
    kept, dropped = merge_short(pieces, 3.0, 30.0, 2.0)
    assert [(p.start, p.end, p.speaker) for p in kept] == [(0, 6.5, "A")]
    assert sorted((p.start, p.speaker) for p in dropped) == [(10, "B"), (20, "A")]


def test_merge_never_exceeds_max():
    kept, _ = merge_short([Piece(0, 29, "A"), Piece(29.5, 31, "A")], 3.0, 30.0, 2.0)
    assert all(p.duration <= 30.0 for p in kept)


def test_overlap_fraction_counts_only_time_with_two_or_more_speakers():
    from emilia_pipe.stages.segment import overlap_fraction

    turns = [Piece(0.0, 6.0, "A"), Piece(4.0, 10.0, "B"), Piece(5.0, 5.5, "C")]
    assert overlap_fraction(turns, 0.0, 10.0) == 0.2  # 4-6 s: two or three at once
    assert overlap_fraction(turns, 6.0, 10.0) == 0.0
    assert overlap_fraction([Piece(0.0, 10.0, "A")], 0.0, 10.0) == 0.0


def test_overlap_rule_is_off_by_default_and_names_its_reason():
    from emilia_pipe.config import load_config
    from emilia_pipe.dataset.filtering import apply_filters

    clip = {"source_id": "s", "source_index": 0, "duration": 8.0, "language": "en", "language_prob": 0.99,
            "dnsmos_ovrl": 3.5, "text": "a clean sentence of speech", "chars": 22, "sec_per_char": 0.36,
            "overlap_frac": 0.3}
    assert apply_filters([dict(clip)], load_config().filter)[0]["kept"]
    judged = apply_filters([dict(clip)], load_config(overrides=["filter.overlap_max=0.1"]).filter)[0]
    assert not judged["kept"] and "overlapping_speech" in judged["reasons"]


def _spans(pieces):
    return [(p.start, p.end) for p in pieces]


def test_a_short_first_piece_joins_the_next_piece_of_its_speaker():
    # the first words of a file ("Welcome to the directory.") have no previous piece: they join the next
    # one of the same speaker when the gap is under merge_gap_s and the result stays within max_clip_s
    kept, dropped = merge_short([Piece(0, 2, "A"), Piece(2.5, 8, "A")], 3.0, 30.0, 2.0)
    assert _spans(kept) == [(0, 8)] and dropped == []
    # several short pieces in a row join each other and then the next long one
    kept, dropped = merge_short([Piece(0, 1, "A"), Piece(1.5, 2.5, "A"), Piece(3, 10, "A")], 3.0, 30.0, 2.0)
    assert _spans(kept) == [(0, 10)] and dropped == []


def test_a_short_piece_joins_the_previous_piece_first_and_the_next_when_the_previous_cannot_take_it():
    kept, _ = merge_short([Piece(0, 5, "A"), Piece(5.5, 6.5, "A"), Piece(7, 12, "A")], 3.0, 30.0, 2.0)
    assert _spans(kept) == [(0, 6.5), (7, 12)]  # the reference's rule where it applies
    # joining the previous piece would pass max_clip_s: it joins the next one
    kept, dropped = merge_short([Piece(0, 29, "A"), Piece(29.5, 31, "A"), Piece(31.5, 36, "A")], 3.0, 30.0, 2.0)
    assert _spans(kept) == [(0, 29), (29.5, 36)] and dropped == []
    # the previous piece is another speaker's: it joins the next piece of its own speaker
    kept, dropped = merge_short([Piece(0, 5, "B"), Piece(5.5, 7, "A"), Piece(7.5, 12, "A")], 3.0, 30.0, 2.0)
    assert _spans(kept) == [(0, 5), (5.5, 12)] and dropped == []


def test_a_short_piece_that_can_join_neither_neighbour_is_dropped():
    cases = {
        "another speaker between": [Piece(0, 2, "A"), Piece(2.5, 8, "B"), Piece(8.5, 14, "A")],
        "gap of merge_gap_s or more": [Piece(0, 2, "A"), Piece(4.0, 9, "A")],
        "result over max_clip_s": [Piece(0, 2, "A"), Piece(2.5, 30.5, "A")],
        "alone": [Piece(0, 2, "A")],
    }
    for name, pieces in cases.items():
        kept, dropped = merge_short(pieces, 3.0, 30.0, 2.0)
        assert _spans(dropped) == [(0, 2)], name
        assert all(p.start >= 2 for p in kept), name
    # the last piece of a file, short, with no next piece and a previous one too far away
    kept, dropped = merge_short([Piece(0, 8, "A"), Piece(11, 12, "A")], 3.0, 30.0, 2.0)
    assert _spans(kept) == [(0, 8)] and _spans(dropped) == [(11, 12)]


def test_edges_widen_into_silence_but_not_into_neighbours():
    pieces = [Piece(0.26, 4.0, "A"), Piece(4.4, 9.5, "A"), Piece(12.0, 15.0, "A"), Piece(16.0, 18.0, "B")]
    turns = [Turn(0.03, 9.5, "A"), Turn(12.0, 15.05, "A"), Turn(15.2, 18.0, "B")]
    out = widen_edges(pieces, turns, duration=18.1, pad=0.25, max_len=30.0)
    spans = [(round(p.start, 3), round(p.end, 3)) for p in out]
    assert spans[0] == (0.01, 4.2)  # the file's start and the midpoint to the next clip bound it
    assert spans[1] == (4.2, 9.75)
    assert spans[2] == (11.75, 15.2)  # stops where speaker B's turn begins
    assert spans[3] == (15.75, 18.1)  # the full pad where nothing is near, the audio's end
    # never beyond max_len: the extension is shared between the edges
    (long,) = widen_edges([Piece(5.0, 34.8, "A")], [], duration=60.0, pad=0.25, max_len=30.0)
    assert round(long.end - long.start, 6) == 30.0 and long.start < 5.0 and long.end > 34.8
    # an overlapping turn of another speaker at an edge: that edge stays
    (held,) = widen_edges([Piece(5.0, 9.0, "A")], [Turn(3.0, 5.5, "B")], duration=60.0, pad=0.25, max_len=30.0)
    assert (held.start, held.end) == (5.0, 9.25)


def test_vad_spans_and_frame_probs_equal_silero_own_loop(sample_dir, lite_config):
    """The segment stage drives Silero's ONNX model with numpy (no per-frame torch work) and hands the
    probabilities to silero-vad's own timestamp rules: spans and frame probabilities must equal what
    silero_vad.get_speech_timestamps with its OnnxWrapper gives, on real speech whose length is not a whole
    number of frames (the last frame is zero-padded) and on a piece with speech only in its middle."""
    import torch
    from silero_vad import get_speech_timestamps
    from silero_vad.utils_vad import OnnxWrapper

    from emilia_pipe.media.audio import decode
    from emilia_pipe.models.registry import silero_vad_onnx_path
    from emilia_pipe.stages.segment import Segmenter

    seg = Segmenter(lite_config)
    own = OnnxWrapper(str(silero_vad_onnx_path(lite_config.models.vad)), force_onnx_cpu=True)
    speech = decode(sample_dir / "asr/en/en_ami_ES2011a_headset0_40-46s.wav", 16000).samples
    quiet = np.zeros(16000 * 2 + 123, np.float32)
    cfg = lite_config.segment
    for audio in (speech[: speech.size - 77], np.concatenate([quiet, speech[:48000], quiet])):
        assert audio.size % 512
        stamps = get_speech_timestamps(torch.tensor(audio), own, threshold=cfg.vad_threshold, sampling_rate=16000,
                                       min_silence_duration_ms=cfg.vad_min_silence_ms,
                                       min_speech_duration_ms=cfg.vad_min_speech_ms,
                                       speech_pad_ms=cfg.vad_speech_pad_ms)
        expected = [(s["start"] / 16000, s["end"] / 16000) for s in stamps]
        assert expected and seg.speech_spans(audio) == expected
        own.reset_states()
        with torch.no_grad():
            probs = [float(own(torch.tensor(audio[i : i + 512]), 16000)) for i in range(0, audio.size - 511, 512)]
        assert np.array_equal(seg.frame_probs(audio), np.asarray(probs, np.float32))
    # the piece with speech in its middle: nothing is found in the leading silence
    assert seg.speech_spans(np.concatenate([quiet, speech[:48000], quiet]))[0][0] > 1.5


def test_a_short_piece_never_joins_across_another_speakers_piece():
    # B's short piece is dropped, and A's short piece after it does not reach back over it into A's clip
    pieces = [Piece(0, 5, "A"), Piece(5.2, 6, "B"), Piece(6.5, 7.5, "A")]
    kept, dropped = merge_short(pieces, 3.0, 30.0, 2.0)
    assert _spans(kept) == [(0, 5)] and _spans(dropped) == [(5.2, 6), (6.5, 7.5)]
