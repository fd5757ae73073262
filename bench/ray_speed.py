"""Ray on one node against the local engines, from one run: embedding and generation.

    .venv/bin/python bench/ray_speed.py [--images 256] [--model vit-b-32|tiny] [--prompts 480]
                                        [--latency 0.5] [--concurrency 16]

(1) Embedding N generated JPEGs (~500×400 px) with ViT-B-32 (seeded random weights, saved as a
    local checkpoint; speed does not depend on the weights):
    (a) the local pipeline, ``image_embed.embed_images`` (DataLoader decode workers + torch threads);
    (b) ``distributed.embed_pool`` on a local Ray instance laid out like (a) — one decode task
        slot and an encoder actor with as many torch threads as (a) uses — writing Parquet shards.
        With a CUDA GPU: (a) on the GPU with a DataLoader worker per core, (b) one GPU encoder
        actor and a decode slot per core.
    Each run starts cold: the model is loaded inside the timed part (for (b): the driver's copy,
    for the transform, and the actor's; and Ray starts its worker processes, which import torch
    and, on a GPU, set up CUDA — the local process did both before). Best of ``--repeats``, end
    to end. Target: (b) ≤ 1.15 × (a). Also the cosine between (a)'s and (b)'s vectors (≥ 0.999).
(2) Generation against the local OpenAI-compatible stub server (fixed latency, no rate limit),
    ``--concurrency`` requests in flight per worker, so each worker's concurrency is the
    bottleneck: ``distributed.run_on_ray`` with 1 worker, then 2 (each a shard task; their
    shared limiter actor is in the loop although no limit is set). Workers are warmed up first
    (Ray keeps idle worker processes). prompts/s end to end, and in the steady state (from the
    run logs' record times, first to last). Target: 2 workers ≥ 1.8 × 1 worker.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from embed_throughput import make_jpegs  # noqa: E402

from mminstruct.embed import clip  # noqa: E402
from mminstruct.embed import image_embed  # noqa: E402


def make_model(folder: Path, which: str) -> str:
    import open_clip
    import torch

    if which == "tiny":
        from tests.fixtures.clip import make_tiny_clip

        return make_tiny_clip(folder).spec
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32", pretrained=None)
    ckpt = folder / "vit-b-32-random.pt"
    torch.save(model.state_dict(), ckpt)
    return f"ViT-B-32:{ckpt}"


def bench_embedding(args: argparse.Namespace, work: Path) -> list[tuple[str, str]]:
    from mminstruct.distributed import embed_pool, read_pool

    (work / "jpegs").mkdir()
    (work / "model").mkdir()
    paths = make_jpegs(work / "jpegs", args.images, (500, 400))
    for k in range(1, args.copies):  # more files, same pixels: hard links are distinct files
        for p in paths[:args.images]:
            os.link(p, p.with_name(f"{p.stem}_{k}.jpg"))
            paths.append(p.with_name(f"{p.stem}_{k}.jpg"))
    spec = make_model(work / "model", args.model)
    threads, device, workers = _layout()
    best_local = best_ray = float("inf")
    local_vecs = ray_vecs = None
    for r in range(args.repeats):
        clip._MODELS.clear()  # a cold start each time: loading the model is part of the work
        t0 = time.perf_counter()
        res = image_embed.embed_images(paths, spec, cache=False, batch_size=args.batch_size,
                                show_progress=False, device=device, num_workers=workers)
        best_local = min(best_local, time.perf_counter() - t0)
        local_vecs = {str(res.paths[i]): res.vectors[j] for j, i in enumerate(res.ok.tolist())}
        clip._MODELS.clear()
        t0 = time.perf_counter()
        pool = embed_pool(paths, model=spec, output_dir=work / f"shards{r}",
                          cache_dir=work / "cache", batch_size=args.batch_size,
                          encoder_cpus=threads, decode_cpus=1)
        best_ray = min(best_ray, time.perf_counter() - t0)
        names, vecs, _ = read_pool(pool.output_dir)
        ray_vecs = dict(zip(names, vecs))
    cos = min(float(ray_vecs[k].astype(np.float32) @ v.astype(np.float32))
              for k, v in local_vecs.items())
    n = len(paths)
    label = "ViT-B-32 (random weights)" if args.model != "tiny" else "tiny test CLIP"
    return [
        (f"(a) local embed_images, {label}", f"{best_local:.2f} | {n / best_local:.1f} | 1.00"),
        ("(b) Ray Data embed_pool → Parquet shards",
         f"{best_ray:.2f} | {n / best_ray:.1f} | {best_ray / best_local:.2f}"),
        ("overhead of (b); min cosine (a)–(b)",
         f"{(best_ray / best_local - 1) * 100:+.1f} % | cos {cos:.5f} |"),
    ]


def _layout() -> tuple[int, str, int | None]:
    """(encoder threads, the local pipeline's device, its decode workers). With a GPU, Ray decodes
    on every CPU and the local pipeline gets as many DataLoader workers (its default is 4)."""
    import torch

    cpus = os.cpu_count() or 2
    if torch.cuda.is_available():
        return 1, "cuda:0", cpus - 1
    return cpus, "cpu", None


def _steady_rate(run_dirs: list[Path]) -> float:
    stamps = sorted(json.loads(line)["t"] for d in run_dirs
                    for line in (d / "log.jsonl").read_text().splitlines())
    return (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else 0.0


def bench_generation(args: argparse.Namespace, work: Path) -> list[tuple[str, str]]:
    from mminstruct.distributed.generate import run_on_ray
    from mminstruct.generate.config import GenerationConfig
    from mminstruct.llm.client import EndpointConfig
    from tests.fixtures.llm import FAKE_KEY, make_prompt_workspace
    from tests.openai_server import StubConfig, StubServer

    os.environ["OPENAI_API_KEY"] = FAKE_KEY
    ws = make_prompt_workspace(work / "gen", "vqa_nr", args.prompts, min_gen=1)
    server = StubServer(StubConfig(latency=args.latency)).start()

    def run(prefix: str, workers: int, n: int) -> tuple[float, float]:
        cfg = GenerationConfig(input_folder=ws.input_folder, output_folder=ws.output_folder,
                               prompt_file=ws.prompt_name, file_prefix=prefix, num_prompts=n,
                               concurrency=args.concurrency, timeout=30,
                               endpoint=EndpointConfig(base_url=server.url))
        t0 = time.perf_counter()
        result = run_on_ray(cfg, workers)
        wall = time.perf_counter() - t0
        if result.state != "finished":
            raise SystemExit(f"generation run {prefix} ended {result.state}: {result.message}")
        return n / wall, _steady_rate([r.run_dir for r in result.shards])

    try:
        run("warmup", 2, 4 * args.concurrency)
        one_wall, one_steady = run("one", 1, args.prompts)
        two_wall, two_steady = run("two", 2, args.prompts)
    finally:
        server.stop()
    ideal = args.concurrency / args.latency
    return [
        (f"1 worker, concurrency {args.concurrency} (ideal {ideal:.0f}/s)",
         f"{one_wall:.1f} | {one_steady:.1f} | 1.00"),
        (f"2 workers (ideal {2 * ideal:.0f}/s)",
         f"{two_wall:.1f} | {two_steady:.1f} | {two_wall / one_wall:.2f} end to end, "
         f"{two_steady / one_steady:.2f} steady"),
    ]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--model", choices=["vit-b-32", "tiny"], default="vit-b-32")
    p.add_argument("--copies", type=int, default=1,
                   help="hard-link each JPEG this many times (a larger pool, generated quickly)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--prompts", type=int, default=480)
    p.add_argument("--latency", type=float, default=0.5)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--skip", choices=["embedding", "generation"], default=None)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from mminstruct.distributed import connect, shutdown

    work = Path(tempfile.mkdtemp(prefix="ray_speed_"))
    cpus = os.cpu_count() or 2
    threads, device, _ = _layout()
    try:
        if device == "cpu":  # one decode slot + the encoder's threads, as the local pipeline has
            info = connect("local", num_cpus=cpus + 1, temp_dir=work / "ray")
            layout = f"logical CPUs: {cpus} torch threads + 1 decode slot"
        else:  # a GPU actor; decode tasks on every CPU, as many DataLoader workers locally
            info = connect("local", num_cpus=cpus, temp_dir=work / "ray")
            import torch

            layout = (f"{torch.cuda.get_device_name(0)}: one GPU encoder actor, {cpus} decode "
                      f"slots; local: {cpus - 1} DataLoader workers")
        print(f"{info.describe()} ({layout}; {cpus} cores; load average "
              f"{os.getloadavg()[0]:.1f})")
        if args.skip != "embedding":
            rows = bench_embedding(args, work)
            print(f"\n(1) embedding {args.images * args.copies} JPEGs 500x400, batch "
                  f"{args.batch_size}, best of {args.repeats}\n"
                  "| | seconds | images/s | × (a) |\n|---|---|---|---|")
            for name, vals in rows:
                print(f"| {name} | {vals} |")
        if args.skip != "generation":
            rows = bench_generation(args, work)
            print(f"\n(2) generation, {args.prompts} prompts, stub latency {args.latency} s\n"
                  "| | prompts/s end to end | prompts/s steady | × 1 worker |\n|---|---|---|---|")
            for name, vals in rows:
                print(f"| {name} | {vals} |")
        print(f"\nload average after: {os.getloadavg()[0]:.1f}")
    finally:
        shutdown()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
