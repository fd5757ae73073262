"""Step 3 throughput and memory against the local OpenAI-compatible server (tests/openai_server.py).

From one run, against a server that answers every request after a fixed latency (1.0 s):

(a) our engine at concurrency C (default 128), through the real ``openai`` client over HTTP,
    end to end: streaming the prompt file, encoding images, rate limiter, parsing, run log,
    output file and manifest;
(b) the ideal: C / latency;
(c) MM-Gen's scheme: ``num_parallel`` = 12 workers, each sending one request at a time with the
    ``openai`` sync client and re-encoding its prompt's images for every request.

Then peak memory (RSS) of the engine — the ``data_generator`` command in a child process — on a
150,000-prompt file with real images, against an instantly answering server, for a limited time
(the file is complete; the run is cancelled after ``--memory_seconds``).

    .venv/bin/python bench/generation_throughput.py [--concurrency 128] [--latency 1.0] …
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fixtures.images import draw_shape, save_jpeg  # noqa: E402
from tests.fixtures.llm import FAKE_KEY, make_prompt_workspace  # noqa: E402


def start_server(latency: float) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "tests.openai_server", "--port", "0",
                             "--latency", str(latency)], cwd=ROOT, stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    line = proc.stdout.readline()
    if "listening on" not in line:
        proc.kill()
        raise SystemExit(f"server did not start: {line!r}")
    return proc, line.split()[-1]


def engine_rate(ws, url: str, concurrency: int) -> tuple[float, float, int]:
    from mminstruct.generate import GenerationConfig, run_async
    from mminstruct.llm.client import EndpointConfig

    cfg = GenerationConfig(input_folder=ws.input_folder, output_folder=ws.output_folder,
                           prompt_file=ws.prompt_name, file_prefix="bench",
                           endpoint=EndpointConfig(base_url=url), concurrency=concurrency)
    t0 = time.perf_counter()
    result = asyncio.run(run_async(cfg))
    dt = time.perf_counter() - t0
    if result.state != "finished" or result.status.failed:
        raise SystemExit(f"engine run did not finish cleanly: {result.message}")
    return ws.n / dt, dt, result.status.requests


def mmgen_rate(ws, url: str, workers: int, per_worker: int) -> tuple[float, float]:
    """Each worker: for its prompts in turn, open and re-encode every image, send one request
    with the openai sync client, parse the JSON list — one request in flight per worker."""
    import openai
    from PIL import Image

    prompts = json.loads(ws.prompt_file.read_text())["prompts"]
    system = "Each object has exactly these keys: Q, R, A."

    def encode(path: Path) -> str:
        img = Image.open(path)
        if img.mode != "RGB":
            img = img.convert("RGB")
        buf = io.BytesIO()
        img.save(buf, format="JPEG")
        return "data:image/jpg;base64," + base64.b64encode(buf.getvalue()).decode()

    def worker(k: int, errors: list) -> None:
        client = openai.OpenAI(api_key=FAKE_KEY, base_url=url, max_retries=0)
        try:
            for j in range(per_worker):
                entry = prompts[(k * per_worker + j) % len(prompts)]
                content = []
                for part in entry["prompt"]:
                    if part.lower().endswith((".jpg", ".jpeg", ".png")):
                        content.append({"type": "image_url",
                                        "image_url": {"url": encode(ws.input_folder / part)}})
                    else:
                        content.append({"type": "text", "text": part})
                content.append({"type": "text", "text": "Generate exactly 2 pairs."})
                r = client.chat.completions.create(model="gpt-4o", messages=[
                    {"role": "system", "content": system}, {"role": "user", "content": content}])
                json.loads(r.choices[0].message.content)
        except Exception as e:  # reported, not hidden
            errors.append(e)
        finally:
            client.close()

    errors: list = []
    threads = [threading.Thread(target=worker, args=(k, errors)) for k in range(workers)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    dt = time.perf_counter() - t0
    if errors:
        raise SystemExit(f"MM-Gen simulation failed: {errors[0]!r}")
    return workers * per_worker / dt, dt


def make_large_prompt_file(root: Path, n: int, n_refs: int = 200, n_cands: int = 2000) -> Path:
    """A vqa prompt file of ``n`` prompts (2 in-context examples + a candidate each) over real
    JPEGs, written streaming."""
    inp = root / "input"
    for i in range(n_refs):
        save_jpeg(draw_shape("circle" if i % 2 else "square", i), inp / f"images/ref_{i}.jpg")
    for j in range(n_cands):
        save_jpeg(draw_shape("square" if j % 2 else "circle", 10_000 + j),
                  inp / f"pool/c{j // 500}/cand_{j}.jpg")
    path = inp / "generated_prompts" / "large_prompts.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        f.write('{"task_desc_path": "task.json", "dataset_description": "reading simple shape '
                'diagrams", "num_icl_samples": 2, "mode": "vqa", "min_gen_per_candidate": 2, '
                f'"total_gen": {2 * n}, "prompts": [\n')
        for i in range(n):
            r1, r2 = (i * 7) % n_refs, (i * 13 + 1) % n_refs
            parts = ["Example 1", f"images/ref_{r1}.jpg",
                     f"Q: What shape is in the first image? (prompt {i})\n A: A circle.",
                     "Example 2", f"images/ref_{r2}.jpg",
                     "Q: How many shapes are in the second image?\n A: One.",
                     f"pool/c{(i % n_cands) // 500}/cand_{i % n_cands}.jpg"]
            f.write(("" if i == 0 else ",\n") + json.dumps(
                {"keyword": ["round", "square"][i % 2], "prompt": parts,
                 "icl_indices": [r1, r2]}))
        f.write("\n]}\n")
    (root / "output").mkdir(exist_ok=True)
    return path


def engine_memory(root: Path, url: str, seconds: float, concurrency: int) -> dict:
    """Run the data_generator command on the large file for ``seconds``, cancel it through its
    flag file, and follow the child's peak RSS (``VmHWM``; ``wait4``'s ru_maxrss would count the
    benchmark's own memory, which the child shares from the fork until it execs)."""
    env = {**os.environ, "OPENAI_API_KEY": FAKE_KEY, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "mminstruct.data_generator", "--input_folder",
           str(root / "input"), "--output_folder", str(root / "output"), "--prompt_file",
           "large_prompts.json", "--file_prefix", "mem", "--base_url", url, "--concurrency",
           str(concurrency)]
    err_path = root / "engine_stderr.txt"
    err_file = open(err_path, "w")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err_file)
    runs = root / "output" / "generated_data" / "runs"
    t0 = time.monotonic()
    run_dir = None
    samples: list[tuple[float, float, int]] = []  # (seconds, RSS MB, prompts logged)
    peak = 0.0
    while (seconds <= 0 or time.monotonic() - t0 < seconds) and proc.poll() is None:
        time.sleep(0.1)
        peak = max(peak, _proc_mb(proc.pid, "VmHWM"))
        if run_dir is None and runs.is_dir():
            run_dir = next(iter(runs.iterdir()), None)
        now = time.monotonic() - t0
        if not samples or now - samples[-1][0] >= (seconds / 6 if seconds > 0 else 60):
            logged = _count_lines(run_dir / "log.jsonl") if run_dir is not None else 0
            samples.append((now, _proc_mb(proc.pid, "VmRSS"), logged))
    if run_dir is not None and proc.poll() is None:
        (run_dir / "CANCEL").touch()
    while proc.poll() is None:
        peak = max(peak, _proc_mb(proc.pid, "VmHWM"))
        time.sleep(0.02)
    proc.wait()
    err_file.close()
    elapsed = time.monotonic() - t0
    stderr = err_path.read_text()
    done = 0
    if run_dir is not None:
        done = sum(1 for _ in open(run_dir / "log.jsonl", "rb"))
    return {"peak_rss_mb": peak, "prompts_done": done, "seconds": elapsed,
            "exit": proc.returncode, "stderr_tail": stderr[-300:],
            "samples": samples}


def _proc_mb(pid: int, field: str) -> float:
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _count_lines(path: Path) -> int:
    try:
        with open(path, "rb") as f:
            return sum(1 for _ in f)
    except OSError:
        return 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--concurrency", type=int, default=128)
    p.add_argument("--latency", type=float, default=1.0)
    p.add_argument("--rounds", type=int, default=20, help="engine prompts = rounds × "
                   "concurrency (the first round also opens the connections)")
    p.add_argument("--workers", type=int, default=12, help="MM-Gen's num_parallel")
    p.add_argument("--per_worker", type=int, default=10)
    p.add_argument("--memory_prompts", type=int, default=150_000)
    p.add_argument("--memory_seconds", type=float, default=60,
                   help="cancel the memory run after this long (0: run all prompts)")
    p.add_argument("--memory_concurrency", type=int, default=256)
    p.add_argument("--skip_memory", action="store_true")
    args = p.parse_args()
    os.environ["OPENAI_API_KEY"] = FAKE_KEY
    import openai  # noqa: F401  (imported before timing, as a long-running process has it)

    with tempfile.TemporaryDirectory(prefix="mminstruct-bench-") as tmp:
        tmp_path = Path(tmp)
        server, url = start_server(args.latency)
        try:
            ws = make_prompt_workspace(tmp_path / "a", "vqa", args.rounds * args.concurrency,
                                       min_gen=2)
            a, a_dt, a_req = engine_rate(ws, url, args.concurrency)
            b = args.concurrency / args.latency
            c, c_dt = mmgen_rate(ws, url, args.workers, args.per_worker)
        finally:
            server.terminate()
            server.wait()
        print(f"\nthroughput, server latency {args.latency:.1f} s, {os.cpu_count()} CPU cores, "
              f"load average {os.getloadavg()[0]:.1f} (other work on the machine lowers (a))")
        print(f"{'':44}{'prompts/s':>10}")
        print(f"{'(a) engine, C=' + str(args.concurrency) + f' ({ws.n} prompts, {a_dt:.1f} s)':44}"
              f"{a:10.1f}")
        print(f"{'(b) ideal, C / latency':44}{b:10.1f}")
        print(f"{f'(c) MM-Gen scheme, {args.workers} sequential workers ({c_dt:.1f} s)':44}"
              f"{c:10.1f}")
        print(f"a / b = {a / b:.3f}  (target ≥ 0.9)")
        print(f"a / c = {a / c:.1f}   (target ≥ 9)")
        if args.skip_memory:
            return
        t0 = time.perf_counter()
        make_large_prompt_file(tmp_path / "m", args.memory_prompts)
        size = (tmp_path / "m/input/generated_prompts/large_prompts.json").stat().st_size
        print(f"\nmemory: {args.memory_prompts:,}-prompt file ({size / 1e6:.0f} MB, made in "
              f"{time.perf_counter() - t0:.0f} s), instant server, C={args.memory_concurrency}")
        server, url = start_server(0.0)
        try:
            mem = engine_memory(tmp_path / "m", url, args.memory_seconds,
                                args.memory_concurrency)
        finally:
            server.terminate()
            server.wait()
        print("RSS during the run: " + ", ".join(f"{t:.0f} s {r:.0f} MB ({n:,} done)"
                                                 for t, r, n in mem["samples"]))
        print(f"engine peak RSS {mem['peak_rss_mb']:.0f} MB (target < 1024 MB) after "
              f"{mem['prompts_done']:,} of {args.memory_prompts:,} prompts in "
              f"{mem['seconds']:.0f} s ({mem['prompts_done'] / mem['seconds']:.0f}/s; "
              + ("then cancelled through its CANCEL flag, " if mem["exit"] == 130 else "")
              + f"exit {mem['exit']})")


if __name__ == "__main__":
    main()
