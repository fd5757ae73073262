"""The Review page's judge panel in a real browser (Playwright driving Debian's chromium against
``streamlit run app.py``), as a person uses it (issue 24): sort by score, lowest first; read the
judge's rationale beside the sample; reject every sample scored below 3; export. On disk: the
workspace's rejections are exactly the low-scored ids, and the exported LLaVA JSON holds the others.

The workspace and the judge's scores are the AppTest version's
(``tests/test_judge_app.py::test_review_sorts_by_score_shows_the_rationale_rejects_below_3_and_exports``):
six samples, 2 (overall 2.67) and 4 (overall 1.67) scored below 3. Nothing here embeds images."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from mminstruct.app.workspace import Workspace
from tests.fixtures.browser import CHROMIUM, choose, idle, nav, open_page, serve, wait_setting
from tests.test_judge_app import SCORES, _scores
from tests.test_quality_app import NAME, _workspace

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                 reason=f"{CHROMIUM} is missing: apt-get install chromium")]

WAIT = 40_000  # ms: no page here embeds anything
WS = "judged"
LOW = sorted(sid for sid, vals in SCORES.items() if sum(vals) / 3 < 3)  # [2, 4]


def _questions(page) -> list[str]:
    """The cards' questions, top to bottom (each card's ``st.text`` "Q: <image>\\n…")."""
    texts = page.locator("[data-testid=stText]").all_inner_texts()
    return [t.split("\n", 1)[-1].strip() for t in texts if t.startswith("Q: ")]


def _wait_questions(page, first: list[str], count: int = 6) -> list[str]:
    """The questions once the page shows ``count`` cards starting with ``first`` (the script may
    still be drawing when the status widget goes): what it shows then, for the assertion."""
    qs: list[str] = []
    for _ in range(100):
        qs = _questions(page)
        if qs[:len(first)] == first and len(qs) == count:
            break
        page.wait_for_timeout(200)
    return qs


def _choose(page, label: str, option: str) -> None:
    """Pick ``option`` in the selectbox labelled ``label``."""
    box = page.locator("[data-testid=stSelectbox]").filter(has=page.get_by_text(label, exact=True))
    choose(page, box, page.get_by_role("option", name=option, exact=True))


def test_review_judge_panel_sort_read_reject_below_3_and_export(demo_data, tiny_clip,
                                                                tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    assert LOW == [2, 4]  # the fixture's planted low scores
    root = tmp_path / "home" / "workspaces" / WS  # under the served home
    with serve(tmp_path, demo_data, tiny_clip, {"MMINSTRUCT_WORKSPACE": str(root)}) as (url, home), \
            sync_playwright() as pw:
        assert root.parent.parent == home
        ws = _workspace(root)
        _scores(ws)
        browser, page = open_page(pw)
        try:
            page.goto(url)
            idle(page, WAIT)
            nav(page, "Review")
            idle(page, WAIT)
            page.get_by_text("Judge scores", exact=True).wait_for(timeout=WAIT)
            page.get_by_text(re.compile(r"6 of 7 samples judged .* judge judge-m")).wait_for()
            # file order first: sample 0's question on top
            page.get_by_role("heading", name="Export").wait_for(timeout=WAIT)
            assert _wait_questions(page, ["What is the highest bar?"])[0] == \
                "What is the highest bar?"

            # sort by score, lowest first: sample 4 (1.67), then sample 2 (2.67)
            _choose(page, "Order", "lowest score first")
            questions = _wait_questions(page, ["What is the title of the chart?",
                                               "How many bars are shown?"])
            assert questions[:2] == ["What is the title of the chart?", "How many bars are shown?"]
            assert len(questions) == 6

            # read a rationale beside the sample: in the same card's text column as its question
            card = page.locator("[data-testid=stColumn]").filter(
                has=page.get_by_text("How many bars are shown?"))
            expect(card).to_have_count(1)
            expect(card.get_by_text("Judge: 2.67")).to_be_visible()
            expect(card.get_by_text(
                "visual_faithfulness 1 — why visual_faithfulness is 1 for sample 2")).to_be_visible()
            expect(card.get_by_text("for sample 4")).to_have_count(0)  # not another sample's

            # reject every sample whose overall score is below 3
            threshold = page.get_by_label("Reject every sample whose overall score is below")
            threshold.fill("3.00")
            threshold.press("Enter")
            idle(page)
            reject = page.get_by_role("button", name=re.compile(r"^Reject \d+$"))
            expect(reject).to_have_text(f"Reject {len(LOW)}")
            reject.click()
            idle(page)
            wait_setting(home, lambda s: s.get("rejected"), {NAME: LOW}, name=WS)
            page.get_by_text(re.compile(rf"6 samples · mode vqa_nr · model m · {len(LOW)} rejected"))\
                .wait_for(timeout=WAIT)
            toggles = page.get_by_role("switch", name="Rejected")
            expect(toggles.nth(0)).to_be_checked()  # sample 4, on top
            expect(toggles.nth(1)).to_be_checked()  # sample 2
            expect(toggles.nth(2)).not_to_be_checked()

            # export (LLaVA JSON, the default)
            page.get_by_role("button", name="Export", exact=True).click()
            done = page.get_by_text(re.compile(r"^Wrote \d+ samples to "))
            done.wait_for(timeout=WAIT)
            idle(page)
            wrote = done.inner_text()
            page.screenshot(path=tmp_path / "review_judge.png", full_page=True)
        except Exception:
            page.screenshot(path=tmp_path / "failure.png", full_page=True)
            raise
        finally:
            browser.close()

    # on disk: the workspace's rejections are the low-scored ids; the export holds the others
    after = Workspace.open(root)
    assert after.settings.rejected == {NAME: LOW}
    [export] = [p for p in after.exports_dir.iterdir()
                if p.suffix == ".json" and p.name != "dataset_info.json"]
    records = json.loads(export.read_text())
    assert sorted(r["id"] for r in records) == sorted(set(SCORES) - set(LOW))  # [0, 1, 3, 5]
    assert all(r["conversations"] for r in records)
    assert wrote.startswith(f"Wrote {len(records)} samples to ") and export.name in wrote
