"""The app's speed targets, measured (figures printed; nothing asserted).

1. First page: ``streamlit run app.py`` started → the Data page's "Open the demo" button visible in
   Chromium (Playwright, the browser launched beforehand so its start is not counted); also the
   server's health endpoint, and the first script run alone (AppTest in a fresh process).
   Target: < 3 s.
2. A keyword edit: the partition the Partition page recomputes (``curation.curate``: similarity,
   argmax, margins, exclusions, manual choices) over 100,000 cached embeddings (512-d, float16)
   × 10 keywords. Target: < 300 ms. The keyword's text vector is cached on disk; a new keyword
   costs one text-encoder forward (measured with the demo CLIP when its checkpoint is present).
3. "Open the demo": the click → the loaded Data page in Chromium (the demo's 150 reference and
   600 candidate charts drawn), then → Explore's map; and the "missing ScriptRunContext"
   warnings the server logs meanwhile. Target: < 30 s on 2 cores.
4. UMAP of 10,000 points: computed once in a fresh process (numba compiles), then the cached call
   in another fresh process. Target: < 30 s once.

Usage: ``.venv/bin/python bench/app_speed.py [--points 100000] [--keywords 10] [--umap 10000]``
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
CHROMIUM = "/usr/bin/chromium"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, poll: float, timeout: float = 300.0) -> None:
    """Until the streamlit server at ``url`` answers its health check."""
    deadline = time.perf_counter() + timeout
    while True:
        try:
            urllib.request.urlopen(url + "/_stcore/health", timeout=1).read()
            return
        except OSError:
            if time.perf_counter() > deadline:
                raise RuntimeError(f"no streamlit server at {url} after {timeout:.0f} s") from None
            time.sleep(poll)


def first_page(home: Path, script: str = "app.py", label: str = "") -> dict[str, float]:
    """``streamlit run script`` → its "Open the demo" button in Chromium."""
    env = {k: v for k, v in os.environ.items() if k != "MMINSTRUCT_WORKSPACE"}
    env["MMINSTRUCT_HOME"] = str(home)
    out: dict[str, float] = {}
    port = _free_port()
    cmd = [sys.executable, "-m", "streamlit", "run", script, "--server.port", str(port),
           "--server.address", "127.0.0.1", "--server.headless", "true",
           "--browser.gatherUsageStats", "false"]
    url = f"http://127.0.0.1:{port}"
    browser = pw = None
    if Path(CHROMIUM).exists():
        from playwright.sync_api import sync_playwright

        pw = sync_playwright().start()
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-background-networking", "--disable-gpu",
            "--disable-dev-shm-usage"])
        page = browser.new_page()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_healthy(url, 0.02)
        out[f"{label}server healthy"] = time.perf_counter() - t0
        if browser is not None:
            page.goto(url)
            page.get_by_role("button", name="Open the demo").wait_for(timeout=60_000)
            out[f"{label}first page rendered (browser)"] = time.perf_counter() - t0
            t1 = time.perf_counter()
            page.reload()
            page.get_by_role("button", name="Open the demo").wait_for(timeout=60_000)
            out[f"{label}reload, server warm"] = time.perf_counter() - t1
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        if browser is not None:
            browser.close()
            pw.stop()
    if script != "app.py":
        return out
    code = ("import time; t=time.perf_counter()\n"
            "from streamlit.testing.v1 import AppTest\n"
            f"at = AppTest.from_file({str(REPO / 'app.py')!r}, default_timeout=60)\n"
            "t1=time.perf_counter(); at.run(); t2=time.perf_counter()\n"
            "assert not at.exception\n"
            "print(t2 - t1, t2 - t)\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=120)
    run_s, total_s = (float(x) for x in res.stdout.split()[-2:])
    out["first script run (AppTest)"] = run_s
    out["import streamlit + first script run"] = total_s
    return out


def open_demo(home: Path, size: str = "") -> dict[str, float]:
    """``streamlit run app.py`` (first page shown) → click "Open the demo" → the Data page shows
    the loaded demo ("Data loaded", its validation report): the time a user waits. Also counts
    the "missing ScriptRunContext" warnings the server logs meanwhile. ``size``: the demo size
    (``RxC``; empty: the demo's own 150 × 600)."""
    if not Path(CHROMIUM).exists():
        return {}
    from playwright.sync_api import sync_playwright

    env = {k: v for k, v in os.environ.items() if k not in ("MMINSTRUCT_WORKSPACE",
                                                            "MMINSTRUCT_DEMO_SIZE")}
    env["MMINSTRUCT_HOME"] = str(home)
    if size:
        env["MMINSTRUCT_DEMO_SIZE"] = size
    port = _free_port()
    log_path = home / "server.log"
    url = f"http://127.0.0.1:{port}"
    out: dict[str, float] = {}
    with open(log_path, "w") as log, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-background-networking", "--disable-gpu",
            "--disable-dev-shm-usage"])
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
             "--server.address", "127.0.0.1", "--server.headless", "true",
             "--browser.gatherUsageStats", "false"],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            _wait_healthy(url, 0.05)
            page = browser.new_page()
            page.goto(url)
            button = page.get_by_role("button", name="Open the demo")
            button.wait_for(timeout=60_000)
            t0 = time.perf_counter()
            button.click()
            page.get_by_text("Data loaded").wait_for(timeout=300_000)
            out["open the demo → the loaded Data page"] = time.perf_counter() - t0
            page.get_by_role("link", name="Explore", exact=True).click()
            page.locator(".js-plotly-plot").first.wait_for(timeout=600_000)
            out["→ Explore's map drawn (first embedding + projection)"] = time.perf_counter() - t0
        finally:
            proc.terminate()
            proc.wait(timeout=20)
            browser.close()
    text = log_path.read_text(errors="replace")
    shutil.copy(log_path, Path(tempfile.gettempdir()) / "mminstruct_open_demo_server.log")
    out["'missing ScriptRunContext' warnings (count)"] = float(text.count("missing ScriptRunContext"))
    return out


def keyword_edit(n: int, k: int, dim: int = 512, repeats: int = 7) -> dict[str, float]:
    from mminstruct.app.curation import Embeddings, ImageSet, curate
    from mminstruct.app.workspace import Workspace

    rng = np.random.default_rng(0)
    n_ref = min(2_000, n // 10)
    centres = rng.normal(size=(k, dim)).astype(np.float32)

    def vecs(m: int) -> np.ndarray:
        x = centres[rng.integers(0, k, m)] + 0.8 * rng.normal(size=(m, dim)).astype(np.float32)
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)

    ref = ImageSet("reference", [f"images/{i}.jpg" for i in range(n_ref)], [], vecs(n_ref),
                   list(range(n_ref)))
    cand = ImageSet("candidate", [f"pool/{i}.jpg" for i in range(n - n_ref)], [], vecs(n - n_ref))
    emb = Embeddings("bench", None, Path("."), ref, cand, [])  # type: ignore[arg-type]
    kw = centres / np.linalg.norm(centres, axis=1, keepdims=True)
    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace.open(Path(tmp) / "ws", create=True)
        p = ws.settings.partition
        p.keywords = [f"keyword {j}" for j in range(k)]
        p.excluded_candidates = [f"pool/{i}.jpg" for i in range(0, n - n_ref, 100)]
        p.manual_candidates = {f"pool/{i}.jpg": "keyword 0" for i in range(1, 2_000, 20)}
        p.excluded_reference = list(range(0, n_ref, 50))
        out = {}
        for label, top_k in (("argmax", None), ("top-K (K=500)", 500)):
            p.candidates_per_keyword = top_k
            curate(ws, emb, kw)  # warm
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                curate(ws, emb, kw)
                times.append(time.perf_counter() - t)
            out[f"partition {n:,} × {k} keywords, {label}"] = float(np.median(times))
    return out


def new_keyword_text_vector() -> dict[str, float]:
    from mminstruct.embed.clip import embed_keywords, load_clip
    from mminstruct.demo import DEMO_MODEL, model_files
    from mminstruct.errors import ModelSpecError

    try:
        model_files()
    except ModelSpecError:
        return {}
    with tempfile.TemporaryDirectory() as tmp:
        load_clip(DEMO_MODEL)
        t = time.perf_counter()
        embed_keywords(["a brand new keyword"], DEMO_MODEL, cache=tmp)
        new = time.perf_counter() - t
        t = time.perf_counter()
        embed_keywords(["a brand new keyword"], DEMO_MODEL, cache=tmp)
        cached = time.perf_counter() - t
    return {"new keyword's text vector (demo CLIP, loaded)": new,
            "same keyword again (disk cache)": cached}


def umap_once(n: int, dim: int = 512) -> dict[str, float]:
    cache = Path(tempfile.mkdtemp(prefix="umap_bench_"))
    code = ("import time, numpy as np\n"
            "from mminstruct.app.projection import project_2d\n"
            "rng = np.random.default_rng(0)\n"
            f"c = rng.normal(size=(12, {dim})).astype(np.float32)\n"
            f"x = c[rng.integers(0, 12, {n})] + 0.7 * rng.normal(size=({n}, {dim})).astype(np.float32)\n"
            "x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)\n"
            "t = time.perf_counter()\n"
            f"project_2d(x, 'umap', cache_dir={str(cache)!r})\n"
            "print(time.perf_counter() - t)\n")
    try:
        first = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                               text=True, timeout=600)
        again = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                               text=True, timeout=600)
        return {f"UMAP {n:,} points, first call in a new process": float(first.stdout.split()[-1]),
                f"UMAP {n:,} points, cached call in a new process": float(again.stdout.split()[-1])}
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=100_000)
    ap.add_argument("--keywords", type=int, default=10)
    ap.add_argument("--umap", type=int, default=10_000)
    ap.add_argument("--demo-size", default="", help="RxC for the 'open the demo' measure")
    ap.add_argument("--skip", nargs="*", default=[],
                    choices=["page", "demo", "partition", "umap"])
    args = ap.parse_args()
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    rows: list[tuple[str, float, str]] = []
    if "page" not in args.skip:
        with tempfile.TemporaryDirectory() as home:
            rows += [(k, v, "< 3 s") for k, v in first_page(Path(home)).items()]
            # the floor on this machine: a one-button Streamlit script, measured the same way
            hello = Path(home) / "hello.py"
            hello.write_text("import streamlit as st\nst.button('Open the demo')\n")
            rows += [(k, v, "baseline") for k, v in
                     first_page(Path(home), str(hello), "one-button app: ").items()]
    if "demo" not in args.skip:
        with tempfile.TemporaryDirectory() as home:
            rows += [(k, v, "< 30 s" if "Data page" in k else "") for k, v in
                     open_demo(Path(home), args.demo_size).items()]
    if "partition" not in args.skip:
        rows += [(k, v, "< 0.3 s") for k, v in keyword_edit(args.points, args.keywords).items()]
        rows += [(k, v, "") for k, v in new_keyword_text_vector().items()]
    if "umap" not in args.skip:
        rows += [(k, v, "< 30 s" if "first" in k else "") for k, v in umap_once(args.umap).items()]
    width = max(len(r[0]) for r in rows)
    print(f"{'measure'.ljust(width)}  {'seconds':>9}  target")
    for name, value, target in rows:
        print(f"{name.ljust(width)}  {value:9.3f}  {target}")
    print(f"machine load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
