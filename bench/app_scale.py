"""The app at the size of real instruction sets, driven in Chromium as a person would.

1. Builds a synthetic workspace: a LLaVA file of ``--records`` records over ``--images`` images
   and a candidate pool of ``--pool`` images (every image file a hard link to one tiny PNG: the
   embedding speed is bench/embed_throughput.py's business), a 512-d CLIP with seeded random
   weights (its text tower is small, so a text query's own encoding is a few ms), and one
   clustered fake vector per image placed in the workspace's embedding cache.
2. Starts ``streamlit run app.py`` on it and, in Chromium (Playwright), times: the first visit to
   Explore (load, vectors from the cache, PCA), a rerun of Explore with the projection cached, a
   box drawn with the mouse → the gallery, a text search, "more like these" K = ``--k``, a keyword
   edit → the recoloured map, "Save the task file" and "Save the prompt file". The number of rows
   the box selected is checked against numpy over the cached projection.
3. The map alone at ``--big`` points (``bench/map_app.py``: the same ``ui.charts`` code over a
   synthetic projection): drawn, then a box → the count selected, checked against numpy.

Prints one table: seconds per step, the server's and the browser's peak resident memory, the
CPU and the load average. Nothing is asserted.

Usage: ``.venv/bin/python bench/app_scale.py [--records 150000 --images 50000 --pool 60000]
[--big 1000000] [--keep DIR]`` (smaller sizes for a quick run, e.g. ``--records 3000 --images 1000
--pool 1000 --big 20000``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
CHROMIUM = "/usr/bin/chromium"
KEYWORDS = ["bar chart", "line chart", "pie chart", "scatter plot", "table", "map", "diagram",
            "photo", "screenshot", "document"]
def cpu_line() -> str:
    model = "?"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name"):
                model = line.split(":", 1)[1].strip()
        flags = Path("/proc/cpuinfo").read_text()
        bf16 = "avx512_bf16" in flags
    except OSError:
        bf16 = False
    return f"{model}, {os.cpu_count()} CPUs, avx512_bf16={'yes' if bf16 else 'no'}"


def load_line() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


# ----------------------------------------------------------------------------------------------
# The workspace


def _tiny_clip_512(folder: Path) -> str:
    import open_clip
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    config = {"embed_dim": 512,
              "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "head_width": 32,
                             "patch_size": 16},
              "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2,
                           "layers": 1}}
    cfg = folder / "mmi-bench-512.json"
    cfg.write_text(json.dumps(config))
    open_clip.add_model_config(cfg)
    torch.manual_seed(0)
    model = open_clip.create_model("mmi-bench-512", pretrained=None)
    ckpt = folder / "bench512.pt"
    torch.save(model.state_dict(), ckpt)
    return f"{cfg}:{ckpt}"


def fake_vectors(n: int, dim: int, seed: int, clusters: int = 24) -> np.ndarray:
    """Unit float16 vectors around ``clusters`` random centres (a map with structure)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    out = np.empty((n, dim), np.float16)
    for start in range(0, n, 50_000):
        m = min(50_000, n - start)
        v = centres[rng.integers(0, clusters, m)] + 0.6 * rng.normal(size=(m, dim)).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        out[start:start + m] = v
    return out


def build_workspace(root: Path, n_records: int, n_images: int, n_pool: int,
                    dim: int = 512) -> Path:
    from mminstruct.app.workspace import DataSettings, PartitionSettings, Workspace
    from mminstruct.cache import file_fingerprint
    from mminstruct.embed.clip import EmbeddingCache, parse_model_spec

    t0 = time.perf_counter()
    data = root / "data"
    (data / "images").mkdir(parents=True)
    (data / "pool").mkdir()
    from PIL import Image

    sources: list[Path] = []  # a file system allows some 65,000 links to one file: one per 50,000
    images = [data / "images" / f"img_{i:07d}.png" for i in range(n_images)]
    pool = [data / "pool" / f"cand_{i:07d}.png" for i in range(n_pool)]
    for i, p in enumerate(images + pool):
        if i % 50_000 == 0:
            sources.append(data / f"one_{len(sources)}.png")
            Image.new("RGB", (8, 8), (128, 128, 128)).save(sources[-1])
        os.link(sources[-1], p)
    records = [{"id": str(i), "image": images[i % n_images].name,
                "conversations": [{"from": "human", "value": f"<image>\nWhat does chart {i} show?"},
                                  {"from": "gpt", "value": f"Chart {i} shows a trend."}]}
               for i in range(n_records)]
    (data / "llava.json").write_text(json.dumps(records))
    spec = _tiny_clip_512(root / "model")
    ws = Workspace.open(root / "home" / "workspaces" / "scale", create=True)
    ws.settings.data = DataSettings(input_folder=str(data), data_file=str(data / "llava.json"),
                                    image_folder="images", candidate_folder="pool")
    ws.settings.partition = PartitionSettings(clip_model=spec, keywords=KEYWORDS[:8],
                                              projection="pca")
    ws.save()
    ec = EmbeddingCache(ws.cache_dir, parse_model_spec(spec).identity(ws.cache_dir))
    files = images + pool
    for start in range(0, len(files), 20_000):
        chunk = files[start:start + 20_000]
        vecs = fake_vectors(len(chunk), dim, seed=start)
        ec.vectors.put_many((ec.image_key(file_fingerprint(p)), v) for p, v in zip(chunk, vecs))
    print(f"workspace: {n_records:,} records over {n_images:,} images + {n_pool:,} candidates "
          f"built in {time.perf_counter() - t0:.1f} s ({load_line()})", flush=True)
    return ws.root


# ----------------------------------------------------------------------------------------------
# The app and the browser


class PeakRss:
    """Peak resident memory (VmHWM) of a process and, separately, of chromium's processes."""

    def __init__(self, pid: int):
        self.pid, self.server, self.browser, self._stop = pid, 0, 0, False
        self.step = 0  # the server's peak since the last ``step_peak()``
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    @staticmethod
    def _rss(pid: int) -> int:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    @staticmethod
    def _own_chromium() -> list[int]:
        """The chromium processes this benchmark started (descendants of this process)."""
        parent: dict[int, int] = {}
        chrome: set[int] = set()
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                stat = (d / "stat").read_text()
                parent[int(d.name)] = int(stat.rsplit(")", 1)[1].split()[1])
                if b"chrom" in (d / "cmdline").read_bytes()[:300]:
                    chrome.add(int(d.name))
            except (OSError, ValueError, IndexError):
                continue
        me, out = os.getpid(), []
        for pid in chrome:
            p, seen = pid, 0
            while p > 1 and seen < 64:
                p, seen = parent.get(p, 0), seen + 1
                if p == me:
                    out.append(pid)
                    break
        return out

    def step_peak(self) -> int:
        """The server's peak resident memory since the last call (or the start)."""
        peak, self.step = max(self.step, self._rss(self.pid)), 0
        return peak

    def _run(self) -> None:
        while not self._stop:
            rss = self._rss(self.pid)
            self.server, self.step = max(self.server, rss), max(self.step, rss)
            self.browser = max(self.browser, sum(self._rss(p) for p in self._own_chromium()))
            time.sleep(0.25)

    def stop(self) -> None:
        self._stop = True


def start_app(script: str, env_extra: dict[str, str], log: Path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
    env.update(env_extra, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", script, "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true",
         "--browser.gatherUsageStats", "false", "--server.maxMessageSize", "1000"],
        cwd=REPO, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT,
        start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(url + "/_stcore/health", timeout=1).read()
            return proc, url
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(log.read_text()[-3000:]) from None
            time.sleep(0.2)


def start_map_alone(work: Path, n: int):
    """``bench/map_app.py`` (the Explore map alone) on ``n`` points in 30 clusters, 10 groups,
    written to ``work`` as ``xy.npy`` and ``groups.npy``: (proc, url)."""
    rng = np.random.default_rng(1)
    centres = rng.normal(scale=6, size=(30, 2))
    lab = rng.integers(0, 30, n)
    np.save(work / "xy.npy", (centres[lab] + rng.normal(size=(n, 2))).astype(np.float32))
    np.save(work / "groups.npy", (lab % 10).astype(np.int64))
    return start_app("bench/map_app.py", {"MMI_MAP_XY": str(work / "xy.npy"),
                                          "MMI_MAP_GROUPS": str(work / "groups.npy")},
                     work / "streamlit.log")


def map_alone(prefix: str, n: int):
    """A new work folder (``prefix``) and ``start_map_alone`` on ``n`` points in it, the CPU line
    printed first: (work, proc, url)."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    print(f"CPU: {cpu_line()}; {load_line()}; {n:,} points", flush=True)
    return (work, *start_map_alone(work, n))


def fresh_map(page, url: str, opt_out: str = "", settle_ms: int = 800) -> dict:
    """The map alone on a page loaded afresh (no selection), ``window[opt_out] = false`` set when
    given (the map's script reads such switches), the box tool picked: the plot area's box."""
    page.goto(url)
    page.reload()  # a URL differing only in its query: a fresh page all the same
    page.locator(".js-plotly-plot").first.wait_for()
    idle(page)
    if opt_out:
        page.evaluate(f"() => {{ window[{opt_out!r}] = false; }}")
    page.wait_for_timeout(settle_ms)
    page.locator(".modebar-btn[data-title='Box Select']").first.click()
    return page.locator(".nsewdrag").first.bounding_box()


def stop_app(proc) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()


def pixels_differ(a: Path, b: Path) -> int:
    """How many pixels differ between two screenshots (-1: not the same size)."""
    from PIL import Image, ImageChops

    one, two = (Image.open(p).convert("RGB") for p in (a, b))
    if one.size != two.size:
        return -1
    return int(np.asarray(ImageChops.difference(one, two)).any(axis=2).sum())


def open_browser(pw):
    """(browser, page): headless Debian chromium, a 1400×1000 page, 10-minute timeouts."""
    browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
        "--no-sandbox", "--disable-background-networking", "--disable-dev-shm-usage"])
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(600_000)
    return browser, page


#: arrival times of the app's websocket messages (``watch_server``): the server's part of a step
#: ends with the last message it sends (the script run's end); the rest is the browser's
FRAMES: list[float] = []
ASKED: list[float] = []  # the browser's messages to the server (a rerun asked for)
RUN = {"running": False}  # a script run asked for (or begun) and not yet finished
WATCHED: list = []


def _as_bytes(payload) -> bytes:
    return payload if isinstance(payload, bytes) else payload.encode("latin-1")


def watch_server(page) -> None:
    """Record the websocket's messages (their arrival times), and follow the server's script
    runs: a rerun asked for (or a new run begun) until its ``script_finished``, not counting one
    that ended only to run again."""
    from streamlit.proto.BackMsg_pb2 import BackMsg
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

    def received(payload) -> None:
        FRAMES.append(time.perf_counter())
        msg = ForwardMsg()
        msg.ParseFromString(_as_bytes(payload))
        kind = msg.WhichOneof("type")
        if kind == "new_session":
            RUN["running"] = True
        elif kind == "script_finished":
            RUN["running"] = msg.script_finished == ForwardMsg.FINISHED_EARLY_FOR_RERUN

    def sent(payload) -> None:
        ASKED.append(time.perf_counter())
        msg = BackMsg()
        msg.ParseFromString(_as_bytes(payload))
        if msg.WhichOneof("type") == "rerun_script":
            RUN["running"] = True

    def hook(ws) -> None:
        ws.on("framereceived", received)
        ws.on("framesent", sent)
    page.on("websocket", hook)
    WATCHED.append(page)


def idle(page, timeout: float = 600_000) -> None:
    """The page idle: Streamlit's status widget gone and, on a page ``watch_server`` watches,
    every script run asked for finished (the widget only shows a run after a moment, so alone it
    calls a page idle whose run is still going: the next step's click then waits for it)."""
    page.wait_for_timeout(150)
    status = page.locator("[data-testid=stStatusWidget]")
    status.wait_for(state="detached", timeout=timeout)
    if page in WATCHED:
        end = time.perf_counter() + timeout / 1000
        while RUN["running"] and time.perf_counter() < end:
            page.wait_for_timeout(20)
        status.wait_for(state="detached", timeout=timeout)


def server_part(t0: float, t1: float) -> str:
    got = [t for t in FRAMES if t0 <= t <= t1]
    asked = [t for t in ASKED if t0 <= t <= t1]
    if not got:
        return "no message"
    first = f"browser asked at {min(asked) - t0:.2f} s, " if asked else ""
    return f"{first}server's last message at {max(got) - t0:.2f} s"


ACTIVE: list[PeakRss] = []  # the app's memory watch while it is driven


def step_note(extra: str = "") -> str:
    """The load average, the server's peak resident memory during the step, and ``extra``."""
    peak = f"; server peak {ACTIVE[-1].step_peak() / 2**20:,.0f} MiB" if ACTIVE else ""
    return f"{load_line()}{peak}" + (f"; {extra}" if extra else "")


def timed(label: str, results: list, fn) -> object:
    if ACTIVE:
        ACTIVE[-1].step_peak()  # the step's peak from here
    t0 = time.perf_counter()
    out = fn()
    t1 = time.perf_counter()
    results.append((label, t1 - t0, step_note(server_part(t0, t1))))
    print(f"  {label}: {results[-1][1]:.2f} s ({results[-1][2]})", flush=True)
    return out


#: the map's next redraw: ``window.__mmRedrawn`` is the time (``performance.now()``) of the frame
#: after the one that shows it (without a GPU, a WebGL redraw is read back at the next frame)
REDRAWN = """() => { const gd = document.querySelector('.stPlotlyChart .js-plotly-plot');
    const scene = gd._fullLayout._plots.xy._scene, real = scene.__mmHeld_draw || scene.draw;
    window.__mmRedrawn = 0; delete scene.__mmHeld_draw;
    scene.draw = function () { const out = real.apply(this, arguments);
      if (!window.__mmRedrawn) requestAnimationFrame(() => requestAnimationFrame(() => {
        window.__mmRedrawn = window.__mmRedrawn || performance.now(); }));
      return out; }; }"""
#: every thumbnail of the gallery loaded (36 on a full page)
GALLERY_LOADED = """() => { const ims = [...document.querySelectorAll('[data-testid=stImage] img')];
    return ims.length > 0 && ims.every((i) => i.complete && i.naturalWidth > 0); }"""


def box_drag(page, fx0: float, fy0: float, fx1: float, fy1: float) -> None:
    """Draw a box with the mouse over the chart's plot area (fractions of its width/height)."""
    page.locator(".modebar-btn[data-title='Box Select']").first.click()
    box = page.locator(".nsewdrag").first.bounding_box()
    x, y, w, h = box["x"], box["y"], box["width"], box["height"]
    page.mouse.move(x + w * fx0, y + h * fy0)
    page.mouse.down()
    page.mouse.move(x + w * fx1, y + h * fy1, steps=10)
    page.mouse.up()


def rows_in_pixel_box(page, xy: np.ndarray, fx0, fy0, fx1, fy1) -> int:
    """How many rows of ``xy`` lie in the box those fractions of the plot area span (the axes'
    ranges read from plotly in the page)."""
    rng = page.evaluate("""() => { const gd = document.querySelector('.js-plotly-plot');
        return [gd._fullLayout.xaxis.range, gd._fullLayout.yaxis.range]; }""")
    (xa, xb), (ya, yb) = rng
    x0, x1 = xa + (xb - xa) * fx0, xa + (xb - xa) * fx1
    y0, y1 = yb - (yb - ya) * fy0, yb - (yb - ya) * fy1
    lo_x, hi_x, lo_y, hi_y = min(x0, x1), max(x0, x1), min(y0, y1), max(y0, y1)
    return int(((xy[:, 0] >= lo_x) & (xy[:, 0] <= hi_x) & (xy[:, 1] >= lo_y)
                & (xy[:, 1] <= hi_y)).sum())


def selection_count(page) -> int:
    text = page.get_by_text(re.compile(r"Selection · [\d,]+ image")).first.inner_text()
    return int(re.search(r"Selection · ([\d,]+)", text).group(1).replace(",", ""))


def drive_app(ws_root: Path, k: int, results: list, notes: list, workdir: Path) -> PeakRss:
    from playwright.sync_api import sync_playwright

    proc, url = start_app("app.py", {"MMINSTRUCT_HOME": str(ws_root.parent.parent),
                                     "MMINSTRUCT_WORKSPACE": str(ws_root),
                                     "MMINSTRUCT_CACHE_DIR": str(workdir / "cache")},
                          workdir / "streamlit.log")
    mem = PeakRss(proc.pid)
    ACTIVE.append(mem)
    try:
        with sync_playwright() as pw:
            browser, page = open_browser(pw)
            watch_server(page)
            page.goto(url)
            idle(page)
            chart = page.locator("[data-testid=stPlotlyChart] .js-plotly-plot")

            def open_explore():
                page.get_by_role("link", name="Explore", exact=True).click()
                chart.first.wait_for()
                idle(page)
            timed("first visit to Explore (load, cached vectors, PCA, map drawn)", results,
                  open_explore)
            page.get_by_role("link", name="Data", exact=True).click()
            idle(page)
            timed("Explore again (projection cached): page run + map drawn", results, open_explore)
            caption = page.get_by_text(re.compile(r"All [\d,]+ points drawn")).first.inner_text()
            notes.append(caption.split("·")[0].strip())

            xy = np.load(sorted((ws_root / "cache" / "projections").glob("projection-pca-*.npy"))[0])
            chart.first.scroll_into_view_if_needed()
            page.wait_for_timeout(500)
            frac = (0.40, 0.40, 0.52, 0.52)

            parts: list[float] = []

            def box():
                t0 = time.perf_counter()
                page.evaluate(REDRAWN)
                box_drag(page, *frac)
                t1 = time.perf_counter()
                up = page.evaluate("() => performance.now()")
                page.get_by_text(re.compile(r"Selection · [1-9][\d,]* image")).first.wait_for()
                t2 = time.perf_counter()
                page.wait_for_function(GALLERY_LOADED, polling=20)
                t3 = time.perf_counter()
                idle(page)
                page.wait_for_function("() => window.__mmRedrawn > 0")
                parts[:] = [t1 - t0, t2 - t1, t3 - t1, (page.evaluate("window.__mmRedrawn") - up) / 1000]
            timed("box drawn with the mouse → selection + gallery", results, box)
            notes.append("box: the drag itself (tool picked, mouse down, 10 moves, up) {:.2f} s; "
                         "mouse up → selection shown {:.2f} s; → the gallery's images loaded {:.2f} "
                         "s; → the map redrawn (the points outside the box dimmed) {:.2f} s"
                         .format(*parts))
            got, want = selection_count(page), rows_in_pixel_box(page, xy, *frac)
            notes.append(f"box selected {got:,} rows; numpy over the cached projection: {want:,}")

            def search():
                page.get_by_label("Rank every image by CLIP similarity to a text").fill("a pie chart")
                page.get_by_role("button", name="Search").click()
                page.get_by_text("search: a pie chart").first.wait_for()
                idle(page)
            search()  # the first one loads the text model: timed separately below
            page.get_by_label("Rank every image by CLIP similarity to a text").fill("")
            timed("text search (text model loaded)", results, lambda: (
                page.get_by_label("Rank every image by CLIP similarity to a text").fill("a bar chart"),
                page.get_by_role("button", name="Search").click(),
                page.get_by_text("search: a bar chart").first.wait_for(), idle(page)))

            def more_like():
                exp = page.get_by_text("More like these: the nearest candidates of the pool")
                exp.first.click()
                box_k = page.get_by_label("How many").first
                box_k.fill(str(k))
                box_k.press("Enter")
                idle(page)
                t0 = time.perf_counter()
                page.get_by_role("button", name="Find").first.click()
                page.get_by_text(re.compile(rf"{k} candidate\(s\), best first")).first.wait_for()
                idle(page)
                return time.perf_counter() - t0
            secs = more_like()
            results.append((f'"more like these" K = {k} (Find → gallery), the first of the server',
                            secs, step_note()))
            print(f"  more like these: {secs:.2f} s", flush=True)

            def find_again():  # its caption is on the page already: the run itself is awaited
                page.get_by_role("button", name="Find").first.click()
                idle(page)
            timed(f'"more like these" again (Find, the same {k}; the index read again)', results,
                  find_again)

            area = page.get_by_label("One keyword per line").first
            if not area.is_visible():
                page.get_by_text("Keywords: they colour the map").first.click()
            # a real edit on every run of a kept workspace: a ninth keyword added, or taken away
            # when an earlier run left it there (the same text again would rerun nothing)
            nine = area.input_value().split() == " ".join(KEYWORDS[:9]).split()
            legend = page.get_by_text(re.compile(rf"{KEYWORDS[8]} \([\d,]+\)")).first
            edit = f"{KEYWORDS[8]!r} taken away" if nine else f"{KEYWORDS[8]!r} added"

            def keyword_edit():
                asked = len(ASKED)
                area.fill("\n".join(KEYWORDS[:8] if nine else KEYWORDS[:9]))
                area.press("Control+Enter")  # commit the text area: a rerun
                legend.wait_for(state="detached" if nine else "visible")
                idle(page)
                if len(ASKED) == asked:
                    raise RuntimeError("the keyword edit asked the server for no rerun")
            timed(f"keyword edit ({edit}) → recoloured map", results, keyword_edit)

            def save_task():
                page.get_by_role("link", name="Partition", exact=True).click()
                page.get_by_role("button", name="Save the task file").wait_for()
                idle(page)
                t0 = time.perf_counter()
                page.get_by_role("button", name="Save the task file").click()
                page.get_by_text(re.compile(r"Saved .*task")).first.wait_for()
                idle(page)
                return time.perf_counter() - t0
            secs = save_task()
            results.append(("Save the task file (click → saved)", secs, step_note()))
            print(f"  save task: {secs:.2f} s", flush=True)

            def save_prompts():
                page.get_by_role("link", name="Prompts", exact=True).click()
                page.get_by_role("button", name="Save the prompt file").wait_for()
                idle(page)
                t0 = time.perf_counter()
                page.get_by_role("button", name="Save the prompt file").click()
                page.get_by_text(re.compile(r"Saved .*\([\d,]+ prompts")).first.wait_for()
                idle(page)
                return time.perf_counter() - t0
            try:
                secs = save_prompts()
                results.append(("Save the prompt file (click → saved)", secs, step_note()))
                print(f"  save prompts: {secs:.2f} s", flush=True)
            except Exception as e:  # noqa: BLE001 — reported in the table, the run goes on
                notes.append(f"Save the prompt file: not measured ({type(e).__name__}: {str(e)[:120]})")
            page.screenshot(path=str(workdir / "app_scale_last.png"), full_page=True)
            browser.close()
    finally:
        mem.stop()
        ACTIVE.remove(mem)
        stop_app(proc)
    return mem


def drive_big_map(n: int, results: list, notes: list, workdir: Path) -> PeakRss:
    from playwright.sync_api import sync_playwright

    rng = np.random.default_rng(1)
    centres = rng.normal(scale=6, size=(30, 2))
    lab = rng.integers(0, 30, n)
    xy = (centres[lab] + rng.normal(size=(n, 2))).astype(np.float32)
    groups = (lab % 10).astype(np.int64)
    groups[rng.random(n) < 0.1] = -1
    np.save(workdir / "big_xy.npy", xy)
    np.save(workdir / "big_groups.npy", groups)
    proc, url = start_app("bench/map_app.py", {"MMI_MAP_XY": str(workdir / "big_xy.npy"),
                                               "MMI_MAP_GROUPS": str(workdir / "big_groups.npy")},
                          workdir / "streamlit_big.log")
    mem = PeakRss(proc.pid)
    try:
        with sync_playwright() as pw:
            browser, page = open_browser(pw)
            timed(f"map of {n:,} points: page opened → drawn", results, lambda: (
                page.goto(url), page.locator(".js-plotly-plot").first.wait_for(), idle(page)))
            page.wait_for_timeout(500)
            frac = (0.35, 0.35, 0.6, 0.6)

            def box():
                box_drag(page, *frac)
                page.get_by_text(re.compile(r"Selected [1-9][\d,]* rows")).first.wait_for()
                idle(page)
            timed(f"map of {n:,} points: box → rows selected", results, box)
            text = page.get_by_text(re.compile(r"Selected [\d,]+ rows")).first.inner_text()
            got = int(re.search(r"Selected ([\d,]+)", text).group(1).replace(",", ""))
            want = rows_in_pixel_box(page, xy, *frac)
            notes.append(f"{n:,}-point map: box selected {got:,} rows; numpy: {want:,}")
            page.screenshot(path=str(workdir / "big_map.png"))
            browser.close()
    finally:
        mem.stop()
        stop_app(proc)
    return mem


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=150_000)
    ap.add_argument("--images", type=int, default=50_000)
    ap.add_argument("--pool", type=int, default=60_000)
    ap.add_argument("--k", type=int, default=200, help="'more like these' K")
    ap.add_argument("--big", type=int, default=1_000_000, help="points of the map-alone case (0: skip)")
    ap.add_argument("--skip-app", action="store_true", help="only the map-alone case")
    ap.add_argument("--keep", default="", help="build the workspace here and keep it")
    args = ap.parse_args()
    if not Path(CHROMIUM).exists():
        sys.exit(f"{CHROMIUM} is missing")
    workdir = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="app_scale_"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"CPU: {cpu_line()}; {load_line()}; work folder {workdir}", flush=True)
    results: list[tuple[str, float, str]] = []
    notes: list[str] = []
    mems: list[tuple[str, PeakRss]] = []
    try:
        if not args.skip_app:
            ws_root = workdir / "home" / "workspaces" / "scale"
            if not ws_root.exists():
                build_workspace(workdir, args.records, args.images, args.pool)
            n_points = args.records + args.pool
            mems.append((f"app, {n_points:,} points", drive_app(ws_root, args.k, results, notes,
                                                               workdir)))
        if args.big:
            mems.append((f"map alone, {args.big:,} points",
                         drive_big_map(args.big, results, notes, workdir)))
    finally:
        print()
        print("| step | seconds | load average at the end; the server's peak resident memory "
              "since the step before; when the server's part ended |")
        print("| --- | ---: | --- |")
        for label, secs, load in results:
            print(f"| {label} | {secs:.2f} | {load.replace('load average ', '')} |")
        for label, m in mems:
            print(f"| peak resident memory, {label}: server | {m.server / 2**20:,.0f} MiB | |")
            print(f"| peak resident memory, {label}: browser (all chromium processes) | "
                  f"{m.browser / 2**20:,.0f} MiB | |")
        print()
        for n in notes:
            print(f"* {n}")
        print(f"* CPU: {cpu_line()}; {load_line()}")
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
