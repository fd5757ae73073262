"""Every settings-backed widget on every page (``ui.settings.BOUND``): three consecutive edits each
reach the page and ``workspace.json``; a change made elsewhere shows up in the widget.

``EDITS`` holds three (widget value, stored value) pairs per bound widget; a widget added to
``BOUND`` without edits here fails ``test_every_bound_widget_has_edits``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from mminstruct.app.curation import build_task, curate, embed_workspace, keyword_vectors, save_task
from mminstruct.app.preview import plan_workspace, save_prompts
from mminstruct.data.formats import load_task_file
from mminstruct.app.workspace import EndpointSettings, Workspace
from tests.fixtures.app import app_test, make_demo_workspace, markdown_strings, no_errors
from ui.settings import BOUND, EP_FORM, _get

SUBMIT = {EP_FORM: "FormSubmitter:endpoint_form-Save endpoint settings"}


def _models(ws: Workspace, tiny) -> list[tuple[str, str]]:
    copy = ws.root.parent / "other_ckpt" / "tiny_copy.pt"
    copy.parent.mkdir(exist_ok=True)
    shutil.copy(tiny.checkpoint, copy)
    other = f"{tiny.config_path}:{copy}"
    return [(tiny.registered_spec, tiny.registered_spec), (other, other), (tiny.spec, tiny.spec)]


def _same3(*values: Any) -> list[tuple[Any, Any]]:
    return [(v, v) for v in values]


def _budget_edits(ws: Workspace) -> list[tuple[Any, Any]]:
    """Budgets for subgroups that can have prompts (reference samples and candidates: with the
    tiny random CLIP, which ones is fixed but not chosen by us)."""
    task = load_task_file(ws.settings.task_file)
    ok = [s.keyword for s in task.subgroups if s.candidate_image_paths and s.reference_sample_idx]
    assert len(ok) >= 2, ok
    a, b = ok[0], ok[-1]
    return [(f"{a}=3", {a: "3"}), (f"{b} = 50%, {a}=2", {b: "50%", a: "2"}), ("", {})]


def _edits(key: str, ws: Workspace, tiny) -> list[tuple[Any, Any]]:
    tasks = sorted(p.name for p in ws.tasks_dir.glob("*.json"))
    prompts = sorted(p.name for p in (ws.root / "generated_prompts").glob("*.json"))
    table: dict[str, list[tuple[Any, Any]]] = {
        "desc_text": [("charts, first", "charts, first"), ("second ", "second"), ("third", "third")],
        "clip_model": _models(ws, tiny),
        "ex_clip_model": _models(ws, tiny),
        "proj_method": _same3("umap", "pca", "umap"),
        "ex_ray": [("auto", "auto"), (" 127.0.0.1:6379 ", "127.0.0.1:6379"), ("", "")],
        "kw_text": [("bar chart\nline chart\npie chart\nscatter plot\ntable",
                     ["bar chart", "line chart", "pie chart", "scatter plot", "table"]),
                    ("bar chart\nline chart\npie chart\nscatter plot\nheat map",
                     ["bar chart", "line chart", "pie chart", "scatter plot", "heat map"]),
                    ("bar chart\n\nline chart", ["bar chart", "line chart"])],
        "use_min": [(True, 0.2), (False, None), (True, 0.2)],
        "min_sim": _same3(0.1, 0.3, 0.25),
        "low_margin": _same3(0.02, 0.05, 0.1),
        "top_k": [(5, 5), (10, 10), (0, None)],
        "task_pick": [(n, str(ws.tasks_dir / n)) for n in (tasks[1], tasks[2], tasks[0])],
        "p_total": _same3(10, 12, 16),
        "p_min": _same3(1, 3, 2),
        "p_icl": _same3(0, 2, 1),
        "p_mode": _same3("vqa_nr", "descript", "vqa"),
        "p_seed": _same3(1, 2, 3),
        "p_prefix": [("alpha", "alpha"), (" beta ", "beta"), ("gamma", "gamma")],
        "p_budgets": _budget_edits(ws),
        "est_model": _same3("gpt-4o-mini", "gpt-4.1", "gpt-4o"),
        "gen_prompt": [(n, str(ws.root / "generated_prompts" / n))
                       for n in (prompts[1], prompts[2], prompts[0])],
        "ep_base": _same3("http://127.0.0.1:9/v1", "http://127.0.0.1:10/v1", ""),
        "ep_model": _same3("m1", "m2", "m3"),
        "ep_keyenv": _same3("KEY_ONE", "KEY_TWO", "KEY_THREE"),
        "ep_side": _same3(512, 256, 1024),
        "ep_conc": _same3(7, 3, 20),
        "ep_rpm": [(60.0, 60.0), (0.0, None), (120.0, 120.0)],
        "ep_tpm": [(1000.0, 1000.0), (2000.0, 2000.0), (0.0, None)],
        "ep_maxtok": [(100, 100), (0, None), (200, 200)],
        "ep_timeout": _same3(30.0, 60.0, 5.0),
        "ep_retries": _same3(1, 2, 0),
    }
    return table[key]


EDITED = {"desc_text", "clip_model", "ex_clip_model", "ex_ray", "proj_method", "kw_text", "use_min",
          "min_sim", "low_margin", "top_k", "task_pick", "p_total", "p_min", "p_icl", "p_mode",
          "p_seed", "p_prefix", "p_budgets", "est_model", "gen_prompt", "ep_base", "ep_model", "ep_keyenv",
          "ep_side", "ep_conc", "ep_rpm", "ep_tpm", "ep_maxtok", "ep_timeout", "ep_retries"}


def test_every_bound_widget_has_edits() -> None:
    assert set(BOUND) == EDITED


def _page_source_binds() -> set[str]:
    import re

    from tests.fixtures.app import REPO

    found: set[str] = set()
    for f in [*(REPO / "pages").glob("*.py"), *(REPO / "ui").glob("*.py")]:
        text = f.read_text()
        found |= set(re.findall(r"bind\(ws, \"([a-z_]+)\"", text))
    found |= {"clip_model", "ex_clip_model"}  # bound through ui.model_picker.model_picker(ws, key)
    return found


def test_every_bound_widget_is_drawn_through_bind() -> None:
    assert _page_source_binds() == set(BOUND)


@pytest.fixture
def full_ws(demo_ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    """The demo with PCA, three task files and three prompt files."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ws = demo_ws
    ws.settings.partition.projection = "pca"
    p = ws.settings.prompts
    p.total_gen, p.min_gen_per_candidate, p.num_icl_samples, p.mode = 8, 1, 1, "vqa"
    ws.save()
    emb = embed_workspace(ws)
    cur = curate(ws, emb, keyword_vectors(ws, ws.settings.partition.keywords))
    first = save_task(ws, build_task(ws, emb, cur))
    for i in range(2):
        shutil.copy(first, first.with_name(f"copy{i}_{first.name}"))
    task = load_task_file(first)
    _, _, pf = plan_workspace(ws, task, first)
    for prefix in ("one", "two", "three"):
        ws.settings.prompts.file_prefix = prefix
        save_prompts(ws, pf)
    ws.settings.prompts.file_prefix = "prompts"
    ws.settings.task_file = str(first)
    ws.save()
    return ws


def _widget(at, key: str):
    return getattr(at, BOUND[key].widget)(key=key)


def _page_shows(at, key: str, stored: Any) -> None:
    """Where the page (not only the widget) shows the setting."""
    text = " ".join(markdown_strings(at) + [c.value for c in at.caption]
                    + [c.value for c in at.sidebar.caption]).replace("\\", "")
    if key == "kw_text":
        assert list(at.dataframe[0].value["keyword"]) == stored
    elif key == "p_total":
        assert f"total_gen = {stored:,} items" in text
    elif key == "p_budgets":  # the allocation table's budget column follows
        table = at.dataframe[0].value
        shown_budgets = dict(zip(table["keyword"], table["budget"]))
        assert {k: v for k, v in shown_budgets.items() if v != "proportional"} == stored
    elif key == "est_model":
        assert stored in text  # the estimate's price line names the model
    # (the sidebar, which shows the CLIP model and the endpoint, is empty in AppTest after the
    # first run; tests/test_browser.py checks it in the browser)


@pytest.mark.parametrize("key", sorted(EDITED))
def test_three_consecutive_edits_each_stick(full_ws: Workspace, tiny_clip, key: str) -> None:
    b = BOUND[key]
    if key == "min_sim":
        full_ws.settings.partition.min_similarity = 0.2
        full_ws.save()
    edits = _edits(key, full_ws, tiny_clip)
    at = app_test(full_ws).run()
    at.switch_page(b.page).run()
    no_errors(at)
    for shown, stored in edits:
        _widget(at, key).set_value(shown)
        if b.form:
            at.button(key=SUBMIT[b.form]).click()
        at.run()
        no_errors(at)
        assert _get(Workspace.open(full_ws.root).settings, b.path) == stored, (key, shown)
        assert _widget(at, key).value == shown, (key, shown)  # the edit is kept, not reverted
        _page_shows(at, key, stored)
    # a rerun with no edit changes nothing
    at.run()
    assert _widget(at, key).value == edits[-1][0]
    assert _get(Workspace.open(full_ws.root).settings, b.path) == edits[-1][1]


@pytest.mark.parametrize("key", ["kw_text", "p_total", "ep_conc", "est_model"])
def test_a_change_made_elsewhere_shows_in_the_widget(full_ws: Workspace, key: str) -> None:
    b = BOUND[key]
    at = app_test(full_ws).run()
    at.switch_page(b.page).run()
    no_errors(at)
    ws = Workspace.open(full_ws.root)  # another tab, another process
    value = {"kw_text": ["bar chart", "pie chart"], "p_total": 33, "ep_conc": 5,
             "est_model": "gpt-4.1"}[key]
    *head, last = b.path.split(".")
    setattr(_get(ws.settings, ".".join(head)) if head else ws.settings, last, value)
    ws.save()
    at.run()
    no_errors(at)
    assert _widget(at, key).value == b.to_widget(value)


def test_the_estimate_model_and_the_endpoint_model_are_one_setting(full_ws: Workspace) -> None:
    at = app_test(full_ws).run()
    at.switch_page("pages/4_prompts.py").run()
    at.text_input(key="est_model").set_value("gpt-4o-mini").run()
    at.switch_page("pages/5_generate.py").run()
    no_errors(at)
    assert at.text_input(key="ep_model").value == "gpt-4o-mini"
    at.text_input(key="ep_model").set_value("gpt-4.1")
    at.button(key=SUBMIT[EP_FORM]).click().run()
    at.switch_page("pages/4_prompts.py").run()
    assert at.text_input(key="est_model").value == "gpt-4.1"


def test_another_workspace_shows_its_own_settings(full_ws: Workspace, app_home: Path, demo_data,
                                                 tiny_clip) -> None:
    other = make_demo_workspace(app_home / "workspaces" / "other", demo_data, tiny_clip.spec)
    at = app_test(full_ws).run()
    at.switch_page("pages/5_generate.py").run()
    at.number_input(key="ep_conc").set_value(9)
    at.button(key=SUBMIT[EP_FORM]).click().run()
    assert Workspace.open(full_ws.root).settings.endpoint.concurrency == 9
    at.session_state["ws_path"] = str(other.root)
    at.run()
    no_errors(at)
    default = EndpointSettings().concurrency  # the generation config's one default
    assert default != 9
    assert at.number_input(key="ep_conc").value == other.settings.endpoint.concurrency == default


def test_a_bad_keyword_list_is_kept_in_the_box_and_not_saved(full_ws: Workspace) -> None:
    at = app_test(full_ws).run()
    at.switch_page("pages/3_partition.py").run()
    at.text_area(key="kw_text").set_value("bar chart\nBar  Chart").run()
    assert any("given twice" in e.value for e in at.error)
    assert at.text_area(key="kw_text").value == "bar chart\nBar  Chart"
    assert Workspace.open(full_ws.root).settings.partition.keywords == full_ws.settings.partition.keywords
    at.text_area(key="kw_text").set_value("bar chart\npie chart").run()
    no_errors(at)
    assert Workspace.open(full_ws.root).settings.partition.keywords == ["bar chart", "pie chart"]


def test_the_endpoint_number_fields_take_their_range_from_the_generation_rules(
        full_ws: Workspace) -> None:
    """The Generate page's ranges are generate.config.BOUNDS (the command line's rule), not a
    second copy: concurrency 100,000 is allowed in both (the page once stopped at 4,096)."""
    from mminstruct.generate.config import BOUNDS

    at = app_test(full_ws).run()
    at.switch_page("pages/5_generate.py").run()
    for key, name in (("ep_conc", "concurrency"), ("ep_retries", "max_retries"),
                      ("ep_side", "max_image_side")):
        field = at.number_input(key=key)
        assert (field.min, field.max) == BOUNDS[name], key
