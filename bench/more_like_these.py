""""More like these" over a large pool: a 1,000-image selection, K=1,000, through faiss.

    .venv/bin/python bench/more_like_these.py [--n 1000000] [--dim 512] [--selection 1000] [--k 1000]

Data: the clustered unit vectors of ``bench/retrieval_latency.py`` (2,000 clusters in 100 topics).
The selection: 1,000 pool images around three spots of the map (a lasso over three groups), all
excluded from the answer. The index is what the app uses for a pool this size
(``neighbours.pool_index`` → ``CandidateIndex.build_or_load``: "auto" is IVF at 1M vectors).
Printed side by side from one run: the index build (once; cached on disk by the app), then per
method and nprobe the median of 3 searches and the recall@K against the exact answer (a chunked
brute-force scan of the whole pool, also timed), with the load average.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from retrieval_latency import sphere_mixture  # noqa: E402

from mminstruct.app.neighbours import more_like_these  # noqa: E402
from mminstruct.partition.retrieval import CandidateIndex  # noqa: E402


def timed(fn, repeat: int = 3):
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--selection", type=int, default=1000)
    ap.add_argument("--k", type=int, default=1000)
    ap.add_argument("--nprobe", default="default,16,8,4")
    ap.add_argument("--index", default="auto", help="auto (flat below 1M, IVF at 1M), flat, ivf")
    args = ap.parse_args()
    import faiss

    print(f"machine: {os.cpu_count()} CPU cores (shared), load average {os.getloadavg()}, "
          f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} OpenMP threads")
    t0 = time.perf_counter()
    pool = sphere_mixture(args.n, args.dim, 2000, seed=0, topics=100)
    print(f"pool: {args.n:,} × {args.dim} float32 generated in {time.perf_counter() - t0:.1f} s")
    index = CandidateIndex.build(pool, args.index)
    print(f"index: {index.kind} nlist={index.params.nlist}, built in {index.build_seconds:.1f} s "
          f"(once; the app caches it on disk)")
    rng = np.random.default_rng(1)
    seeds = rng.choice(args.n, 3, replace=False)
    per = -(-args.selection // 3)
    _, near = index.search(pool[seeds], per * 2)
    sel_rows = np.unique(np.concatenate([row[:per] for row in near]))[:args.selection]
    sel = pool[sel_rows]
    print(f"selection: {len(sel_rows):,} pool images around 3 spots (excluded from the answer); "
          f"K={args.k:,}\n")

    t_exact: dict[str, float] = {}
    exact: dict[str, np.ndarray] = {}
    for method in ("members", "centroid"):
        t0 = time.perf_counter()
        exact[method] = more_like_these(sel, args.k, pool=pool, method=method,
                                        exclude=sel_rows).ids
        t_exact[method] = time.perf_counter() - t0

    print(f"{'method':<10} {'search':<22} {'time (s)':>9} {'recall@K':>9}")
    for method in ("members", "centroid"):
        print(f"{method:<10} {'brute force (exact)':<22} {t_exact[method]:>9.3f} {1.0:>9.3f}")
        for probe in args.nprobe.split(","):
            nprobe = None if probe == "default" else int(probe)
            t, got = timed(lambda m=method, npb=nprobe: more_like_these(
                sel, args.k, index=index, method=m, exclude=sel_rows, nprobe=npb))
            rec = len(set(got.ids.tolist()) & set(exact[method].tolist())) / args.k
            label = f"ivf nprobe={nprobe or index.nprobe}"
            print(f"{method:<10} {label:<22} {t:>9.3f} {rec:>9.3f}")
    print(f"\nload average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
