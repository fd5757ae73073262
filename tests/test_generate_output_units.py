"""``generate/output.py`` in small pieces, without a generation run: the parts mutation testing
(docs/testing.md) showed no test checking — merging shard outputs (the merged header, gaps and
overlaps, a prompt in three files), reading an output back, and the samples of one item."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mminstruct.data.modes import Mode
from mminstruct.errors import DataFileError, MergeError
from mminstruct.generate.output import (
    CONCISE_SUFFIX,
    REASONING_SUFFIX,
    conversation_sample,
    describe_question,
    item_samples,
    iter_output,
    load_output,
    merge_outputs,
    output_header,
    write_samples_file,
)


def _shard(path: Path, start: int, end: int, prompts: list[int], **header) -> Path:
    samples = [{"id": k, "prompt_idx": i, "conversations": [{"from": "human", "value": f"q{i}"},
                                                           {"from": "gpt", "value": f"a{i}"}]}
               for k, i in enumerate(prompts)]
    write_samples_file(path, {"image_folder": "", "len_samples": len(samples), "start_idx": start,
                              "end_idx": end, "num_prompts": end - start, "mode": "vqa_nr",
                              "run": path.stem, "model": "m"} | header, iter(samples))
    return path


def test_merge_writes_the_mmgen_header_and_renumbers(tmp_path: Path) -> None:
    a = _shard(tmp_path / "a.json", 0, 3, [0, 1, 2], input_folder="/in", extra_key=1)
    b = _shard(tmp_path / "b.json", 3, 5, [3, 4], input_folder="/in")
    s = merge_outputs([a, b], tmp_path / "m.json")
    assert (s.len_samples, s.files, s.duplicates_dropped, s.warnings) == (5, 2, 0, [])
    data = load_output(tmp_path / "m.json")
    assert data.path == tmp_path / "m.json"
    assert data.header == {"image_folder": "", "len_samples": 5, "start_idx": 0, "end_idx": 5,
                           "num_prompts": 5, "mode": "vqa_nr", "model": "m", "input_folder": "/in",
                           "extra_key": 1, "merged_from": ["a.json", "b.json"]}  # no 'run'
    assert output_header(tmp_path / "m.json") == data.header
    assert [(x["id"], x["prompt_idx"]) for x in data.samples] == [(k, k) for k in range(5)]


def test_merge_warns_of_gaps_and_overlaps_with_their_prompts(tmp_path: Path) -> None:
    a = _shard(tmp_path / "a.json", 0, 3, [0, 1, 2])
    b = _shard(tmp_path / "b.json", 5, 8, [5, 6, 7])
    c = _shard(tmp_path / "c.json", 8, 10, [8, 9])  # right after b: neither gap nor overlap
    s = merge_outputs([b, a, c], tmp_path / "m.json")
    assert s.warnings == [f"prompts 3–4 are in no file (gap between {a} and {b})"]
    d = _shard(tmp_path / "d.json", 2, 6, [2, 3, 4, 5])
    s = merge_outputs([a, d], tmp_path / "m2.json")
    assert s.duplicates_dropped == 1
    assert s.warnings == ["1 sample(s) of prompts already merged from an earlier file were dropped",
                          f"prompt ranges of {a} and {d} overlap (2–2)"]
    assert [x["prompt_idx"] for x in iter_output(tmp_path / "m2.json")] == [0, 1, 2, 3, 4, 5]


def test_a_prompt_in_three_files_is_kept_once_from_the_first(tmp_path: Path) -> None:
    a = _shard(tmp_path / "a.json", 0, 2, [0, 1])
    b = _shard(tmp_path / "b.json", 2, 4, [2, 3])
    c = _shard(tmp_path / "c.json", 0, 4, [0, 3])  # 0 from a, 3 from b
    s = merge_outputs([a, b, c], tmp_path / "m.json")
    assert s.duplicates_dropped == 2 and s.len_samples == 4
    assert [x["prompt_idx"] for x in iter_output(tmp_path / "m.json")] == [0, 1, 2, 3]


def test_merge_refusals(tmp_path: Path) -> None:
    with pytest.raises(MergeError, match="^nothing to merge: no output files given$"):
        merge_outputs([], tmp_path / "m.json")
    a = _shard(tmp_path / "a.json", 0, 1, [0], input_folder="/x")
    b = _shard(tmp_path / "b.json", 1, 2, [1], input_folder="/y")
    with pytest.raises(MergeError, match="^cannot merge outputs with different input_folders: /x, /y$"):
        merge_outputs([a, b], tmp_path / "m.json")


def test_reading_an_output_refuses_a_sample_that_is_not_an_object(tmp_path: Path) -> None:
    p = tmp_path / "o.json"
    p.write_text(json.dumps({"len_samples": 2, "samples": [{"id": 0}, [1]]}))
    with pytest.raises(DataFileError, match=rf"^{p}: a sample is a list, not an object$"):
        list(iter_output(p))
    assert output_header(p) == {"len_samples": 2}


def test_item_samples_put_choices_back_under_the_question() -> None:
    item = {"Q": "Which colour?", "A": "B", "choices": "A. red\nB. blue"}
    (nr,) = item_samples(Mode.VQA_NR, item, image="x.jpg", keyword="k", icl_indices=[3],
                         prompt_idx=7)
    assert nr == {"image_1": "x.jpg", "conversations": [
        {"from": "human", "value": "<image>\nWhich colour?\nA. red\nB. blue"},
        {"from": "gpt", "value": "B"}], "icl_indices": [3], "keyword": "k", "prompt_idx": 7}
    (no_choices,) = item_samples(Mode.VQA_NR, {"Q": "Which?", "A": "B", "choices": ""},
                                 image=None, keyword="k", icl_indices=[], prompt_idx=0)
    assert no_choices["conversations"][0]["value"] == "Which?"
    (d,) = item_samples(Mode.DESCRIPT, {"A": "A chart."}, image="x.jpg", keyword="k",
                        icl_indices=[], prompt_idx=0)  # no description given: the plain question
    assert d["conversations"][0]["value"] == "<image>\nDescribe this image in detail."


@pytest.mark.parametrize("desc,want", [
    ("charts.", "Describe this image in detail as an expert in charts."),
    ("  .charts of sales..  ", "Describe this image in detail as an expert in .charts of sales."),
    ("...", "Describe this image in detail."),
])
def test_describe_question_trims_the_description(desc, want) -> None:
    assert describe_question(Mode.DESCRIPT, desc) == want


def test_conversation_sample_keeps_the_prompts_fields() -> None:
    s = conversation_sample([{"Q": "q1", "A": "a1"}, {"Q": "q2", "A": "a2"}], image=None,
                            keyword="kw", icl_indices=(1, 2), prompt_idx=4)
    assert s == {"conversations": [{"from": "human", "value": "q1"}, {"from": "gpt", "value": "a1"},
                                   {"from": "human", "value": "q2"}, {"from": "gpt", "value": "a2"}],
                 "icl_indices": [1, 2], "keyword": "kw", "prompt_idx": 4}


def test_vqa_item_gives_a_reasoning_and_a_concise_sample() -> None:
    item = {"Q": "How many?", "R": "Count them.", "A": "3"}
    r, c = item_samples(Mode.VQA, item, image="x.jpg", keyword="k", icl_indices=[], prompt_idx=0)
    assert r["conversations"] == [
        {"from": "human", "value": f"<image>\nHow many?\n{REASONING_SUFFIX}"},
        {"from": "gpt", "value": "Count them.\n3"}]
    assert c["conversations"][0]["value"] == f"<image>\nHow many?\n{CONCISE_SUFFIX}"
    assert (r["variant"], c["variant"]) == ("reasoning", "concise")
    (t, _) = item_samples(Mode.TQA, {"I": "A bar chart.", **item}, image="x.jpg", keyword="k",
                          icl_indices=[], prompt_idx=0)
    assert "image_1" not in t and t["conversations"][0]["value"].startswith("A bar chart.\nHow many?")


def test_merge_takes_the_image_folder_of_the_first_file(tmp_path: Path) -> None:
    a = _shard(tmp_path / "a.json", 0, 1, [0], image_folder="imgs")
    b = _shard(tmp_path / "b.json", 1, 2, [1])
    merge_outputs([a, b], tmp_path / "m.json")
    assert output_header(tmp_path / "m.json")["image_folder"] == "imgs"
