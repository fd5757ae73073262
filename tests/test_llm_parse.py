"""Parsing model answers into the mode's items (mminstruct.llm.parse)."""

from __future__ import annotations

import json

import pytest

from mminstruct.llm.errors import BadJSONError, RefusalError, SchemaMismatchError
from mminstruct.llm.parse import parse_items
from mminstruct.data.modes import Mode

VQA_ITEMS = [{"Q": "What is shown?", "R": "I see a red disc.", "A": "A circle."},
             {"Q": "Which colour?", "R": "The disc is red.", "A": "Red."}]


@pytest.mark.parametrize("text,how", [
    (json.dumps(VQA_ITEMS), "json"),
    ("```json\n" + json.dumps(VQA_ITEMS, indent=2) + "\n```", "fenced"),
    ("```\n" + json.dumps(VQA_ITEMS) + "\n```", "fenced"),
    ("Sure! Here are the pairs:\n" + json.dumps(VQA_ITEMS) + "\nHope this helps.", "prose"),
    ("Here are [2] pairs: " + json.dumps(VQA_ITEMS), "prose"),
    (json.dumps({"items": VQA_ITEMS}), "json/wrapped"),
    (json.dumps({"questions": VQA_ITEMS}), "json/wrapped"),
    ("<|im_start|>" + json.dumps(VQA_ITEMS) + "<|im_end|>", "json"),
])
def test_finds_the_list_wherever_it_is(text: str, how: str) -> None:
    result = parse_items(text, Mode.VQA)
    assert result.items == VQA_ITEMS
    assert result.how == how
    assert result.dropped == 0


def test_single_object_becomes_a_list() -> None:
    result = parse_items(json.dumps(VQA_ITEMS[0]), Mode.VQA)
    assert result.items == [VQA_ITEMS[0]]
    assert result.how == "json/object"


def test_broken_json_is_repaired() -> None:
    broken = ('[{"Q": "What is shown?" "R": "I see a red disc.", "A": "A circle."},\n'
              ' {"Q": "Which colour?", "R": "The disc is red.", "A": "Red.",},]')
    result = parse_items(broken, Mode.VQA)
    assert result.items == VQA_ITEMS
    assert result.how == "repaired"


def test_keys_are_mapped_and_values_become_strings() -> None:
    text = json.dumps([{"question": "How many?", "Reasoning": ["one", "two"], "answer": 2,
                        "options": ["A: 1", "B: 2"]}])
    [item] = parse_items(text, Mode.VQA).items
    assert item == {"Q": "How many?", "R": "one\ntwo", "A": "2", "choices": "A: 1\nB: 2"}


def test_items_without_the_keys_are_dropped_and_counted() -> None:
    text = json.dumps([VQA_ITEMS[0], {"Q": "no answer", "R": "x"}, "a string", VQA_ITEMS[1]])
    result = parse_items(text, Mode.VQA)
    assert result.items == VQA_ITEMS
    assert result.dropped == 2


def test_description_mode_accepts_description_key() -> None:
    text = json.dumps([{"description": "A red disc on grey."}, {"A": "A small circle."}])
    assert [i["A"] for i in parse_items(text, Mode.DESCRIPT).items] == [
        "A red disc on grey.", "A small circle."]


def test_tqa_needs_all_four_keys() -> None:
    good = {"I": "A bar chart.", "Q": "Which bar is tallest?\nA: x\nB: y", "R": "B is.",
            "A": "B. y"}
    assert parse_items(json.dumps([good]), Mode.TQA).items == [good]
    with pytest.raises(SchemaMismatchError, match="I, Q, R, A"):
        parse_items(json.dumps([{k: v for k, v in good.items() if k != "I"}]), Mode.TQA)


def test_no_json_is_bad_json_and_keeps_the_raw_text() -> None:
    with pytest.raises(BadJSONError) as e:
        parse_items("The answer is probably blue.", Mode.VQA_NR)
    assert e.value.raw == "The answer is probably blue."
    with pytest.raises(BadJSONError):
        parse_items("   ", Mode.VQA_NR)


def test_refusal_text_is_a_refusal() -> None:
    with pytest.raises(RefusalError):
        parse_items("I'm sorry, but I can't help with that.", Mode.VQA)


def test_wrong_keys_are_a_schema_mismatch_naming_what_was_found() -> None:
    with pytest.raises(SchemaMismatchError, match="keys found: X, Y"):
        parse_items(json.dumps([{"X": 1, "Y": 2}]), Mode.VQA_NR)


def test_empty_values_do_not_count_as_present() -> None:
    with pytest.raises(SchemaMismatchError):
        parse_items(json.dumps([{"Q": "  ", "A": "yes"}]), Mode.VQA_NR)
