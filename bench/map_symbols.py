"""The Explore map's WebGL redraw with each kind's marker: reference circles and candidate
diamonds (``ui.charts.MARKERS``' symbols at the big map's former sizes, 5 and 4 px) against
circles only (``ui.charts.MARKERS_BIG``: 5 and 3 px), in one run: the map alone
(``bench/map_app.py``, the same ``ui.charts`` code and Streamlit's own plotly bundle) in headless
Chromium, N clustered points, half of them of each kind.

Each case is one fresh page; once the map is drawn, the page redraws plotly's WebGL scene ``--reps``
times, each waited for to its end (a one-pixel ``readPixels`` after the draw), the cases taking
turns. Prints each case's median and all its redraws, and the ratio of the medians. Without a GPU
(Chromium renders WebGL in software) a redraw is what a new figure, a box released or a page
visit waits for; nothing is asserted.

Usage: ``.venv/bin/python bench/map_symbols.py [--points 210000] [--reps 6]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path


REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO))

from app_scale import (  # noqa: E402
    cpu_line, idle, load_line, map_alone, open_browser, stop_app)

from ui.charts import MARKERS, MARKERS_BIG  # noqa: E402

#: the big map's markers before circles only: MARKERS' symbols at 5 and 4 px
BEFORE = {"reference": (MARKERS["reference"][0], 5), "candidate": (MARKERS["candidate"][0], 4)}
CASES = {"circles and diamonds (before)": BEFORE, "circles only (MARKERS_BIG)": MARKERS_BIG}

REDRAW_JS = """async (reps) => {
  const gd = document.querySelector('.js-plotly-plot');
  const scene = gd._fullLayout._plots.xy._scene;
  const gl = gd._fullLayout._glcanvas.data()[0].regl._gl;
  const px = new Uint8Array(4), out = [];
  for (let i = 0; i < reps; i++) {
    await new Promise(r => setTimeout(r, 50));
    const t0 = performance.now();
    scene.draw();
    gl.readPixels(0, 0, 1, 1, gl.RGBA, gl.UNSIGNED_BYTE, px);
    out.push(performance.now() - t0);
  }
  return out;
}"""


def query(markers: dict[str, tuple[str, int]]) -> str:
    return "?markers=" + ",".join(f"{symbol}:{size}" for symbol, size in markers.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--points", type=int, default=210_000)
    ap.add_argument("--reps", type=int, default=6, help="redraws per case and round")
    ap.add_argument("--rounds", type=int, default=3, help="rounds (each case once a round)")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    n = args.points
    work, proc, url = map_alone("map_symbols_", n)
    times: dict[str, list[float]] = {label: [] for label in CASES}
    try:
        with sync_playwright() as pw:
            browser, page = open_browser(pw)
            for _ in range(args.rounds):
                for label, markers in CASES.items():
                    page.goto(url + query(markers))
                    page.reload()  # a URL differing only in its query: a fresh page all the same
                    page.locator(".js-plotly-plot").first.wait_for()
                    idle(page)
                    page.wait_for_timeout(1000)
                    times[label] += page.evaluate(REDRAW_JS, args.reps)
                    print(f"  {label}: {[round(t) for t in times[label][-args.reps:]]} ms; "
                          f"{load_line()}", flush=True)
            browser.close()
    finally:
        stop_app(proc)
    print("\n| markers (reference, candidate) | median redraw (ms) | redraws (ms) |")
    print("| --- | ---: | --- |")
    for label, ts in times.items():
        print(f"| {label}: {', '.join(f'{s} {p}px' for s, p in CASES[label].values())} "
              f"| {statistics.median(ts):.0f} | {', '.join(f'{t:.0f}' for t in sorted(ts))} |")
    a, b = (statistics.median(ts) for ts in times.values())
    print(f"\nbefore / circles only: {a / b:.2f}×; CPU: {cpu_line()}; {load_line()}")


if __name__ == "__main__":
    main()
