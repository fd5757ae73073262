"""Data files are parsed by msgspec from their bytes (issue 20: load within 2× a bare json.load);
the standard parser only names errors and reads what msgspec refuses, so nothing a user sees changes."""

from __future__ import annotations

import json
import os

import pytest

from mminstruct.data import records
from mminstruct.errors import DataFileError
from mminstruct.data.records import load_data_file, read_json_file

REC = {"id": 1, "image": "a.jpg", "conversations": [{"from": "human", "value": "<image>\nWhat? «ü» 🙂"},
                                                     {"from": "gpt", "value": "This."}]}


def _no_std_json(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("json.loads called: the compiled parser was not used")
    monkeypatch.setattr(records.json, "loads", refuse)


@pytest.mark.parametrize("bom", [b"", b"\xef\xbb\xbf"])
def test_a_valid_file_is_parsed_by_the_compiled_parser_alone(tmp_path, monkeypatch, bom):
    p = tmp_path / "d.json"
    p.write_bytes(bom + json.dumps({"samples": [REC] * 3, "image_folder": ""},
                                   ensure_ascii=False).encode())
    _no_std_json(monkeypatch)
    df = load_data_file(p, check_images=False)
    turns = [(t["from"], t["value"]) for t in REC["conversations"]]
    assert [(r.id, r.images, [(t.role, t.value) for t in r.turns], r.extra)
            for r in df.records] == [(1, ["a.jpg"], turns, None)] * 3
    assert read_json_file(p)["samples"][0] == REC


def test_what_msgspec_refuses_is_read_as_json_reads_it(tmp_path):
    p = tmp_path / "d.json"
    p.write_text('[{"id": 1, "score": NaN, "big": 123456789012345678901234567890, "image": "a.jpg",'
                 ' "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}]')
    df = load_data_file(p, check_images=False)
    extra = df.records[0].extra
    assert list(extra) == ["score", "big"]
    assert extra["big"] == 123456789012345678901234567890
    assert extra["score"] != extra["score"]  # NaN


def test_errors_still_name_file_line_and_column(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text('[\n{"id": 1,\n "x": }]')
    with pytest.raises(DataFileError, match=r"bad\.json: not valid JSON \(line 3, column 7"):
        load_data_file(p, check_images=False)
    with pytest.raises(DataFileError, match=r"bad\.json: not valid JSON \(line 3, column 7"):
        read_json_file(p)
    q = tmp_path / "latin.json"
    q.write_bytes(b'["caf\xe9"]')
    with pytest.raises(DataFileError, match=r"latin\.json: not UTF-8 text \(byte 5\)"):
        read_json_file(q)
    e = tmp_path / "empty.json"
    e.write_bytes(b" \n\t ")
    with pytest.raises(DataFileError, match="file is empty"):
        load_data_file(e, check_images=False)


def test_parse_once_callers_during_a_parse_wait_for_it(tmp_path):
    """Callers arriving while another thread parses the same file wait for that parse and share
    its result (a page switched during a long parse, two tabs): one parse, not one per caller. A
    different key is not held up by it."""
    import threading
    import time

    records.forget_parsed()
    p = tmp_path / "d.json"
    p.write_text(json.dumps([REC]))
    calls, started = [], threading.Event()

    def slow(path, **kw):
        calls.append(kw.get("check_images"))
        started.set()
        time.sleep(0.4)
        return load_data_file(path, **kw)

    got = []
    threads = [threading.Thread(target=lambda: got.append(records.parse_once(p, slow, check_images=False)))
               for _ in range(3)]
    threads[0].start()
    assert started.wait(5)
    for t in threads[1:]:
        t.start()
    t0 = time.perf_counter()
    other = records.parse_once(p, load_data_file, check_images="header")  # another key: no wait
    assert time.perf_counter() - t0 < 0.3 and other is not None
    assert records.parse_once(p, slow, peek=True, check_images=False) is None  # in flight: None
    for t in threads:
        t.join(10)
    assert len(got) == 3 and got[0] is got[1] is got[2] and calls == [False]
    assert not records._ONCE_PARSING  # nothing left behind
    records.forget_parsed()


def test_jsonl_bad_line_is_one_problem_and_the_rest_load(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps(REC) + "\n{oops\n" + json.dumps(REC) + "\n")
    df = load_data_file(p, check_images=False)
    assert len(df.records) == 2
    assert [pr.reason for pr in df.report.problems] == ["bad JSON on line 2: Expecting property name enclosed in double quotes"]


def test_parse_once_parses_each_content_once_and_shares_the_result(tmp_path, monkeypatch):
    records.forget_parsed()
    p = tmp_path / "d.json"
    p.write_text(json.dumps([REC]))
    calls = []

    def counting(path, **kw):
        calls.append(path)
        return load_data_file(path, **kw)

    a = records.parse_once(p, counting, check_images=False)
    b = records.parse_once(str(p), counting, check_images=False)
    assert a is b and len(calls) == 1  # a rerun: no parse
    os.utime(p, ns=(1, 1))  # same bytes, new mtime: re-hashed, not re-parsed
    assert records.parse_once(p, counting, check_images=False) is a and len(calls) == 1
    p.write_text(json.dumps([REC, REC]))  # new content: parsed again
    assert len(records.parse_once(p, counting, check_images=False).records) == 2 and len(calls) == 2
    assert records.parse_once(p, counting, check_images="header") is not None and len(calls) == 3
    p.write_text("[oops")
    for _ in range(2):  # a bad file: the same clear error, parsed once
        with pytest.raises(DataFileError, match="not valid JSON"):
            records.parse_once(p, counting, check_images=False)
    assert len(calls) == 4
    records.forget_parsed()


# ----------------------------------------------------------------------------------------------
# The garbage collector is paused while a file's records are made (not while images are checked)


def test_parsing_pauses_the_garbage_collector_and_restores_it(tmp_path, monkeypatch):
    import gc

    from mminstruct.data import formats

    p = tmp_path / "d.json"
    p.write_text(json.dumps([REC] * 3))
    (tmp_path / "a.jpg").write_bytes(b"")
    seen: dict[str, list[bool]] = {}

    def spy(name, fn):
        def wrapped(*a, **k):
            seen.setdefault(name, []).append(gc.isenabled())
            return fn(*a, **k)
        return wrapped

    monkeypatch.setattr(records, "_fast_loads", spy("json", records._fast_loads))
    monkeypatch.setattr(records, "_parse_record", spy("record", records._parse_record))
    monkeypatch.setattr(records, "check_image_paths", spy("images", records.check_image_paths))
    monkeypatch.setattr(formats, "validate_record", spy("task", formats.validate_record))
    assert gc.isenabled()
    load_data_file(p)
    assert seen == {"json": [False], "record": [False] * 3, "images": [True]}
    assert gc.isenabled()
    task = formats.task_file_from_json({"image_folder": "", "dataset_description": "",
                                        "subgroups": [], "samples": [REC] * 2})
    formats.task_records(task)
    assert seen["task"] == [False, False] and gc.isenabled()
    gc.disable()  # a caller that had it off keeps it off
    try:
        load_data_file(p, check_images=False)
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_nested_concurrent_and_failed_pauses_end_with_the_last(monkeypatch):
    import gc
    import threading

    assert gc.isenabled()
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    states: dict[str, bool] = {}

    def a():
        with records.paused_gc():
            a_in.set()
            b_in.wait(5)
        a_out.set()

    def b():
        a_in.wait(5)
        with records.paused_gc():
            b_in.set()
            a_out.wait(5)
            states["b after a left"] = gc.isenabled()
            with records.paused_gc():  # nested
                pass
            states["b after nested"] = gc.isenabled()

    ts = [threading.Thread(target=a), threading.Thread(target=b)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(10)
    assert states == {"b after a left": False, "b after nested": False}
    assert gc.isenabled()
    with pytest.raises(RuntimeError):
        with records.paused_gc():
            raise RuntimeError("boom")
    assert gc.isenabled()
