"""Nothing is lost, in a real browser (Playwright driving Debian's chromium against ``streamlit run
app.py``): a workspace with non-default values survives a visit to an empty workspace and the way
back by each route (sidebar, recent list, reload, URL) with every save button pressed — its
``workspace.json`` stays byte for byte the same; two tabs editing different settings both keep
them; Undo and Restore in the sidebar bring back keywords, exclusions and a budget.

No page here embeds images (Explore and Partition are visited only in the empty workspace)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mminstruct.app.workspace import Workspace
from tests.fixtures.browser import (CHROMIUM, choose, idle, launch_browser, nav, sidebar,
                                    wait_setting)

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                 reason=f"{CHROMIUM} is missing: apt-get install chromium")]

WAIT = 40_000  # ms: no page here embeds anything
PAGES = ("Data", "Explore", "Partition", "Prompts", "Generate", "Review")


def _non_default(home: Path) -> Workspace:
    """The demo workspace (A) with a non-default value in every field the pages show."""
    from mminstruct.app.demo import setup_demo
    from tests.fixtures.app import DEMO_SIZE

    ws = Workspace.open(home / "workspaces" / "demo", create=True)
    setup_demo(ws, *DEMO_SIZE, workers=1)
    ws = Workspace.open(ws.root)
    s = ws.settings
    s.data.dataset_description = "my own charts"
    e = s.endpoint
    (e.generator_model, e.api_key_env, e.concurrency, e.rpm, e.tpm, e.max_tokens, e.timeout,
     e.max_retries, e.max_image_side) = ("m-custom", "MY_KEY", 37, 100.0, 5000.0, 333, 45.0, 7,
                                         640)
    p = s.prompts
    p.total_gen, p.min_gen_per_candidate, p.num_icl_samples, p.mode, p.seed, p.file_prefix = (
        77, 3, 1, "descript", 5, "mine")
    p.budgets = {"bar chart": "10"}
    q = s.partition
    q.low_margin, q.candidates_per_keyword, q.min_similarity, q.projection = 0.05, 7, 0.3, "pca"
    ws.set_excluded("reference", [1, 2])
    ws.assign("reference", [3], "pie chart")
    ws.save()
    return ws


def _open_folder(page, folder: Path) -> None:
    box = sidebar(page)
    field = box.get_by_role("textbox", name="Folder")
    if not field.is_visible():
        box.get_by_text("Open or create a workspace", exact=True).click()
    field.fill(str(folder))
    field.press("Enter")  # the value is committed (a rerun) before the click, also under load
    idle(page)
    box.get_by_role("button", name="Open / create").click()
    box.get_by_text(str(folder), exact=True).wait_for(timeout=WAIT)
    idle(page)


def _press_every_save(page) -> None:
    nav(page, "Data")
    page.get_by_role("button", name="Save the description").click()
    idle(page)
    nav(page, "Prompts")
    idle(page)
    nav(page, "Generate")
    page.get_by_role("button", name="Save endpoint settings").click()
    idle(page)
    page.get_by_text("Saved (the key is never saved;").wait_for(timeout=WAIT)


def _click_until_saved(page, button, home: Path, get, expected, tries: int = 3) -> None:
    """Click, as a person would click again when nothing happened: Streamlit can drop a click
    that lands while a rerun is still being drawn. What counts is workspace.json."""
    for attempt in range(tries):
        button.click()
        idle(page)
        try:
            wait_setting(home, get, expected, timeout=15)
            return
        except AssertionError:
            if attempt == tries - 1:
                raise


def test_nothing_is_lost_in_a_real_browser(app_server) -> None:
    from playwright.sync_api import sync_playwright

    url, home = app_server
    a = _non_default(home)
    b_root = home / "workspaces" / "empty_b"
    settings = a.root / "workspace.json"
    original = settings.read_bytes()
    with sync_playwright() as pw:
        browser = launch_browser(pw)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        shots = home.parent / "screenshots"
        shots.mkdir(exist_ok=True)
        try:
            page.goto(f"{url}/?ws={a.root}")
            sidebar(page).get_by_text(str(a.root), exact=True).wait_for(timeout=WAIT)
            idle(page)

            def visit_b() -> None:
                _open_folder(page, b_root)
                for title in PAGES:
                    nav(page, title)
                    idle(page)

            # route 1: the sidebar's Open / create
            visit_b()
            _open_folder(page, a.root)
            _press_every_save(page)
            assert settings.read_bytes() == original, "sidebar route"
            # route 2: the recent list
            visit_b()
            box = sidebar(page)
            box.locator("[data-testid=stSelectbox]").filter(has_text="Recent workspaces").click()
            page.get_by_role("option", name=str(a.root)).click()
            box.get_by_test_id("stBaseButton-secondary").filter(has_text=re.compile("^Open$")).click()
            box.get_by_text(str(a.root), exact=True).wait_for(timeout=WAIT)
            idle(page)
            _press_every_save(page)
            assert settings.read_bytes() == original, "recent-list route"
            # route 3: a reload (the most recent workspace, A, opens in the new session)
            page.reload()
            idle(page)
            _press_every_save(page)
            assert settings.read_bytes() == original, "reload route"
            # route 4: the URL, from B
            visit_b()
            page.goto(f"{url}/?ws={a.root}")
            sidebar(page).get_by_text(str(a.root), exact=True).wait_for(timeout=WAIT)
            idle(page)
            _press_every_save(page)
            assert settings.read_bytes() == original, "URL route"

            # two tabs on A edit different settings of the same form: both keep their edits
            other = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
            other.set_default_timeout(60_000)
            other.goto(f"{url}/?ws={a.root}")
            idle(other)
            nav(other, "Generate")
            idle(other)
            conc = page.get_by_label("Requests in flight")
            conc.fill("21")
            page.get_by_role("button", name="Save endpoint settings").click()
            idle(page)
            wait_setting(home, lambda s: s["endpoint"]["concurrency"], 21)
            other.get_by_role("textbox", name="Model", exact=True).fill("m-other")
            other.get_by_role("button", name="Save endpoint settings").click()
            idle(other)
            wait_setting(home, lambda s: s["endpoint"]["generator_model"], "m-other")
            assert Workspace.open(a.root).settings.endpoint.concurrency == 21

            # Undo and Restore in the sidebar: keywords, exclusions and a budget come back
            w = Workspace.open(a.root)
            w.set_keywords(["heat map"])  # a regretted edit (another page): budget dropped too
            w.set_excluded("reference", [1, 2], excluded=False)
            w.save()
            page.reload()
            idle(page)
            box = sidebar(page)
            box.get_by_text(re.compile(r"^History \(\d+ changes\)$")).click()
            _click_until_saved(page, box.get_by_role("button", name=re.compile("^Undo: keywords")),
                               home, lambda s: s["partition"]["keywords"][:1], ["bar chart"])
            wait_setting(home, lambda s: (s["partition"]["keywords"],
                                          s["partition"]["excluded_reference"],
                                          s["prompts"]["budgets"]),
                         (["bar chart", "line chart", "pie chart", "scatter plot"], [1, 2],
                          {"bar chart": "10"}))
            box.get_by_text(re.compile(r"Restored entry \d+")).wait_for(timeout=WAIT)
            # Restore the regretted entry, then undo that restore
            if not box.get_by_role("button", name="Restore this entry").is_visible():
                box.get_by_text(re.compile(r"^History \(\d+ changes\)$")).click()
            choose(page, box.locator("[data-testid=stSelectbox]").filter(has_text="Entry"),
                   page.get_by_role("option", name=re.compile(r": keywords: \+ heat map")))
            _click_until_saved(page, box.get_by_role("button", name="Restore this entry"),
                               home, lambda s: s["partition"]["keywords"], ["heat map"])
            box.get_by_role("button", name=re.compile("^Undo: restored entry")).click()
            idle(page)
            wait_setting(home, lambda s: s["prompts"]["budgets"], {"bar chart": "10"})
        except Exception:
            page.screenshot(path=shots / "failure.png", full_page=True)
            (shots / "failure.txt").write_text(page.inner_text("body"))
            raise
        browser.close()
