"""Time arithmetic on speech spans (sorted lists of (start, end) seconds) and the account of where a
source's VAD speech went when it was cut into clips."""
from __future__ import annotations

import bisect

from emilia_pipe.records import CUTTING_RULES, Turn

Span = tuple[float, float]


def union(spans) -> list[Span]:
    """Sorted, disjoint spans covering the same time as ``spans``."""
    out: list[Span] = []
    for s, e in sorted(spans):
        if e <= s:
            continue
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


def intersect(a: list[Span], b: list[Span]) -> list[Span]:
    """Common time of two sorted disjoint span lists (one linear pass)."""
    out, i, j = [], 0, 0
    while i < len(a) and j < len(b):
        s, e = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if e > s:
            out.append((s, e))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


def subtract(a: list[Span], b: list[Span]) -> list[Span]:
    """Time of ``a`` outside ``b`` (both sorted and disjoint)."""
    out, j = [], 0
    for s, e in a:
        while j < len(b) and b[j][1] <= s:
            j += 1
        k = j
        while k < len(b) and b[k][0] < e:
            if b[k][0] > s:
                out.append((s, b[k][0]))
            s = max(s, b[k][1])
            k += 1
        if e > s:
            out.append((s, e))
    return out


def seconds(spans: list[Span]) -> float:
    return float(sum(e - s for s, e in spans))


def speech_yield(spans: list[Span], turns: list[Turn], clips: list[Turn], dropped: list[dict]) -> dict:
    """Where the VAD speech of a source went: seconds inside speaker turns, inside clips, and (written into
    each dropped segment as ``speech_s``) inside that segment and no clip. Speech that two dropped
    segments share counts once: for the first rule of :data:`~emilia_pipe.records.CUTTING_RULES`, then for
    the earlier segment. So the segments' and the clips' seconds add up to the speech inside turns (a turn
    inside the previous one loses nothing itself: its speech lies in the enclosing turn)."""
    speech = union(spans)
    in_turns = intersect(speech, union((t.start, t.end) for t in turns))
    in_clips = intersect(in_turns, union((p.start, p.end) for p in clips))
    left = subtract(in_turns, in_clips)
    for rule in CUTTING_RULES:
        segs = sorted((d for d in dropped if d["reason"] == rule), key=lambda d: (d["start"], d["end"]))
        starts = [s for s, _ in left]
        covered = float("-inf")  # segments sorted by start: the earlier ones cover up to here
        for d in segs:
            lo, hi = max(d["start"], covered), d["end"]
            near = left[max(bisect.bisect_right(starts, lo) - 1, 0):bisect.bisect_left(starts, hi)]
            d["speech_s"] = round(seconds(intersect(near, [(lo, hi)])) if hi > lo else 0.0, 3)
            covered = max(covered, hi)
        left = subtract(left, union((d["start"], d["end"]) for d in segs))
    return {"vad_speech_s": round(seconds(speech), 3), "speech_in_turns_s": round(seconds(in_turns), 3),
            "speech_in_clips_s": round(seconds(in_clips), 3)}
