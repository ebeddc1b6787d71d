"""Check a build against labelled data: WER / CER per language (jiwer) against a reference transcript
list, and DER (pyannote.metrics, collar 0, overlap scored) against RTTM files (pyannote.database's loader).

``emilia-pipe eval OUT --refs REFS`` calls :func:`evaluate`. A transcript list is a TSV, one
``path-or-id<TAB>text`` a line, or with a header naming its columns (``file``/``path``/``id``, ``text`` /
``reference_text``, optional ``language``) as ``sample_data/asr_references.tsv``. A path is matched to a
source of the build (relative to the list's folder, then as a path suffix, then by file name); an id to a
clip. A source's hypothesis is the text of all its transcribed clips (kept and rejected) in time order,
so speech that became no clip counts as deleted words. Errors are given apart, per language and overall:
deletions (speech lost by the cutting rules, or not heard), substitutions (misheard) and insertions.
RTTM references (a folder of ``.rttm``, a ``.uem`` beside one limits its scoring region) are matched to
sources by file stem and scored against the diarization turns stored in the build."""
from __future__ import annotations

import csv
import json
import re
import unicodedata
from pathlib import Path
from typing import Optional

CHAR_LANGUAGES = ("zh", "ja", "ko")  # written without spaces between words: CER is the measure


def normalize_words(text: str) -> list[str]:
    text = unicodedata.normalize("NFKC", text).lower()
    text = re.sub(r"[^\w\s']", " ", text)
    return text.split()


def _chars(text: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFKC", text) if c.isalnum())


def _counts(measure, refs: list[str], hyps: list[str]) -> dict[str, int]:
    """Reference length and edit operations over a corpus: ``units`` (words or characters of the
    references), ``substitutions``, ``deletions`` (reference words missing: speech lost or unheard) and
    ``insertions``. jiwer refuses empty references: each of their hypothesis units is an insertion."""
    import jiwer

    size = len if measure == "chars" else (lambda text: len(text.split()))
    pairs = [(r, h) for r, h in zip(refs, hyps) if r]
    counts = {"units": 0, "substitutions": 0, "deletions": 0,
              "insertions": sum(size(h) for r, h in zip(refs, hyps) if not r)}
    if pairs:
        refs, hyps = map(list, zip(*pairs))
        out = jiwer.process_characters(refs, hyps) if measure == "chars" else jiwer.process_words(refs, hyps)
        counts["units"] = sum(size(r) for r in refs)
        for key in ("substitutions", "deletions", "insertions"):
            counts[key] += int(getattr(out, key))
    return counts


def _errors(counts: dict[str, int]) -> int:
    return counts["substitutions"] + counts["deletions"] + counts["insertions"]


def _rate(measure, refs: list[str], hyps: list[str]) -> tuple[int, int]:
    """(errors, reference length) over a corpus."""
    counts = _counts(measure, refs, hyps)
    return _errors(counts), counts["units"]


def word_error_rate(reference: str, hypothesis: str) -> float:
    errors, n = _rate("words", [" ".join(normalize_words(reference))], [" ".join(normalize_words(hypothesis))])
    return errors / max(n, 1)


def char_error_rate(reference: str, hypothesis: str) -> float:
    """For languages written without spaces (zh, ja): edit distance over characters, punctuation removed."""
    errors, n = _rate("chars", [_chars(reference)], [_chars(hypothesis)])
    return errors / max(n, 1)


# --- references --------------------------------------------------------------------------------

MAX_REFERENCE_BYTES = 256 << 20  # a transcript list this large is a wrong file (or /dev/zero)


def load_transcripts(path: Path) -> list[dict]:
    """Rows {key, text, language (or None)} of a TSV transcript list."""
    from emilia_pipe.runtime.userfiles import read_user_file

    text = read_user_file(path, "reference list", MAX_REFERENCE_BYTES, ValueError)
    rows = [r for r in csv.reader(text.splitlines(), delimiter="\t", quoting=csv.QUOTE_NONE)
            if r and not r[0].startswith("#")]
    header = [c.strip().lower() for c in rows[0]] if rows else []
    key_col = next((header.index(c) for c in ("file", "path", "id") if c in header), None)
    text_col = next((header.index(c) for c in ("reference_text", "text") if c in header), None)
    if key_col is not None and text_col is not None:
        lang_col = header.index("language") if "language" in header else None
        body = rows[1:]
    else:
        key_col, text_col, lang_col, body = 0, 1, None, rows
    out = []
    for r in body:
        if len(r) <= max(key_col, text_col):
            raise ValueError(f"{path}: expected path-or-id<TAB>text, got {r!r}")
        out.append({"key": r[key_col].strip(), "text": r[text_col].strip(),
                    "language": (r[lang_col].strip() or None) if lang_col is not None and lang_col < len(r) else None})
    return out


def load_rttm_folder(path: Path) -> dict[str, dict]:
    """file stem -> {"reference": Annotation, "uem": Timeline or None} for every .rttm under ``path``."""
    from pyannote.database.util import load_rttm, load_uem

    # regular files only (is_file): a FIFO or device named .rttm would block the reader
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*.rttm") if p.is_file())
    refs = {}
    for f in files:
        by_uri = load_rttm(str(f))
        uem_file = f.with_suffix(".uem")
        uems = load_uem(str(uem_file)) if uem_file.exists() else {}
        for uri, ann in by_uri.items():  # one uri per file: the file stem names it; more: each uri does
            name = f.stem if len(by_uri) == 1 else uri
            refs[name] = {"reference": ann, "uem": uems.get(uri)}
    return refs


# --- evaluation --------------------------------------------------------------------------------

def _match_source(key: str, refs_dir: Path, paths: dict[str, int]) -> Optional[int]:
    resolved = str((refs_dir / key).resolve())
    if resolved in paths:
        return paths[resolved]
    suffix = "/" + key.lstrip("./")
    hits = [i for p, i in paths.items() if p.endswith(suffix)]
    if len(hits) == 1:
        return hits[0]
    named = [i for p, i in paths.items() if Path(p).name == Path(key).name]
    return named[0] if len(named) == 1 else None


def evaluate_transcripts(clips, sources, tsv: Path) -> dict:
    by_source = clips.sort_values(["source_index", "start"]).groupby("source_index")
    texts = {i: " ".join(t for t in g["text"].astype(object) if isinstance(t, str)) for i, g in by_source}
    langs = {i: g["language"].astype(object).mode().iloc[0] if g["language"].notna().any() else None for i, g in by_source}
    clip_text = dict(zip(clips["id"].astype(object), clips["text"].astype(object)))
    clip_lang = dict(zip(clips["id"].astype(object), clips["language"].astype(object)))
    paths = dict(zip(sources["path"].astype(str), sources["index"].astype(int)))
    files, unmatched = [], []
    for ref in load_transcripts(tsv):
        if ref["key"] in clip_text:
            hyp, lang, n_clips = clip_text[ref["key"]] or "", clip_lang[ref["key"]], 1
        else:
            idx = _match_source(ref["key"], tsv.parent, paths)
            if idx is None:
                unmatched.append(ref["key"])
                continue
            hyp, lang, n_clips = texts.get(idx, ""), langs.get(idx), int((clips["source_index"] == idx).sum())
        lang = (ref["language"] or lang or "xx").lower()
        files.append({"key": ref["key"], "language": lang, "clips": n_clips, "reference": ref["text"], "hypothesis": hyp,
                      "wer": round(word_error_rate(ref["text"], hyp), 4), "cer": round(char_error_rate(ref["text"], hyp), 4)})
    languages = {}
    overall = {"files": 0, "files_without_clips": 0, "units": 0, "substitutions": 0, "deletions": 0, "insertions": 0}
    for lang in sorted({f["language"] for f in files}):
        rows = [f for f in files if f["language"] == lang]
        words = _counts("words", [" ".join(normalize_words(f["reference"])) for f in rows],
                        [" ".join(normalize_words(f["hypothesis"])) for f in rows])
        chars = _counts("chars", [_chars(f["reference"]) for f in rows], [_chars(f["hypothesis"]) for f in rows])
        measure = "cer" if lang in CHAR_LANGUAGES else "wer"
        own = chars if measure == "cer" else words  # the language's own unit: characters where words are not spaced
        languages[lang] = {"files": len(rows), "files_without_clips": sum(1 for f in rows if not f["clips"]),
                           "words": words["units"], "wer": round(_errors(words) / max(words["units"], 1), 4),
                           "chars": chars["units"], "cer": round(_errors(chars) / max(chars["units"], 1), 4),
                           "measure": measure, "units": own["units"],
                           **{k: own[k] for k in ("substitutions", "deletions", "insertions")}}
        for key in overall:
            overall[key] += languages[lang][key]
    overall["error_rate"] = round(_errors(overall) / max(overall["units"], 1), 4)
    return {"references": str(tsv), "languages": languages, "overall": overall, "files": files, "unmatched": unmatched}


def evaluate_diarization(sources, rttm: Path) -> dict:
    from pyannote.core import Annotation, Segment, Timeline
    from pyannote.metrics.diarization import DiarizationErrorRate

    refs = load_rttm_folder(rttm)
    total = DiarizationErrorRate(collar=0.0, skip_overlap=False)
    files, matched = [], set()
    for rec in sources.to_dict("records"):
        stem = Path(rec["path"]).stem
        if stem not in refs:
            continue
        matched.add(stem)
        ref, uem = refs[stem]["reference"], refs[stem]["uem"]
        hyp = Annotation(uri=ref.uri)
        for t in json.loads(rec["turns"]) if isinstance(rec["turns"], str) else []:
            hyp[Segment(t["start"], t["end"])] = t["speaker"]
        uem = uem or Timeline([Segment(0.0, float(rec["duration"]))], uri=ref.uri)
        detail = total(ref, hyp, uem=uem, detailed=True)
        scored = detail["total"] or 1.0
        files.append({"file": stem, "der": round(detail["diarization error rate"], 4),
                      "missed": round(detail["missed detection"] / scored, 4),
                      "false_alarm": round(detail["false alarm"] / scored, 4),
                      "confusion": round(detail["confusion"] / scored, 4),
                      "speakers_ref": len(ref.labels()), "speakers_hyp": len(hyp.labels())})
    return {"references": str(rttm), "files": files, "der": round(abs(total), 4) if files else None,
            "unmatched": sorted(set(refs) - matched)}


def evaluate(out: str | Path, refs: list[str | Path]) -> dict:
    """WER/CER for each transcript list and DER for each RTTM folder/file in ``refs``. Reads from the ledger
    only the sources the references name (and their clips), never the whole build."""
    from emilia_pipe.dataset.ledger import Ledger, read_build_info
    from emilia_pipe.records import ClipId

    ledger = Ledger(Path(out))
    per_shard = int(((read_build_info(out) or {}).get("config") or {}).get("output", {}).get("sources_per_shard", 100))
    sources = ledger.sources(["path", "status"])
    sources = sources[sources["status"] == "done"]
    report: dict = {"build": str(out), "asr": [], "diarization": []}
    for ref in map(Path, refs):
        if not ref.exists():
            raise FileNotFoundError(f"reference {ref} does not exist")
        if ref.is_dir() or ref.suffix == ".rttm":
            stems = set(load_rttm_folder(ref))
            named = [i for i, p in zip(sources["index"], sources["path"]) if Path(str(p)).stem in stems]
            rows = ledger.sources(["path", "status", "duration", "turns"], indices=named)
            report["diarization"].append(evaluate_diarization(rows, ref))
        else:
            paths = dict(zip(sources["path"].astype(str), sources["index"].astype(int)))
            named = set()
            for r in load_transcripts(ref):
                try:
                    cid = ClipId.parse(r["key"])
                    named.add(cid.shard * per_shard + cid.source)
                except ValueError:
                    idx = _match_source(r["key"], ref.parent, paths)
                    if idx is not None:
                        named.add(idx)
            clips = ledger.clips(["id", "source_index", "start", "text", "language"], indices=sorted(named))
            report["asr"].append(evaluate_transcripts(clips, sources, ref))
    return report


def _operations(v: dict, rate: float) -> str:
    return f"{v['units']:>8}{v['substitutions']:>7}{v['deletions']:>7}{v['insertions']:>7}{100 * rate:>7.1f}%"


def format_report(report: dict) -> str:
    lines = []
    for asr in report["asr"]:
        lines.append(f"ASR against {asr['references']}")
        lines.append("  language  files  no-clip   words     WER   chars     CER   units    sub    del    ins    rate")
        for lang, v in asr["languages"].items():
            lines.append(f"  {lang:<8}{v['files']:>7}{v['files_without_clips']:>9}{v['words']:>8}{100 * v['wer']:>7.1f}%"
                         f"{v['chars']:>8}{100 * v['cer']:>7.1f}%" + _operations(v, v[v["measure"]]))
        o = asr["overall"]
        lines.append(f"  {'overall':<8}{o['files']:>7}{o['files_without_clips']:>9}{'':>32}" + _operations(o, o["error_rate"]))
        lines.append(f"  (units, sub, del, ins, rate: in words, or characters for {', '.join(CHAR_LANGUAGES)}; "
                     "del: reference units missing from the build, speech lost or not heard)")
        if asr["unmatched"]:
            lines.append(f"  not in the build: {len(asr['unmatched'])} ({', '.join(asr['unmatched'][:5])})")
    for dia in report["diarization"]:
        lines.append(f"DER against {dia['references']} (collar 0, overlap scored)")
        lines.append("  file                            DER   missed  f.alarm  confus.  spk ref/hyp")
        for f in dia["files"]:
            lines.append(f"  {f['file']:<28}{100 * f['der']:>7.1f}%{100 * f['missed']:>8.1f}%{100 * f['false_alarm']:>8.1f}%"
                         f"{100 * f['confusion']:>8.1f}%  {f['speakers_ref']:>5}/{f['speakers_hyp']}")
        if dia["der"] is not None:
            lines.append(f"  overall{100 * dia['der']:>28.1f}%")
        if dia["unmatched"]:
            lines.append(f"  references with no source in the build: {', '.join(dia['unmatched'])}")
    return "\n".join(lines)
