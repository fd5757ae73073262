"""End to end in a real browser: Playwright driving Debian's chromium against ``streamlit run
app.py`` on 127.0.0.1 — demo → explore (a lasso selection drawn with the mouse) → partition (a
keyword edit) → prompts → generate (the local OpenAI-compatible server) → review (an export).
A screenshot of each page is saved under the test's tmp folder.

Needs /usr/bin/chromium (``apt-get install chromium``; scripts/setup.sh installs it as root);
never ``playwright install``.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from mminstruct.app.workspace import EndpointSettings
from tests.fixtures.app import DEMO_SIZE
from tests.fixtures.browser import (CHROMIUM, LONG, idle, nav, open_demo, open_page, read_settings,
                                    serve, sidebar, wait_setting)
from tests.fixtures.llm import FAKE_KEY

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                 reason=f"{CHROMIUM} is missing: apt-get install chromium "
                                        "(scripts/setup.sh does it as root)")]


def test_demo_to_export_in_a_real_browser(app_server, stub_llm, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    url, home = app_server
    shots = tmp_path / "screenshots"
    shots.mkdir()
    dialogs: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-background-networking", "--disable-gpu",
            "--disable-dev-shm-usage"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
        page.set_default_timeout(60_000)
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        requests_outside: list[str] = []
        page.on("request", lambda r: None if r.url.startswith(("http://127.0.0.1", "data:", "blob:"))
                else requests_outside.append(r.url))

        try:
            # Data: open the demo
            page.goto(url)
            page.get_by_role("button", name="Open the demo").click()
            page.get_by_text("Validation report").wait_for(timeout=LONG)
            idle(page)
            page.screenshot(path=shots / "1_data.png", full_page=True)
            page.get_by_text(f"{DEMO_SIZE[0]} of {DEMO_SIZE[0]} records loaded").first.wait_for()

            # Explore: embeddings, UMAP, then a lasso selection drawn with the mouse
            nav(page, "Explore")
            chart = page.locator("[data-testid=stPlotlyChart]")
            chart.wait_for(timeout=LONG)
            idle(page)
            page.locator(".modebar-btn[data-title='Lasso Select']").first.click()
            box = page.locator(".nsewdrag").first.bounding_box()
            cx, cy, w, h = box["x"], box["y"], box["width"], box["height"]
            path = [(0.02, 0.02), (0.98, 0.02), (0.98, 0.98), (0.02, 0.98), (0.02, 0.03)]
            page.mouse.move(cx + w * path[0][0], cy + h * path[0][1])
            page.mouse.down()
            for fx, fy in path[1:]:
                page.mouse.move(cx + w * fx, cy + h * fy, steps=12)
            page.mouse.up()
            page.get_by_text(re.compile(r"Selection · [1-9][0-9]* image\(s\)")).wait_for(timeout=LONG)
            idle(page)
            page.screenshot(path=shots / "2_explore.png", full_page=True)
            n_sel = int(re.search(r"Selection · (\d+)", page.get_by_text(
                re.compile(r"Selection · \d+ image")).inner_text()).group(1))
            assert n_sel >= 10  # the lasso went round (nearly) the whole plot

            # Partition: edit the keywords (rename one, add one)
            nav(page, "Partition")
            area = page.get_by_label("One keyword per line (add, remove or rename a line)")
            area.wait_for(timeout=LONG)
            area.fill("bar chart\nline chart\npie charts\nscatter plot\ntable")
            area.press("Control+Enter")
            page.get_by_text(re.compile(r"Partition of \d+ images by 5 keywords")).wait_for(timeout=LONG)
            idle(page)
            page.get_by_role("button", name="Save the task file").click()
            page.get_by_text(re.compile(r"Saved task_file_")).wait_for(timeout=LONG)
            page.screenshot(path=shots / "3_partition.png", full_page=True)

            # Prompts: the allocation, a preview, save
            nav(page, "Prompts")
            page.get_by_text("Preview: what the model sees").wait_for(timeout=LONG)
            page.get_by_text("Candidate image (the new image to write about)").first.wait_for(timeout=LONG)
            idle(page)
            page.get_by_role("button", name="Save the prompt file").click()
            page.get_by_text(re.compile(r"Saved demo_prompts_")).wait_for(timeout=LONG)
            page.screenshot(path=shots / "4_prompts.png", full_page=True)

            # Generate: the local server, a typed key, a background run
            nav(page, "Generate")
            page.get_by_role("textbox", name=re.compile("^Base URL")).fill(stub_llm.url)
            page.get_by_role("textbox", name="Model", exact=True).fill("gpt-4o-mini")
            page.get_by_role("button", name="Save endpoint settings").click()
            page.get_by_text("Saved (the key is never saved;").wait_for()
            page.get_by_label(re.compile("^API key for this session")).fill(FAKE_KEY)
            page.get_by_role("button", name="Use this key").click()
            page.get_by_text(re.compile("typed in this session")).first.wait_for()
            page.get_by_role("button", name="Start the run").click()
            page.get_by_text(re.compile(r"state: finished")).wait_for(timeout=60_000)
            page.get_by_text("Latest prompts").wait_for()
            idle(page)
            page.screenshot(path=shots / "5_generate.png", full_page=True)
            assert FAKE_KEY not in page.content()
            assert stub_llm.stats()["requests"] > 0

            # Review: reject nothing, export LLaVA JSON and download it
            nav(page, "Review")
            page.get_by_text("In-context sources", exact=False).first.wait_for(timeout=LONG)
            page.get_by_text("LLaVA JSON").click()
            page.get_by_role("button", name="Export", exact=True).click()
            page.get_by_text(re.compile(r"Wrote \d+ samples")).wait_for(timeout=LONG)
            with page.expect_download() as dl:
                page.get_by_role("button", name=re.compile(r"^Download .*llava\.json")).click()
            saved = tmp_path / "export.json"
            dl.value.save_as(saved)
            page.screenshot(path=shots / "6_review.png", full_page=True)
        except Exception:
            page.screenshot(path=shots / "failure.png", full_page=True)
            (shots / "failure.txt").write_text(page.inner_text("body"))
            raise
        browser.close()

    exported = json.loads(saved.read_text())
    assert exported and {"id", "image", "conversations"} <= set(exported[0])
    assert dialogs == []
    assert requests_outside == [], requests_outside
    files = [f for f in home.rglob("*") if f.is_file()]
    assert not [f for f in files if FAKE_KEY.encode() in f.read_bytes()]
    assert sorted(p.name for p in shots.iterdir()) == [
        "1_data.png", "2_explore.png", "3_partition.png", "4_prompts.png", "5_generate.png",
        "6_review.png"]


def test_markup_in_a_data_file_stays_text_in_the_browser(app_server, tmp_path: Path) -> None:
    """A data file whose texts are HTML/Markdown attacks: the page shows them as text, runs no
    script, creates no element from them, and asks for nothing outside this machine."""
    from playwright.sync_api import sync_playwright

    from tests.fixtures.images import draw_shape

    url, _ = app_server
    project = tmp_path / "evil"
    project.mkdir()
    draw_shape("circle", 0).save(project / "a.png")
    evil_q = ("<script>window.__pwned=1</script><img src=x onerror=\"window.__pwned=2\"> "
              "[x](javascript:alert(1))")
    records = {"dataset_description": "<img src=x onerror=\"window.__pwned=3\">",
               "samples": [{"id": "<b>id</b>", "image": "a.png", "conversations": [
                   {"from": "human", "value": evil_q},
                   {"from": "gpt", "value": "<iframe src=\"javascript:alert(4)\"></iframe>"}]}]}
    (project / "evil.json").write_text(json.dumps(records))
    dialogs: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-background-networking", "--disable-gpu",
            "--disable-dev-shm-usage"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(url)
        page.get_by_text("Open or create a workspace", exact=True).click(timeout=60_000)
        page.get_by_role("textbox", name="Folder").fill(str(tmp_path / "ws_evil"))
        page.get_by_role("button", name="Open / create").click()
        page.get_by_text(str(tmp_path / "ws_evil"), exact=True).wait_for()  # the sidebar
        idle(page)
        page.get_by_role("tab", name="Files on this machine").click()
        box = page.get_by_role("textbox", name="Data file (path on this machine)")
        box.fill(str(project / "evil.json"))
        box.press("Enter")
        idle(page)
        page.get_by_role("button", name="Load these files").click()
        page.get_by_text("Validation report").wait_for(timeout=60_000)
        idle(page)
        page.wait_for_timeout(1500)  # let any injected handler fire
        page.screenshot(path=tmp_path / "evil.png", full_page=True)
        pwned = page.evaluate("window.__pwned")
        injected = page.locator("main img[src='x'], main iframe, main script").count()
        description = page.get_by_role("textbox", name=re.compile("What the dataset teaches"))
        shown = description.input_value()
        browser.close()
    assert pwned is None and dialogs == [] and injected == 0
    assert shown == records["dataset_description"]  # the text itself, intact, as text


# ----------------------------------------------------------------------------------------------
# Settings edited as a person does: three times in a row, reload, switch pages, other workspace


@pytest.mark.slow
def test_consecutive_edits_stick_in_a_real_browser(app_server, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    url, home = app_server
    shots = tmp_path / "screenshots"
    shots.mkdir()
    with sync_playwright() as pw:
        browser, page = open_page(pw)
        try:
            open_demo(page, url)
            # Partition: the keyword list, three edits in a row
            nav(page, "Partition")
            area = page.get_by_label("One keyword per line (add, remove or rename a line)")
            area.wait_for(timeout=LONG)
            for kws in (["bar chart", "line chart", "pie chart", "scatter plot", "table"],
                        ["bar chart", "line chart", "pie chart", "scatter plot", "table", "map"],
                        ["bar chart", "pie chart", "scatter plot"]):
                area.fill("\n".join(kws))
                area.press("Control+Enter")
                page.get_by_text(re.compile(rf"Partition of \d+ images by {len(kws)} keywords")) \
                    .wait_for(timeout=LONG)
                idle(page)
                wait_setting(home, lambda s: s["partition"]["keywords"], kws)
                assert area.input_value() == "\n".join(kws)
            page.screenshot(path=shots / "partition.png", full_page=True)
            page.reload()
            area = page.get_by_label("One keyword per line (add, remove or rename a line)")
            area.wait_for(timeout=LONG)
            idle(page)
            expect(area).to_have_value("bar chart\npie chart\nscatter plot")
            page.get_by_role("button", name="Save the task file").click()
            page.get_by_text(re.compile(r"Saved task_file_")).wait_for(timeout=LONG)

            # Prompts: total_gen, three edits in a row; the arithmetic follows each
            nav(page, "Prompts")
            total = page.get_by_label("Items to generate (total_gen)")
            total.wait_for(timeout=LONG)
            for value in (41, 17, 30):
                total.fill(str(value))
                total.press("Enter")
                page.get_by_text(f"total_gen = {value} items").first.wait_for(timeout=LONG)
                idle(page)
                wait_setting(home, lambda s: s["prompts"]["total_gen"], value)
                assert total.input_value() == str(value)
            page.screenshot(path=shots / "prompts.png", full_page=True)

            # Generate: the endpoint form, three saves in a row; the sidebar follows each
            nav(page, "Generate")
            base = page.get_by_role("textbox", name=re.compile("^Base URL"))
            conc = page.get_by_label("Requests in flight")
            for port, n in ((9, 7), (10, 3), (11, 12)):
                endpoint = f"http://127.0.0.1:{port}/v1"
                base.fill(endpoint)
                conc.fill(str(n))
                page.get_by_role("button", name="Save endpoint settings").click()
                page.get_by_text("Saved (the key is never saved;").wait_for()
                idle(page)
                wait_setting(home, lambda s: (s["endpoint"]["base_url"],
                                               s["endpoint"]["concurrency"]), (endpoint, n))
                assert (base.input_value(), conc.input_value()) == (endpoint, str(n))
                sidebar(page).get_by_text(endpoint, exact=False).filter(visible=True).first.wait_for()
            page.screenshot(path=shots / "generate.png", full_page=True)
            # reload, another page and back: the saved values are shown
            page.reload()
            idle(page)
            nav(page, "Prompts")
            expect(page.get_by_label("Items to generate (total_gen)")).to_have_value("30")
            nav(page, "Generate")
            page.get_by_text("Endpoint", exact=True).first.click()  # (a reload: collapsed again)
            expect(page.get_by_label("Requests in flight")).to_have_value("12")

            # another workspace: its own settings, and none of the demo's paths
            page.get_by_text("Open or create a workspace", exact=True).click()
            page.get_by_role("textbox", name="Folder").fill(str(home / "workspaces" / "other"))
            page.get_by_role("button", name="Open / create").click()
            sidebar(page).get_by_text(str(home / "workspaces" / "other"), exact=True).wait_for()
            idle(page)
            nav(page, "Data")
            page.get_by_role("tab", name="Files on this machine").click()
            assert page.get_by_role("textbox", name="Data file (path on this machine)") \
                .input_value() == ""
            page.screenshot(path=shots / "other_workspace.png", full_page=True)
            # the other workspace keeps the one default, not this workspace's edits
            assert read_settings(home, "other")["endpoint"]["concurrency"] == \
                EndpointSettings().concurrency != 12
        except Exception:
            page.screenshot(path=shots / "failure.png", full_page=True)
            (shots / "failure.txt").write_text(page.inner_text("body"))
            raise
        browser.close()
    assert read_settings(home)["partition"]["keywords"] == ["bar chart", "pie chart", "scatter plot"]
    assert read_settings(home)["prompts"]["total_gen"] == 30
    assert read_settings(home)["endpoint"]["concurrency"] == 12


@pytest.mark.slow
def test_choosing_a_local_checkpoint_and_embedding_with_it(tmp_path: Path, demo_data: Path,
                                                           tiny_clip) -> None:
    from playwright.sync_api import sync_playwright

    from tests.fixtures.clip import make_tiny_clip

    other = make_tiny_clip(tmp_path / "my_checkpoints", seed=5)
    spec = f"{other.config_path}:{other.checkpoint}"
    home = tmp_path / "home"
    home.mkdir()
    (home / "recent_models.json").write_text(json.dumps({"recent": [spec]}))  # used before
    with serve(tmp_path, demo_data, tiny_clip, {"HF_HUB_OFFLINE": "1"}) as (url, home), \
            sync_playwright() as pw:
        browser, page = open_page(pw)
        try:
            open_demo(page, url)
            nav(page, "Explore")
            page.locator("[data-testid=stPlotlyChart]").wait_for(timeout=LONG)
            idle(page)
            found = page.locator("[data-testid=stSelectbox]",
                                 has_text="Or choose a model found on this machine")
            find = page.get_by_role("button", name="Find models on this machine")
            if not find.is_visible():
                page.locator("[data-testid=stExpander] summary", has_text="CLIP model").click()
            find.click()  # finding them imports open_clip: only when asked
            found.wait_for()
            idle(page)
            found.click()
            page.get_by_role("option").filter(has_text=str(other.checkpoint)).first.click()
            idle(page)
            wait_setting(home, lambda s: s["partition"]["clip_model"], spec)
            # embedded with the chosen checkpoint (its own vector cache), then mapped anew
            cache = home / "workspaces" / "demo" / "cache"
            deadline = time.monotonic() + LONG / 1000
            while len(list((cache / "projections").glob("*.npy"))) < 2:
                assert time.monotonic() < deadline, "no map of the new model's vectors"
                time.sleep(0.2)
            assert any(f.name.startswith(other.arch) for f in (cache / "clip").glob("*.sqlite"))
            page.locator("[data-testid=stProgress]").first.wait_for(state="detached",
                                                                     timeout=LONG)
            idle(page)
            page.locator("[data-testid=stPlotlyChart]").wait_for(timeout=LONG)
            shown = page.get_by_role("textbox", name=re.compile("^CLIP model")).input_value()
            assert shown == spec
            # the background job embedded every image anew with it (none from the old model's cache)
            done = json.loads((cache / "embed_job" / "exit.json").read_text())
            assert (done["state"], done["n_computed"], done["n_cached"]) == (
                "finished", DEMO_SIZE[0] + DEMO_SIZE[1], 0)
            sidebar(page).get_by_text(str(other.checkpoint), exact=False).first.wait_for()
            page.screenshot(path=tmp_path / "explore_model.png", full_page=True)
            # a bad path is refused at once, in full, and nothing is embedded with it
            box = page.get_by_role("textbox", name=re.compile("^CLIP model"))
            box.fill(f"{other.arch}:/no/such/checkpoint.pt")
            box.press("Enter")
            page.get_by_text(re.compile("checkpoint file .*/no/such/checkpoint.pt.* not found")) \
                .first.wait_for()
            assert read_settings(home)["partition"]["clip_model"] == spec
        except Exception:
            page.screenshot(path=tmp_path / "failure.png", full_page=True)
            (tmp_path / "failure.txt").write_text(page.inner_text("body"))
            raise
        browser.close()


@pytest.mark.slow
def test_a_typed_key_never_reaches_another_endpoint(tmp_path: Path, demo_data: Path,
                                                    tiny_clip) -> None:
    from playwright.sync_api import sync_playwright

    from tests.test_app_keys import Listener

    a, b = Listener(), Listener()  # A: where the key is typed for; B: any other endpoint
    try:
        with serve(tmp_path, demo_data, tiny_clip, {"OPENAI_BASE_URL": b.url}) as (url, home), \
                sync_playwright() as pw:
            browser, page = open_page(pw)
            try:
                open_demo(page, url)
                nav(page, "Generate")
                base = page.get_by_role("textbox", name=re.compile("^Base URL"))
                base.fill(a.url)
                page.get_by_role("button", name="Save endpoint settings").click()
                page.get_by_text("Saved (the key is never saved;").wait_for()
                page.get_by_label(re.compile("^API key for this session")).fill(FAKE_KEY)
                page.get_by_role("button", name="Use this key").click()
                page.get_by_text(re.compile("typed in this session")).first.wait_for()
                idle(page)
                deadline = time.monotonic() + 20
                while not any(FAKE_KEY in k for k in a.keys_seen()) and time.monotonic() < deadline:
                    time.sleep(0.2)
                assert any(FAKE_KEY in k for k in a.keys_seen())  # its own endpoint: yes
                # the base URL changes to B: the key is dropped; B is checked without it
                base = page.get_by_role("textbox", name=re.compile("^Base URL"))
                base.fill(b.url)
                page.get_by_role("button", name="Save endpoint settings").click()
                page.get_by_text("API key: none").wait_for()
                idle(page)
                # back to A, the key typed again; then a new workspace (default URL = B here)
                page.get_by_role("textbox", name=re.compile("^Base URL")).fill(a.url)
                page.get_by_role("button", name="Save endpoint settings").click()
                page.get_by_label(re.compile("^API key for this session")).fill(FAKE_KEY)
                page.get_by_role("button", name="Use this key").click()
                page.get_by_text(re.compile("typed in this session")).first.wait_for()
                page.get_by_text("Open or create a workspace", exact=True).click()
                page.get_by_role("textbox", name="Folder").fill(str(home / "workspaces" / "new"))
                page.get_by_role("button", name="Open / create").click()
                sidebar(page).get_by_text(str(home / "workspaces" / "new"), exact=True).wait_for()
                idle(page)
                n_b = len(b.requests)
                assert n_b >= 1  # B was checked once, when it was the saved endpoint
                # the default URL (B) is contacted only on a click, and then without the key
                sidebar(page).get_by_role("button", name="Check the endpoint").click()
                idle(page)
                deadline = time.monotonic() + 20
                while len(b.requests) == n_b and time.monotonic() < deadline:
                    time.sleep(0.2)
                assert len(b.requests) == n_b + 1
                page.screenshot(path=tmp_path / "keys.png", full_page=True)
                assert FAKE_KEY not in page.content()
            except Exception:
                page.screenshot(path=tmp_path / "failure.png", full_page=True)
                (tmp_path / "failure.txt").write_text(page.inner_text("body"))
                raise
            browser.close()
        assert b.requests and all(FAKE_KEY not in k for k in b.keys_seen()), b.keys_seen()
        files = [f for f in home.rglob("*") if f.is_file()]
        assert not [f for f in files if FAKE_KEY.encode() in f.read_bytes()]
    finally:
        a.close()
        b.close()
