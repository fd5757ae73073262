"""Keyword suggestions: what the reference set contains, before the user guesses keywords.

1. Cluster the reference embeddings: spherical k-means (``faiss.Kmeans``), with ``k`` given or
   chosen by the best silhouette score (cosine distance) on a sample over ``k_range``; or HDBSCAN
   (scikit-learn's, on a sample, the rest joined to the nearest cluster centre; it finds ``k``
   itself and may call some points noise).
2. Name each cluster by the words of a vocabulary whose CLIP text vectors fit its centroid best.
   Scores are *centred*: a word's similarity to this centroid minus its mean similarity to all the
   reference images, so a word that fits every image equally (a generic "photograph") does not
   name every cluster. The vocabulary shipped is ``data/visual_concepts.txt`` (chart and document
   types, scenes, objects, styles; written for this project).
3. Compare with the current keywords: a cluster whose members fit no keyword well (their median
   best keyword similarity under ``min_fit``: by default 0.8 × the median of that similarity
   over all references) is flagged ``uncovered`` — a region of the map no keyword describes.

``suggest_keywords`` is pure numpy/faiss over given vectors (what the tests and ``bench/`` drive);
``suggest_for_workspace`` embeds the vocabulary with the workspace's CLIP (cached) and calls it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mminstruct.errors import ConfigError, DataFileError, InputError, choices_message
from mminstruct.embed.vectors import normalise_rows

VOCABULARY_PATH = Path(__file__).resolve().parent / "visual_concepts.txt"
METHODS = ("kmeans", "hdbscan")
SILHOUETTE_SAMPLE = 2_000
HDBSCAN_SAMPLE = 5_000
DEFAULT_K_RANGE = (2, 12)
#: a cluster is "uncovered" when its members' median best keyword similarity is under this share
#: of the median over every reference image (a heuristic: override with ``min_fit``)
FIT_SHARE = 0.8


def load_vocabulary(path: str | os.PathLike | None = None) -> list[str]:
    """Concepts one a line ('#' lines and blanks skipped, spaces collapsed, repeats dropped)."""
    p = Path(path) if path is not None else VOCABULARY_PATH
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataFileError(f"vocabulary {p}: cannot be read: {e}") from e
    out: dict[str, None] = {}
    for line in text.splitlines():
        word = " ".join(line.split())
        if word and not word.startswith("#"):
            out.setdefault(word, None)
    if not out:
        raise DataFileError(f"vocabulary {p} holds no concept (one a line; '#' starts a note)")
    return list(out)


# ----------------------------------------------------------------------------------------------
# Clustering


def kmeans(vectors: np.ndarray, k: int, *, seed: int = 0, niter: int = 20, nredo: int = 5,
           max_points_per_centroid: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Spherical k-means (faiss): (unit centroids [k, D], label per row). faiss trains on at most
    ``k × max_points_per_centroid`` rows drawn at random, keeping the best of ``nredo`` starts
    (one start often merges two small groups); every row is then assigned."""
    import faiss  # noqa: PLC0415 (heavy import)

    x = normalise_rows(np.asarray(vectors, dtype=np.float32))
    n = len(x)
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or not 1 <= k <= n:
        raise ConfigError(f"k must be an integer between 1 and the {n} images, got {k!r}")
    km = faiss.Kmeans(x.shape[1], int(k), niter=niter, nredo=nredo, seed=seed, spherical=True,
                      verbose=False,
                      max_points_per_centroid=max_points_per_centroid, min_points_per_centroid=1)
    km.train(x)
    centroids = normalise_rows(km.centroids)
    return centroids, (x @ centroids.T).argmax(axis=1).astype(np.int64)


def silhouette(vectors: np.ndarray, labels: np.ndarray) -> float:
    """Mean silhouette with cosine distance (1 − similarity) over L2-normalised rows; 0 when
    fewer than two clusters (points alone in their cluster count 0, as in scikit-learn)."""
    x = normalise_rows(np.asarray(vectors, dtype=np.float32))
    labels = np.asarray(labels)
    uniq, lab = np.unique(labels, return_inverse=True)
    if len(uniq) < 2:
        return 0.0
    dist = 1.0 - x @ x.T
    np.fill_diagonal(dist, 0.0)
    onehot = np.zeros((len(x), len(uniq)), np.float32)
    onehot[np.arange(len(x)), lab] = 1.0
    sums = dist @ onehot  # (n, clusters): total distance to each cluster
    sizes = onehot.sum(axis=0)
    own = sizes[lab]
    a = sums[np.arange(len(x)), lab] / np.maximum(own - 1, 1)
    other = sums / sizes
    other[np.arange(len(x)), lab] = np.inf
    b = other.min(axis=1)
    s = np.where(own > 1, (b - a) / np.maximum(np.maximum(a, b), 1e-12), 0.0)
    return float(s.mean())


def choose_k(vectors: np.ndarray, k_range: tuple[int, int] = DEFAULT_K_RANGE, *, seed: int = 0,
             sample: int = SILHOUETTE_SAMPLE) -> tuple[int, dict[int, float]]:
    """The k of ``k_range`` (inclusive) with the best silhouette, k-means run on a sample of at
    most ``sample`` rows. Returns (k, {k: silhouette})."""
    lo, hi = k_range
    x = np.asarray(vectors)
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(x), size=min(sample, len(x)), replace=False))
    xs = normalise_rows(np.asarray(x[rows], dtype=np.float32))
    hi = min(hi, len(xs) - 1)
    if hi < max(2, lo):
        raise InputError(f"too few images ({len(x)}) to choose k in {k_range}; give k")
    scores = {}
    for k in range(max(2, lo), hi + 1):
        _, labels = kmeans(xs, k, seed=seed)
        scores[k] = silhouette(xs, labels)
    best = max(scores, key=lambda k: (scores[k], -k))
    return best, scores


def _hdbscan(vectors: np.ndarray, seed: int, sample: int,
             min_cluster_size: int | None) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.cluster import HDBSCAN  # noqa: PLC0415 (heavy; a dependency of umap-learn)

    x = normalise_rows(np.asarray(vectors, dtype=np.float32))
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(x), size=min(sample, len(x)), replace=False))
    mcs = min_cluster_size or max(5, len(rows) // 50)
    lab = HDBSCAN(min_cluster_size=mcs, metric="euclidean", copy=True).fit_predict(x[rows])
    ids = sorted(set(lab.tolist()) - {-1})
    if not ids:
        raise InputError(f"HDBSCAN found no cluster of at least {mcs} images; use k-means")
    centroids = normalise_rows(np.stack([x[rows][lab == c].mean(axis=0) for c in ids]))
    labels = (x @ centroids.T).argmax(axis=1).astype(np.int64)
    return centroids, labels


# ----------------------------------------------------------------------------------------------
# Naming and coverage


@dataclass
class Cluster:
    """One region of the reference set."""

    index: int
    size: int
    words: list[tuple[str, float]]  # vocabulary words best first, with their centred score
    keyword: str | None  # the current keyword its members fit best (None without keywords)
    keyword_fit: float  # median over its members of their best keyword similarity
    uncovered: bool  # no current keyword fits it (keyword_fit < min_fit)

    @property
    def name(self) -> str:
        return self.words[0][0] if self.words else f"cluster {self.index}"


@dataclass
class Suggestions:
    method: str
    k: int
    clusters: list[Cluster]  # biggest first
    labels: np.ndarray  # cluster index per reference row
    centroids: np.ndarray
    silhouettes: dict[int, float] = field(default_factory=dict)  # when k was chosen
    min_fit: float | None = None

    def keywords(self, existing: Sequence[str] = ()) -> list[str]:
        """The cluster names as new keywords: distinct, biggest cluster first, none already in
        ``existing`` (ignoring case)."""
        seen = {e.casefold() for e in existing}
        out = []
        for c in self.clusters:
            if c.name.casefold() not in seen:
                seen.add(c.name.casefold())
                out.append(c.name)
        return out

    def uncovered(self) -> list[Cluster]:
        return [c for c in self.clusters if c.uncovered]

    def top_words(self, n: int = 3) -> set[str]:
        return {w for c in self.clusters for w, _ in c.words[:n]}


def name_clusters(centroids: np.ndarray, vocab_vecs: np.ndarray, vocabulary: Sequence[str],
                  reference_mean: np.ndarray | None = None, top: int = 5) -> list[list[tuple[str, float]]]:
    """Per centroid, the ``top`` words by centred similarity (see the module docstring)."""
    if len(vocabulary) != len(vocab_vecs):
        raise ConfigError(f"{len(vocabulary)} words but {len(vocab_vecs)} word vectors")
    v = normalise_rows(np.asarray(vocab_vecs, dtype=np.float32))
    sims = np.asarray(centroids, dtype=np.float32) @ v.T
    if reference_mean is not None:
        sims = sims - (np.asarray(reference_mean, dtype=np.float32) @ v.T)[None, :]
    out = []
    for row in sims:
        best = np.argsort(-row, kind="stable")[:top]
        out.append([(vocabulary[j], round(float(row[j]), 4)) for j in best])
    return out


def suggest_keywords(vectors: Any, vocab_vecs: np.ndarray, vocabulary: Sequence[str], *,
                     k: int | None = None, k_range: tuple[int, int] = DEFAULT_K_RANGE,
                     method: str = "kmeans", keyword_vecs: np.ndarray | None = None,
                     keywords: Sequence[str] = (), min_fit: float | None = None, top: int = 5,
                     seed: int = 0, min_cluster_size: int | None = None) -> Suggestions:
    """Cluster the reference vectors, name the clusters, flag the ones no keyword fits."""
    if method not in METHODS:
        raise ConfigError(choices_message("clustering method", method, METHODS))
    x = normalise_rows(np.asarray(vectors, dtype=np.float32))
    if x.ndim != 2 or len(x) < 2:
        raise InputError(f"suggestions need at least 2 reference images, got {len(x)}")
    if not len(vocabulary):
        raise ConfigError("the vocabulary is empty")
    silhouettes: dict[int, float] = {}
    if method == "hdbscan":
        centroids, labels = _hdbscan(x, seed, HDBSCAN_SAMPLE, min_cluster_size)
    else:
        if k is None:
            k, silhouettes = choose_k(x, k_range, seed=seed)
        centroids, labels = kmeans(x, int(k), seed=seed)
    mean = x.mean(axis=0)
    names = name_clusters(centroids, vocab_vecs, vocabulary, mean, top)
    sizes = np.bincount(labels, minlength=len(centroids))
    fit_kw: list[tuple[str | None, float]] = [(None, math.nan)] * len(centroids)
    threshold = None
    if keyword_vecs is not None and len(keywords):
        kv = normalise_rows(np.asarray(keyword_vecs, dtype=np.float32))
        if len(kv) != len(keywords):
            raise ConfigError(f"{len(keywords)} keywords but {len(kv)} keyword vectors")
        sims = x @ kv.T
        best = sims.max(axis=1)
        threshold = FIT_SHARE * float(np.median(best)) if min_fit is None else float(min_fit)
        fit_kw = []
        for c in range(len(centroids)):
            rows = labels == c
            if not rows.any():
                fit_kw.append((None, math.nan))
                continue
            votes = np.bincount(sims[rows].argmax(axis=1), minlength=len(keywords))
            fit_kw.append((keywords[int(votes.argmax())], float(np.median(best[rows]))))
    clusters = [Cluster(c, int(sizes[c]), names[c], fit_kw[c][0], fit_kw[c][1],
                        threshold is not None and fit_kw[c][1] < threshold)
                for c in range(len(centroids)) if sizes[c] > 0]
    clusters.sort(key=lambda c: (-c.size, c.index))
    return Suggestions(method, len(centroids), clusters, labels, centroids, silhouettes, threshold)


def suggest_for_workspace(ws: Any, emb: Any, *, k: int | None = None,
                          k_range: tuple[int, int] = DEFAULT_K_RANGE, method: str = "kmeans",
                          vocabulary: str | os.PathLike | Sequence[str] | None = None,
                          min_fit: float | None = None, seed: int = 0) -> Suggestions:
    """Suggestions over a workspace's reference embeddings, named with its CLIP (text vectors
    cached like the keywords'), compared with its current keywords."""
    from mminstruct.app.text_encoder import keyword_vectors  # noqa: PLC0415 (no torch here)

    p = ws.settings.partition
    if isinstance(vocabulary, (str, os.PathLike)) or vocabulary is None:
        words = load_vocabulary(vocabulary)
    else:
        words = [" ".join(w.split()) for w in vocabulary if " ".join(w.split())]
    vocab_vecs = keyword_vectors(words, p.clip_model, templates=p.templates or None,
                                 cache=ws.cache_dir)
    kw_vecs = None
    if p.keywords:
        kw_vecs = keyword_vectors(list(p.keywords), p.clip_model, templates=p.templates or None,
                                  cache=ws.cache_dir)
    return suggest_keywords(emb.reference.float32(), vocab_vecs, words, k=k, k_range=k_range,
                            method=method, keyword_vecs=kw_vecs, keywords=list(p.keywords),
                            min_fit=min_fit, seed=seed)
