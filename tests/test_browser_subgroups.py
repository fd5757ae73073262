"""The map-to-generation loop in a real browser (Playwright, Debian's chromium, headless): a lasso
drawn with the mouse becomes a subgroup of its own, "more like these" adds its nearest candidates,
the task file and the prompt file carry it with its budget, and a run for that subgroup alone
sends only its prompts to the local OpenAI-compatible server. Screenshots under the tmp folder."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from tests.fixtures.llm import FAKE_KEY
from tests.fixtures.browser import CHROMIUM, LONG, idle, open_demo, open_page, read_settings, wait_setting

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is missing")]


def _lasso(page, path) -> None:
    for _ in range(5):  # the chart is drawn anew after the projection changed
        try:
            idle(page)
            page.locator("[data-testid=stPlotlyChart]").first.scroll_into_view_if_needed()
            break
        except Exception:  # noqa: BLE001 — playwright's "not attached": wait and look again
            page.wait_for_timeout(1000)
    page.wait_for_timeout(300)
    page.locator(".modebar-btn[data-title='Lasso Select']").first.click()
    box = page.locator(".nsewdrag").first.bounding_box()
    cx, cy, w, h = box["x"], box["y"], box["width"], box["height"]
    page.mouse.move(cx + w * path[0][0], cy + h * path[0][1])
    page.mouse.down()
    for fx, fy in path[1:]:
        page.mouse.move(cx + w * fx, cy + h * fy, steps=12)
    page.mouse.up()


def _click_until(page, button, shown, tries: int = 3) -> None:
    """Click ``button`` until ``shown`` appears: a click that lands while Streamlit is still
    rerunning for the previous edit can be dropped by the frontend."""
    for attempt in range(tries):
        idle(page)
        button.click()
        try:
            shown.wait_for(timeout=20_000)
            return
        except Exception:  # noqa: BLE001 — playwright's TimeoutError; try again
            if attempt == tries - 1:
                raise


def _go(page, title: str) -> None:
    """Open a page from the navigation (again, if the first click landed during a rerun)."""
    _click_until(page, page.get_by_role("link", name=title, exact=True),
                 page.get_by_role("heading", name=title, exact=True).first)


def _pick(page, testid: str, label: str, option: str) -> None:
    """Choose ``option`` in the Streamlit selectbox / multiselect (``testid``) labelled ``label``:
    open it, click the option."""
    widget = page.locator(f"[data-testid={testid}]", has_text=label).first
    widget.scroll_into_view_if_needed()
    widget.click()
    page.get_by_role("option").filter(has_text=option).first.click()


def test_lasso_to_subgroup_budget_and_a_run_for_it_alone(app_server, stub_llm,
                                                          tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    url, home = app_server
    ws_root = home / "workspaces" / "demo"
    shots = tmp_path / "screenshots"
    shots.mkdir()
    with sync_playwright() as pw:
        browser, page = open_page(pw)
        try:
            open_demo(page, url)
            # Explore: PCA (no UMAP compile), then a lasso over the left half of the map
            _go(page, "Explore")
            page.locator("[data-testid=stPlotlyChart]").wait_for(timeout=LONG)
            idle(page)
            page.get_by_text("PCA (fast, linear)").click()
            idle(page)
            _lasso(page, [(0.01, 0.01), (0.5, 0.01), (0.5, 0.99), (0.01, 0.99), (0.01, 0.02)])
            page.get_by_text(re.compile(r"Selection · [1-9][0-9]* image\(s\)")).wait_for(timeout=30_000)
            idle(page)
            n_sel = int(re.search(r"Selection · (\d+)", page.get_by_text(
                re.compile(r"Selection · \d+ image")).inner_text()).group(1))
            assert n_sel >= 3
            # a subgroup of its own
            page.get_by_label(f"Name a new subgroup of these {n_sel} image(s)").fill("lasso picks")
            page.get_by_role("button", name="New subgroup from these").click()
            wait_setting(home, lambda s: s["partition"]["manual_subgroups"], ["lasso picks"])
            idle(page)
            s = read_settings(home)["partition"]
            members = [k for k, v in s["manual_reference"].items() if v == "lasso picks"] + \
                [k for k, v in s["manual_candidates"].items() if v == "lasso picks"]
            assert len(members) == n_sel
            page.get_by_text(f"lasso picks ({n_sel})").first.wait_for(timeout=LONG)  # map legend
            page.screenshot(path=shots / "1_explore_subgroup.png", full_page=True)
            # more like these: 5 nearest candidates, added to it
            page.get_by_text("More like these: the nearest candidates of the pool").click()
            box = page.get_by_label("How many")
            box.fill("5")
            box.press("Enter")
            idle(page)
            _click_until(page, page.get_by_role("button", name="Find", exact=True),
                         page.get_by_text(re.compile(r"5 candidate\(s\), best first")))
            idle(page)
            _pick(page, "stSelectbox", "Add to subgroup", "lasso picks")
            idle(page)
            page.get_by_role("button", name="Add 5 to the subgroup").click()
            wait_setting(home, lambda s: sum(v == "lasso picks" for v in
                                              s["partition"]["manual_candidates"].values()),
                          sum(not k.isdigit() for k in members) + 5)
            idle(page)
            page.screenshot(path=shots / "2_explore_more.png", full_page=True)

            # Partition: the subgroup is listed; save the task file
            _go(page, "Partition")
            page.get_by_text(re.compile(r"and 1 subgroup\(s\) from selections")).wait_for(timeout=LONG)
            idle(page)
            page.get_by_role("button", name="Save the task file").click()
            page.get_by_text(re.compile(r"Saved task_file_")).wait_for(timeout=LONG)
            page.screenshot(path=shots / "3_partition.png", full_page=True)
            task = json.loads(Path(read_settings(home)["task_file"]).read_text())
            sg = {g["keyword"]: g for g in task["subgroups"]}
            assert "lasso picks" in sg and sg["lasso picks"].get("manual_subgroup") is True
            assert len(sg["lasso picks"]["reference_sample_idx"]) + \
                len(sg["lasso picks"]["candidate_image_paths"]) == n_sel + 5

            # Generate: the endpoint (local server) and a typed key
            _go(page, "Generate")
            page.get_by_role("textbox", name=re.compile("^Base URL")).fill(stub_llm.url)
            page.get_by_role("button", name="Save endpoint settings").click()
            page.get_by_text("Saved (the key is never saved;").wait_for()
            page.get_by_label(re.compile("^API key for this session")).fill(FAKE_KEY)
            page.get_by_role("button", name="Use this key").click()
            page.get_by_text(re.compile("typed in this session")).first.wait_for()

            # Prompts: a budget for the subgroup; the table and the prompt file follow
            _go(page, "Prompts")
            page.get_by_text("Task file").first.wait_for(timeout=LONG)
            idle(page)
            field = page.get_by_label(re.compile("^Budgets per subgroup"))
            budgets = {"lasso picks": "6"}
            for _ in range(5):
                field.fill(", ".join(f"{k}={v}" for k, v in budgets.items()))
                field.press("Enter")
                wait_setting(home, lambda s: s["prompts"]["budgets"], budgets)
                idle(page)
                # a keyword whose candidates all went to the new subgroup cannot be planned:
                # the page says so and how to go on (a budget of 0), as a person would read it
                err = page.get_by_text(re.compile(r"Cannot plan prompts: subgroup '([^']+)' needs"))
                if not err.count():
                    break
                text = err.first.inner_text()
                assert "or give it a budget of 0" in text, text
                budgets[re.search(r"subgroup '([^']+)' needs", text).group(1)] = "0"
            page.get_by_text("Allocation per subgroup").wait_for(timeout=LONG)
            page.get_by_role("button", name="Save the prompt file").click()
            page.get_by_text(re.compile(r"Saved demo_prompts_")).wait_for(timeout=LONG)
            pf = json.loads(Path(read_settings(home)["prompt_file"]).read_text())
            assert pf["budgets"] == budgets and pf["allocation"]["lasso picks"] == 6
            assert sum(p["keyword"] == "lasso picks" for p in pf["prompts"]) == 6
            page.screenshot(path=shots / "4_prompts.png", full_page=True)
            # a run for that subgroup alone
            _pick(page, "stMultiSelect", "Subgroups to generate", "lasso picks")
            page.keyboard.press("Escape")
            idle(page)
            before = stub_llm.stats()["requests"]
            page.get_by_role("button", name="Generate 6 prompt(s) of 1 subgroup(s)").click()
            page.get_by_text(re.compile(r"Run demo-lasso-picks: (starting|running|finished)")).wait_for(
                timeout=LONG)  # the run's name has no timestamp; its state as it stands
            page.screenshot(path=shots / "5_subgroup_run.png", full_page=True)
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline and stub_llm.stats()["requests"] - before < 6:
                time.sleep(0.2)
            time.sleep(1.0)
            assert stub_llm.stats()["requests"] - before == 6
        except Exception:
            page.screenshot(path=shots / "failure.png", full_page=True)
            (shots / "failure.txt").write_text(page.inner_text("body"))
            raise
        browser.close()
    outputs = [p for p in (ws_root / "generated_data").glob("demo-lasso-picks_*.json")
               if not p.name.endswith(".manifest.json")]
    deadline = time.monotonic() + 30
    while not outputs and time.monotonic() < deadline:
        time.sleep(0.5)
        outputs = [p for p in (ws_root / "generated_data").glob("demo-lasso-picks_*.json")
                   if not p.name.endswith(".manifest.json")]
    assert outputs, sorted(p.name for p in (ws_root / "generated_data").glob("*"))
    samples = json.loads(outputs[0].read_text())["samples"]
    assert samples and {s["keyword"] for s in samples} == {"lasso picks"}
