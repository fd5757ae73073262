"""Subgroups from a selection (manual membership kept across keyword edits, written to the task
file), budgets from the workspace, and a run for one subgroup against the local server."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from mminstruct.app.curation import build_task, curate, embed_workspace, keyword_vectors, save_task
from mminstruct.errors import ConfigError
from mminstruct.data.formats import load_prompt_file, load_task_file
from mminstruct.app.preview import plan_workspace, save_prompts
from mminstruct.app.runs import run_info
from mminstruct.app.subgroups import (select_prompts, selection_keys, start_subgroup_run,
                                  subgroup_from_selection, subgroup_rows)
from mminstruct.app.workspace import Workspace
from tests.fixtures.llm import FAKE_KEY


def test_workspace_manual_subgroup_survives_keyword_edits(tmp_path: Path) -> None:
    ws = Workspace.open(tmp_path / "w", create=True)
    ws.set_keywords(["bar chart", "pie chart"])
    ws.settings.prompts.budgets = {"pie chart": "10", "odd ones": "25%"}
    assert ws.new_subgroup("  odd   ones ", [3, 1], ["pool/a.jpg"]) == "odd ones"
    p = ws.settings.partition
    assert p.manual_subgroups == ["odd ones"] and ws.subgroup_names() == ["bar chart", "pie chart",
                                                                          "odd ones"]
    assert p.manual_reference == {"1": "odd ones", "3": "odd ones"}
    ws.assign("reference", [7], "odd ones")  # more items can be sent to it
    # a rename, a removal and an addition of keywords leave the manual subgroup whole
    ws.set_keywords(["bar charts", "pie chart"])
    ws.set_keywords(["bar charts"])
    ws.set_keywords(["bar charts", "line chart"])
    assert p.manual_reference == {"1": "odd ones", "3": "odd ones", "7": "odd ones"}
    assert p.manual_candidates == {"pool/a.jpg": "odd ones"}
    assert ws.settings.prompts.budgets == {"odd ones": "25%"}  # pie chart's went with it
    ws.save()
    again = Workspace.open(ws.root)
    assert again.settings.partition.manual_subgroups == ["odd ones"]
    assert again.settings.prompts.budgets == {"odd ones": "25%"}
    for bad, match in (("Odd Ones", "subgroup name 'Odd Ones' is taken"),
                       ("bar charts", "is taken"), ("  ", "needs a name")):
        with pytest.raises(ConfigError, match=match):
            ws.new_subgroup(bad, [0])
    with pytest.raises(ConfigError, match="selection is empty"):
        ws.new_subgroup("empty", [], [])
    with pytest.raises(ConfigError, match="keyword 'Odd ones' is the name of a manual subgroup"):
        ws.set_keywords(["bar charts", "Odd ones"])
    with pytest.raises(ConfigError, match="unknown manual subgroup 'x'; choose one of: odd ones"):
        ws.remove_subgroup("x")
    ws.remove_subgroup("odd ones")
    assert p.manual_reference == {} and p.manual_candidates == {} and p.manual_subgroups == []
    assert ws.settings.prompts.budgets == {}
    ws.settings.prompts.budgets = {"bar charts": "lots"}
    with pytest.raises(ConfigError, match="budget 'lots' for 'bar charts'"):
        ws.save()


@pytest.fixture
def curated(demo_ws: Workspace):
    emb = embed_workspace(demo_ws)
    return demo_ws, emb


def _lasso(emb) -> list[int]:
    """A 'lasso' over the map: 3 reference rows and 4 candidate rows."""
    n_ref = len(emb.reference)
    return [0, 2, 5, n_ref + 1, n_ref + 3, n_ref + 8, n_ref + 13]


def test_selection_becomes_a_subgroup_in_the_task_and_prompt_files(curated) -> None:
    ws, emb = curated
    rows = _lasso(emb)
    ref_keys, cand_keys = selection_keys(emb, rows)
    assert ref_keys == sorted(emb.reference.sample_idx[r] for r in (0, 2, 5))
    with pytest.raises(ConfigError, match="row 999 is not on the map"):
        selection_keys(emb, [999])
    name = subgroup_from_selection(ws, emb, rows, "my picks")
    assert sorted(subgroup_rows(ws, emb, name).tolist()) == sorted(rows)
    ws.settings.prompts.budgets = {"my picks": "9"}
    ws.save()

    def task_now():
        cur = curate(ws, emb, keyword_vectors(ws, ws.settings.partition.keywords))
        return cur, build_task(ws, emb, cur)

    cur, task = task_now()
    assert cur.keywords[-1] == "my picks" and cur.is_manual(len(cur.keywords) - 1)
    sg = {s.keyword: s for s in task.subgroups}
    assert list(sg) == [*ws.settings.partition.keywords, "my picks"]
    mine = sg["my picks"]
    assert mine.reference_sample_idx == ref_keys and sorted(mine.candidate_image_paths) == cand_keys
    assert mine.extra["manual_subgroup"] is True
    assert len(mine.extra["reference_scores"]) == 3 and len(mine.extra["candidate_scores"]) == 4
    others = [i for s in task.subgroups[:-1] for i in s.reference_sample_idx]
    assert not set(others) & set(ref_keys)  # taken out of the keyword subgroups
    assert task.extra["mminstruct"]["manual_subgroups"] == ["my picks"]
    # the map colours: the subgroup's own group number on exactly the selected rows
    groups = cur.group_of_all()
    assert sorted(np.flatnonzero(groups == len(cur.keywords) - 1).tolist()) == sorted(rows)

    # a keyword edit (rename one, drop another) keeps it whole
    kws = ws.settings.partition.keywords
    ws.set_keywords([kws[0] + "s", *kws[2:]])
    ws.save()
    cur, task = task_now()
    mine2 = {s.keyword: s for s in task.subgroups}["my picks"]
    assert mine2.reference_sample_idx == ref_keys and sorted(mine2.candidate_image_paths) == cand_keys

    path = save_task(ws, task)
    loaded = load_task_file(path)
    assert loaded.subgroups[-1].keyword == "my picks"
    _, plan, pf = plan_workspace(ws, loaded, path)
    assert plan.allocation()["my picks"] == 9
    assert "each image is used 2–3×" in plan.subgroups[-1].reuse_note()  # 9 prompts, 4 images
    saved = load_prompt_file(save_prompts(ws, pf))
    assert saved.extra["budgets"] == {"my picks": "9"}
    mine_prompts = [p for p in saved.prompts if p.keyword == "my picks"]
    assert len(mine_prompts) == 9 and {p.prompt[-1] for p in mine_prompts} == set(cand_keys)
    assert all(set(p.icl_indices) <= set(ref_keys) for p in mine_prompts)


def test_select_prompts_keeps_the_chosen_subgroups_prompts(curated) -> None:
    ws, emb = curated
    cur = curate(ws, emb, keyword_vectors(ws, ws.settings.partition.keywords))
    task = build_task(ws, emb, cur)
    path = save_task(ws, task)
    _, _, pf = plan_workspace(ws, task, path)
    kw = ws.settings.partition.keywords[1]
    sub = select_prompts(pf, [kw])
    assert [p.to_json() for p in sub.prompts] == [p.to_json() for p in pf.prompts if p.keyword == kw]
    assert sub.extra["only"] == [kw] and list(sub.extra["allocation"]) == [kw]
    with pytest.raises(ConfigError, match="unknown subgroup 'nope'; choose one of: "):
        select_prompts(pf, ["nope"])


def test_a_run_for_one_subgroup_sends_only_its_prompts(curated, stub, monkeypatch) -> None:
    ws, emb = curated
    subgroup_from_selection(ws, emb, _lasso(emb), "my picks")
    ws.settings.prompts.budgets = {"my picks": "5"}
    ws.settings.prompts.min_gen_per_candidate = 1
    ws.settings.endpoint.base_url = stub.url
    ws.settings.endpoint.concurrency = 2
    ws.save()
    cur = curate(ws, emb, keyword_vectors(ws, ws.settings.partition.keywords))
    path = save_task(ws, build_task(ws, emb, cur))
    _, _, pf = plan_workspace(ws, load_task_file(path), path)
    pf_path = save_prompts(ws, pf)
    full = load_prompt_file(pf_path)
    assert len(full.prompts) > 5  # the other subgroups have prompts too
    mine = [p for p in full.prompts if p.keyword == "my picks"]
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    info = start_subgroup_run(ws, full, ["my picks"], api_key=FAKE_KEY)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and run_info(ws.root, info.name).alive:
        time.sleep(0.1)
    done = run_info(ws.root, info.name)
    assert done.state == "finished", done.message
    assert stub.stats()["requests"] == len(mine) == 5
    out = json.loads(done.output.read_text())
    samples = out["samples"] if isinstance(out, dict) else out
    assert samples and {s["keyword"] for s in samples} == {"my picks"}
    assert Counter(s["prompt_idx"] for s in samples).keys() == set(range(5))
    assert Path(done.prompt_file).name.startswith(f"{ws.settings.prompts.file_prefix}-my-picks_prompts_")
    assert ws.settings.prompt_file == str(pf_path)  # the full prompt file stays the workspace's


def test_a_settings_edit_on_the_prompts_page_parses_no_sample_again(curated, monkeypatch) -> None:
    """The Prompts page plans with ``prepare_workspace_plan`` on every settings edit: the task
    file's samples are parsed once per file content (shared by sessions), and the plan is the
    one a fresh parse gives. A task object that is not the shared parse is parsed itself."""
    import mminstruct.app.preview as preview
    import mminstruct.prompts.plan as plan_mod
    from mminstruct.data.records import forget_parsed, parse_once

    ws, emb = curated
    path = save_task(ws, build_task(ws, emb, curate(ws, emb, keyword_vectors(
        ws, ws.settings.partition.keywords))))
    forget_parsed()
    calls: list = []
    real = plan_mod.task_records
    counted = lambda t: calls.append(t) or real(t)  # noqa: E731
    monkeypatch.setattr(plan_mod, "task_records", counted)
    monkeypatch.setattr(preview, "task_records", counted)
    task = parse_once(str(path), load_task_file)
    plans = []
    for total in (40, 7, 90):
        ws.settings.prompts.total_gen = total
        config, plan = preview.prepare_workspace_plan(ws, task, path)
        plans.append(plan)
        fresh = plan_mod.prepare_plan(task, config)
        assert [(s.keyword, s.n_prompts, s.icl_pool, s.candidates) for s in plan.subgroups] == \
            [(s.keyword, s.n_prompts, s.icl_pool, s.candidates) for s in fresh.subgroups]
        assert plan.records == fresh.records
    assert len(calls) == 1 + 3  # one shared parse; the three fresh plans parse their own
    sizes = [preview.plan_size(p) for p in plans]
    assert sizes[1] < sizes[0] < sizes[2]  # each edit's own plan, not a kept one
    other = load_task_file(path)  # same bytes, another object: not the shared parse
    preview.prepare_workspace_plan(ws, other, path)
    assert len(calls) == 5 and calls[-1] is other
