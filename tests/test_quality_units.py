"""``quality/report.py`` in small pieces: the parts mutation testing (docs/testing.md) showed no
test checking — the ids of flagged samples (the Review page's "reject every sample flagged …"),
what a run's manifest keeps of the report, and the prompt file / input folder a run passes on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mminstruct.errors import ConfigError
from mminstruct.quality.report import (
    ALL_FLAGS,
    QualityConfig,
    analyse,
    compact_summary,
    flagged_ids,
    quality_after_run,
)
from mminstruct.quality.report import main as quality_main
from tests.test_quality import _sample, _write


def test_flagged_ids_in_file_order_for_any_of_the_flags(tmp_path: Path) -> None:
    f = _write(tmp_path / "g.json", [
        _sample(10, "What is it?", "A cat."),
        _sample(11, "What is it?", "A cat."),                        # exact duplicate of 10
        _sample(12, "What colour?", "I'm sorry, I can't help with that."),  # refusal
        _sample(13, "What is it?", "A cat."),                        # exact duplicate of 10
        _sample(14, "Where?", "Outside.", image="b.jpg"),
    ])
    rep = analyse(QualityConfig(str(f)))
    assert rep.flagged_ids("exact_duplicate") == [11, 13]
    assert rep.flagged_ids("refusal") == [12]
    assert flagged_ids(rep.sample_entries(), ["refusal", "exact_duplicate"]) == [11, 12, 13]
    assert flagged_ids(rep.sample_entries(), []) == []
    assert flagged_ids([{"id": 1}, {"id": 2, "flags": ["invalid"]}], ["invalid"]) == [2]


def test_flagged_ids_refuses_an_unknown_flag_and_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError) as e:
        flagged_ids([], ["refusal", "dupe", "zzz"])
    msg = str(e.value)
    assert "'dupe'" in msg and "zzz" not in msg  # the first unknown one, by name
    assert all(f in msg for f in ALL_FLAGS)


def test_compact_summary_keeps_the_counts_for_the_manifest(tmp_path: Path) -> None:
    f = _write(tmp_path / "g.json", [_sample(0, "What is it?", "A cat.", keyword="a"),
                                     _sample(1, "What is it?", "A cat.", keyword="b")])
    summary = analyse(QualityConfig(str(f))).summary
    c = compact_summary(summary, tmp_path / "r.json")
    assert c == {"report": str(tmp_path / "r.json"), "samples": 2, "flagged": 1,
                 "flags": summary["flags"],
                 "by_keyword": {"a": summary["by_keyword"]["a"]["flags"],
                                "b": summary["by_keyword"]["b"]["flags"]},
                 "distinct_1": summary["questions"]["distinct_1"],
                 "distinct_2": summary["questions"]["distinct_2"], "icl_checked": False}
    assert c["by_keyword"]["b"]["exact_duplicate"] == 1 and c["by_keyword"]["a"]["exact_duplicate"] == 0


def test_quality_after_run_passes_the_prompt_file_and_input_folder_on(tmp_path: Path) -> None:
    prompts = {"mode": "vqa_nr", "prompts": [{"keyword": "k", "icl_indices": [0], "prompt": [
        "Example 1", "ref/0.jpg", "Q: What is the man holding?\n A: A cup.", "a.jpg"]}]}
    inp = tmp_path / "input"
    inp.mkdir()
    (inp / "p.json").write_text(json.dumps(prompts))
    out = _write(tmp_path / "run.json", [_sample(0, "What is the man holding?", "A phone.")],
                 prompt_file="p.json")  # relative: found only under the input folder
    dest = quality_after_run(out, None, input_folder=str(inp))
    rep = json.loads(dest.read_text())
    assert rep["summary"]["icl_checked"] is True and rep["samples"][0]["flags"] == ["icl_copy"]
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**prompts, "prompts": [{**prompts["prompts"][0], "prompt": [
        "Example 1", "ref/0.jpg", "Q: Where is the dog?\n A: Outside.", "a.jpg"]}]}))
    dest = quality_after_run(out, None, prompt_file=str(other), input_folder=str(inp))  # the given file wins
    assert json.loads(dest.read_text())["samples"][0]["flags"] == []


def test_quality_after_run_without_an_output_writes_nothing(tmp_path: Path) -> None:
    assert quality_after_run(None, None) is None
    assert quality_after_run("", None) is None
    assert quality_after_run(tmp_path / "missing.json", None) is None
    assert not (tmp_path / "manifests").exists()


def test_the_command_passes_every_option_on(tmp_path: Path, capsys) -> None:
    """--input_folder, --cross_image(_threshold), the thresholds and --output reach the analysis;
    the summary line and the note go to stderr, the report's path to stdout."""
    prompts = {"mode": "vqa_nr", "prompts": [{"keyword": "k", "icl_indices": [0], "prompt": [
        "Example 1", "ref/0.jpg", "Q: What is the man holding?\n A: A cup.", "a.jpg"]}]}
    inp = tmp_path / "input"
    inp.mkdir()
    (inp / "p.json").write_text(json.dumps(prompts))
    q = "What is the tall man on the left side of the picture holding in his right hand today?"
    gen = _write(tmp_path / "run.json", [_sample(0, "What is the man holding?", "A phone."),
                                         _sample(1, q, "A red phone.", image="b.jpg"),
                                         _sample(2, q, "A red phone.", image="c.jpg")],
                 prompt_file="p.json")
    out = tmp_path / "r" / "report.json"
    assert quality_main(["--generated_file", str(gen), "--output", str(out), "--input_folder",
                         str(inp), "--cross_image", "--cross_image_threshold", "0.5",
                         "--icl_copy_threshold", "0.6", "--near_duplicate_threshold", "0.8"]) == 0
    rep = json.loads(out.read_text())
    assert rep["summary"]["thresholds"] == {"near_duplicate": 0.8, "icl_copy": 0.6,
                                            "cross_image_duplicate": 0.5}
    assert [e["flags"] for e in rep["samples"]] == [["icl_copy"], [], ["cross_image_duplicate"]]
    cap = capsys.readouterr()
    assert cap.out.strip() == str(out)
    assert cap.err.strip().splitlines()[-1] == (
        "2 of 3 samples flagged: exact_duplicate 0, near_duplicate 0, icl_copy 1, invalid 0, "
        "refusal 0, cross_image_duplicate 1")
    # without the input folder the prompt file named in the header is not found: the note says so
    assert quality_main(["--generated_file", str(gen), "--output", str(out)]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "icl_copy not checked: the prompt file p.json named in the file is not there"
