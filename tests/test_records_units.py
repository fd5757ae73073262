"""``data/records.py`` in small pieces: the parts mutation testing (docs/testing.md) showed no test
checking — question/answer pairs, the task-file sample a record becomes, the load report's text,
JSONL found by suffix or by content, and images outside the root when allowed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mminstruct.data.records import LoadReport, Problem, load_data_file, parse_record
from mminstruct.errors import DataFileError
from tests.fixtures.images import draw_shape, save_jpeg


def _rec(rid=None, q="<image>\nWhat?", a="This.", **extra):
    r = {"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}], **extra}
    if rid is not None:
        r["id"] = rid
    return r


# ----------------------------------------------------------------------------------------------
# Record


def test_qa_pairs_skip_system_turns_and_pair_only_a_question_with_the_answer_after_it():
    rec = parse_record(0, {"conversations": [
        {"from": "system", "value": "be brief"},
        {"from": "human", "value": "q1"},
        {"from": "system", "value": "(a system turn between question and answer)"},
        {"from": "gpt", "value": "a1"},
        {"from": "gpt", "value": "a1, continued"},
        {"from": "human", "value": "q2"},
        {"from": "human", "value": "q2, asked again"},
        {"from": "gpt", "value": "a2"},
    ]})
    assert rec.qa_pairs() == [("q1", "a1"), ("q2, asked again", "a2")]
    assert rec.question == "q1"


def test_to_sample_writes_mmgen_keys_and_keeps_the_other_keys():
    rec = parse_record(3, {"id": "s-7", "images": ["a.jpg", "b.jpg", "c.jpg"], "image_9": None,
                           "messages": [{"role": "user", "content": "<image>\nq"},
                                        {"role": "assistant", "content": "a"}],
                           "source": "coco", "split": 2})
    assert rec.images == ["a.jpg", "b.jpg", "c.jpg"]
    assert rec.to_sample() == {
        "id": "s-7", "image_1": "a.jpg", "image_2": "b.jpg", "image_3": "c.jpg",
        "conversations": [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}],
        "source": "coco", "split": 2,
    }
    # the LLaVA layout: 'image' and 'conversations' are rewritten, not copied next to image_1
    llava = parse_record(0, _rec(rid=5, image="x.png", extra_key=[1]))
    assert llava.to_sample() == {"id": 5, "image_1": "x.png", "conversations": _rec()["conversations"],
                                 "extra_key": [1]}


def test_to_sample_without_id_or_image_has_neither_key():
    assert parse_record(0, _rec(q="text only?")).to_sample() == {
        "conversations": [{"from": "human", "value": "text only?"}, {"from": "gpt", "value": "This."}]}


# ----------------------------------------------------------------------------------------------
# The load report


def test_problem_names_the_record_by_index_and_id():
    assert str(Problem(4, "a7", "no human turn")) == "record 4 (id 'a7'): no human turn"
    assert str(Problem(4, None, "no human turn")) == "record 4: no human turn"


def test_summary_of_a_clean_load_with_a_hint():
    rep = LoadReport("d.json", total=3, hints=["look under images/", "or pass --image_folder"])
    assert rep.summary() == ("d.json: 3 of 3 records loaded.\n  hint: look under images/"
                             "\n  hint: or pass --image_folder")
    assert LoadReport("d.json", total=2).summary() == "d.json: 2 of 2 records loaded."


@pytest.mark.parametrize("n_problems,more", [(20, None), (21, "  … and 1 more"), (23, "  … and 3 more")])
def test_summary_lists_twenty_problems_then_counts_the_rest(n_problems, more):
    problems = [Problem(i, None, "no human turn" if i % 2 else "image missing: 'x.jpg' not found")
                for i in range(n_problems)]
    rep = LoadReport("d.json", total=30, problems=problems, hints=["h"])
    lines = rep.summary().split("\n")
    odd, even = n_problems // 2, n_problems - n_problems // 2
    kinds = sorted([(even, "image missing"), (odd, "no human turn")], key=lambda kn: -kn[0])
    assert lines[0] == (f"d.json: {30 - n_problems} of 30 records loaded, {n_problems} skipped "
                        f"({', '.join(f'{n} {k}' for n, k in kinds)}):")
    assert lines[1:21] == [f"  {p}" for p in problems[:20]]
    assert lines[21:] == ([more] if more else []) + ["  hint: h"]


# ----------------------------------------------------------------------------------------------
# JSONL, by suffix or by content


@pytest.mark.parametrize("name", ["d.jsonl", "d.ndjson", "D.JSONL"])
def test_jsonl_by_suffix_keeps_the_records_after_a_broken_first_line(tmp_path, name):
    p = tmp_path / name
    p.write_text("{broken\n" + json.dumps(_rec(rid=1)) + "\n" + json.dumps(_rec(rid=2)) + "\n")
    df = load_data_file(p, check_images=False)
    assert [r.id for r in df.records] == [1, 2]
    assert [(pr.index, pr.reason.split(":")[0]) for pr in df.report.problems] == [
        (0, "bad JSON on line 1")]


@pytest.mark.parametrize("lines,ids,bad", [
    # two lines, the first indented: JSONL (the first line decides)
    (["  " + json.dumps(_rec(rid=1)), json.dumps(_rec(rid=2))], [1, 2], None),
    # a broken second line (not even starting with '{') is one problem, the rest load
    ([json.dumps(_rec(rid=1)), "broken}", "", json.dumps(_rec(rid=3))], [1, 3], (1, "line 2")),
])
def test_jsonl_saved_as_json_is_read_line_by_line(tmp_path, lines, ids, bad):
    p = tmp_path / "d.json"
    p.write_text("\n".join(lines) + "\n")
    df = load_data_file(p, check_images=False)
    assert [r.id for r in df.records] == ids
    assert df.report.total == len(ids) + (bad is not None)
    if bad:
        assert df.report.problems[0].index == bad[0] and bad[1] in df.report.problems[0].reason


def test_lines_of_json_lists_saved_as_json_are_not_taken_for_jsonl(tmp_path):
    p = tmp_path / "d.json"
    p.write_text("[1, 2]\n[3]\n")
    with pytest.raises(DataFileError, match=r"d\.json: not valid JSON \(line 2"):
        load_data_file(p, check_images=False)


@pytest.mark.parametrize("name", ["d.jsonl", "d.json"])
def test_a_file_that_is_not_utf8_is_named(tmp_path, name):
    p = tmp_path / name
    p.write_bytes(b'{"id": 1, "x": "\xff\xfe"}\n{"id": 2}\n')
    with pytest.raises(DataFileError) as e:
        load_data_file(p, check_images=False)
    assert str(e.value) == f"{p}: not UTF-8 text (byte 16)"


# ----------------------------------------------------------------------------------------------
# Images outside the root


def test_image_path_outside_the_root_resolves_only_when_allowed(tmp_path):
    outside = tmp_path / "outside.jpg"
    save_jpeg(draw_shape("circle", 0), outside)
    (tmp_path / "data").mkdir()
    p = tmp_path / "data" / "d.json"
    p.write_text(json.dumps([_rec(rid=1, image="../outside.jpg")]))
    df = load_data_file(p, allow_outside_paths=True)
    assert df.image_path(df.records[0]) == outside.resolve()
    assert load_data_file(p).records == []
