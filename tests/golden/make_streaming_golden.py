"""Records what finalize published, step by step, on the synthetic build of tests/synthetic_build.py:
tests/golden/streaming_publish.json. Made once with the in-memory finalize (before issue 23, cff3a33) so
the streaming finalize is held to its outputs byte for byte.

    python tests/golden/make_streaming_golden.py"""
from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))

from synthetic_build import config, make_build, outputs, published_audio  # noqa: E402

from emilia_pipe.dataset.publish import finalize  # noqa: E402

STEPS = (  # (step, sources to add before it, filter settings)
    ("first", 40, ()),
    ("refilter_dnsmos", 0, ("filter.dnsmos_min=3.2",)),
    ("refilter_language_iqr", 0, ("filter.iqr_scope=language",)),
    ("more_sources", 7, ()),
    ("refilter_speaker_iqr", 0, ("filter.iqr_scope=speaker", "filter.language_prob_min=0.5")),
)


def run_steps(out: Path) -> dict:
    record, added = {}, 0
    for run, (step, n_new, overrides) in enumerate(STEPS):
        if n_new:
            make_build(out, n_new, first=added, run=run)
            added += n_new
        finalize(out, config(*overrides), {})
        audio = "\n".join(published_audio(out)).encode()
        record[step] = {"files": outputs(out), "published_audio": hashlib.sha256(audio).hexdigest()}
    return record


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        result = run_steps(Path(tmp) / "build")
    dest = Path(__file__).parent / "streaming_publish.json"
    dest.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    print(dest, {k: len(v["files"]) for k, v in result.items()})
