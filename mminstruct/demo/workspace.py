"""The demo workspace: a chart QA reference set, an unlabeled candidate pool, and their true labels.

``build_demo_workspace(folder, seed)`` writes::

    folder/demo_charts.json   LLaVA data file: image_folder "images", dataset_description, samples
    folder/images/            the reference charts (chart_0000.jpg, …)
    folder/pool/              the unlabeled candidate pool (cand_0000.jpg, …)
    folder/labels.json        every image path (relative to folder) → {"type", "subtype"}
    folder/README.txt         what is there and what to run next
    folder/.demo_manifest.json  the build's parameters; "complete" once everything is written

Every file is written atomically. Charts are drawn by worker processes; a killed build keeps the
images it finished, and the next call with the same parameters draws only the missing ones. A call on
a complete workspace with the same parameters returns at once.
"""

from __future__ import annotations

import json
import os
import random
import shlex
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from mminstruct.cache import atomic_write_bytes, atomic_write_json, atomic_write_text
from mminstruct.errors import ConfigError
from mminstruct.demo.charts import ALL_LOOKS, CHART_TYPES, ChartSpec, chart_jpeg, chart_seed, make_spec
from mminstruct.demo.questions import conversations, pick_questions

#: Bump when the drawing or the questions change: a workspace from another version is rebuilt.
GENERATOR_VERSION = 2
DATA_FILE_NAME = "demo_charts.json"
IMAGE_DIR = "images"
POOL_DIR = "pool"
LABELS_NAME = "labels.json"
README_NAME = "README.txt"
MANIFEST_NAME = ".demo_manifest.json"
KEYWORDS: tuple[str, ...] = ("bar chart", "line chart", "pie chart", "scatter plot")
DESCRIPTION = (
    "Question answering on charts (bar, line, pie and scatter charts): reading exact values, "
    "finding the highest and lowest categories, comparing series, following trends over time, "
    "reading pie-chart shares and describing correlations; some questions are multiple choice."
)

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class DemoWorkspace:
    """Where a built demo workspace's parts are."""

    root: Path
    data_file: Path
    image_folder: Path
    candidate_folder: Path
    labels_file: Path
    readme: Path
    seed: int
    n_reference: int
    n_candidates: int
    rendered: int  # charts drawn by this call (0 when the workspace was already complete)
    seconds: float
    keywords: tuple[str, ...] = KEYWORDS
    pool_pending: int = 0  # candidate charts left to draw (``draw_pool=False``)

    def labels(self) -> dict[str, str]:
        """Image path (relative to ``root``) → chart type."""
        return read_labels(self.labels_file)


def reference_spec(seed: int, index: int) -> ChartSpec:
    return make_spec(chart_seed(seed, "reference", index), looks=ALL_LOOKS.name)


def candidate_spec(seed: int, index: int) -> ChartSpec:
    return make_spec(chart_seed(seed, "candidate", index), looks=ALL_LOOKS.name)


def reference_record(seed: int, index: int, spec: ChartSpec | None = None) -> dict[str, object]:
    spec = spec or reference_spec(seed, index)
    rng = random.Random(chart_seed(seed, "questions", index))
    return {"id": f"chart_{index:04d}", "image_1": reference_name(index),
            "conversations": conversations(pick_questions(spec, rng))}


def reference_name(index: int) -> str:
    return f"chart_{index:04d}.jpg"


def candidate_name(index: int) -> str:
    return f"cand_{index:04d}.jpg"


def read_labels(path: str | os.PathLike) -> dict[str, str]:
    """A workspace's labels.json as image path → chart type (bar, line, pie or scatter)."""
    raw = json.loads(Path(path).read_text(encoding="utf-8"))
    return {k: v["type"] for k, v in raw.items()}


# ----------------------------------------------------------------------------------------------
# Building


def _draw_chunk(jobs: list[tuple[int, str]]) -> int:
    """Worker: draw each (chart seed, path) job and write its JPEG atomically."""
    for chart, path in jobs:
        spec = make_spec(chart, looks=ALL_LOOKS.name)
        atomic_write_bytes(path, chart_jpeg(spec))
    return len(jobs)


def _draw_all(jobs: list[tuple[int, str]], workers: int, progress: Progress | None) -> None:
    total = len(jobs)
    if progress:
        progress(0, total)
    if not jobs:
        return
    if workers <= 1 or total < 24:
        for k in range(total):
            _draw_chunk([jobs[k]])
            if progress:
                progress(k + 1, total)
        return
    # Worker processes started as ``python -c`` (not multiprocessing): a spawned multiprocessing
    # child re-runs the parent's ``__main__``, which inside the app is app.py itself (it then runs
    # the whole app without a session: slow, and ~60 "missing ScriptRunContext" warnings each).
    import subprocess
    import sys

    slices = [jobs[w::workers] for w in range(workers)]
    pkg_root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([pkg_root, *filter(None, [env.get("PYTHONPATH")])])
    parts = [part for part in slices if part]
    procs = [subprocess.Popen(
        [sys.executable, "-c", "from mminstruct.demo.workspace import _draw_worker; _draw_worker()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True) for _ in parts]
    import queue
    import threading

    lines: queue.Queue[int] = queue.Queue()

    def pump(proc: subprocess.Popen, part: list[tuple[int, str]]) -> None:
        with proc.stdin, proc.stdout:  # type: ignore[union-attr]
            proc.stdin.write(json.dumps(part))  # type: ignore[union-attr]
            proc.stdin.close()  # type: ignore[union-attr]
            for _ in proc.stdout:  # type: ignore[union-attr]
                lines.put(1)
        lines.put(0)  # this worker is done

    threads = [threading.Thread(target=pump, args=(proc, part), daemon=True)
               for proc, part in zip(procs, parts, strict=True)]
    try:
        for t in threads:
            t.start()
        done, running = 0, len(threads)
        while running:
            if lines.get():
                done += 1
                if progress:
                    progress(done, total)  # in the caller's thread (the app's script thread)
            else:
                running -= 1
        codes = [proc.wait() for proc in procs]
        if any(codes) or done != total:
            raise ConfigError(f"drawing the demo charts failed: {done}/{total} drawn, worker exit "
                              f"codes {codes}")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()


def _draw_worker() -> None:
    """A drawing process: reads its jobs (JSON) on stdin, prints a line per chart written."""
    import sys

    for chart, path in json.loads(sys.stdin.read()):
        _draw_chunk([(int(chart), str(path))])
        print(1, flush=True)


def _validate(seed: int, n_reference: int, n_candidates: int, workers: int | None) -> None:
    for name, value, low in (("seed", seed, 0), ("n_reference", n_reference, 1),
                             ("n_candidates", n_candidates, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ConfigError(f"{name} is {value!r}; expected an integer ≥ {low}")
    if n_reference > 100_000 or n_candidates > 100_000:
        raise ConfigError("n_reference and n_candidates must each be at most 100000")
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise ConfigError(f"workers is {workers!r}; expected an integer ≥ 1")


def _read_manifest(path: Path) -> dict[str, object]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _remove_stale(folder: Path, prefix: str, keep: set[str]) -> None:
    """Delete this generator's own image files that the new build does not contain."""
    if folder.is_dir():
        for f in folder.glob(f"{prefix}_*.jpg"):
            if f.name not in keep:
                f.unlink()


def build_demo_workspace(output_folder: str | os.PathLike, seed: int = 0, n_reference: int = 150,
                         n_candidates: int = 600, progress: Progress | None = None,
                         workers: int | None = None, draw_pool: bool = True) -> DemoWorkspace:
    """Build (or finish, or just find) the demo workspace in ``output_folder``.

    ``progress(done, total)`` is called as charts are drawn. ``workers`` defaults to 2 processes
    (at most the number of CPUs). With ``draw_pool`` False only the reference charts are drawn
    (the data file, labels and readme are written; the workspace stays incomplete): a second
    call with the same parameters draws the candidate pool (the app does it in the background
    so the Data page is usable sooner)."""
    _validate(seed, n_reference, n_candidates, workers)
    start = time.perf_counter()
    root = Path(output_folder)
    if root.exists() and not root.is_dir():
        raise ConfigError(f"output folder {root} exists and is not a folder")
    root.mkdir(parents=True, exist_ok=True)
    image_dir, pool_dir = root / IMAGE_DIR, root / POOL_DIR
    params = {"version": GENERATOR_VERSION, "seed": seed, "n_reference": n_reference,
              "n_candidates": n_candidates}
    manifest_path = root / MANIFEST_NAME
    manifest = _read_manifest(manifest_path)
    same = {k: manifest.get(k) for k in params} == params
    ref_names = [reference_name(i) for i in range(n_reference)]
    cand_names = [candidate_name(j) for j in range(n_candidates)]
    outputs = [root / DATA_FILE_NAME, root / LABELS_NAME, root / README_NAME]
    all_images = [image_dir / n for n in ref_names] + [pool_dir / n for n in cand_names]

    if same and manifest.get("complete") and all(p.is_file() for p in outputs + all_images):
        return _workspace(root, seed, n_reference, n_candidates, 0, time.perf_counter() - start)

    if not same:  # other parameters or version: nothing drawn before can be trusted
        _remove_stale(image_dir, "chart", set())
        _remove_stale(pool_dir, "cand", set())
    atomic_write_json(manifest_path, {**params, "complete": False})

    jobs: list[tuple[int, str]] = []
    for i, name in enumerate(ref_names):
        if not (image_dir / name).is_file():
            jobs.append((chart_seed(seed, "reference", i), str(image_dir / name)))
    pending = 0
    for j, name in enumerate(cand_names):
        if not (pool_dir / name).is_file():
            if draw_pool:
                jobs.append((chart_seed(seed, "candidate", j), str(pool_dir / name)))
            else:
                pending += 1
    n_workers = workers or max(1, min(2, os.cpu_count() or 1))
    _draw_all(jobs, n_workers, progress)

    ref_specs = [reference_spec(seed, i) for i in range(n_reference)]
    cand_specs = [candidate_spec(seed, j) for j in range(n_candidates)]
    samples = [reference_record(seed, i, s) for i, s in enumerate(ref_specs)]
    atomic_write_json(root / DATA_FILE_NAME, {"dataset_description": DESCRIPTION,
                                              "image_folder": IMAGE_DIR, "samples": samples}, indent=1)
    labels = {f"{IMAGE_DIR}/{n}": {"type": s.kind, "subtype": s.subtype}
              for n, s in zip(ref_names, ref_specs)}
    labels.update({f"{POOL_DIR}/{n}": {"type": s.kind, "subtype": s.subtype}
                   for n, s in zip(cand_names, cand_specs)})
    atomic_write_json(root / LABELS_NAME, labels, indent=1)
    atomic_write_text(root / README_NAME, readme_text(root, seed, ref_specs, cand_specs))
    atomic_write_json(manifest_path, {**params, "complete": not pending})
    ws = _workspace(root, seed, n_reference, n_candidates, len(jobs), time.perf_counter() - start)
    return replace(ws, pool_pending=pending)


def _workspace(root: Path, seed: int, n_ref: int, n_cand: int, rendered: int,
               seconds: float) -> DemoWorkspace:
    return DemoWorkspace(root, root / DATA_FILE_NAME, root / IMAGE_DIR, root / POOL_DIR,
                         root / LABELS_NAME, root / README_NAME, seed, n_ref, n_cand, rendered, seconds)


def _counts(specs: list[ChartSpec]) -> str:
    c = Counter(s.kind for s in specs)
    return ", ".join(f"{c.get(k, 0)} {k}" for k in CHART_TYPES)


def readme_text(root: Path, seed: int, ref_specs: list[ChartSpec], cand_specs: list[ChartSpec]) -> str:
    keywords = " ".join(f'"{k}"' for k in KEYWORDS)
    q_root, out = shlex.quote(str(root)), shlex.quote(str(root / "out"))
    return f"""mminstruct demo workspace (seed {seed})
=====================================

Synthetic charts drawn with matplotlib, so every answer in the data file is right by
construction.

  {DATA_FILE_NAME}   the reference set: {len(ref_specs)} chart QA records in LLaVA format
                     ({_counts(ref_specs)}); images in {IMAGE_DIR}/
  {POOL_DIR}/              the unlabeled candidate pool: {len(cand_specs)} charts
                     ({_counts(cand_specs)})
  {LABELS_NAME}        the true chart type (and subtype) of every image, for checking a partition;
                     the pipeline never reads it

Next steps (the demo CLIP "demo-charts" is a tiny model trained only on such charts; it knows
nothing else — for your own data use a real CLIP: the default ViT-B-32 laion2b when online, or a
local checkpoint file):

  python -m mminstruct.task_file_generator --input_folder {q_root} --data_file {DATA_FILE_NAME} \\
      --candidate_folder {POOL_DIR} --model_name demo-charts --output_folder {out} \\
      --output_prefix demo --keywords {keywords}
  python -m mminstruct.prompt_generator --input_folder {q_root} --task_desc out/<task file> \\
      --output_folder {out} --file_prefix demo --total_gen 200 --num_icl_samples 2

then generate new samples with any OpenAI-compatible VLM. In the app: open this folder from the
first page.

Rebuild (deterministic for a seed): python -m mminstruct.demo --output_folder {q_root} --seed {seed}
"""
