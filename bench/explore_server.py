"""The Explore page's server side at the size of real sets, without a browser: the same page
script (``streamlit.testing.v1.AppTest`` runs ``app.py`` and the page in this process, as the
server's script thread does), timed per step, with this process's resident memory after each
(the server's) and the text worker's (``app.text_encoder``, the process that holds torch).

Splits ``bench/app_scale.py``'s end-to-end figures into the server's part (here) and the
browser's (the rest: in headless Chromium, software WebGL drawing every point).

Usage: ``.venv/bin/python bench/explore_server.py [--workspace WS | --records 150000 --images
50000 --pool 60000] [--keep DIR]``. A workspace built here is embedded first by the background
job's own code (``app.embed.run_job``, vectors from its cache). Nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from app_scale import build_workspace, cpu_line, load_line  # noqa: E402


def rss(pid: int | str = "self") -> tuple[int, int]:
    """(resident, peak resident) MiB of a process."""
    now, peak, _, _ = rss_parts(pid)
    return now, peak


def rss_parts(pid: int | str = "self") -> tuple[int, int, int, int]:
    """(resident, peak resident, anonymous resident, file-backed resident) MiB of a process: the
    file-backed part holds the memory-mapped vectors' pages, which the kernel can drop."""
    want = {"VmRSS:": 0, "VmHWM:": 0, "RssAnon:": 0, "RssFile:": 0}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key = line.split(maxsplit=1)[0] if line else ""
        if key in want:
            want[key] = int(line.split()[1]) // 1024
    return want["VmRSS:"], want["VmHWM:"], want["RssAnon:"], want["RssFile:"]


def worker_rss() -> str:
    from mminstruct.app import text_encoder

    pool = text_encoder._POOL
    procs = list(getattr(pool, "_processes", {}) or {}) if pool is not None else []
    return ", ".join(f"{rss(p)[0]:,} MiB" for p in procs) or "not started"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workspace", default="", help="an embedded workspace (else one is built)")
    ap.add_argument("--records", type=int, default=150_000)
    ap.add_argument("--images", type=int, default=50_000)
    ap.add_argument("--pool", type=int, default=60_000)
    ap.add_argument("--keep", default="", help="build the workspace here and keep it")
    args = ap.parse_args()
    print(f"CPU: {cpu_line()}; {load_line()}", flush=True)
    workdir = None
    if args.workspace:
        ws_root = Path(args.workspace).resolve()
    else:
        workdir = Path(args.keep or tempfile.mkdtemp(prefix="explore_server_"))
        ws_root = build_workspace(workdir, args.records, args.images, args.pool)
    os.environ["MMINSTRUCT_HOME"] = str(ws_root.parent.parent)
    os.environ.setdefault("MMINSTRUCT_CACHE_DIR", str(ws_root.parent.parent / "model_cache"))
    from mminstruct.app.curation import load_embeddings
    from mminstruct.app.workspace import Workspace

    ws = Workspace.open(ws_root)
    if load_embeddings(ws) is None:  # the job in its own process, as the app starts it
        import subprocess

        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "mminstruct.app.embed", str(ws_root)], check=True,
                       cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)))
        print(f"embedding job (vectors from the cache, PCA): {time.perf_counter() - t0:.1f} s",
              flush=True)
    from mminstruct.data import records

    records.forget_parsed()  # as a server that has just started: nothing parsed
    from mminstruct.app import curation

    curation._CURATIONS.clear()
    curation._SCORES.clear()
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=1800)
    at.session_state["ws_path"] = str(ws_root)
    rows: list[tuple[str, float, str]] = []

    def step(label: str, fn) -> None:
        t0 = time.perf_counter()
        fn()
        problems = [e.value for e in at.exception] + [e.value for e in at.error]
        dt = time.perf_counter() - t0
        now, peak, anon, file = rss_parts()
        rows.append((label, dt, f"{now:,} / {peak:,} MiB (anonymous {anon:,}, file-backed "
                                f"{file:,}); text worker {worker_rss()}; {load_line()}"))
        print(f"  {label}: {dt:.2f} s ({rows[-1][2]})" + (f" PROBLEMS {problems}" if problems else ""),
              flush=True)

    step("first page (Data) in a new server", at.run)
    step("first visit to Explore (the job's result read, no image decoded)",
         lambda: at.switch_page("pages/2_explore.py").run())
    step("Explore rerun", at.run)
    step("Explore rerun", at.run)
    n = len(load_embeddings(ws).reference) + len(load_embeddings(ws).candidates)

    def box() -> None:  # what a box over a fifth of the map hands the page
        at.session_state["explore_sel"] = {"rows": list(range(0, n, 5)), "source": "map selection"}
        at.run()
    step(f"rerun with a {n // 5:,}-row selection (gallery)", box)
    for q in ("a pie chart", "a bar chart"):
        def search(q: str = q) -> None:
            at.text_input(key="search_q").set_value(q)
            at.button[[b.label for b in at.button].index("Search")].click().run()
        step(f"text search {q!r}" + (" (the text worker when not cached)" if q == "a pie chart" else ""),
             search)
    kws = list(ws.settings.partition.keywords)
    for i, kw in enumerate(("violin plot", "radar chart")):
        def edit(kw: str = kw, i: int = i) -> None:
            at.text_area(key="kw_text").set_value("\n".join([*kws[:-1], kw])).run()
        step(f"keyword edit → new partition and map ({kw!r}, text worker)", edit)
    step("Explore rerun", at.run)

    def more_like() -> None:  # the gallery's "more like these" from the box's selection
        at.session_state["explore_sel"] = {"rows": list(range(0, n, 5)), "source": "map selection"}
        at.run()
        at.button(key="explore_more:find").click().run()
    step("more like these, K = 24 (first Find builds the pool's index)", more_like)
    step("more like these again", lambda: at.button(key="explore_more:find").click().run())
    step("Partition page", lambda: at.switch_page("pages/3_partition.py").run())
    step("Save the task file", lambda: at.button(key="save_task").click().run())
    step("Prompts page (the task file read)", lambda: at.switch_page("pages/4_prompts.py").run())

    def save_prompts() -> None:
        at.button(key="save_prompts").click().run()
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not any("Saved" in m.value for m in at.success):
            time.sleep(0.2)
            at.run()
    step("Save the prompt file (background thread → saved)", save_prompts)
    step("Generate page", lambda: at.switch_page("pages/5_generate.py").run())
    step("Review page", lambda: at.switch_page("pages/6_review.py").run())
    step("Explore again", lambda: at.switch_page("pages/2_explore.py").run())
    step("Data page again (its parse pushed out by the task file's two, still held by the map)",
         lambda: at.switch_page("pages/1_data.py").run())
    print(f"\nCPU: {cpu_line()}; {load_line()}; {n:,} points\n")
    print("| server step (AppTest, this process) | seconds | resident / peak (its parts), text worker, load |")
    print("| --- | ---: | --- |")
    for label, dt, mem in rows:
        print(f"| {label} | {dt:.2f} | {mem} |")
    from mminstruct.app import text_encoder

    text_encoder.shutdown()
    if workdir is not None and not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
