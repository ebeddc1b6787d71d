"""Make sample_data_kept.json: the kept clips of a default build of sample_data/ (texts, spans, scores).

    .venv/bin/python tests/golden/make_golden.py                # regenerate: only for a change *meant* to
                                                                # change results; say which in the commit
    .venv/bin/python tests/golden/make_golden.py --add-variant  # this CPU's Whisper texts, where they differ

Whisper runs int8 on CPU, and CTranslate2's int8 arithmetic is not the same on every CPU: Intel MKL on Intel,
oneDNN elsewhere, each with its own kernels per instruction set. Measured on sample_data: an AMD EPYC
(Zen 4) build gave the Intel (AVX-512, AMX) build's kept clips, spans, languages and DNSMOS scores exactly,
but 6 of the 20 texts differed (three words: "Gweniver"/"Gwynever", "Miss"/"Ms.", "Leichenhalter"/
"Leichenhalle", the rest punctuation). ``--add-variant`` runs the build on this machine, checks that
everything but the texts matches, and records each text that differs as a variant of that clip with the CPU
it came from; the golden test accepts a clip's golden text or one of its variants. Regenerating keeps a
clip's golden text and variants when this CPU's text is one of them, and drops them where the text changed
(variants of other CPUs then have to be made again there)."""
import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from conftest import kept_clips, known_texts  # noqa: E402

from emilia_pipe.config import load_config  # noqa: E402
from emilia_pipe.runners.driver import run_pipeline

GOLDEN = Path(__file__).with_name("sample_data_kept.json")
SPAN_TOL_S, DNSMOS_TOL = 0.02, 0.01  # what the golden test allows


def cpu_kind() -> str:
    """The CPU's model name and the instruction sets that pick CTranslate2's int8 kernels, plus any
    environment variable that overrides that choice."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    field = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in info.splitlines()[:30])}
    name = f"{field.get('model name', 'unknown CPU')} (family {field.get('cpu family', '?')}, model {field.get('model', '?')})"
    flags = set(field.get("flags", "").split())
    isa = "AMX" if "amx_int8" in flags else "AVX-512 VNNI" if "avx512_vnni" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    forced = [f"{k}={os.environ[k]}" for k in ("CT2_USE_MKL", "CT2_FORCE_CPU_ISA", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")
              if k in os.environ]
    return ", ".join([name, isa, *forced])


def build_rows() -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        run_pipeline([ROOT / "sample_data"], Path(tmp) / "out", load_config(overrides=["run.runner=local"]))
        return kept_clips(Path(tmp) / "out")


def add_variants(golden: list[dict], rows: list[dict], cpu: str) -> int:
    """Record this build's differing texts as variants; everything else must match the golden build."""
    if [(r["source"], r["language"]) for r in rows] != [(g["source"], g["language"]) for g in golden]:
        sys.exit("kept clips or languages differ from the golden build: not a text variant, nothing written")
    added = 0
    for g, r in zip(golden, rows):
        far = [k for k in ("start", "end") if abs(g[k] - r[k]) > SPAN_TOL_S]
        far += [k for k in ("dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl") if abs(g[k] - r[k]) > DNSMOS_TOL]
        if far:
            sys.exit(f"{g['source']} {g['start']}: {far} differ from the golden build: not a text variant")
        if r["text"] not in known_texts(g):
            g.setdefault("variants", []).append({"text": r["text"], "cpu": cpu})
            added += 1
    return added


def keep_known_texts(rows: list[dict], golden: list[dict]) -> int:
    """A regenerated clip whose text is its old golden text or one of that clip's variants keeps the old
    golden text and variants (the build on this CPU changed nothing there); returns how many did."""
    old = {(g["source"], g["start"]): g for g in golden}
    kept = 0
    for r in rows:
        prev = old.get((r["source"], r["start"]))
        if prev and r["text"] in known_texts(prev):
            r["text"] = prev["text"]
            if prev.get("variants"):
                r["variants"] = prev["variants"]
            kept += 1
    return kept


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--add-variant", action="store_true", help="record this CPU's differing texts as variants")
    args = ap.parse_args()
    rows = build_rows()
    if args.add_variant:
        golden = json.loads(GOLDEN.read_text())
        added = add_variants(golden, rows, cpu_kind())
        GOLDEN.write_text(json.dumps(golden, indent=1, ensure_ascii=False) + "\n")
        print(f"{added} text variant(s) from {cpu_kind()} -> {GOLDEN}")
    else:
        kept = keep_known_texts(rows, json.loads(GOLDEN.read_text()) if GOLDEN.exists() else [])
        GOLDEN.write_text(json.dumps(rows, indent=1, ensure_ascii=False) + "\n")
        print(f"{len(rows)} kept clips -> {GOLDEN}; {kept} kept their golden text and variants, the others' "
              "variants from other CPUs are dropped")
