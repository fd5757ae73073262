"""Budgets per subgroup (a number of prompts or a share of total_gen), the reuse note, subgroup-only
plans and the command line's --budgets / --only."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from mminstruct.errors import ConfigError
from mminstruct.data.formats import load_prompt_file, save_task_file
from mminstruct.prompts.plan import (Budget, allocate, format_budgets, parse_budgets, plan_prompts,
                                prepare_plan, reuse_note)
from tests.test_prompts import _config, _run, _task


def test_parse_budgets_reads_prompts_and_shares():
    b = parse_budgets("bar chart=4000, pie chart = 25% ,line chart=0")
    assert b == {"bar chart": Budget(prompts=4000), "pie chart": Budget(share=0.25),
                 "line chart": Budget(prompts=0)}
    assert parse_budgets(format_budgets(b)) == b
    assert format_budgets(b) == "bar chart=4000,pie chart=25%,line chart=0"
    assert parse_budgets({"a": 3, "b": "10%"}) == {"a": Budget(prompts=3), "b": Budget(share=0.1)}
    assert parse_budgets(None) == {} and parse_budgets("") == {}


@pytest.mark.parametrize("spec,match", [
    ("bar chart", "expected KEYWORD=PROMPTS"),
    ("bar chart=lots", "budget 'lots' for 'bar chart' is neither a number"),
    ("bar chart=-3", "neither a number"),
    ("a=60%,b=50%", "shares add up to 110%"),
    ("a=1,a=2", "'a' is given twice"),
    ("=4", "expected KEYWORD=PROMPTS"),
    ("a=150%", "between 0% and 100%"),
])
def test_bad_budgets_name_the_value(spec, match):
    with pytest.raises(ConfigError, match=match):
        parse_budgets(spec)


def test_allocate_with_budgets():
    # no budget: MM-Gen's rule unchanged
    assert allocate([2, 1], 10, 2, [None, None]) == allocate([2, 1], 10, 2) == [4, 2]
    # a number of prompts is taken as is; the rest share what is left (100 − 30×2 = 40 samples)
    assert allocate([1, 3, 1], 100, 2, [Budget(prompts=30), None, None]) == [30, 15, 5]
    # a share of total_gen: ceil(100 × 0.5 / 2) = 25 prompts; the rest split the other 50 samples
    assert allocate([1, 1, 3], 100, 2, [None, Budget(share=0.5), None]) == [7, 25, 19]
    # budgets that exceed total_gen leave nothing to the others (never negative)
    assert allocate([1, 1], 10, 1, [Budget(prompts=50), None]) == [50, 0]
    # every subgroup budgeted: total_gen does not matter
    assert allocate([5, 5], 10, 1, [Budget(prompts=7), Budget(prompts=1)]) == [7, 1]


def test_a_share_that_does_not_divide_rounds_up():
    # ceil(10 × 0.5 / 3) = ceil(1.67) = 2 prompts (rounding down would give 1, i.e. 3 of the 5
    # samples asked for); the other subgroup splits the other 5 samples: ceil(5 / 3) = 2
    assert allocate([1, 1], 10, 3, [Budget(share=0.5), None]) == [2, 2]
    # ceil(7 × 0.3 / 1) = ceil(2.1) = 3, where a share times total_gen is not a whole number
    assert allocate([1, 1], 7, 1, [Budget(share=0.3), Budget(share=0.7)]) == [3, 5]
    # without budgets the same rule: ceil(10 × 1/3 / 2) = 2 and ceil(10 × 2/3 / 2) = 4
    assert allocate([1, 2], 10, 2) == [2, 4]


def test_reuse_note_says_how_often_each_image_is_shown():
    assert reuse_note(5, 10) == "" and reuse_note(10, 10) == "" and reuse_note(3, 0) == ""
    assert reuse_note(30, 10) == ("30 prompts for 10 candidate images: each image is used 3× "
                                  "(about 3.0×)")
    assert "each image is used 2–3× (about 2.5×)" in reuse_note(25, 10)


def test_every_budgeted_subgroup_is_taken_from_what_the_others_share():
    # 20 + 30 prompts of 1 sample: 50 of 100 left, split evenly among the two without a budget
    assert allocate([1, 1, 1, 1], 100, 1, [Budget(prompts=20), Budget(prompts=30), None, None]) == \
        [20, 30, 25, 25]
    # 20% + 30% likewise
    assert allocate([1, 1, 1, 1], 100, 1, [Budget(share=0.2), Budget(share=0.3), None, None]) == \
        [20, 30, 25, 25]


def test_a_budget_is_checked_at_the_edges() -> None:
    assert Budget(share=0.0).share == 0.0 and Budget(share=1).share == 1  # 0% and 100% allowed
    assert Budget(prompts=0).prompts == 0
    assert reuse_note(3, 1) == ("3 prompts for 1 candidate images: each image is used 3× "
                                "(about 3.0×)")  # one image is still reused
    for bad, match in ((dict(prompts=-1), "integer ≥ 0, got -1"),
                       (dict(prompts=True), "integer ≥ 0, got True"),
                       (dict(prompts=2.0), "integer ≥ 0, got 2.0"),
                       (dict(share="0.5"), "between 0% and 100%, got '0.5'"),
                       (dict(share=True), "between 0% and 100%, got True"),
                       (dict(share=1.01), "between 0% and 100%, got 1.01"),
                       (dict(share=-0.1), "between 0% and 100%, got -0.1"),
                       ({}, "either a number of prompts or a share"),
                       (dict(prompts=1, share=0.5), "either a number of prompts or a share")):
        with pytest.raises(ConfigError, match=re.escape(match)):
            Budget(**bad)


def test_plan_follows_budgets_and_the_prompt_file_records_them(tmp_path):
    task = _task(tmp_path, n_cands=(6, 3))
    cfg = _config(tmp_path, total_gen=12, budgets="square=9")  # square: 9 prompts for 3 images
    plan = prepare_plan(task, cfg)
    assert plan.allocation() == {"circle": 3, "square": 9}  # circle: 12 − 9 = 3 samples left
    assert [str(s.budget) if s.budget else None for s in plan.subgroups] == [None, "9"]
    sq = plan.subgroups[1]
    assert sq.reuse == 3.0 and "each image is used 3×" in sq.reuse_note()
    pf = plan_prompts(task, cfg, plan)
    assert Counter(p.keyword for p in pf.prompts) == {"circle": 3, "square": 9}
    shown = Counter(p.prompt[-1] for p in pf.prompts if p.keyword == "square")
    assert sorted(shown.values()) == [3, 3, 3]  # as the note says
    raw = pf.to_json()
    assert raw["budgets"] == {"square": "9"} and raw["allocation"] == {"circle": 3, "square": 9}
    assert "budgets" not in plan_prompts(task, _config(tmp_path)).to_json()  # none: no key


def test_unknown_budget_keyword_lists_the_subgroups(tmp_path):
    task = _task(tmp_path)
    with pytest.raises(ConfigError, match="unknown keyword 'triangle'; choose one of: circle, square"):
        prepare_plan(task, _config(tmp_path, budgets="triangle=3"))
    with pytest.raises(ConfigError, match="unknown keyword 'oval'; choose one of: circle, square"):
        prepare_plan(task, _config(tmp_path, only=("oval",)))


def test_only_plans_the_chosen_subgroups_with_the_same_prompts(tmp_path):
    task = _task(tmp_path)
    full = plan_prompts(task, _config(tmp_path, budgets="square=5")).to_json()
    part = plan_prompts(task, _config(tmp_path, budgets="square=5", only=("square",))).to_json()
    assert {p["keyword"] for p in part["prompts"]} == {"square"}
    assert part["prompts"] == [p for p in full["prompts"] if p["keyword"] == "square"]
    assert part["only"] == ["square"] and part["allocation"] == {"square": 5}
    assert part["budgets"] == {"square": "5"}


def test_cli_budgets_and_only(tmp_path):
    task = _task(tmp_path)
    save_task_file(task, tmp_path, "task")
    name = next(tmp_path.glob("task_*.json")).name
    common = ["--task_desc", name, "--input_folder", str(tmp_path), "--output_folder",
              str(tmp_path / "out"), "--file_prefix", "b", "--total_gen", "12", "--mode", "vqa",
              "--seed", "0", "--budgets", "circle=2,square=50%"]
    r = _run(*common)
    assert r.returncode == 0, r.stderr
    pf = load_prompt_file(Path(r.stdout.strip().splitlines()[-1]))
    assert Counter(p.keyword for p in pf.prompts) == {"circle": 2, "square": 6}
    assert pf.extra["budgets"] == {"circle": "2", "square": "50%"}
    assert "each image is used 2×" in r.stderr  # square: 6 prompts for 3 candidates
    r = _run(*common, "--only", "square", "--file_prefix", "sq")
    assert r.returncode == 0, r.stderr
    raw = json.loads(Path(r.stdout.strip().splitlines()[-1]).read_text())
    assert {p["keyword"] for p in raw["prompts"]} == {"square"} and len(raw["prompts"]) == 6
    r = _run(*common[:-1], "pie=3")
    assert r.returncode != 0 and "unknown keyword 'pie'; choose one of: circle, square" in r.stderr


def test_a_subgroup_left_without_candidates_can_be_given_a_budget_of_0(tmp_path):
    task = _task(tmp_path)
    task.subgroups[1].candidate_image_paths = []  # e.g. all moved to a subgroup of their own
    with pytest.raises(Exception, match=r"or give it a budget of 0 \(--budgets 'square=0'\)"):
        prepare_plan(task, _config(tmp_path))
    plan = prepare_plan(task, _config(tmp_path, budgets="square=0"))
    assert plan.allocation() == {"circle": 12, "square": 0}  # circle takes all of total_gen
