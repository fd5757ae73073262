"""The judge's throughput against generation's, from one run, against the same local server.

A local OpenAI-compatible server (``tests/openai_server.py``, its own process) answers every
request after a fixed latency. In one run:

(a) generation: ``N`` prompts (vqa_nr, one item each, real images) through the engine at
    concurrency C — requests per second, end to end (the run log, the output, the manifest);
(b) the judge over the ``N`` samples that run wrote (their images, the prompt file's in-context
    examples), at the same concurrency — requests per second, end to end (the run log, the
    scores file and its summary);
(c) the ratio (b)/(a). Target: ≥ 0.9.

Rounds alternate (generation, judge, generation, judge …) so a change in the machine's load hits
both; the best round of each is reported with the load average.

    .venv/bin/python bench/judge_throughput.py [--concurrency 64] [--latency 0.2] [--rounds 4]
        [--requests 512]

The quality report with cross-image MinHash on 600,000 samples: ``bench/quality_speed.py
--cross_image``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.generation_throughput import start_server  # noqa: E402
from tests.fixtures.llm import FAKE_KEY, make_prompt_workspace  # noqa: E402


def cpu_line() -> str:
    info = Path("/proc/cpuinfo").read_text()
    model = next((ln.split(":", 1)[1].strip() for ln in info.splitlines()
                  if ln.startswith("model name")), "unknown")
    return f"CPU: {model} (avx512_bf16: {'yes' if 'avx512_bf16' in info else 'no'}), " \
           f"{os.cpu_count()} CPUs"


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def generation_rate(ws, url: str, concurrency: int, prefix: str) -> tuple[float, Path]:
    from mminstruct.generate import GenerationConfig, run_async
    from mminstruct.llm.client import EndpointConfig

    cfg = GenerationConfig(input_folder=ws.input_folder, output_folder=ws.output_folder,
                           prompt_file=ws.prompt_name, file_prefix=prefix,
                           endpoint=EndpointConfig(base_url=url), concurrency=concurrency)
    t0 = time.perf_counter()
    result = asyncio.run(run_async(cfg))
    dt = time.perf_counter() - t0
    if result.state != "finished" or result.status.failed:
        raise SystemExit(f"generation did not finish cleanly: {result.message}")
    return result.status.requests / dt, result.output


def judge_rate(generated: Path, url: str, concurrency: int, out: Path) -> float:
    from mminstruct.quality.judge import JudgeConfig, judge_async
    from mminstruct.llm.client import EndpointConfig

    cfg = JudgeConfig(input_folder=json.loads(generated.read_text())["input_folder"],
                      output_folder=generated.parent.parent, prompt_file=str(generated),
                      file_prefix=f"judge_{out.stem}", endpoint=EndpointConfig(base_url=url),
                      concurrency=concurrency, output=str(out))
    t0 = time.perf_counter()
    result = asyncio.run(judge_async(cfg))
    dt = time.perf_counter() - t0
    if result.state != "finished" or result.status.failed:
        raise SystemExit(f"the judge did not finish cleanly: {result.message}")
    return result.status.requests / dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--requests", type=int, default=512, help="prompts (and samples) per round")
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()
    os.environ["OPENAI_API_KEY"] = FAKE_KEY
    from mminstruct.cli import setup_logging

    setup_logging()
    import logging

    logging.getLogger("mminstruct").setLevel(logging.WARNING)
    print(cpu_line())
    print(f"load average before: {load()}")
    proc, url = start_server(args.latency)
    try:
        req = urllib.request.Request(url.removesuffix("/v1") + "/stub/config",
                                     data=json.dumps({"judge": {}}).encode(),
                                     headers={"content-type": "application/json"})
        urllib.request.urlopen(req).read()
        with tempfile.TemporaryDirectory(prefix="judge_bench_") as tmp:
            ws = make_prompt_workspace(Path(tmp), "vqa_nr", args.requests, min_gen=1)
            gen, jud = [], []
            for k in range(args.rounds):
                g, output = generation_rate(ws, url, args.concurrency, f"gen{k}")
                j = judge_rate(output, url, args.concurrency, Path(tmp) / f"scores{k}.jsonl")
                gen.append(g)
                jud.append(j)
                print(f"round {k + 1}: generation {g:.1f} req/s, judge {j:.1f} req/s, ratio "
                      f"{j / g:.2f} (load {load()})")
            ideal = args.concurrency / args.latency
            print(f"best of {args.rounds}: generation {max(gen):.1f} req/s, judge {max(jud):.1f} "
                  f"req/s, ratio {max(jud) / max(gen):.2f} (target ≥ 0.9); ideal "
                  f"{ideal:.0f} req/s (concurrency {args.concurrency} / latency "
                  f"{args.latency} s); median ratio "
                  f"{sorted(j / g for j, g in zip(jud, gen))[args.rounds // 2]:.2f}")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    print(f"load average after: {load()}")


if __name__ == "__main__":
    main()
