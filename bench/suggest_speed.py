"""Keyword suggestions for a large reference set: k-means (k by silhouette or given), naming by the
shipped vocabulary, coverage against keywords.

    .venv/bin/python bench/suggest_speed.py [--n 100000] [--dim 512] [--clusters 12]

Data: N unit vectors from the clustered mixture of ``bench/retrieval_latency.py`` (``--clusters``
groups); the vocabulary's vectors are one near each group plus random ones for the rest of the
375 concepts (CLIP text vectors are computed once per model and cached, so the text encoder is not
part of the figure), 8 keywords. Printed side by side from one run: each stage's time for k chosen
by silhouette over 2–12 and for k given, whether the chosen k is the true one, and the load average.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from retrieval_latency import sphere_mixture  # noqa: E402

from mminstruct.app.suggest import choose_k, kmeans, load_vocabulary, suggest_keywords  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--clusters", type=int, default=8)
    args = ap.parse_args()
    import faiss

    print(f"machine: {os.cpu_count()} CPU cores (shared), load average {os.getloadavg()}, "
          f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} OpenMP threads")
    rng = np.random.default_rng(0)
    x = sphere_mixture(args.n, args.dim, args.clusters, seed=0, spread=1.0)
    words = load_vocabulary()
    # one word near each true group (found from the data's own k-means with the true k)
    true_c, _ = kmeans(x[:20_000], args.clusters, seed=1)
    vocab = rng.standard_normal((len(words), args.dim)).astype(np.float32)
    vocab[: args.clusters] = true_c + 0.05 * rng.standard_normal(true_c.shape).astype(np.float32)
    vocab /= np.linalg.norm(vocab, axis=1, keepdims=True)
    kw = vocab[:8]
    print(f"references: {args.n:,} × {args.dim} float32 in {args.clusters} groups; "
          f"vocabulary {len(words)} concepts; 8 keywords\n")

    rows = []
    t0 = time.perf_counter()
    s = suggest_keywords(x, vocab, words, k=None, keyword_vecs=kw, keywords=words[:8])
    rows.append(("k by silhouette (2–12), first call in the process (faiss loads)",
                 time.perf_counter() - t0, s.k))
    t0 = time.perf_counter()
    s = suggest_keywords(x, vocab, words, k=None, keyword_vecs=kw, keywords=words[:8])
    rows.append(("k by silhouette (2–12), again", time.perf_counter() - t0, s.k))
    t0 = time.perf_counter()
    s2 = suggest_keywords(x, vocab, words, k=args.clusters, keyword_vecs=kw, keywords=words[:8])
    rows.append((f"k given ({args.clusters})", time.perf_counter() - t0, s2.k))
    t0 = time.perf_counter()
    k, scores = choose_k(x, (2, 12))
    rows.append(("choosing k alone (silhouette on 2,000)", time.perf_counter() - t0, k))
    print(f"{'run':<64} {'time (s)':>9} {'k':>4}")
    for name, t, kk in rows:
        print(f"{name:<64} {t:>9.2f} {kk:>4}")
    print("silhouettes: " + ", ".join(f"{a}: {b:.2f}" for a, b in sorted(scores.items())))
    named = sorted({c.name for c in s.clusters} & set(words[: args.clusters]))
    print(f"clusters named by their own group's word: {len(named)} of {args.clusters}")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
