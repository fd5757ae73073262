"""Explore and Partition through AppTest on the demo (24 reference charts, 48 candidates) with the
tiny test CLIP: embeddings computed then cached, the map, selection → exclude / send to a subgroup,
text search, live keyword edits, the minimum similarity, and the saved task file."""

from __future__ import annotations

from pathlib import Path

import pytest

from mminstruct.data.formats import load_task_file
from mminstruct.app.workspace import Workspace
from tests.fixtures.app import app_test, markdown_strings, no_errors
from ui.state import forget_embeddings


@pytest.fixture
def pca_ws(demo_ws: Workspace) -> Workspace:
    demo_ws.settings.partition.projection = "pca"  # UMAP's first call compiles for ~15 s
    demo_ws.save()
    return demo_ws


def _metrics(at) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def test_explore_embeds_once_then_reads_the_cache(pca_ws: Workspace) -> None:
    at = app_test(pca_ws).run()
    at.switch_page("pages/2_explore.py").run()
    no_errors(at)
    m = _metrics(at)
    assert (m["Reference images"], m["Candidate images"]) == ("24", "48")
    assert m["Embedded now / from cache"] == "72 / 0"
    charts = at.get("plotly_chart")
    assert len(charts) == 1
    assert any((pca_ws.cache_dir / "projections").glob("projection-pca-*.npy"))
    forget_embeddings()  # as after an app restart: only the disk cache is left
    again = app_test(pca_ws).run()
    again.switch_page("pages/2_explore.py").run()
    no_errors(again)
    assert _metrics(again)["Embedded now / from cache"] == "0 / 72"


def test_explore_hands_the_maps_plotly_config_to_the_chart(pca_ws: Workspace, monkeypatch) -> None:
    """The chart gets ``map_figure``'s config: a big map's canvas at one pixel per CSS pixel (the
    threshold lowered here, so the demo counts as big)."""
    import json

    import ui.charts

    at = app_test(pca_ws).run()
    at.switch_page("pages/2_explore.py").run()
    assert "plotGlPixelRatio" not in json.loads(at.get("plotly_chart")[0].proto.config or "{}")
    monkeypatch.setattr(ui.charts, "GL_FULL_RES_MAX", 10)
    at.run()
    no_errors(at)
    assert json.loads(at.get("plotly_chart")[0].proto.config)["plotGlPixelRatio"] == 1


def test_selection_gallery_excludes_and_assigns(pca_ws: Workspace) -> None:
    at = app_test(pca_ws).run()
    at.switch_page("pages/2_explore.py").run()
    at.session_state["explore_sel"] = {"rows": [0, 1, 30, 31], "source": "map selection"}
    at.run()
    no_errors(at)
    assert any("Selection · 4 image(s)" in s for s in markdown_strings(at))
    assert len(at.image) >= 4
    at.checkbox(key="explore_gallery:sel:0").check()
    at.checkbox(key="explore_gallery:sel:30").check()
    at.run()
    at.button(key="explore_actions:exclude").click().run()
    no_errors(at)
    p = Workspace.open(pca_ws.root).settings.partition
    assert p.excluded_reference == [0]
    assert len(p.excluded_candidates) == 1 and p.excluded_candidates[0].startswith("pool/")
    at.checkbox(key="explore_gallery:sel:0").uncheck()
    at.checkbox(key="explore_gallery:sel:30").uncheck()
    at.checkbox(key="explore_gallery:sel:1").check()
    at.run()
    at.selectbox(key="explore_actions:target").set_value("pie chart")
    at.button(key="explore_actions:send").click().run()
    no_errors(at)
    assert Workspace.open(pca_ws.root).settings.partition.manual_reference == {"1": "pie chart"}


def test_text_search_ranks_every_image(pca_ws: Workspace) -> None:
    at = app_test(pca_ws).run()
    at.switch_page("pages/2_explore.py").run()
    at.text_input(key="search_q").set_value("a pie chart with five slices")
    at.button(key="FormSubmitter:search_form-Search").click().run()
    no_errors(at)
    sel = at.session_state["explore_sel"]
    assert sel["source"] == "search: a pie chart with five slices"
    assert len(sel["rows"]) == 48 and len(set(sel["rows"])) == 48
    scores = [sel["scores"][str(r)] for r in sel["rows"]]
    assert scores == sorted(scores, reverse=True)


def test_partition_follows_keyword_edits_and_saves_the_task_file(pca_ws: Workspace) -> None:
    pca_ws.set_excluded("reference", [3])
    pca_ws.assign("reference", [5], "scatter plot")
    pca_ws.save()
    at = app_test(pca_ws).run()
    at.switch_page("pages/3_partition.py").run()
    no_errors(at)
    counts = at.dataframe[0].value
    assert list(counts["keyword"]) == ["bar chart", "line chart", "pie chart", "scatter plot"]
    assert counts["reference"].sum() == 23 and counts["candidates"].sum() == 48
    # rename one keyword and add one: the partition is recomputed live
    at.text_area(key="kw_text").set_value("bar chart\nline chart\npie charts\nscatter plot\ntable")
    at.run()
    no_errors(at)
    s = Workspace.open(pca_ws.root).settings.partition
    assert s.keywords == ["bar chart", "line chart", "pie charts", "scatter plot", "table"]
    counts = at.dataframe[0].value
    assert len(counts) == 5 and counts["reference"].sum() == 23
    assert any("Partition of 72 images by 5 keywords in" in c for c in markdown_strings(at))
    # a minimum similarity above every score leaves everything unassigned
    at.checkbox(key="use_min").check().run()
    at.slider(key="min_sim").set_value(0.99).run()
    no_errors(at)
    counts = at.dataframe[0].value
    assert counts["reference"].sum() == 1  # only the manual choice stays
    at.checkbox(key="use_min").uncheck().run()
    at.button(key="save_task").click().run()
    no_errors(at)
    task_path = Path(Workspace.open(pca_ws.root).settings.task_file)
    task = load_task_file(task_path)
    assert [g.keyword for g in task.subgroups] == s.keywords
    refs = [i for g in task.subgroups for i in g.reference_sample_idx]
    assert sorted(refs) == [i for i in range(24) if i != 3]  # excluded: in no subgroup
    assert 5 in task.subgroups[3].reference_sample_idx  # the manual choice
    assert len(task.samples) == 24
    assert sum(len(g.candidate_image_paths) for g in task.subgroups) == 48
    # the same metadata layout as the command line's task file (taskfile.task_metadata)
    meta = task.extra["mminstruct"]
    assert meta["source"] == "app" and meta["keywords"] == s.keywords
    assert meta["excluded"]["reference_sample_idx"] == [3]
    assert set(meta["skipped"]) == {"records", "samples_without_image", "reference_images",
                                    "candidates"}


def test_a_map_selection_event_maps_back_to_the_rows() -> None:
    """What ``st.plotly_chart(on_select=…)`` returns for a click — per point its trace (curve
    number) and its index in that trace — maps back to the rows of the full set through the
    figure's ``trace_rows``, not to positions within a trace (AppTest cannot make plotly events;
    box and lasso: tests/test_map_selection.py)."""
    import numpy as np

    from ui.charts import map_figure, picked_rows

    xy = np.random.default_rng(0).random((6, 2)).astype(np.float32)
    groups = np.array([0, 1, 0, 1, -1, 0])
    drawn = map_figure(xy, groups, np.array([True, False, True, False, False, True]),
                       {0: "a", 1: "b", -1: "unassigned"}, ["h"] * 6)
    points = []
    for curve, rows in enumerate(drawn.trace_rows):
        for k in range(len(rows)):  # every drawn point of every trace
            points.append({"curve_number": curve, "point_index": k})
    event = {"selection": {"points": points, "box": [], "lasso": []}}
    assert picked_rows(event, xy, drawn.trace_rows) == [0, 1, 2, 3, 4, 5]
    one = {"selection": {"points": [points[-1]], "box": [], "lasso": []}}
    assert picked_rows(one, xy, drawn.trace_rows) == [int(drawn.trace_rows[-3][-1])]
    empty = {"selection": {"points": []}}
    assert picked_rows(empty, xy, drawn.trace_rows) == [] == picked_rows(None, xy, drawn.trace_rows)
