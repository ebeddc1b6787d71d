"""``OUT/datacard.html``: one self-contained page describing a build, rewritten by every run and refilter.

Everything comes from the summary and the buckets' shares (:func:`card_part`, stored with each bucket by
:mod:`emilia_pipe.dataset.buckets` and added up): histogram counts over fixed bins, the kept clips per OVRL
bin and a few rejected candidates, so the page of a 100-million-clip build never holds its clips. Plots are inline SVG drawn here (no scripts, fonts or network
assets); the audio players point at the MP3s by paths relative to OUT."""
from __future__ import annotations

import html
from typing import Optional

import numpy as np
import pandas as pd

from emilia_pipe.dataset.layout import HELD
from emilia_pipe.records import ClipId

KEPT, REJECTED = "#2e7d32", "#c62828"
HISTOGRAMS = (  # (column, title, range): fixed ranges so cards of two builds compare at a glance
    ("duration", "Clip duration (s)", (0.0, 30.0)),
    ("dnsmos_sig", "DNSMOS SIG", (1.0, 5.0)),
    ("dnsmos_bak", "DNSMOS BAK", (1.0, 5.0)),
    ("dnsmos_ovrl", "DNSMOS OVRL", (1.0, 5.0)),
    ("chars_per_s", "Speaking rate (characters / s)", (0.0, 30.0)),
    ("speech_prob", "Speech probability (Silero VAD mean)", (0.0, 1.0)),
)
SAMPLES = 4  # audio players per side

_CSS = """body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1100px;color:#222;background:#fff}
h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:8px 0}td,th{padding:3px 10px;border-bottom:1px solid #eee;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums}.grid{display:flex;flex-wrap:wrap;gap:12px}
.key span{display:inline-block;width:12px;height:12px;margin:0 4px 0 12px;vertical-align:middle}
audio{height:32px;vertical-align:middle}small{color:#666}"""


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def bar_chart(labels: list[str], values: list[float], unit: str, color: str = "#1565c0", width: int = 620) -> str:
    """Horizontal bars, one row per label (value printed at the bar's end)."""
    row, left, right = 24, 210, 90
    top = max(values) if values and max(values) > 0 else 1.0
    h = row * len(labels) + 10
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{h}" role="img">']
    for i, (label, v) in enumerate(zip(labels, values)):
        y, w = 5 + i * row, (width - left - right) * (v / top)
        parts.append(f'<text x="{left - 6}" y="{y + 15}" text-anchor="end" font-size="12">{_e(label)}</text>'
                     f'<rect x="{left}" y="{y + 2}" width="{max(w, 1):.1f}" height="{row - 6}" fill="{color}"/>'
                     f'<text x="{left + w + 6:.1f}" y="{y + 15}" font-size="12">{v:.4g} {_e(unit)}</text>')
    return "".join(parts) + "</svg>"


def histogram(counts: dict, title: str, bounds: tuple[float, float], bins: int = 20) -> str:
    """Kept and rejected counts per bin, side by side (``counts``: from :func:`_counts`, added up over buckets)."""
    width, height, pad, base = 340, 190, 34, 150
    top = max(1, max(max(c) for c in (counts["kept"], counts["rejected"])))
    step = (width - 2 * pad) / bins
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">',
             f'<text x="{width / 2}" y="14" text-anchor="middle" font-size="13">{_e(title)}</text>',
             f'<line x1="{pad}" y1="{base}" x2="{width - pad}" y2="{base}" stroke="#888"/>',
             f'<text x="{pad - 4}" y="28" text-anchor="end" font-size="10">{top}</text>']
    for k, (c, color) in enumerate(zip((counts["kept"], counts["rejected"]), (KEPT, REJECTED))):
        for i, n in enumerate(c):
            if n:
                bar = (base - 24) * n / top
                parts.append(f'<rect x="{pad + i * step + k * step / 2:.1f}" y="{base - bar:.1f}" width="{step / 2 - 0.5:.1f}" '
                             f'height="{bar:.1f}" fill="{color}"/>')
    for x in (bounds[0], (bounds[0] + bounds[1]) / 2, bounds[1]):
        px = pad + (x - bounds[0]) / (bounds[1] - bounds[0]) * (width - 2 * pad)
        parts.append(f'<text x="{px:.1f}" y="{base + 14}" text-anchor="middle" font-size="10">{x:g}</text>')
    n_k, n_r = sum(counts["kept"]), sum(counts["rejected"])
    parts.append(f'<text x="{width / 2}" y="{height - 6}" text-anchor="middle" font-size="10">kept n={n_k}, '
                 f'rejected n={n_r}</text>')
    return "".join(parts) + "</svg>"


def _counts(values: np.ndarray, bounds: tuple[float, float], bins: int = 20) -> list[int]:
    """Finite values per bin (values outside ``bounds`` go to the end bins)."""
    edges = np.linspace(bounds[0], bounds[1], bins + 1)
    return [int(n) for n in np.histogram(np.clip(values[np.isfinite(values)], *bounds), edges)[0]]


def _table(header: list[str], rows: list[list], numeric_from: int = 1) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f'<td class="n">{_e(v)}</td>' if i >= numeric_from else f"<td>{_e(v)}</td>"
                                    for i, v in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _column(df: pd.DataFrame, col: str) -> np.ndarray:
    if col == "chars_per_s":
        chars = pd.to_numeric(df["chars"], errors="coerce").astype("float64")
        return (chars / pd.to_numeric(df["duration"], errors="coerce").astype("float64")).where(chars > 0).to_numpy()
    if col not in df:
        return np.array([], dtype=np.float64)
    return pd.to_numeric(df[col], errors="coerce").astype("float64").to_numpy()


def _players(rows: list[dict], with_reasons: bool) -> str:
    if not len(rows):
        return "<p><small>none with audio</small></p>"
    cells = []
    for r in rows:  # a handful of rows, never the whole table
        src = f"{ClipId.parse(str(r['id'])).language}/{r['wav']}"
        src = f"{HELD}/{src}" if with_reasons else src  # rejected clips' audio is not published
        note = ", ".join(r["reasons"]) if with_reasons else f"OVRL {r['dnsmos_ovrl']:.2f}"
        text = r["text"][:120] if isinstance(r["text"], str) else ""
        cells.append([r["id"], r["language"], f"{r['duration']:.1f} s", note, text, src])
    head = "".join(f"<th>{h}</th>" for h in ("clip", "lang", "duration", "reasons" if with_reasons else "DNSMOS", "text", ""))
    body = "".join(f"<tr><td>{_e(a)}</td><td>{_e(b)}</td><td class='n'>{_e(c)}</td><td>{_e(d)}</td><td>{_e(t)}</td>"
                   f"<td><audio controls preload=none src=\"{_e(s)}\"></audio></td></tr>" for a, b, c, d, t, s in cells)
    return f"<table><tr>{head}</tr>{body}</table>"


SAMPLE_FIELDS = ("id", "language", "duration", "reasons", "text", "wav", "dnsmos_ovrl")
OVRL_BINS = 4000  # kept clips by OVRL, to find the sample ranks without sorting the build (1/1000 MOS each)


def _ovrl_bin(ovrl: np.ndarray) -> np.ndarray:
    """Bin 0 holds the best OVRL: the kept samples are taken from best to worst."""
    return np.clip(np.floor((5.0 - ovrl) * 1000.0), 0, OVRL_BINS - 1).astype(np.int64)


def card_part(judged: pd.DataFrame) -> dict:
    """One bucket's share of the data card: histogram counts, the kept clips per OVRL bin, and the
    rejected clips that can be among the build's rejected samples (the first by id of each leading reason,
    and the first ones by id)."""
    mask = judged["kept"].to_numpy(dtype=bool) if len(judged) else np.zeros(0, bool)
    hist = {}
    for col, _, bounds in HISTOGRAMS:
        values = _column(judged, col)
        if values.size:
            hist[col] = {"kept": _counts(values[mask], bounds), "rejected": _counts(values[~mask], bounds)}
    audible = judged[judged["wav"].notna()] if len(judged) else judged
    kept = audible[audible["kept"]] if len(audible) else audible
    bins = np.bincount(_ovrl_bin(kept["dnsmos_ovrl"].astype("float64").to_numpy()), minlength=OVRL_BINS) if len(kept) else []
    rej = audible[~audible["kept"]] if len(audible) else audible
    return {"histograms": hist, "kept": len(kept), "kept_bins": {int(i): int(n) for i, n in enumerate(bins) if n},
            "rejected": _candidates([_sample(r) for r in rej.to_dict("records")])}


def _candidates(rows: list[dict]) -> list[dict]:
    """The rejected clips that can be among the build's samples, by id: the first of each leading reason,
    and the first ones (as many as samples plus reasons). Kept from a bucket, or from several added up,
    they hold the build's samples; their number does not grow with the build."""
    rows = sorted(rows, key=lambda r: r["id"])
    seen: set[str] = set()
    out = []
    for n, r in enumerate(rows):
        lead = r["reasons"][0] if r["reasons"] else ""
        if lead not in seen or n < SAMPLES + 20:
            out.append(r)
        seen.add(lead)
    return out


def _sample(rec: dict) -> dict:
    out = {k: rec.get(k) for k in SAMPLE_FIELDS}
    out["text"] = out["text"][:120] if isinstance(out["text"], str) else None
    out["reasons"] = list(out["reasons"] or [])
    for k in ("duration", "dnsmos_ovrl"):
        out[k] = None if out[k] is None or out[k] != out[k] else float(out[k])
    return out


def add_cards(parts) -> dict:
    total: dict = {"histograms": {}, "kept": 0, "kept_bins": {}, "rejected": []}
    for part in parts:
        for col, c in part["histograms"].items():
            t = total["histograms"].setdefault(col, {"kept": [0] * len(c["kept"]), "rejected": [0] * len(c["rejected"])})
            for side in ("kept", "rejected"):
                t[side] = [a + b for a, b in zip(t[side], c[side])]
        total["kept"] += part["kept"]
        for i, n in part["kept_bins"].items():
            total["kept_bins"][int(i)] = total["kept_bins"].get(int(i), 0) + n
        total["rejected"] = _candidates(total["rejected"] + part["rejected"])
    return total


def samples(card: dict, kept_of, rows_of) -> tuple[list[dict], list[dict]]:
    """Kept: from best to worst OVRL, evenly spaced; rejected: a clip of each leading reason first.
    ``kept_of(bins)``: the kept clips (``id``, ``dnsmos_ovrl``) whose OVRL bin is in ``bins``; ``rows_of(ids)``:
    those clips with their ``SAMPLE_FIELDS``, by id."""
    n = card["kept"]
    ranks = sorted(set(np.linspace(0, n - 1, SAMPLES).round().astype(int).tolist())) if n > SAMPLES else list(range(n))
    order = sorted(card["kept_bins"].items())
    where, seen, i = {}, 0, 0
    for r in ranks:  # the bin each rank falls in, and its place there
        while seen + order[i][1] <= r:
            seen += order[i][1]
            i += 1
        where[r] = (order[i][0], r - seen)
    rows = kept_of({b for b, _ in where.values()})
    by_bin: dict[int, list] = {}
    for row in rows:
        by_bin.setdefault(int(_ovrl_bin(np.array([row["dnsmos_ovrl"]]))[0]), []).append(row)
    for b in by_bin:
        by_bin[b].sort(key=lambda r: (-r["dnsmos_ovrl"], r["id"]))
    chosen = [by_bin[b][k]["id"] for b, k in (where[r] for r in ranks)]
    full = rows_of(chosen) if chosen else {}
    kept = [full[i] for i in chosen]
    rej = sorted(card["rejected"], key=lambda r: r["id"])
    lead = [r["reasons"][0] if r["reasons"] else "" for r in rej]
    first = [lead[i] not in lead[:i] for i in range(len(rej))]
    rej = ([r for r, f in zip(rej, first) if f] + [r for r, f in zip(rej, first) if not f])[:SAMPLES]
    return kept, rej


def render(summary: dict, card: dict, failures: pd.DataFrame, kept_of, rows_of) -> str:
    """The page, from the summary, the buckets' added-up card shares (:func:`add_cards`) and the failures."""
    h, f, c = summary["hours"], summary["files"], summary["clips"]
    funnel = [("input files, decoded", h["input"]), ("speech turns (diarization)", h["after_diarization"]),
              ("segmented clips", h["after_segmentation"]), ("after ASR language rule", h["after_asr_language"]),
              ("kept", h["kept"])]
    base = h["input"] or 1e-12
    out = [f"<!doctype html><html><head><meta charset=utf-8><title>emilia-pipe data card</title><style>{_CSS}</style>"
           "</head><body><h1>emilia-pipe data card</h1>",
           f"<p id=overview>profile <b>{_e(summary['profile'])}</b>, separation {'on' if summary['separation'] else 'off'}; "
           f"files: {f['ok']} ok, {f['failed']} failed, {f['skipped']} skipped; clips: <b id=kept-clips>{c['kept']}</b> kept "
           f"of {c['total']} ({c['rejected']} rejected); kept <b id=kept-hours>{h['kept']:.4f}</b> h.</p>",
           "<h2 id=funnel>Hours after each stage</h2>",
           bar_chart([k for k, _ in funnel], [v for _, v in funnel], "h"),
           _table(["stage", "hours", "% of input"], [[k, f"{v:.4f}", f"{100 * v / base:.1f} %"] for k, v in funnel]),
           _speech_yield(summary.get("speech_yield")),
           "<h2 id=languages>Hours per language (kept)</h2>"]
    langs = summary["languages"]
    if langs:
        out += [bar_chart(list(langs), [v["hours"] for v in langs.values()], "h", KEPT),
                _table(["language", "clips", "hours"], [[k, v["clips"], f"{v['hours']:.4f}"] for k, v in langs.items()])]
    else:
        out.append("<p>no kept clips</p>")
    out.append("<h2 id=distributions>Distributions, kept vs rejected</h2><p class=key>"
               f"<span style='background:{KEPT}'></span>kept<span style='background:{REJECTED}'></span>rejected</p><div class=grid>")
    for col, title, bounds in HISTOGRAMS:
        if col in card["histograms"]:
            out.append(histogram(card["histograms"][col], title, bounds))
    out.append("</div><h2 id=reasons>Drop reasons</h2>")
    reasons = sorted(summary["drop_reasons"].items(), key=lambda kv: (-kv[1]["count"], kv[0]))
    if reasons:
        out += [bar_chart([k for k, _ in reasons], [v["count"] for _, v in reasons], "clips", REJECTED),
                _table(["reason", "clips", "hours"], [[k, v["count"], f"{v['hours']:.4f}"] for k, v in reasons])]
    else:
        out.append("<p>nothing dropped</p>")
    out.append("<h2 id=failures>Top failures</h2>")
    out.append(_failures(failures))
    kept, rej = samples(card, kept_of, rows_of)
    out += ["<h2 id=kept-samples>Kept clips</h2>", _players(kept, False),
            "<h2 id=rejected-samples>Rejected clips</h2>", _players(rej, True), "</body></html>"]
    return "\n".join(out)


def _speech_yield(y: Optional[dict]) -> str:
    """Where the VAD speech inside speaker turns went: into clips, or lost to which cutting rule."""
    if not y:
        return ""
    base = y["speech_in_turns_s"] or 1e-12
    rows = [("in speaker turns", y["speech_in_turns_s"], ""), ("in clips (kept or rejected)", y["speech_in_clips_s"], "")]
    rows += [(f"dropped: {rule}", v["speech_s"], v["segments"]) for rule, v in y["dropped"].items()]
    note = (f"<p><small>{y['sources_without_figures']} sources were written by an older version and have no speech "
            "figures.</small></p>" if y.get("sources_without_figures") else "")
    return ("<h2 id=speech-yield>Speech yield</h2><p>Seconds of VAD speech inside speaker turns, and where they went. "
            f"Speech outside every speaker turn: {y['vad_speech_s'] - y['speech_in_turns_s']:.1f} s.</p>"
            + bar_chart([r[0] for r in rows], [r[1] for r in rows], "s")
            + _table(["speech", "seconds", "% of speech in turns", "segments"],
                     [[k, f"{v:.1f}", f"{100 * v / base:.1f} %", n] for k, v, n in rows]) + note)


def _failures(failures: Optional[pd.DataFrame], top: int = 10) -> str:
    if failures is None or not len(failures):
        return "<p>no failures</p>"
    first_line = failures["error"].astype(str).str.split("\n").str[0].str.slice(0, 160)
    counts = pd.DataFrame({"stage": failures["stage"].astype(str), "error": first_line}).value_counts().head(top)
    return _table(["stage", "error", "files"], [[s, e, n] for (s, e), n in counts.items()], numeric_from=2)
