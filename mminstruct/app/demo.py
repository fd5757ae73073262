"""The offline demo inside an app workspace: draw the synthetic charts into ``WS/demo_data`` and
point the workspace's settings at them (the demo CLIP, the four chart keywords, vqa prompts).

``setup_demo(ws, …)`` draws the reference charts (and, unless ``pool_in_background``, the candidate
pool); a pool drawn in the background is followed with ``demo_pool_progress`` and waited for with
``wait_demo_pool`` (the embedding waits for it). The demo package depends on the workspace, never
the other way round.
"""

from __future__ import annotations

import os
import re
import threading
from typing import Any

from mminstruct.errors import ConfigError
from mminstruct.app.workspace import DataSettings, PartitionSettings, PromptSettings, Workspace

DEMO_FOLDER = "demo_data"


def demo_size_default() -> tuple[int, int]:
    """(reference charts, candidate charts) for the demo: ``$MMINSTRUCT_DEMO_SIZE`` as ``RxC``
    (e.g. ``24x48`` for a quick try), else the demo's own 150 × 600."""
    raw = os.environ.get("MMINSTRUCT_DEMO_SIZE", "")
    m = re.fullmatch(r"\s*(\d+)\s*[x,]\s*(\d+)\s*", raw)
    return (int(m.group(1)), int(m.group(2))) if m else (150, 600)


_POOL_JOBS: dict[str, dict[str, Any]] = {}
_POOL_LOCK = threading.Lock()


def setup_demo(ws: Workspace, n_reference: int = 150, n_candidates: int = 600,
               progress: Any = None, clip_model: str | None = None,
               workers: int | None = None, pool_in_background: bool = False) -> Any:
    """Build the offline demo (synthetic charts) inside the workspace and point the settings at
    it: the demo CLIP (``clip_model``, else ``$MMINSTRUCT_DEMO_MODEL``, else ``demo-charts``), the
    four chart keywords, vqa prompts. Returns the ``DemoWorkspace``.

    With ``pool_in_background`` only the reference charts are drawn before this returns; the
    candidate pool is drawn by a background thread (``demo_pool_progress``, ``wait_demo_pool``):
    the Data page needs only the reference set, the embedding waits for the pool."""
    from mminstruct.demo import DEMO_KEYWORDS, DEMO_MODEL, build_demo_workspace

    folder = ws.root / DEMO_FOLDER
    wait_demo_pool(ws)  # a pool still being drawn for this folder finishes first
    demo = build_demo_workspace(folder, seed=0, n_reference=n_reference,
                                n_candidates=n_candidates, progress=progress, workers=workers,
                                draw_pool=not pool_in_background)
    if demo.pool_pending:
        _start_pool(ws, n_reference, n_candidates, workers)
    s = ws.settings
    s.data = DataSettings(input_folder=str(demo.root.resolve()),
                          data_file=str(demo.data_file.resolve()), image_folder=None,
                          candidate_folder=demo.candidate_folder.name, demo=True)
    model = clip_model or os.environ.get("MMINSTRUCT_DEMO_MODEL") or DEMO_MODEL
    s.partition = PartitionSettings(clip_model=model,
                                    keywords=list(DEMO_KEYWORDS))
    s.prompts = PromptSettings(total_gen=40, min_gen_per_candidate=2, num_icl_samples=2,
                               mode="vqa", seed=0, file_prefix="demo")
    s.task_file = s.prompt_file = ""
    ws.save()
    return demo


def _start_pool(ws: Workspace, n_reference: int, n_candidates: int, workers: int | None) -> None:
    from mminstruct.demo import build_demo_workspace

    key = str(ws.root)
    job: dict[str, Any] = {"done": 0, "total": n_candidates, "error": None}

    def draw() -> None:
        try:
            build_demo_workspace(ws.root / DEMO_FOLDER, seed=0, n_reference=n_reference,
                                 n_candidates=n_candidates, workers=workers,
                                 progress=lambda d, t: job.update(done=d, total=t))
        except (OSError, ValueError, ConfigError) as e:  # reported by wait_demo_pool
            job["error"] = f"drawing the demo's candidate charts failed: {e}"

    thread = threading.Thread(target=draw, name=f"demo-pool:{ws.root.name}", daemon=True)
    job["thread"] = thread
    with _POOL_LOCK:
        _POOL_JOBS[key] = job
    thread.start()


def demo_pool_progress(ws: Workspace) -> tuple[int, int] | None:
    """(drawn, total) while this workspace's demo pool is drawn in the background, else None."""
    with _POOL_LOCK:
        job = _POOL_JOBS.get(str(ws.root))
    if job is None or not job["thread"].is_alive():
        return None
    return int(job["done"]), int(job["total"])


def wait_demo_pool(ws: Workspace, progress: Any = None, poll: float = 0.25) -> None:
    """Wait for this workspace's background demo pool (``progress(done, total)`` meanwhile, in
    the caller's thread); ConfigError when drawing it failed."""
    with _POOL_LOCK:
        job = _POOL_JOBS.get(str(ws.root))
    if job is None:
        return
    thread = job["thread"]
    while thread.is_alive():
        if progress:
            progress(int(job["done"]), int(job["total"]))
        thread.join(poll)
    with _POOL_LOCK:
        if _POOL_JOBS.get(str(ws.root)) is job:
            del _POOL_JOBS[str(ws.root)]
    if job["error"]:
        raise ConfigError(job["error"])
