"""A box dragged over the Explore map with the mouse, with plotly's WebGL redraws held during the
drag (what the map's script does, ``ui.charts.CLICK_TO_SELECT_JS``) and without (the page opts
out with ``window.__mmHoldRedraws = false``), and — not held — with the WebGL canvas at plotly's
default two pixels per CSS pixel instead of the map's one (``ui.charts.GL_FULL_RES_MAX``), in one
run: the map alone (``bench/map_app.py``, the same ``ui.charts`` code as Explore) in headless
Chromium, N clustered points. Not held, plotly redraws every point twice a mouse move: the drag
is the cost of twenty redraws.

Prints, per case: the drag itself (mouse down, ten moves), release → the selected rows shown and
the page idle, the rows selected, and whether the plot area after the release is the same image
held and not held (pixels that differ). Nothing is asserted.

Usage: ``.venv/bin/python bench/map_drag.py [--points 210000]``.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path


REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

from app_scale import (  # noqa: E402
    cpu_line, fresh_map, idle, load_line, map_alone, open_browser, pixels_differ, stop_app)


def drag_once(page, url: str, hold: bool, shot: Path) -> tuple[float, float, str]:
    b = fresh_map(page, url, "" if hold else "__mmHoldRedraws", settle_ms=1000)
    x, y, w, h = b["x"], b["y"], b["width"], b["height"]
    t0 = time.perf_counter()
    page.mouse.move(x + w * .35, y + h * .35)
    page.mouse.down()
    page.mouse.move(x + w * .6, y + h * .6, steps=10)
    t1 = time.perf_counter()
    page.mouse.up()
    page.get_by_text(re.compile(r"Selected [1-9][\d,]* rows")).first.wait_for()
    idle(page)
    t2 = time.perf_counter()
    text = page.get_by_text(re.compile(r"Selected [\d,]+ rows")).first.inner_text()
    page.locator(".js-plotly-plot").first.screenshot(path=str(shot))
    return t1 - t0, t2 - t1, text.split("(")[0].strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--points", type=int, default=210_000)
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    n = args.points
    work, proc, url = map_alone("map_drag_", n)
    rows = []
    try:
        with sync_playwright() as pw:
            browser, page = open_browser(pw)
            for hold, ratio in ((False, ""), (True, ""), (False, "2")):
                label = ("held" if hold else "not held (plotly as is)") + (
                    f", canvas at {ratio} px per CSS px" if ratio else "")
                drag, after, text = drag_once(page, url + (f"?gl_ratio={ratio}" if ratio else ""),
                                              hold, work / f"hold_{hold}{ratio}.png")
                rows.append((label, drag, after, text))
                print(f"  {label}: drag {drag:.2f} s, release → shown {after:.2f} s; {text}; "
                      f"{load_line()}", flush=True)
            browser.close()
    finally:
        stop_app(proc)
    diff = pixels_differ(work / "hold_False.png", work / "hold_True.png")
    print("\n| redraws during the drag | the drag (s) | release → shown (s) | rows |")
    print("| --- | ---: | ---: | --- |")
    for label, drag, after, text in rows:
        print(f"| {label} | {drag:.2f} | {after:.2f} | {text} |")
    print(f"\nthe drag, not held / held: {rows[0][1] / rows[1][1]:.1f}×; not held, canvas at two "
          f"px / at one: {rows[2][1] / rows[0][1]:.1f}×; the plot after the release, held and "
          f"not: {diff} pixels differ; CPU: {cpu_line()}; {load_line()}")


if __name__ == "__main__":
    main()
