"""The smaller items of issue 9, each seen on screen once: the sample arithmetic, the ETA of a
paused run, "from cache" on a first projection, an old query's scores on a map selection,
unlabeled gallery checkboxes, the toolbar over the legend, command-line advice to browser users,
a stale report under a failed load, a truncated JPEG passing the Data page, Explore counts, a new
workspace showing the previous one's paths, ``prompts_prompts_…`` names."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from mminstruct.app.curation import build_task, curate, embed_workspace, keyword_vectors, save_task
from mminstruct.data.formats import load_task_file
from mminstruct.app.preview import plan_workspace, samples_note, save_prompts
from mminstruct.app.runs import RunInfo, eta_label
from mminstruct.app.workspace import Workspace
from tests.fixtures.app import app_test, markdown_strings, no_errors, plain_strings
from tests.fixtures.images import draw_shape
from ui.state import forget_embeddings


def _text(at) -> str:
    return " ".join(markdown_strings(at) + [c.value for c in at.caption]).replace("\\", "")


@pytest.fixture
def pca_ws(demo_ws: Workspace) -> Workspace:
    demo_ws.settings.partition.projection = "pca"
    demo_ws.save()
    return demo_ws


# -- Prompts


def test_the_sample_arithmetic_is_explained_where_total_gen_is_set(pca_ws: Workspace) -> None:
    emb = embed_workspace(pca_ws)
    cur = curate(pca_ws, emb, keyword_vectors(pca_ws, pca_ws.settings.partition.keywords))
    save_task(pca_ws, build_task(pca_ws, emb, cur))
    p = pca_ws.settings.prompts
    p.total_gen, p.min_gen_per_candidate, p.mode = 40, 2, "vqa"
    pca_ws.save()
    at = app_test(pca_ws).run()
    at.switch_page("pages/4_prompts.py").run()
    no_errors(at)
    n_prompts = int(at.dataframe[0].value["prompts"].sum())
    text = _text(at)
    assert "total_gen = 40 items" in text
    assert (f"{n_prompts} prompts × 2 item(s) per prompt × 2 sample(s) per item (vqa: a reasoning "
            f"sample and a concise sample per item) = {n_prompts * 4} samples") in text
    assert samples_note("vqa_nr", 10, 1, 10).endswith("= 10 samples")


def test_the_default_prefix_does_not_double_prompts(pca_ws: Workspace) -> None:
    emb = embed_workspace(pca_ws)
    cur = curate(pca_ws, emb, keyword_vectors(pca_ws, pca_ws.settings.partition.keywords))
    task_path = save_task(pca_ws, build_task(pca_ws, emb, cur))
    _, _, pf = plan_workspace(pca_ws, load_task_file(task_path), task_path)
    pca_ws.settings.prompts.file_prefix = "prompts"
    name = save_prompts(pca_ws, pf).name
    assert name.startswith("prompts_2") and "prompts_prompts" not in name
    pca_ws.settings.prompts.file_prefix = "charts"
    assert save_prompts(pca_ws, pf).name.startswith("charts_prompts_2")


# -- Generate


def _info(state: str, eta: float | None) -> RunInfo:
    return RunInfo("r", state, True, 1, None, {"eta_s": eta, "done": 26, "total": 202})


def test_a_paused_run_shows_no_growing_eta() -> None:
    assert eta_label(_info("running", 42.4)) == "42 s"
    assert eta_label(_info("paused", 420.0)) == "paused"
    assert eta_label(_info("finished", 0.0)) == "—"
    assert eta_label(_info("starting", None)) == "—"


# -- Explore


def test_the_first_projection_is_computed_by_the_job_and_read_by_the_page(pca_ws: Workspace) -> None:
    import json

    from mminstruct.app.embed import job_paths

    at = app_test(pca_ws).run()
    at.switch_page("pages/2_explore.py").run()
    no_errors(at)
    ended = json.loads(job_paths(pca_ws).exit.read_text())
    assert ended["state"] == "finished" and ended["projection_s"] >= 0  # the job projected
    assert "PCA from cache" in _text(at)  # and the page only read it
    forget_embeddings()
    again = app_test(pca_ws).run()
    again.switch_page("pages/2_explore.py").run()
    assert "PCA from cache" in _text(again)


def test_a_map_selection_drops_an_old_query_s_scores() -> None:
    from ui.charts import select_from_map

    sel = {"rows": [3, 1], "source": "search: pie", "scores": {"3": 0.9, "1": 0.8}}
    select_from_map(sel, [1, 2])
    assert sel == {"rows": [1, 2], "source": "map selection", "scores": {}}


def test_gallery_checkboxes_are_labelled_and_the_counts_add_up(pca_ws: Workspace) -> None:
    at = app_test(pca_ws).run()
    at.switch_page("pages/2_explore.py").run()
    at.session_state["explore_sel"] = {"rows": [0, 1, 30], "source": "map selection"}
    at.run()
    no_errors(at)
    boxes = [c for c in at.checkbox if c.key and ":sel:" in c.key]
    assert len(boxes) == 3
    labels = [c.label for c in boxes]
    assert all(lab.startswith("Select ") and lab != "Select " for lab in labels)
    assert len(set(labels)) == 3
    assert all(c.proto.label_visibility.value == 0 for c in boxes)  # VISIBLE
    assert "72 images on the map = 24 reference + 48 candidates" in _text(at)
    # each thumbnail is one element: the image with its caption (kind · subgroup · path)
    captions = [i.caption for e in at.get("image") for i in e.proto.imgs]
    assert len(captions) == 3
    assert all(c.startswith(("ref · ", "cand · ")) and "\\_" in c for c in captions), captions
    assert not any("\\_0000" in c.value for c in at.caption)  # no caption element of its own


def test_an_uncertain_image_is_flagged_under_its_thumbnail(pca_ws: Workspace) -> None:
    from mminstruct.partition.taskfile import PARTITION_SETTINGS

    pca_ws.settings.partition.low_margin = PARTITION_SETTINGS["low_margin"].ui_max  # the most
    pca_ws.save()
    at = app_test(pca_ws).run()
    at.switch_page("pages/3_partition.py").run()
    no_errors(at)
    captions: list[str] = []
    for kw in at.selectbox(key="gal_kw").options:  # the subgroups' galleries
        at.selectbox(key="gal_kw").set_value(kw).run()
        captions += [i.caption for e in at.get("image") for i in e.proto.imgs]
    no_errors(at)
    assert captions
    flagged = [c for c in captions if ":orange[uncertain" in c]  # (escaped for markdown)
    assert flagged, captions[:3]
    assert all(c.split("  \n")[0].split(" · ")[1].startswith("margin ") for c in flagged)


def test_a_galleries_ticks_outlive_a_turn_of_its_page(pca_ws: Workspace) -> None:
    """Ticks on one page of a gallery are still there after showing another page and back
    (Streamlit drops the value of a widget a run does not draw)."""
    at = app_test(pca_ws).run()
    at.switch_page("pages/2_explore.py").run()
    at.session_state["explore_sel"] = {"rows": list(range(40)), "source": "map selection"}
    at.run()
    no_errors(at)

    def ticks() -> dict[str, bool]:
        return {c.key: c.value for c in at.checkbox if c.key and ":sel:" in c.key}

    first = ticks()
    assert len(first) == 36  # the gallery's first page of 36
    picked = sorted(first)[:2]
    for k in picked:
        at.checkbox(key=k).check()
    at.run()
    assert "2 ticked" in _text(at)
    at.number_input(key="explore_gallery:page").set_value(2).run()
    assert len(ticks()) == 4 and not any(ticks().values())  # page 2: nothing ticked there
    at.number_input(key="explore_gallery:page").set_value(1).run()
    no_errors(at)
    assert [k for k, v in ticks().items() if v] == picked
    assert "2 ticked" in _text(at)
    # another selection without the ticked images, then one with them: not ticked again
    at.session_state["explore_sel"] = {"rows": list(range(40, 72)), "source": "map selection"}
    at.run()
    at.session_state["explore_sel"] = {"rows": list(range(40)), "source": "map selection"}
    at.run()
    no_errors(at)
    assert not any(ticks().values())


def test_the_map_legend_is_below_the_toolbar() -> None:
    from ui.charts import map_figure

    xy = np.zeros((2, 2), np.float32)
    fig = map_figure(xy, np.array([0, -1]), np.array([True, False]), {0: "a", -1: "unassigned"},
                     ["h1", "h2"]).figure
    legend = fig.layout.legend
    assert legend.orientation == "h" and legend.y is not None and legend.y < 0  # under the plot


# -- Data


def _jpeg(path: Path, truncate: bool = False) -> None:
    buf = io.BytesIO()
    draw_shape("circle", 1).convert("RGB").save(buf, format="JPEG", quality=90)
    data = buf.getvalue()
    path.write_bytes(data[: len(data) // 2] if truncate else data)


def _data_folder(folder: Path, n: int = 4, truncated: int | None = None,
                 outside: bool = False) -> Path:
    (folder / "imgs").mkdir(parents=True)
    recs = []
    for i in range(n):
        _jpeg(folder / "imgs" / f"i{i}.jpg", truncate=i == truncated)
        recs.append({"id": f"r{i}", "image": f"i{i}.jpg", "conversations": [
            {"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A shape."}]})
    if outside:
        recs.append({"id": "out", "image": "../../elsewhere.jpg", "conversations": [
            {"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "A"}]})
    path = folder / "data.json"
    path.write_text(json.dumps({"image_folder": "imgs", "samples": recs}))
    return path


def _load_files(at, data_file: Path, cand: str = "") -> None:
    at.text_input(key="srv_data").set_value(str(data_file))
    at.text_input(key="srv_cand").set_value(cand)
    at.run()  # (the button is enabled once a path is given)
    at.button(key="srv_go").click().run()


def test_a_truncated_jpeg_is_reported_on_load_and_counts_agree(app_home: Path, tmp_path: Path,
                                                               tiny_clip, monkeypatch) -> None:
    ws = Workspace.open(app_home / "workspaces" / "trunc", create=True)
    ws.settings.partition.clip_model = tiny_clip.spec
    ws.settings.partition.projection = "pca"
    ws.save()
    data_file = _data_folder(tmp_path / "d", n=4, truncated=2)
    at = app_test(ws).run()
    _load_files(at, data_file)
    no_errors(at)
    m = {x.label: x.value for x in at.metric}
    assert (m["Records loaded"], m["Skipped"]) == ("3", "1")
    report = " ".join(plain_strings(at))
    assert "i2.jpg" in report and "cannot be decoded" in report
    table = at.dataframe[0].value
    assert table["image"].notna().all()  # every thumbnail shows (no "None")
    at.switch_page("pages/2_explore.py").run()
    no_errors(at)
    m = {x.label: x.value for x in at.metric}
    assert m["Reference images"] == "3"
    assert "could not be used" not in _text(at)  # reported once, on load
    # a server started again (nothing parsed in this process): the Data page decodes only the
    # image that failed; the three that passed are remembered in the workspace's cache
    from mminstruct.data import records

    opened: list[str] = []
    real = records.open_image
    monkeypatch.setattr(records, "open_image", lambda q, **k: opened.append(Path(q).name)
                        or real(q, **k))
    records.forget_parsed()
    at.switch_page("pages/1_data.py").run()
    no_errors(at)
    m = {x.label: x.value for x in at.metric}
    assert (m["Records loaded"], m["Skipped"]) == ("3", "1") and opened == ["i2.jpg"]
    assert "cannot be decoded" in " ".join(plain_strings(at))


def test_command_line_advice_is_not_shown_to_browser_users(app_home: Path, tmp_path: Path) -> None:
    ws = Workspace.open(app_home / "workspaces" / "cli", create=True)
    data_file = _data_folder(tmp_path / "d", n=2, outside=True)
    at = app_test(ws).run()
    _load_files(at, data_file)
    no_errors(at)
    report = " ".join(plain_strings(at))
    assert "--allow_outside_paths" not in report
    assert 'tick "Allow image paths outside the input folder"' in report


def test_a_failed_load_does_not_show_the_previous_report(app_home: Path, tmp_path: Path) -> None:
    ws = Workspace.open(app_home / "workspaces" / "fail", create=True)
    at = app_test(ws).run()
    _load_files(at, _data_folder(tmp_path / "d", n=2))
    no_errors(at)
    assert any(s.value == "Validation report" for s in at.subheader)
    _load_files(at, tmp_path / "no_such.json")
    assert at.error and "Not loaded" in at.error[0].value
    assert not any(s.value == "Validation report" for s in at.subheader)
    assert not at.metric and not at.dataframe


def test_a_new_workspace_does_not_show_the_previous_paths(app_home: Path, tmp_path: Path) -> None:
    first = Workspace.open(app_home / "workspaces" / "first", create=True)
    data_file = _data_folder(tmp_path / "d", n=2)
    at = app_test(first).run()
    _load_files(at, data_file)
    no_errors(at)
    assert at.text_input(key="srv_data").value == str(data_file)
    second = Workspace.open(app_home / "workspaces" / "second", create=True)
    at.session_state["ws_path"] = str(second.root)
    at.run()
    no_errors(at)
    assert at.text_input(key="srv_data").value == ""
    at.session_state["ws_path"] = str(first.root)
    at.run()
    assert at.text_input(key="srv_data").value == str(data_file.resolve()) or \
        at.text_input(key="srv_data").value == str(data_file)


def test_a_demo_workspace_does_not_prefill_its_paths(demo_ws: Workspace) -> None:
    at = app_test(demo_ws).run()
    no_errors(at)
    assert at.text_input(key="srv_data").value == ""


def test_another_data_file_shows_its_own_description(app_home: Path, tmp_path: Path) -> None:
    ws = Workspace.open(app_home / "workspaces" / "desc", create=True)
    at = app_test(ws).run()
    files = []
    for name, desc in (("a", "charts of type A"), ("b", "photos of type B")):
        f = _data_folder(tmp_path / name, n=2)
        raw = json.loads(f.read_text())
        raw["dataset_description"] = desc
        f.write_text(json.dumps(raw))
        files.append((f, desc))
    for f, desc in files:
        _load_files(at, f)
        no_errors(at)
        assert at.text_area(key="desc_text").value == desc


def test_the_map_rings_a_click_or_a_search_but_not_a_box_it_shows_itself(pca_ws: Workspace) -> None:
    """No selection changes the figure (the browser redraws no WebGL point): a box or lasso is
    shown by the chart itself; a clicked point's or a search's rows are handed to the page's ring
    overlay by the script after the chart."""
    import re

    at = app_test(pca_ws).run()
    at.switch_page("pages/2_explore.py").run()
    plain = at.get("plotly_chart")[0].proto.spec

    def ringed() -> int:
        scripts = [h.proto.body for h in at.get("html") if h.proto.body.startswith("<script>window.__mmRings =")]
        assert len(scripts) == 1
        return len(json.loads(re.search(r"__mmRings = (\{.*?\});", scripts[0]).group(1))["x"])
    assert ringed() == 0
    for source, rings in (("map selection", 0), ("map click", 3), ("search: pie", 3)):
        at.session_state["explore_sel"] = {"rows": [0, 1, 30], "source": source, "scores": {}}
        at.run()
        no_errors(at)
        assert at.get("plotly_chart")[0].proto.spec == plain, source
        assert ringed() == rings, source
