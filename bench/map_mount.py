"""A new figure on the Explore map (the chart mounted again, as on a page visit or a keyword
edit) with the map's script handing plotly the arrays it already plotted (``ui.charts``'
``CLICK_TO_SELECT_JS``: Streamlit's chart plots a new figure, then hands ``Plotly.react`` the same
figure again as new objects) and without it (the page opts out with
``window.__mmShareReact = false``), in one run, the two taking turns: the map alone
(``bench/map_app.py``, the same ``ui.charts`` code) in headless Chromium, N clustered points,
"Recolour" clicked (every point to the next group: a new figure).

Prints, per case: click → the new figure on screen (the second animation frame after the last
WebGL draw call: the frame that shows it; median and each), and the drawing passes the page made
per click (bursts of draw calls, counted by wrapping ``WebGL*RenderingContext.drawArrays``).
Without a GPU each pass is a software rendering of every point. Nothing is asserted.

With ``--workspace DIR`` (a workspace whose map is cached, such as the one ``bench/app_scale.py
--keep`` leaves), the app itself instead: Data, then Explore clicked (a page visit mounts the
chart), the cases taking turns.

Usage: ``.venv/bin/python bench/map_mount.py [--points 210000] [--rounds 4] [--workspace DIR]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path


REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

from app_scale import (  # noqa: E402
    cpu_line, idle, load_line, open_browser, start_app, start_map_alone, stop_app)

#: counts drawing passes (draw calls more than 100 ms after the last one start a new pass) and
#: notes when the last one was on screen
COUNT_DRAWS_JS = """() => {
  window.__passes = 0;
  if (window.__countDraws) return;
  window.__countDraws = true;
  let last = 0;
  for (const P of [WebGLRenderingContext.prototype, WebGL2RenderingContext.prototype]) {
    const real = P.drawArrays;
    P.drawArrays = function () {
      const now = performance.now();
      if (now - last > 100) window.__passes += 1;
      last = now;
      // drawn: the second animation frame after the draw (the frame that shows it committed)
      if (!window.__framePending) {
        window.__framePending = true;
        requestAnimationFrame(() => requestAnimationFrame(() => {
          window.__drawnAt = performance.now(); window.__framePending = false; }));
      }
      return real.apply(this, arguments);
    };
  }
}"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--points", type=int, default=210_000)
    ap.add_argument("--rounds", type=int, default=4, help="clicks per case (the cases take turns)")
    ap.add_argument("--workspace", help="the app's Explore page on this workspace instead")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    work = Path(tempfile.mkdtemp(prefix="map_mount_"))
    if args.workspace:
        ws = Path(args.workspace).resolve()
        print(f"CPU: {cpu_line()}; {load_line()}; the app on {ws}", flush=True)
        proc, url = start_app("app.py", {"MMINSTRUCT_HOME": str(ws.parent.parent),
                                         "MMINSTRUCT_WORKSPACE": str(ws),
                                         "MMINSTRUCT_CACHE_DIR": str(work / "cache")},
                              work / "streamlit.log")
    else:
        print(f"CPU: {cpu_line()}; {load_line()}; {args.points:,} points", flush=True)
        proc, url = start_map_alone(work, args.points)
    cases = {"arrays handed back (the map's script)": True, "opted out (plotly as Streamlit calls it)": False}
    secs: dict[str, list[float]] = {c: [] for c in cases}
    passes: dict[str, list[int]] = {c: [] for c in cases}
    try:
        with sync_playwright() as pw:
            browser, page = open_browser(pw)
            page.goto(url)
            idle(page)
            if args.workspace:
                page.get_by_role("link", name="Explore", exact=True).click()
            page.locator(".js-plotly-plot").first.wait_for()
            idle(page)
            page.wait_for_timeout(1500)
            for _ in range(args.rounds):
                for label, share in cases.items():
                    if args.workspace:
                        page.get_by_role("link", name="Data", exact=True).click()
                        idle(page)
                        page.wait_for_timeout(500)
                    page.evaluate(COUNT_DRAWS_JS)
                    page.evaluate(f"() => {{ window.__mmShareReact = {'true' if share else 'false'}; }}")
                    t0 = page.evaluate("performance.now()")
                    if args.workspace:
                        page.get_by_role("link", name="Explore", exact=True).click()
                        page.locator(".js-plotly-plot").first.wait_for()
                    else:
                        page.get_by_role("button", name="Recolour").click()
                    page.wait_for_timeout(300)
                    idle(page)
                    page.wait_for_timeout(2000)  # any pass still to come
                    drawn = page.evaluate("window.__drawnAt")
                    secs[label].append((drawn - t0) / 1000)
                    passes[label].append(page.evaluate("window.__passes"))
                    print(f"  {label}: {secs[label][-1]:.2f} s, {passes[label][-1]} drawing "
                          f"pass(es); {load_line()}", flush=True)
            browser.close()
    finally:
        stop_app(proc)
    what = "Explore visited (Data → Explore)" if args.workspace else "a new figure (Recolour)"
    print(f"\n| {what} | click → drawn, median (s) | each (s) | drawing passes |")
    print("| --- | ---: | --- | --- |")
    for label in cases:
        print(f"| {label} | {statistics.median(secs[label]):.2f} | "
              f"{', '.join(f'{s:.2f}' for s in secs[label])} | {passes[label]} |")
    a, b = (statistics.median(secs[c]) for c in cases)
    print(f"\nopted out / handed back: {b / a:.2f}×; CPU: {cpu_line()}; {load_line()}")


if __name__ == "__main__":
    main()
