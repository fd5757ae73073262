"""2-D projection speed for the app's embedding map: UMAP vs PCA, cold vs warm vs cached, one run.

    .venv/bin/python bench/projection_speed.py [--n 10000] [--dim 512] [--big 100000] [--sample 50000]

Data: unit vectors from a Gaussian mixture on the sphere (20 clusters, 512-d, like CLIP image
embeddings of a varied pool). Printed side by side, seconds and ratios to the cached call:

  (a) ``import umap`` and umap's numba compile alone (``warm_up_umap`` on 300 points), in a fresh
      process — the one-off cost of the first map after the app starts;
  (b) UMAP of N points, first call in this process (includes (a)'s compile);
  (c) the same call again without a cache (warm: the compute alone);
  (d) the cached call (``cache_dir``), in this process and in a new process;
  (e) PCA of the same N points;
  (f) UMAP of ``--big`` points fit on a ``--sample`` sample + ``transform`` for the rest, and PCA.

Plus the 10-NN cluster purity of each map (the share of a point's 10 nearest 2-D neighbours
from its own mixture component): what the speed buys. Target: (b) < 30 s on 2 cores for 10,000.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mminstruct.app import projection  # noqa: E402


def mixture(n: int, dim: int, n_clusters: int, seed: int, spread: float = 0.8):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = rng.integers(0, n_clusters, n)
    x = centres[labels] + spread / np.sqrt(dim) * rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), labels


def purity(emb: np.ndarray, labels: np.ndarray, k: int = 10, max_points: int = 20_000) -> float:
    import faiss

    idx = projection.display_sample(len(emb), max_points, seed=0)
    e = np.ascontiguousarray(emb, dtype=np.float32)
    index = faiss.IndexFlatL2(2)
    index.add(e)
    _, nn = index.search(e[idx], k + 1)
    return float((labels[nn[:, 1:]] == labels[idx, None]).mean())


def fresh_process(code: str) -> dict[str, float]:
    """Run ``code`` in a new interpreter; it prints ``name=seconds`` lines."""
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, check=True,
                         capture_output=True, text=True).stdout
    return {k: float(v) for k, v in (line.split("=") for line in out.split() if "=" in line)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--big", type=int, default=100_000)
    ap.add_argument("--sample", type=int, default=50_000)
    args = ap.parse_args()
    print(f"machine: {os.cpu_count()} CPU cores, shared with other jobs while this ran; "
          f"UMAP runs single-threaded (random_state fixed, for determinism)\n")
    x, labels = mixture(args.n, args.dim, 20, seed=0)
    tmp = Path(tempfile.mkdtemp(prefix="projbench-"))
    np.save(tmp / "x.npy", x)

    jit = fresh_process("""
        import time
        t0 = time.perf_counter()
        import umap
        t1 = time.perf_counter()
        from mminstruct.app import projection
        projection.warm_up_umap()
        print(f"import={t1 - t0} jit={time.perf_counter() - t1}")
    """)

    rows = []
    t0 = time.perf_counter()
    first = projection.project_2d(x, "umap")
    rows.append((f"(b) UMAP {args.n:,}: first call (incl. JIT)", time.perf_counter() - t0, purity(first, labels)))
    t0 = time.perf_counter()
    second = projection.project_2d(x, "umap")
    rows.append((f"(c) UMAP {args.n:,}: again, uncached", time.perf_counter() - t0, purity(second, labels)))
    projection.project_2d(x, "umap", cache_dir=tmp / "cache")  # fill the cache
    t0 = time.perf_counter()
    cached = projection.project_2d(x, "umap", cache_dir=tmp / "cache")
    rows.append((f"(d) UMAP {args.n:,}: cached, same process", time.perf_counter() - t0, purity(cached, labels)))
    new = fresh_process(f"""
        import time, numpy as np
        from mminstruct.app import projection
        x = np.load({str(tmp / 'x.npy')!r})
        t0 = time.perf_counter()
        projection.project_2d(x, "umap", cache_dir={str(tmp / 'cache')!r})
        print(f"cached={{time.perf_counter() - t0}}")
    """)
    rows.append((f"(d) UMAP {args.n:,}: cached, new process", new["cached"], purity(cached, labels)))
    t0 = time.perf_counter()
    pca = projection.project_2d(x, "pca")
    rows.append((f"(e) PCA {args.n:,}", time.perf_counter() - t0, purity(pca, labels)))

    if args.big:
        xb, lb = mixture(args.big, args.dim, 20, seed=1)
        t0 = time.perf_counter()
        big = projection.project_2d(xb, "umap", sample_size=args.sample)
        rows.append((f"(f) UMAP {args.big:,}: fit {args.sample:,} + transform", time.perf_counter() - t0,
                     purity(big, lb)))
        t0 = time.perf_counter()
        bigp = projection.project_2d(xb, "pca")
        rows.append((f"(f) PCA {args.big:,}", time.perf_counter() - t0, purity(bigp, lb)))

    ref = rows[2][1]
    print(f"(a) fresh process: import umap {jit['import']:.2f} s, numba compile (warm_up_umap) "
          f"{jit['jit']:.2f} s\n")
    print(f"{'case':48} {'seconds':>9} {'× cached':>10} {'10-NN purity':>13}")
    for name, secs, pur in rows:
        print(f"{name:48} {secs:9.3f} {secs / ref:10.0f} {pur:13.3f}")
    same = np.array_equal(first, second) and np.array_equal(first, cached)
    print(f"\nfirst, uncached and cached maps identical: {same}")


if __name__ == "__main__":
    main()
