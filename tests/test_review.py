"""Review's sample filter (mminstruct.app.review.filter_samples): keyword, text query and the
kept / rejected switch, each checked on its own and together."""

from __future__ import annotations

import pytest

from mminstruct.app.review import filter_samples
from mminstruct.errors import ConfigError


def _s(i: int, keyword: str, q: str, a: str) -> dict:
    return {"id": i, "keyword": keyword, "conversations": [
        {"from": "human", "value": f"<image>\n{q}"}, {"from": "gpt", "value": a}]}


SAMPLES = [_s(0, "bar", "What is the tallest bar?", "March."),
           _s(1, "bar", "How many bars?", "Five."),
           _s(2, "pie", "Which slice is largest?", "Blue."),
           _s(3, "pie", "What colour is the smallest SLICE?", "Red."),
           _s(4, "line", "Does the line rise?", "Yes.")]


def _ids(**kw) -> list[int]:
    return [s["id"] for s in filter_samples(SAMPLES, **kw)]


def test_show_kept_rejected_or_all() -> None:
    assert _ids(rejected=[1, 3]) == [0, 1, 2, 3, 4]
    assert _ids(rejected=[1, 3], show="all") == [0, 1, 2, 3, 4]
    assert _ids(rejected=[1, 3], show="kept") == [0, 2, 4]
    assert _ids(rejected=[1, 3], show="rejected") == [1, 3]
    assert _ids(rejected=[], show="rejected") == []
    assert _ids(rejected=[], show="kept") == [0, 1, 2, 3, 4]
    assert _ids(rejected=iter([4]), show="rejected") == [4]  # any iterable, read once


def test_keyword_and_query_narrow_together_with_the_switch() -> None:
    assert _ids(keywords=["pie"]) == [2, 3]
    assert _ids(keywords=["pie", "line"], rejected=[3], show="kept") == [2, 4]
    assert _ids(query="  slice ") == [2, 3]  # case-insensitive, trimmed
    assert _ids(query="march") == [0]  # the answer is searched too
    assert _ids(query="slice", rejected=[2], show="rejected") == [2]
    assert _ids(keywords=["bar"], query="slice") == []


def test_an_unknown_switch_names_the_choices() -> None:
    with pytest.raises(ConfigError, match="'removed'.*all, kept, rejected"):
        filter_samples(SAMPLES, show="removed")
