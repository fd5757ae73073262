"""The loop from the map to generation, through AppTest on the demo (24 reference charts, 48
candidates, the tiny test CLIP): a map selection becomes a subgroup of its own (its colour on the
map, the task file), "more like these" finds the true nearest candidates and adds them, its budget
on Prompts reaches the prompt file, suggestions are offered as keywords, and a run for that one
subgroup sends only its prompts to the local server."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from mminstruct.app.curation import embed_workspace
from mminstruct.data.formats import load_prompt_file, load_task_file
from mminstruct.app.runs import list_app_runs, run_info
from mminstruct.app.workspace import Workspace
from tests.fixtures.app import app_test, markdown_strings, no_errors

LASSO = [0, 2, 5, 25, 27, 32, 38]  # 3 reference rows (0–23) and 4 candidate rows (24–71)


@pytest.fixture
def pca_ws(demo_ws: Workspace) -> Workspace:
    demo_ws.settings.partition.projection = "pca"
    demo_ws.save()
    return demo_ws


def _array(obj) -> np.ndarray:
    """A plotly JSON array: a list, or a typed array {"dtype", "bdata" (base64), "shape"}."""
    if isinstance(obj, dict) and "bdata" in obj:
        import base64

        arr = np.frombuffer(base64.b64decode(obj["bdata"]), dtype=obj["dtype"])
        shape = obj.get("shape")
        return arr.reshape([int(x) for x in str(shape).split(",")]) if shape else arr
    return np.asarray(obj)


def _explore_with_selection(ws: Workspace, rows: list[int]):
    at = app_test(ws).run()
    at.switch_page("pages/2_explore.py").run()
    at.session_state["explore_sel"] = {"rows": rows, "source": "map selection"}
    at.run()
    no_errors(at)
    return at


def test_lasso_to_subgroup_to_task_and_prompt_files_with_its_budget(pca_ws: Workspace) -> None:
    at = _explore_with_selection(pca_ws, LASSO)
    at.text_input(key="explore_new:name").set_value("my picks")
    at.button(key="FormSubmitter:explore_new:form-New subgroup from these").click().run()
    no_errors(at)
    p = Workspace.open(pca_ws.root).settings.partition
    assert p.manual_subgroups == ["my picks"]
    assert sorted(int(k) for k, v in p.manual_reference.items() if v == "my picks") == [0, 2, 5]
    assert len([k for k, v in p.manual_candidates.items() if v == "my picks"]) == 4
    # the map draws it in its own colour, named with its size
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    names = [t.get("name", "") for t in spec["data"]]
    assert "my picks (7)" in names
    # its traces (reference circles, candidate diamonds) hold exactly the rows' points
    mine = [t for t in spec["data"] if t.get("name") == "my picks (7)"]
    drawn = np.concatenate([np.column_stack([_array(t["x"]), _array(t["y"])]) for t in mine])
    xy = np.load(next((pca_ws.cache_dir / "projections").glob("projection-pca-*.npy")))
    assert sorted(map(tuple, drawn.tolist())) == sorted(map(tuple, xy[LASSO].tolist()))
    # a keyword edit on Partition keeps it; the task file has it under its name
    at.switch_page("pages/3_partition.py").run()
    at.text_area(key="kw_text").set_value("bar chart\nline chart\npie charts\nscatter plot").run()
    no_errors(at)
    assert "my picks" in list(at.dataframe[0].value["keyword"])
    at.button(key="save_task").click().run()
    no_errors(at)
    ws = Workspace.open(pca_ws.root)
    task = load_task_file(ws.settings.task_file)
    sg = {s.keyword: s for s in task.subgroups}
    assert list(sg) == ["bar chart", "line chart", "pie charts", "scatter plot", "my picks"]
    assert sg["my picks"].reference_sample_idx == [0, 2, 5]
    assert len(sg["my picks"].candidate_image_paths) == 4
    # Prompts: a budget of 6 prompts for it; the table, the reuse note and the prompt file follow
    at.switch_page("pages/4_prompts.py").run()
    at.text_input(key="p_budgets").set_value("my picks=6").run()
    no_errors(at)
    table = at.dataframe[0].value
    row = table[table["keyword"] == "my picks"].iloc[0]
    assert row["budget"] == "6" and row["prompts"] == 6 and row["each candidate used"] == "1.5×"
    notes = [m.replace("\\", "") for m in markdown_strings(at) if "each image is used" in m.replace("\\", "")]
    assert any("6 prompts for 4 candidate images: each image is used 1–2×" in m for m in notes), notes
    at.button(key="save_prompts").click().run()
    no_errors(at)
    pf = load_prompt_file(Workspace.open(pca_ws.root).settings.prompt_file)
    assert pf.extra["budgets"] == {"my picks": "6"} and pf.extra["allocation"]["my picks"] == 6
    assert sum(1 for e in pf.prompts if e.keyword == "my picks") == 6


def test_more_like_these_finds_the_true_nearest_and_adds_them(pca_ws: Workspace) -> None:
    pca_ws.set_keywords(pca_ws.settings.partition.keywords)
    pca_ws.new_subgroup("my picks", [0, 2, 5], [])
    pca_ws.save()
    at = _explore_with_selection(pca_ws, [0, 2, 5])
    at.number_input(key="explore_more:k").set_value(5)
    at.button(key="explore_more:find").click().run()
    no_errors(at)
    found = at.session_state["explore_more:found"]["rows"]
    # brute force: every candidate's best cosine similarity to the three selected references
    # (the tiny random CLIP puts every image within 0.001 of the others: exact cosines matter)
    emb = embed_workspace(pca_ws)
    sel = emb.reference.float32()[[0, 2, 5]].astype(np.float64)
    cand = emb.candidates.float32().astype(np.float64)
    sel /= np.linalg.norm(sel, axis=1, keepdims=True)
    cand /= np.linalg.norm(cand, axis=1, keepdims=True)
    score = (cand @ sel.T).max(axis=1)
    truth = (np.lexsort((np.arange(len(cand)), -score))[:5] + len(emb.reference)).tolist()
    assert found == truth
    at.selectbox(key="explore_more:target").set_value("my picks")
    at.button(key="explore_more:add").click().run()
    no_errors(at)
    p = Workspace.open(pca_ws.root).settings.partition
    added = sorted(k for k, v in p.manual_candidates.items() if v == "my picks")
    assert added == sorted(emb.candidates.paths[r - len(emb.reference)] for r in truth)


def test_more_like_these_reads_only_the_members_it_searches_from(pca_ws: Workspace,
                                                                 monkeypatch) -> None:
    """A large selection is searched from ``member_positions`` of it; the page reads only those
    rows' vectors (a box of 42,000 points read 42,000: 0.5-0.8 s), and the answer and caption are
    those of the search over the whole selection with the same cap."""
    import ui.more_like
    from mminstruct.app import curation, neighbours

    monkeypatch.setattr(ui.more_like, "member_positions",
                        lambda n: neighbours.member_positions(n, 2))
    read: list[int] = []
    rows32 = curation.ImageSet.rows32
    monkeypatch.setattr(curation.ImageSet, "rows32",
                        lambda self, rows: read.extend(np.asarray(rows).tolist()) or rows32(self, rows))
    sel_rows = [0, 2, 5, 7, 9]
    at = _explore_with_selection(pca_ws, sel_rows)
    at.number_input(key="explore_more:k").set_value(5)
    read.clear()
    at.button(key="explore_more:find").click().run()
    no_errors(at)
    assert read == [0, 9]  # positions 0 and 4 of the five (all references here)
    emb = embed_workspace(pca_ws)
    every = emb.reference.float32()[sel_rows]
    want = neighbours.more_like_these(every, 5, pool=emb.candidates.float32(), max_queries=2)
    state = at.session_state["explore_more:found"]
    assert state["rows"] == (want.ids + len(emb.reference)).tolist()
    assert "from 2 of 5 images" in state["searched"]


def test_suggestions_are_offered_and_added_as_keywords(pca_ws: Workspace) -> None:
    at = app_test(pca_ws).run()
    at.switch_page("pages/3_partition.py").run()
    at.number_input(key="suggest:k").set_value(3)
    at.button(key="suggest:go").click().run()
    no_errors(at)
    s = at.session_state["suggest"]
    assert s.k == 3 and sum(c.size for c in s.clusters) == 24
    table = at.dataframe[1].value
    assert list(table["suggested keyword"]) == [c.name for c in s.clusters]
    offer = s.keywords(pca_ws.settings.partition.keywords)
    at.multiselect(key="suggest:pick").set_value(offer[:1])
    at.button(key="suggest:add").click().run()
    no_errors(at)
    kws = Workspace.open(pca_ws.root).settings.partition.keywords
    assert kws == ["bar chart", "line chart", "pie chart", "scatter plot", offer[0]]
    assert at.text_area(key="kw_text").value.splitlines() == kws


def test_a_run_for_one_subgroup_from_prompts_sends_only_its_prompts(pca_ws: Workspace, stub) -> None:
    from mminstruct.app.curation import build_task, curate, keyword_vectors, save_task

    pca_ws.new_subgroup("my picks", [0, 2, 5], embed_workspace(pca_ws).candidates.paths[:3])
    pca_ws.settings.prompts.budgets = {"my picks": "4"}
    pca_ws.settings.prompts.min_gen_per_candidate = 1
    pca_ws.settings.endpoint.base_url = stub.url
    pca_ws.settings.endpoint.concurrency = 2
    pca_ws.save()
    emb = embed_workspace(pca_ws)
    save_task(pca_ws, build_task(pca_ws, emb, curate(pca_ws, emb, keyword_vectors(
        pca_ws, pca_ws.settings.partition.keywords))))
    at = app_test(pca_ws).run()
    at.switch_page("pages/4_prompts.py").run()
    no_errors(at)
    at.multiselect(key="sgrun:pick").set_value(["my picks"]).run()
    assert at.button(key="sgrun:go").label == "Generate 4 prompt(s) of 1 subgroup(s)"
    at.button(key="sgrun:go").click().run()
    no_errors(at)
    runs = list_app_runs(pca_ws.root)
    assert len(runs) == 1
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and run_info(pca_ws.root, runs[0].name).alive:
        time.sleep(0.1)
    done = run_info(pca_ws.root, runs[0].name)
    assert done.state == "finished", done.message
    assert stub.stats()["requests"] == 4
    samples = json.loads(Path(done.output).read_text())["samples"]
    assert samples and {s["keyword"] for s in samples} == {"my picks"}


def test_a_run_for_one_subgroup_from_partition(pca_ws: Workspace, stub) -> None:
    from mminstruct.app.curation import build_task, curate, keyword_vectors, save_task

    emb = embed_workspace(pca_ws)
    pca_ws.new_subgroup("my picks", [0, 2, 5], emb.candidates.paths[:3])
    pca_ws.settings.prompts.budgets = {"my picks": "3"}
    pca_ws.settings.prompts.min_gen_per_candidate = 1
    pca_ws.settings.endpoint.base_url = stub.url
    pca_ws.save()
    save_task(pca_ws, build_task(pca_ws, emb, curate(pca_ws, emb, keyword_vectors(
        pca_ws, pca_ws.settings.partition.keywords))))
    at = app_test(pca_ws).run()
    at.switch_page("pages/3_partition.py").run()
    at.selectbox(key="gal_kw").set_value("my picks").run()
    no_errors(at)
    at.button(key="sgrun_part:go").click().run()
    no_errors(at)
    runs = list_app_runs(pca_ws.root)
    # the run's name carries no timestamp: its output file adds the one stamp
    assert len(runs) == 1 and runs[0].name == f"{pca_ws.settings.prompts.file_prefix}-my-picks"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and run_info(pca_ws.root, runs[0].name).alive:
        time.sleep(0.1)
    done = run_info(pca_ws.root, runs[0].name)
    assert done.state == "finished", done.message
    assert stub.stats()["requests"] == 3
    samples = json.loads(Path(done.output).read_text())["samples"]
    assert {s["keyword"] for s in samples} == {"my picks"}
