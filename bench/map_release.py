"""A box released over the Explore map: plotly's redraw on release drawn at once (the page opts
out with ``window.__mmRedrawAfterRun = false``) or after the server's run that the release asked
for, its page painted (what the map's script does, ``ui.charts.CLICK_TO_SELECT_JS``), alternated
in one run: the map alone (``bench/map_app.py``, the same ``ui.charts`` code as Explore, no
gallery) in headless Chromium, N clustered points. ``bench/app_scale.py`` measures the same
release in the app, gallery included.

Prints, per case and repetition: mouse up → the browser's message to the server, → the selected
rows shown (the server's run done), → the page idle, the WebGL redraws of the map after the
release, the rows selected; then the medians side by side, and how many pixels of the plot area
differ between the two cases' last screenshots. Nothing is asserted.

Usage: ``.venv/bin/python bench/map_release.py [--points 210000] [--repeats 4]``.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from pathlib import Path


REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

import app_scale  # noqa: E402
from app_scale import (  # noqa: E402
    cpu_line, fresh_map, idle, load_line, map_alone, open_browser, pixels_differ, stop_app,
    watch_server)

COUNT_DRAWS = """() => { const gd = document.querySelector('.js-plotly-plot');
    const scene = gd._fullLayout._plots.xy._scene, real = scene.__mmHeld_draw || scene.draw;
    window.__draws = 0; delete scene.__mmHeld_draw;
    scene.draw = function () { window.__draws++; return real.apply(this, arguments); }; }"""


def release_once(page, url: str, wait: bool, frac: tuple, shot: Path) -> tuple:
    b = fresh_map(page, url, "" if wait else "__mmRedrawAfterRun")
    page.evaluate(COUNT_DRAWS)
    x, y, w, h = b["x"], b["y"], b["width"], b["height"]
    page.mouse.move(x + w * frac[0], y + h * frac[1])
    page.mouse.down()
    page.mouse.move(x + w * frac[2], y + h * frac[3], steps=10)
    page.wait_for_timeout(300)
    app_scale.ASKED.clear()
    t0 = time.perf_counter()
    page.mouse.up()
    page.get_by_text(re.compile(r"Selected [1-9][\d,]* rows")).first.wait_for()
    t1 = time.perf_counter()
    idle(page)
    t2 = time.perf_counter()
    asked = min(app_scale.ASKED) - t0 if app_scale.ASKED else float("nan")
    text = page.get_by_text(re.compile(r"Selected [\d,]+ rows")).first.inner_text()
    draws = page.evaluate("window.__draws")
    page.locator(".js-plotly-plot").first.screenshot(path=str(shot))
    return asked, t1 - t0, t2 - t0, draws, text.split("(")[0].strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--points", type=int, default=210_000)
    ap.add_argument("--repeats", type=int, default=4)
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    n = args.points
    work, proc, url = map_alone("map_release_", n)
    got: dict[bool, list[tuple]] = {False: [], True: []}
    boxes = [(0.35, 0.35, 0.6, 0.6), (0.2, 0.5, 0.45, 0.8), (0.5, 0.2, 0.8, 0.45)]
    try:
        with sync_playwright() as pw:
            browser, page = open_browser(pw)
            watch_server(page)
            for i in range(args.repeats):
                for wait in (False, True):
                    frac = boxes[i % len(boxes)]
                    out = release_once(page, url, wait, frac, work / f"wait_{wait}.png")
                    got[wait].append(out)
                    label = "after the run" if wait else "at once"
                    print(f"  {i + 1}. redraw {label}: asked {out[0]:.2f} s, shown {out[1]:.2f} s, "
                          f"idle {out[2]:.2f} s, {out[3]} redraw(s); {out[4]}; {load_line()}",
                          flush=True)
            browser.close()
    finally:
        stop_app(proc)
    diff = pixels_differ(work / "wait_False.png", work / "wait_True.png")

    def med(wait: bool, k: int) -> float:
        return statistics.median(r[k] for r in got[wait])
    print(f"\n| mouse up → (median of {args.repeats}) | redraw at once | redraw after the run "
          "| ratio |")
    print("| --- | ---: | ---: | ---: |")
    for k, label in ((0, "the browser's message sent"), (1, "selected rows shown"),
                     (2, "page idle")):
        print(f"| {label} | {med(False, k):.2f} s | {med(True, k):.2f} s | "
              f"{med(False, k) / med(True, k):.2f}× |")
    print(f"| WebGL redraws after the release | {med(False, 3):.0f} | {med(True, 3):.0f} | |")
    print(f"\nthe plot after the last release, the two cases: {diff} pixels differ (the same "
          f"box); CPU: {cpu_line()}; {load_line()}")


if __name__ == "__main__":
    main()
