"""The Batch API path (``--batch_api``) on a large prompt file: peak memory and time, end to end.

Runs ``python -m mminstruct.data_generator --batch_api`` in a child process on an N-prompt vqa file
with real JPEGs (``generation_throughput.make_large_prompt_file``: 2 in-context images and a
candidate per prompt) against the local server with ``/v1/files`` and ``/v1/batches``
(``tests/batch_server.py``, in its own process), and follows the child's peak RSS (``VmHWM``)
through every phase: building and uploading the parts, polling, downloading and recording the
results, writing the output and manifest. Prints a timeline (RSS, parts by status, prompts
recorded) and the totals.

    .venv/bin/python bench/batch_api_memory.py [--prompts 150000] [--max_requests 50000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from generation_throughput import _count_lines, _proc_mb, make_large_prompt_file  # noqa: E402

from tests.fixtures.llm import FAKE_KEY  # noqa: E402


def start_batch_server(lines_per_poll: int) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "tests.batch_server", "--port", "0",
                             "--lines_per_poll", str(lines_per_poll)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    line = proc.stdout.readline()
    if "listening on" not in line:
        proc.kill()
        raise SystemExit(f"server did not start: {line!r}")
    return proc, line.split()[-1]


def _parts(run_dir: Path | None) -> str:
    if run_dir is None:
        return "-"
    try:
        parts = json.loads((run_dir / "batches.json").read_text())["parts"]
    except (OSError, ValueError, KeyError):
        return "-"
    c = Counter(p.get("status") or p.get("stage") for p in parts)
    return ", ".join(f"{n} {k}" for k, n in sorted(c.items())) or "-"


def run(root: Path, url: str, args: argparse.Namespace) -> dict:
    env = {**os.environ, "OPENAI_API_KEY": FAKE_KEY, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "mminstruct.data_generator", "--input_folder",
           str(root / "input"), "--output_folder", str(root / "output"), "--prompt_file",
           "large_prompts.json", "--file_prefix", "batchmem", "--base_url", url,
           "--batch_api", "--batch_poll_seconds", str(args.poll), "--batch_poll_max_seconds",
           str(args.poll * 4), "--batch_max_requests", str(args.max_requests)]
    err_path = root / "stderr.txt"
    with open(err_path, "w") as err:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
        runs = root / "output" / "generated_data" / "runs"
        t0 = time.monotonic()
        run_dir = None
        peak = 0.0
        timeline: list[tuple[float, float, float, str, int]] = []
        while proc.poll() is None:
            time.sleep(0.1)
            peak = max(peak, _proc_mb(proc.pid, "VmHWM"))
            if run_dir is None and runs.is_dir():
                run_dir = next(iter(runs.iterdir()), None)
            now = time.monotonic() - t0
            if not timeline or now - timeline[-1][0] >= args.every:
                logged = _count_lines(run_dir / "log.jsonl") if run_dir is not None else 0
                timeline.append((now, _proc_mb(proc.pid, "VmRSS"), peak, _parts(run_dir),
                                 logged))
        out = proc.stdout.read().strip().splitlines()
    return {"seconds": time.monotonic() - t0, "peak_mb": peak, "exit": proc.returncode,
            "timeline": timeline, "output": out[-1] if out else None,
            "stderr_tail": err_path.read_text()[-600:], "run_dir": run_dir}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--prompts", type=int, default=150_000)
    p.add_argument("--max_requests", type=int, default=50_000)
    p.add_argument("--poll", type=float, default=0.5, help="--batch_poll_seconds")
    p.add_argument("--lines_per_poll", type=int, default=2000,
                   help="lines the server runs per status check of a batch")
    p.add_argument("--every", type=float, default=15.0, help="seconds between timeline rows")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="mminstruct-batchbench-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        make_large_prompt_file(root, args.prompts)
        size = (root / "input/generated_prompts/large_prompts.json").stat().st_size
        print(f"{args.prompts:,}-prompt file ({size / 1e6:.0f} MB) made in "
              f"{time.perf_counter() - t0:.0f} s; {os.cpu_count()} CPU cores, load average "
              f"{os.getloadavg()[0]:.1f}", flush=True)
        server, url = start_batch_server(args.lines_per_poll)
        try:
            r = run(root, url, args)
        finally:
            server.terminate()
            server.wait()
        print(f"\n{'s':>6} {'RSS MB':>8} {'peak MB':>8} {'recorded':>9}  batches")
        for t, rss, peak, parts, logged in r["timeline"]:
            print(f"{t:6.0f} {rss:8.0f} {peak:8.0f} {logged:9,}  {parts}")
        if r["exit"] != 0 or not r["output"]:
            raise SystemExit(f"the run failed (exit {r['exit']}): {r['stderr_tail']}")
        from mminstruct.generate.manifest import find_manifest  # noqa: PLC0415

        manifest = json.loads(find_manifest(Path(r["output"])).read_text())
        b = manifest["batch_api"]
        print(f"\n{manifest['counts']['by_outcome']} in {r['seconds']:.0f} s; "
              f"{len(b['batches'])} batches ({b['by_status']}), "
              f"{sum(x['bytes'] for x in b['batches']) / 1e6:,.0f} MB uploaded, "
              f"largest file {max(x['bytes'] for x in b['batches']) / 1e6:.0f} MB / "
              f"{max(x['requests'] for x in b['batches']):,} requests")
        print(f"peak RSS (VmHWM) of data_generator --batch_api: {r['peak_mb']:.0f} MB")


if __name__ == "__main__":
    main()
