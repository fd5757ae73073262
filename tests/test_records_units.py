"""``data/records.py`` in small pieces: the parts mutation testing (docs/testing.md) showed no test
checking — question/answer pairs, the task-file sample a record becomes, the load report's text,
JSONL found by suffix or by content, and images outside the root when allowed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mminstruct.data import records
from mminstruct.data.records import LoadReport, Problem, load_data_file, parse_record, validate_record
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


def test_a_file_of_one_record_object_loads_it_as_record_0(tmp_path):
    for key, conv in [("conversations", _rec()["conversations"]),
                      ("messages", [{"role": "user", "content": "q"},
                                    {"role": "assistant", "content": "a"}])]:
        p = tmp_path / f"{key}.json"
        p.write_text(json.dumps({"id": "only", key: conv}))
        df = load_data_file(p, check_images=False)
        assert [(r.index, r.id) for r in df.records] == [(0, "only")] and df.report.total == 1


def test_the_container_keys_are_read_and_samples_is_not_kept_twice(tmp_path):
    p = tmp_path / "d.json"
    p.write_text(json.dumps({"samples": [_rec(rid=1)], "dataset_description": "charts",
                             "skill": "older name", "note": 3}))
    df = load_data_file(p, check_images=False)
    assert df.dataset_description == "charts"  # the new name wins over MM-Gen's older 'skill'
    assert df.raw_extra == {"dataset_description": "charts", "skill": "older name", "note": 3}
    assert df.report.path == str(p) and df.report.summary().startswith(f"{p}: 1 of 1")


@pytest.mark.parametrize("top,match", [
    ({"samples": {"a": 1}}, (r"d\.json: 'samples' is a dict, not a list of records; expected an "
                            r"object whose 'samples' is a list$")),
    ({"samples": [_rec()], "image_folder": 3}, r"d\.json: 'image_folder' is a int, expected a string$"),
    ({f"k{i:02d}": i for i in range(12)}, (r"keys found: k00, k01, k02, k03, k04, k05, k06, k07, "
                                          r"k08, k09\)$")),
])
def test_a_container_of_the_wrong_shape_is_refused_in_one_line(tmp_path, top, match):
    p = tmp_path / "d.json"
    p.write_text(json.dumps(top))
    with pytest.raises(DataFileError, match=match):
        load_data_file(p, check_images=False)


def test_parse_and_validate_record_keep_the_index_and_id():
    assert parse_record(3, _rec(rid=9)).index == 3
    with pytest.raises(DataFileError, match=r"^record 2: wrong type: record is a list"):
        parse_record(2, ["not", "a", "record"])
    with pytest.raises(DataFileError, match=r"^record 2 \(id 'x'\): no human turn$"):
        parse_record(2, {"id": "x", "conversations": [{"from": "gpt", "value": "a"}]})
    assert validate_record(5, _rec(rid=1)).index == 5
    assert validate_record(5, {"id": "x", "conversations": []}) == Problem(5, "x", "no human turn")
    assert validate_record(6, 42) == Problem(6, None, "wrong type: record is a int, expected an object")


# ----------------------------------------------------------------------------------------------
# The hint when images are missing


@pytest.mark.parametrize("n_missing,n_there,hint", [
    (1, 1, True),   # one of one
    (3, 1, True),   # 1 >= 3 // 2
    (4, 2, True),   # half of them
    (4, 1, False),  # a quarter: not the folder
])
def test_the_hint_names_the_images_folder_when_enough_of_the_missing_images_are_there(
        tmp_path, n_missing, n_there, hint):
    (tmp_path / "images").mkdir()
    names = [f"m{i}.jpg" for i in range(n_missing)]
    for n in names[:n_there]:
        (tmp_path / "images" / n).write_bytes(b"x")  # the hint only looks for the files
    p = tmp_path / "d.json"
    p.write_text(json.dumps([_rec(rid=i, image=n) for i, n in enumerate(names)]))
    df = load_data_file(p)
    assert df.records == []
    if hint:
        assert df.report.hints == [
            (f"{n_missing} image(s) not found under {tmp_path.resolve()}; {n_there}/{n_missing} of those "
            f"checked exist under {(tmp_path / 'images').resolve()}: pass that folder as the image folder")]
    else:
        assert df.report.hints == []


@pytest.mark.parametrize("where", ["data/imgs/images", "data/images"])
def test_the_hint_looks_under_images_beside_the_file_and_in_the_image_folder(tmp_path, where):
    (tmp_path / where).mkdir(parents=True)
    (tmp_path / where / "a.jpg").write_bytes(b"x")
    p = tmp_path / "data" / "d.json"
    p.write_text(json.dumps({"samples": [_rec(image="a.jpg")], "image_folder": "imgs"}))
    (tmp_path / "data" / "imgs").mkdir(exist_ok=True)
    assert f"exist under {(tmp_path / where).resolve()}" in load_data_file(p).report.hints[0]


# ----------------------------------------------------------------------------------------------
# Image-check threads (the CPU count is faked: the test does not depend on the host)


@pytest.mark.parametrize("cpus,decode,want", [(4, True, 4), (4, False, 16), (16, False, 32),
                                              (None, True, 2), (None, False, 8)])
def test_image_check_workers_per_core(monkeypatch, cpus, decode, want):
    monkeypatch.setattr(records.os, "cpu_count", lambda: cpus)
    assert records.image_check_workers(decode) == want


# ----------------------------------------------------------------------------------------------
# parse_once


def test_parse_once_keys_by_path_too_and_keeps_the_last_two(tmp_path):
    records.forget_parsed()
    calls = []

    def parse(path, **kw):
        calls.append((str(path), kw))
        return {"path": str(path), **kw}

    same = json.dumps([_rec()])
    a, b, c = (tmp_path / n for n in ("a.json", "b.json", "c.json"))
    for f in (a, b, c):
        f.write_text(same)  # the same bytes, three files
    ra = records.parse_once(a, parse, input_folder=tmp_path)  # a PathLike argument
    assert ra == {"path": str(a), "input_folder": tmp_path}
    rb = records.parse_once(b, parse, input_folder=tmp_path)
    assert rb["path"] == str(b)  # same content, another file: its own result
    assert records.parse_once(a, parse, input_folder=tmp_path) is ra  # the last two are kept
    assert records.parse_once(b, parse, input_folder=tmp_path) is rb
    assert len(calls) == 2
    records.parse_once(c, parse, input_folder=tmp_path)  # a third: the oldest (a) goes
    assert records.parse_once(b, parse, input_folder=tmp_path) is rb and len(calls) == 3
    assert records.parse_once(a, parse, input_folder=tmp_path) is not ra and len(calls) == 4
    records.forget_parsed()


def test_parse_once_hands_back_a_pushed_out_result_still_in_use(tmp_path):
    """The Data page's 150k-record file, pushed out by the Prompts page's task file and its
    records while the map still holds it, is not parsed into a second copy; one nobody holds is
    parsed again."""
    import gc

    records.forget_parsed()
    calls = []

    class Parsed:  # (a DataFile, a TaskFile: objects that can be weakly referenced)
        def __init__(self, path):
            self.path = str(path)

    def parse(path, **kw):
        calls.append(str(path))
        return Parsed(path)

    a, b, c = (tmp_path / n for n in ("a.json", "b.json", "c.json"))
    for i, f in enumerate((a, b, c)):
        f.write_text(str(i))
    ra = records.parse_once(a, parse)
    records.parse_once(b, parse)  # not held by anyone but parse_once
    records.parse_once(c, parse)  # a is pushed out of the last two
    assert records.parse_once(a, parse) is ra and len(calls) == 3  # still in use: handed back
    gc.collect()  # b, pushed out by a's return and held by nobody, is gone
    assert records.parse_once(b, parse).path == str(b) and calls == [str(a), str(b), str(c), str(b)]
    records.forget_parsed()
    assert records.parse_once(a, parse) is not ra and len(calls) == 5  # forget: parsed again


def test_parse_once_of_many_files_and_of_a_missing_one(tmp_path):
    records.forget_parsed()
    for i in range(20):  # more files than the hash memo keeps
        f = tmp_path / f"f{i}.txt"
        f.write_text(str(i))
        assert records.parse_once(f, lambda path, **kw: Path(path).read_text()) == str(i)
    got = records.parse_once(tmp_path / "nope.json", lambda path, **kw: (path, kw), x=1)
    assert got == (tmp_path / "nope.json", {"x": 1})  # parse() itself names the problem
    with pytest.raises(DataFileError, match=r"nope\.json: file not found"):
        records.parse_once(tmp_path / "nope.json", load_data_file, check_images=False)
    records.forget_parsed()


# ----------------------------------------------------------------------------------------------
# Turns and images of one record


def test_each_layout_reads_its_own_keys_first_then_the_others():
    conv = parse_record(0, {"conversations": [
        {"from": "human", "role": "assistant", "value": "v", "content": "c"},  # both: from/value win
        {"role": "assistant", "content": "answer"},                          # the other layout's keys
    ]})
    assert [(t.role, t.value) for t in conv.turns] == [("human", "v"), ("gpt", "answer")]
    msgs = parse_record(0, {"messages": [
        {"role": "user", "from": "gpt", "content": "c", "value": "v"},  # both: role/content win
        {"from": "gpt", "value": "answer"},
    ]})
    assert [(t.role, t.value) for t in msgs.turns] == [("human", "c"), ("gpt", "answer")]


@pytest.mark.parametrize("raw,reason", [
    ({"id": 1}, "no conversation: neither a 'conversations' nor a 'messages' list"),
    ({"messages": "hi"}, "wrong type: 'messages' is a str, expected a list"),
    ({"conversations": ["hi"]}, "wrong type: turn 1 is a str, expected an object"),
    ({"conversations": [{"value": "q"}]}, ("unknown role None in turn 1; choose one of: human, user, "
                                          "gpt, assistant, bot, model, system")),
    ({"conversations": [{"from": "human", "value": 3}]},
     "wrong type: turn 1 value is a int, expected a string"),
    ({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": [{"text": "a"}]}]},
     ("content parts: turn 2 holds a list of parts (OpenAI/xtuner style), not text; convert it to "
     "LLaVA conversations (from/value) first")),
    ({"image": " ", **_rec()}, "image missing: 'image' is an empty string"),
])
def test_a_bad_record_is_refused_with_its_exact_reason(raw, reason):
    assert validate_record(0, raw) == Problem(0, raw.get("id"), reason)


def test_only_image_keys_with_a_number_are_images():
    rec = parse_record(0, {**_rec(), "image_2": "b.jpg", "image": "a.jpg", "frame_7": "not an image",
                           "image_x": "no"})
    assert rec.images == ["a.jpg", "b.jpg"]


def test_a_broken_pretty_printed_json_is_not_taken_for_jsonl(tmp_path):
    p = tmp_path / "d.json"
    p.write_text('{\n  "samples": [],,\n  "x": 1\n}\n')
    with pytest.raises(DataFileError, match=r"d\.json: not valid JSON \(line 2, column"):
        load_data_file(p, check_images=False)


def test_an_empty_list_loads_no_records_and_the_file_is_described(tmp_path):
    p = tmp_path / "d.json"
    p.write_text(json.dumps({"samples": [], "image_folder": "imgs"}))
    (tmp_path / "imgs").mkdir()
    df = load_data_file(p)
    assert (df.records, df.path, df.image_folder) == ([], p, "imgs")
    assert df.image_root == (tmp_path / "imgs").resolve()


def test_the_pixel_limit_reaches_the_image_check(tmp_path):
    save_jpeg(draw_shape("circle", 0), tmp_path / "a.jpg")
    p = tmp_path / "d.json"
    p.write_text(json.dumps([_rec(rid=1, image="a.jpg")]))
    assert len(load_data_file(p).records) == 1
    df = load_data_file(p, max_pixels=16)
    assert df.records == [] and "image unreadable" in df.report.problems[0].reason
