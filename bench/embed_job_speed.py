"""The app's background embedding job against the command line, on the same images, in one run.

    .venv/bin/python bench/embed_job_speed.py [--n 1500] [--model demo-charts] [--precision fp32]
        [--repeat 2]

N generated JPEGs (about 500×400 px, as bench/embed_throughput.py makes them): half are the
reference set (a LLaVA data file), half the candidate pool (a folder). Each round, with an empty
vector cache each time:

  (a) the command line: ``python -m mminstruct.task_file_generator`` over the same data file and
      pool (one keyword), its wall time;
  (b) the app's job: ``mminstruct.app.embed.start_job`` on a workspace of the same files (the
      child process the Explore page starts), from the start to ``exit.json`` saying finished,
      without the projection (the command line makes none).

Both include the process start, the data file's check and the model load; images per second is
N / wall time. The rounds alternate (a), (b) and the best of each counts (the machine is shared).
Target (issue 20): (b) ≥ 0.9 × (a). The CPU and load average are printed beside the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from embed_throughput import make_jpegs  # noqa: E402


def cpu_line() -> str:
    model = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        bf16 = "avx512_bf16" in Path("/proc/cpuinfo").read_text()
    except OSError:
        bf16 = False
    return f"{model}, {os.cpu_count()} cores, avx512_bf16 {'yes' if bf16 else 'no'}"


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def build(root: Path, n: int) -> tuple[Path, Path]:
    """The images, a data file over the first half and a pool folder of the second half."""
    imgs = root / "images"
    pool = root / "pool"
    imgs.mkdir(parents=True)
    pool.mkdir()
    paths = make_jpegs(imgs, n, (500, 400))
    half = n // 2
    for p in paths[half:]:
        p.rename(pool / p.name)
    samples = [{"id": str(i), "image": f"images/{p.name}",
                "conversations": [{"from": "human", "value": "<image>\nWhat is shown?"},
                                  {"from": "gpt", "value": "A picture."}]}
               for i, p in enumerate(paths[:half])]
    data = root / "data.json"
    data.write_text(json.dumps(samples))
    return data, pool


def run_cli(root: Path, data: Path, model: str, precision: str, cache: Path) -> float:
    shutil.rmtree(cache, ignore_errors=True)
    env = dict(os.environ, PYTHONPATH=str(REPO), MMINSTRUCT_CACHE_DIR=str(cache))
    out = root / "cli_out"
    out.mkdir(exist_ok=True)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "mminstruct.task_file_generator", "--data_file", str(data),
                    "--input_folder", str(root), "--output_folder", str(out), "--keywords", "photo",
                    "--candidate_folder", "pool", "--model_name", model, "--gpu", "-1",
                    "--precision", precision, "--cache_dir", str(cache)],
                   check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def run_job(root: Path, data: Path, model: str, precision: str) -> tuple[float, float | None]:
    from mminstruct.app.embed import JobOptions, job_status, start_job
    from mminstruct.app.workspace import Workspace

    ws_root = root / "ws"
    shutil.rmtree(ws_root, ignore_errors=True)
    ws = Workspace.open(ws_root, create=True)
    d = ws.settings.data
    d.data_file, d.input_folder, d.candidate_folder = str(data), str(root), "pool"
    ws.settings.partition.clip_model = model
    ws.save()
    t0 = time.perf_counter()
    start_job(ws, JobOptions(precision=precision, project=False))
    while True:
        st = job_status(ws)
        if not st.alive and st.state != "starting":
            break
        time.sleep(0.05)
    wall = time.perf_counter() - t0
    if st.state != "finished":
        raise SystemExit(f"the job ended {st.state}: {st.message} {st.cause}")
    return wall, st.rate


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1500)
    ap.add_argument("--model", default="demo-charts")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="embed_job_bench_") as tmp:
        root = Path(tmp)
        data, _ = build(root, args.n)
        cli, job, rates = [], [], []
        for _ in range(args.repeat):
            cli.append(run_cli(root, data, args.model, args.precision, root / "cli_cache"))
            wall, rate = run_job(root, data, args.model, args.precision)
            job.append(wall)
            rates.append(rate)
            print(f"round {len(job)}: cli {cli[-1]:.2f} s, job {wall:.2f} s; {load()}", flush=True)
        n = args.n
        best_cli, best_job = min(cli), min(job)
        print(f"CPU: {cpu_line()}; {load()} (after the runs)")
        print(f"{n} images ({n // 2} reference + {n - n // 2} pool), model {args.model}, "
              f"precision {args.precision}, best of {args.repeat}")
        print(f"{'path':<44}{'wall s':>9}{'img/s':>9}")
        print(f"{'(a) command line (task_file_generator)':<44}{best_cli:>9.2f}{n / best_cli:>9.1f}")
        print(f"{'(b) app background job (start_job)':<44}{best_job:>9.2f}{n / best_job:>9.1f}")
        print(f"(b) / (a) throughput: {best_cli / best_job:.2f}× (target ≥ 0.9×); the job's own "
              f"rate over its computed batches: {max(r or 0 for r in rates):.1f} img/s")
        print("all rounds (s): cli " + ", ".join(f"{x:.2f}" for x in cli)
              + " · job " + ", ".join(f"{x:.2f}" for x in job))
    return 0


if __name__ == "__main__":
    sys.exit(main())
