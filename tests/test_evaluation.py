"""``emilia-pipe eval`` on small frames (no build, no model): errors apart as deletions, substitutions and
insertions, per language and overall."""
import pandas as pd


def test_eval_gives_deletions_substitutions_and_insertions_per_language_and_overall(tmp_path):
    from emilia_pipe.dataset.evaluation import evaluate_transcripts, format_report

    sources = pd.DataFrame({"path": [str(tmp_path / f"{n}.wav") for n in ("a", "b", "c", "d")], "index": [0, 1, 2, 3]})
    clips = pd.DataFrame({"id": ["EN_0", "EN_1", "ZH_2"], "source_index": [0, 1, 2], "start": [0.0, 0.0, 0.0],
                          "text": ["The bat sat on mat.", "hello big world", "你好"], "language": ["en", "en", "zh"]})
    tsv = tmp_path / "refs.tsv"
    tsv.write_text("file\tlanguage\treference_text\na.wav\ten\tthe cat sat on the mat\nb.wav\ten\thello world\n"
                   "c.wav\tzh\t你好世界\nd.wav\ten\tgood morning\n")
    report = evaluate_transcripts(clips, sources, tsv)
    en, zh = report["languages"]["en"], report["languages"]["zh"]
    # d.wav became no clip: its 2 words are deleted, as the "the" of a.wav; "cat" was misheard; "big" added
    assert (en["units"], en["substitutions"], en["deletions"], en["insertions"]) == (10, 1, 3, 1)
    assert en["wer"] == 0.5 and en["files_without_clips"] == 1
    assert (zh["measure"], zh["units"], zh["deletions"], zh["cer"]) == ("cer", 4, 2, 0.5)  # characters for zh
    assert report["overall"] == {"files": 4, "files_without_clips": 1, "units": 14, "substitutions": 1,
                                 "deletions": 5, "insertions": 1, "error_rate": 0.5}
    table = format_report({"asr": [report], "diarization": []})
    assert table.splitlines()[-2].split() == ["overall", "4", "1", "14", "1", "5", "1", "50.0%"]
