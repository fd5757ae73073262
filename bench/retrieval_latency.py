"""Top-K retrieval from a large candidate pool: exact vs IVF (vs IVF-PQ), from one run.

    .venv/bin/python bench/retrieval_latency.py [--n 1000000] [--dim 512] [--k 1000] [--queries 10]

Data: N unit vectors (float32) from a Gaussian mixture on the sphere: 2,000 clusters, grouped in
100 topics by default (``--data topics``: a query's 1,000 nearest lie in its topic, as for a
keyword over a web image pool), or unrelated (``--data clusters``: past a cluster's ~500 members
the next nearest are scattered over the whole sphere — the hard case for any IVF index when
K exceeds the cluster size). Uniform random vectors have no neighbours worth finding and are not
used. Queries: 10 "keywords", each a perturbed pool vector. Printed side by side:

  * build time per index kind (IVF: k-means training on a sample + adding every vector in chunks);
  * latency of one ``search`` of the 10 queries with K=1000 (median of 5), and of
    ``top_k_per_keyword`` (10 keywords × K=1000 with the overlap rule), ratios to exact;
  * recall@10 and recall@1000 of each approximate index against the exact one, and IVF recall
    and latency across nprobe values.

Memory: 1M × 512 float32 is 2 GB for the vectors plus 2 GB per flat/IVF index.
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

from mminstruct.retrieval import CandidateIndex, top_k_per_keyword  # noqa: E402


def _unit(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def sphere_mixture(n: int, dim: int, n_clusters: int, seed: int, spread: float = 0.6,
                   chunk: int = 100_000, topics: int = 0) -> np.ndarray:
    """Unit vectors around ``n_clusters`` unit centres. With ``topics`` > 0 the centres are
    themselves grouped around ``topics`` directions (topics → sub-topics → images, like CLIP
    embeddings of a web pool); with 0 they are independent (no structure above a cluster)."""
    rng = np.random.default_rng(seed)
    if topics:
        tops = _unit(rng.standard_normal((topics, dim), dtype=np.float32))
        centres = tops[rng.integers(0, topics, n_clusters)]
        centres = _unit(centres + 0.7 / np.sqrt(dim) * rng.standard_normal((n_clusters, dim),
                                                                           dtype=np.float32))
    else:
        centres = _unit(rng.standard_normal((n_clusters, dim), dtype=np.float32))
    out = np.empty((n, dim), dtype=np.float32)
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        block = centres[rng.integers(0, n_clusters, m)]
        block += spread / np.sqrt(dim) * rng.standard_normal((m, dim), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[s:s + m] = block
    return out


def recall(exact_ids: np.ndarray, ids: np.ndarray, k: int) -> float:
    return float(np.mean([len(set(a[:k]) & set(b[:k])) / k
                          for a, b in zip(exact_ids.tolist(), ids.tolist())]))


def timed(fn, repeat: int = 5):
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
    ap.add_argument("--k", type=int, default=1000)
    ap.add_argument("--queries", type=int, default=10)
    ap.add_argument("--no-pq", action="store_true", help="skip the IVF-PQ index")
    ap.add_argument("--data", choices=("topics", "clusters"), default="topics",
                    help="topics: 100 topics × 20 clusters each; clusters: 2,000 unrelated clusters")
    args = ap.parse_args()
    import faiss

    print(f"machine: {os.cpu_count()} CPU cores (shared with other jobs), faiss {faiss.__version__}, "
          f"{faiss.omp_get_max_threads()} OpenMP threads")
    t0 = time.perf_counter()
    x = sphere_mixture(args.n, args.dim, 2000, seed=0, topics=100 if args.data == "topics" else 0)
    rng = np.random.default_rng(1)
    q = x[rng.choice(args.n, args.queries, replace=False)]
    q = q + 0.3 / np.sqrt(args.dim) * rng.standard_normal(q.shape, dtype=np.float32)
    print(f"data ({args.data}): {args.n:,} × {args.dim} float32 ({x.nbytes / 2**30:.1f} GiB) generated in "
          f"{time.perf_counter() - t0:.1f} s; {args.queries} queries, K={args.k}\n")

    rows = []
    flat = CandidateIndex.build(x, "flat")
    t_search, (_, exact_ids) = timed(lambda: flat.search(q, args.k))
    t_topk, exact_topk = timed(lambda: top_k_per_keyword(flat, q, args.k), repeat=3)
    rows.append(("flat (exact)", flat.build_seconds, t_search, t_topk, 1.0, 1.0, 1.0, "-"))
    base_search, base_topk = t_search, t_topk

    ivf = CandidateIndex.build(x, "ivf")
    t_search, (_, ids) = timed(lambda: ivf.search(q, args.k))
    t_topk, topk = timed(lambda: top_k_per_keyword(ivf, q, args.k), repeat=3)
    agree = _topk_agreement(exact_topk, topk)
    rows.append((f"ivf nlist={ivf.params.nlist} nprobe={ivf.nprobe}", ivf.build_seconds, t_search,
                 t_topk, recall(exact_ids, ids, 10), recall(exact_ids, ids, args.k), agree, "-"))

    if not args.no_pq:
        pq = CandidateIndex.build(x, "ivfpq")
        t_search, (_, ids) = timed(lambda: pq.search(q, args.k))
        t_rr, (_, ids_rr) = timed(lambda: pq.search(q, args.k, rerank_with=x, rerank_factor=4))
        mem = pq.ntotal * pq.params.pq_m / 2**20
        rows.append((f"ivfpq m={pq.params.pq_m} nprobe={pq.nprobe}", pq.build_seconds, t_search,
                     float("nan"), recall(exact_ids, ids, 10), recall(exact_ids, ids, args.k),
                     float("nan"), f"{mem:.0f} MiB codes"))
        rows.append(("  + exact re-rank of 4K", 0.0, t_rr, float("nan"),
                     recall(exact_ids, ids_rr, 10), recall(exact_ids, ids_rr, args.k),
                     float("nan"), ""))

    print(f"{'index':34} {'build s':>8} {'search ms':>10} {'vs exact':>9} {'top-K/kw ms':>12} "
          f"{'vs exact':>9} {'R@10':>6} {'R@' + str(args.k):>7} {'same top-K':>10}  note")
    for name, build, ts, tk, r10, rk, agree, note in rows:
        print(f"{name:34} {build:8.1f} {ts * 1e3:10.1f} {base_search / ts:8.2f}x "
              f"{tk * 1e3:12.1f} {base_topk / tk if tk == tk else float('nan'):8.2f}x "
              f"{r10:6.3f} {rk:7.3f} {agree:10.3f}  {note}")

    print(f"\nIVF across nprobe ({args.queries} queries, K={args.k}):")
    print(f"{'nprobe':>7} {'search ms':>10} {'vs exact':>9} {'R@10':>6} {'R@' + str(args.k):>7}")
    for nprobe in (8, 16, 32, ivf.nprobe, 128, 256):
        ts, (_, ids) = timed(lambda n=nprobe: ivf.search(q, args.k, nprobe=n))
        print(f"{nprobe:7d} {ts * 1e3:10.1f} {base_search / ts:8.2f}x "
              f"{recall(exact_ids, ids, 10):6.3f} {recall(exact_ids, ids, args.k):7.3f}")


def _topk_agreement(a, b) -> float:
    """Share of the exact top-K-per-keyword assignment that the approximate index reproduces."""
    same = sum(len(set(x.tolist()) & set(y.tolist())) for x, y in zip(a.ids, b.ids))
    return same / max(1, sum(len(x) for x in a.ids))


if __name__ == "__main__":
    main()
