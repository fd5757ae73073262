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

Scale mode (``--pool-file pool.npy --n 10000000``): the pool is a float16 ``.npy`` on disk (written
once, in chunks), opened memory-mapped; ``CandidateIndex.build_or_load`` picks its index by size
("auto": IVF-PQ at 10M × 512) and reads the file in chunks; the exact baseline is a chunked numpy
scan. Prints build time, peak memory (RSS) and latency/recall with and without exact re-ranking
from the memory map — the proof that 10M vectors need neither the images nor 20 GB of RAM.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mminstruct.partition.retrieval import CandidateIndex, top_k_per_keyword  # noqa: E402


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
    ap.add_argument("--pool-file", type=Path, help="scale mode: a float16 .npy pool (created if missing)")
    ap.add_argument("--cache-dir", type=Path, help="scale mode: where the index is cached")
    ap.add_argument("--write-pool", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.write_pool:
        write_pool(args.write_pool, args.n, args.dim, args.data == "topics")
        return
    if args.pool_file:
        run_scale(args)
        return
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


class AnonMemory:
    """Peak anonymous resident memory (RssAnon, sampled every 0.1 s): what the process holds
    itself. ru_maxrss would also count the memory map's file pages, which the kernel can drop."""

    def __init__(self):
        import threading

        self.peak = 0
        self._stop = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    @staticmethod
    def now_kib() -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
        return 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.now_kib())
            self._stop.wait(0.1)

    def peak_gib(self) -> float:
        self.peak = max(self.peak, self.now_kib())
        return self.peak / 2**20


MEM: AnonMemory | None = None


def peak_rss_gib() -> float:
    return MEM.peak_gib() if MEM is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def run_scale(args) -> None:
    import faiss

    global MEM
    MEM = AnonMemory()
    print(f"machine: {os.cpu_count()} CPU cores (shared with other jobs), faiss {faiss.__version__}")
    path = args.pool_file
    if not path.exists():  # in a child process, so that its memory does not count below
        t0 = time.perf_counter()
        import subprocess

        subprocess.run([sys.executable, __file__, "--write-pool", str(path), "--n", str(args.n),
                        "--dim", str(args.dim), "--data", args.data], check=True)
        print(f"pool written: {path} in {time.perf_counter() - t0:.0f} s")
    x = np.load(path, mmap_mode="r")
    print(f"pool: {x.shape[0]:,} × {x.shape[1]} {x.dtype} memory-mapped ({x.nbytes / 2**30:.1f} GiB on disk); "
          f"peak anonymous RSS so far {peak_rss_gib():.2f} GiB")
    rng = np.random.default_rng(1)
    q = np.asarray(x[np.sort(rng.choice(x.shape[0], args.queries, replace=False))], dtype=np.float32)
    q = q + 0.3 / np.sqrt(x.shape[1]) * rng.standard_normal(q.shape, dtype=np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)

    t0 = time.perf_counter()
    index = CandidateIndex.build_or_load(x, args.cache_dir or path.parent / "index-cache",
                                         fingerprint=f"bench-pool-{path.stat().st_size}-{args.data}")
    t_build = time.perf_counter() - t0
    print(f"index: {index.kind} nlist={index.params.nlist} pq_m={index.params.pq_m} nprobe={index.nprobe}, "
          f"{'loaded from cache' if index.from_cache else 'built'} in {t_build:.0f} s; "
          f"peak anonymous RSS {peak_rss_gib():.2f} GiB")
    t0 = time.perf_counter()
    exact = np.full((len(q), args.k), -np.inf, np.float32), np.full((len(q), args.k), -1, np.int64)
    for s in range(0, x.shape[0], 100_000):
        block = np.asarray(x[s:s + 100_000], dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        sims = q @ block.T
        top = np.argpartition(-sims, args.k - 1, axis=1)[:, :args.k]
        cand_s = np.concatenate([exact[0], np.take_along_axis(sims, top, 1)], axis=1)
        cand_i = np.concatenate([exact[1], top + s], axis=1)
        keep = np.argsort(-cand_s, axis=1)[:, :args.k]
        exact = np.take_along_axis(cand_s, keep, 1), np.take_along_axis(cand_i, keep, 1)
    t_exact = time.perf_counter() - t0
    print(f"exact baseline (chunked numpy scan of the memory map): {t_exact:.1f} s for {len(q)} queries")

    print(f"{'search':28} {'ms':>9} {'R@10':>6} {'R@' + str(args.k):>7}")
    for name, kw in [(index.kind, {}), (f"{index.kind} + re-rank 4K (mmap)", {"rerank_with": x})]:
        ts, (_, ids) = timed(lambda kw=kw: index.search(q, args.k, **kw), repeat=3)
        print(f"{name:28} {ts * 1e3:9.1f} {recall(exact[1], ids, 10):6.3f} {recall(exact[1], ids, args.k):7.3f}")
    ts, topk = timed(lambda: top_k_per_keyword(index, q, args.k, rerank_with=x), repeat=1)
    print(f"{'top_k_per_keyword + re-rank':28} {ts * 1e3:9.1f}   (10 keywords × K={args.k}, overlap rule)")
    print(f"peak anonymous RSS {peak_rss_gib():.2f} GiB")


def write_pool(path: Path, n: int, dim: int, topics: bool, step: int = 250_000) -> None:
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n, dim))
    for s in range(0, n, step):
        m = min(step, n - s)
        out[s:s + m] = _mixture_chunk(m, dim, seed=s, topics=topics)
    out.flush()


def _mixture_chunk(m: int, dim: int, seed: int, topics: bool) -> np.ndarray:
    """Rows of the same mixture for any chunk: fixed centres (seed 0), per-chunk noise."""
    rng0 = np.random.default_rng(0)
    if topics:
        tops = _unit(rng0.standard_normal((100, dim), dtype=np.float32))
        centres = _unit(tops[rng0.integers(0, 100, 2000)]
                        + 0.7 / np.sqrt(dim) * rng0.standard_normal((2000, dim), dtype=np.float32))
    else:
        centres = _unit(rng0.standard_normal((2000, dim), dtype=np.float32))
    rng = np.random.default_rng(seed + 1)
    out = centres[rng.integers(0, 2000, m)]
    out += 0.6 / np.sqrt(dim) * rng.standard_normal((m, dim), dtype=np.float32)
    return _unit(out).astype(np.float16)


def _topk_agreement(a, b) -> float:
    """Share of the exact top-K-per-keyword assignment that the approximate index reproduces."""
    same = sum(len(set(x.tolist()) & set(y.tolist())) for x, y in zip(a.ids, b.ids))
    return same / max(1, sum(len(x) for x in a.ids))


if __name__ == "__main__":
    main()
