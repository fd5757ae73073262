"""Zero-shot keyword partition of image embeddings.

* ``assign_keywords(image_vecs, keyword_vecs, min_similarity=None)`` → ``Partition``: each image goes
  to its most similar keyword (argmax of cosine similarity); the scores to every keyword, the best
  score and the margin to the runner-up are kept for later confidence displays. Images under
  ``min_similarity`` are "unassigned" (keyword index -1): reported, not used. Fast enough for the
  app to recompute on every keyword edit (float32 matmul in row chunks).
* ``top_k_per_keyword(image_vecs, keyword_vecs, k)`` → ``TopK``: the K most similar images per
  keyword, overlaps resolved by ``resolve_overlaps``.
* ``resolve_overlaps(ranked_ids, ranked_scores, k)``: the overlap rule on per-keyword ranked lists
  (usable by a faiss retrieval): an image retrieved by several keywords goes to the keyword it is
  most similar to, and a keyword that lost an image takes its next nearest, so every keyword gets K
  when its list allows. Equivalently: walk all (keyword, image) pairs by descending similarity and
  accept a pair while the image is free and the keyword has fewer than K.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mminstruct.errors import ConfigError

UNASSIGNED = -1
_CHUNK_ROWS = 2_048


def _as_matrix(x: np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise ConfigError(f"{what} must be a 2-D array (n, dim), got shape {arr.shape}")
    return arr


def similarity_matrix(image_vecs: np.ndarray, keyword_vecs: np.ndarray) -> np.ndarray:
    """Cosine similarities (n_images, n_keywords) in float32 for L2-normalised inputs."""
    img = _as_matrix(image_vecs, "image vectors")
    kw = _as_matrix(keyword_vecs, "keyword vectors").astype(np.float32, copy=False)
    if img.shape[0] and kw.shape[0] and img.shape[1] != kw.shape[1]:
        raise ConfigError(f"image vectors have dim {img.shape[1]} but keyword vectors dim {kw.shape[1]} "
                          "(embedded with different models?)")
    out = np.empty((img.shape[0], kw.shape[0]), dtype=np.float32)
    if not out.size:
        return out
    kw_t = np.ascontiguousarray(kw.T)
    for start in range(0, img.shape[0], _CHUNK_ROWS):  # bounded float32 copies of float16 input
        block = img[start:start + _CHUNK_ROWS].astype(np.float32, copy=False)
        np.matmul(block, kw_t, out=out[start:start + _CHUNK_ROWS])
    return out



#: ``top_similar``: float16 rows are scored by faiss's float16 scalar quantizer this many at a time
#: (its SIMD inner product reads float16 directly: no float32 copy of the rows; 0.08 s for
#: 210,000 × 512 against 0.3-0.7 s for ``similarity_matrix``'s float32 pass)
TOP_CHUNK_ROWS = 16_384
_TOP_SLACK = 16  # each chunk's list is k + this deep
_TOP_EPS = 1e-4  # faiss's and numpy's float32 sums differ far less than this (unit vectors)


def top_similar(blocks: Sequence[np.ndarray], query: np.ndarray, k: int, *,
                chunk_rows: int = TOP_CHUNK_ROWS) -> list[tuple[int, float]]:
    """The ``k`` rows most similar to ``query`` ([D], unit) over the row blocks ``blocks`` (each
    [n_i, D], unit rows; row numbers run on from one block to the next): (row, similarity), best
    first, ties by row. A similarity is the float64 dot product rounded to float32
    (``exact_similarity``: the same whatever the rows batched with it, unlike a float32 BLAS
    sum), so the answer is exactly the first ``k`` of every row so scored and sorted.

    Float16 blocks are searched chunk by chunk with faiss (``TOP_CHUNK_ROWS``): each chunk's
    ``k + 16`` best are candidates, and a chunk whose list may have been cut inside the best ``k``
    (its last score within ``1e-4`` of the candidates' ``k``-th) is scored whole. Other dtypes
    (or no faiss): every row scored by ``similarity_matrix``, those within ``1e-4`` of the
    block's ``k``-th are candidates. The candidates are then scored exactly and ranked."""
    q = np.asarray(query, dtype=np.float32).reshape(1, -1)
    k = int(k)
    if k <= 0:
        return []
    offsets = np.cumsum([0] + [len(b) for b in blocks])
    cand: list[np.ndarray] = []
    cut_chunks: list[tuple[int, int, int, float]] = []  # (block, start, stop, its list's last score)
    fp16 = None  # (faiss, its float16 scalar-quantizer index), made at the first float16 block
    for bi, block in enumerate(blocks):
        block = _as_matrix(block, "image vectors")
        if block.shape[0] and block.shape[1] != q.shape[1]:
            raise ConfigError(f"image vectors have dim {block.shape[1]} but the query dim "
                              f"{q.shape[1]} (embedded with different models?)")
        if block.dtype == np.float16 and fp16 is None:
            fp16 = _fp16_index(q.shape[1])
        if block.dtype != np.float16 or fp16 is None:
            sims = similarity_matrix(block, q)[:, 0]
            if len(sims):
                cut = len(sims) - min(k, len(sims))
                kth = np.partition(sims, cut)[cut]
                cand.append(np.flatnonzero(sims >= kth - _TOP_EPS) + offsets[bi])
            continue
        faiss, sq = fp16
        for start in range(0, len(block), chunk_rows):
            chunk = np.ascontiguousarray(block[start:start + chunk_rows])
            depth = min(k + _TOP_SLACK, len(chunk))
            sq.reset()
            faiss.copy_array_to_vector(chunk.view(np.uint8).reshape(-1), sq.codes)
            sq.ntotal = len(chunk)
            scores, ids = sq.search(q, depth)
            cand.append(ids[0][ids[0] >= 0] + start + offsets[bi])
            if depth < len(chunk):
                cut_chunks.append((bi, start, start + len(chunk), float(scores[0][depth - 1])))
        sq.reset()
    rows = np.unique(np.concatenate(cand)) if cand else np.zeros(0, np.int64)

    def scored(r: np.ndarray) -> np.ndarray:
        out = np.empty(len(r), np.float32)
        for bi, block in enumerate(blocks):
            inside = (r >= offsets[bi]) & (r < offsets[bi + 1])
            if inside.any():
                out[inside] = exact_similarity(block[r[inside] - offsets[bi]], q[0])
        return out

    sims = scored(rows)
    if cut_chunks and len(sims):
        kth = np.sort(sims)[::-1][min(k, len(sims)) - 1]
        extra = [np.flatnonzero(similarity_matrix(blocks[bi][start:stop], q)[:, 0]
                                >= kth - _TOP_EPS) + start + offsets[bi]
                 for bi, start, stop, last in cut_chunks
                 if last >= kth - _TOP_EPS]  # that chunk's list may have stopped inside the best k
        if extra:
            rows = np.unique(np.concatenate([rows, *extra]))
            sims = scored(rows)
    order = np.lexsort((rows, -sims.astype(np.float64)))[:k]
    return [(int(rows[i]), float(sims[i])) for i in order]


def _fp16_index(dim: int) -> tuple[Any, Any] | None:
    """(faiss, an empty float16 scalar-quantizer index of ``dim``) for ``top_similar``, or None
    where faiss is missing (then float16 rows go through ``similarity_matrix``)."""
    try:
        import faiss  # noqa: PLC0415 (heavy; the app has it for its indexes)
    except ImportError:
        return None
    return faiss, faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16,
                                             faiss.METRIC_INNER_PRODUCT)


def exact_similarity(rows: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Dot products of ``rows`` ([n, D]) with ``query`` ([D]) in float64, rounded to float32: a
    row's value does not depend on the rows computed with it (``top_similar``'s scores)."""
    return (np.asarray(rows, dtype=np.float64) @ np.asarray(query, dtype=np.float64)).astype(np.float32)


def normalise_keywords(keywords: Sequence[str]) -> list[str]:
    """Spaces collapsed; an empty or non-string keyword, or one given twice (ignoring case and
    spaces), is a ConfigError naming it. The one rule for the command line and the app."""
    if isinstance(keywords, str) or not isinstance(keywords, Sequence):
        raise ConfigError(f"keywords must be a list of strings, got {keywords!r}")
    out: list[str] = []
    seen: dict[str, str] = {}
    for k in keywords:
        if not isinstance(k, str) or not k.strip():
            raise ConfigError(f"keyword {k!r} is empty or not a string")
        k = " ".join(k.split())
        norm = k.casefold()
        if norm in seen:
            raise ConfigError(f"keyword {k!r} is given twice (also as {seen[norm]!r}); keywords "
                              "are compared ignoring case and spaces")
        seen[norm] = k
        out.append(k)
    return out

@dataclass
class Partition:
    """Per image: ``assignment`` (keyword index, -1 = unassigned), ``best`` score, ``margin`` to
    the runner-up (``best`` itself when there is one keyword), and ``scores`` to every keyword."""

    keywords: list[str]
    scores: np.ndarray  # float32 (n, k)
    assignment: np.ndarray  # int64 (n,)
    best: np.ndarray  # float32 (n,)
    margin: np.ndarray  # float32 (n,)
    min_similarity: float | None = None

    def __len__(self) -> int:
        return int(self.assignment.shape[0])

    def members(self, keyword: int | str) -> np.ndarray:
        """Row indices assigned to a keyword (index or name), ascending."""
        k = self.keywords.index(keyword) if isinstance(keyword, str) else int(keyword)
        return np.flatnonzero(self.assignment == k)

    def groups(self) -> dict[str, list[int]]:
        """keyword → row indices, every keyword present (in the given order), unassigned left out."""
        order = np.argsort(self.assignment, kind="stable")
        bounds = np.searchsorted(self.assignment[order], np.arange(len(self.keywords) + 1))
        return {kw: order[bounds[i]:bounds[i + 1]].tolist() for i, kw in enumerate(self.keywords)}

    def unassigned(self) -> np.ndarray:
        return np.flatnonzero(self.assignment == UNASSIGNED)

    def counts(self) -> dict[str, int]:
        """keyword → number of images, plus ``"unassigned"`` when min_similarity is set."""
        bins = np.bincount(self.assignment + 1, minlength=len(self.keywords) + 1)
        out = {kw: int(bins[i + 1]) for i, kw in enumerate(self.keywords)}
        if self.min_similarity is not None:
            out["unassigned"] = int(bins[0])
        return out

    def unassigned_report(self, labels: Sequence[str] | None = None, limit: int = 20) -> str:
        """One line per unassigned image (label, best score, nearest keyword), capped at ``limit``."""
        idx = self.unassigned()
        if not len(idx):
            return "no image is unassigned"
        nearest = self.scores[idx].argmax(axis=1) if self.scores.shape[1] else np.zeros(len(idx), int)
        lines = [f"{len(idx)} of {len(self)} image(s) under min_similarity {self.min_similarity}:"]
        for i, near in list(zip(idx, nearest))[:limit]:
            name = labels[i] if labels is not None else f"image {i}"
            lines.append(f"  {name}: best {self.best[i]:.3f} ({self.keywords[near]!r})")
        if len(idx) > limit:
            lines.append(f"  … and {len(idx) - limit} more")
        return "\n".join(lines)


def partition_from_scores(scores: np.ndarray, keywords: Sequence[str],
                          min_similarity: float | None = None) -> Partition:
    """A Partition from a ready similarity matrix (n, k)."""
    scores = _as_matrix(scores, "scores").astype(np.float32, copy=False)
    n, k = scores.shape
    if k != len(keywords):
        raise ConfigError(f"{k} score columns for {len(keywords)} keywords")
    if k == 0:
        raise ConfigError("no keywords to partition by")
    if min_similarity is not None and not -1.0 <= float(min_similarity) <= 1.0:
        raise ConfigError(f"min_similarity must be between -1 and 1, got {min_similarity!r}")
    assignment = scores.argmax(axis=1).astype(np.int64) if n else np.zeros(0, np.int64)
    best = scores[np.arange(n), assignment] if n else np.zeros(0, np.float32)
    if k >= 2 and n:
        top2 = np.partition(scores, k - 2, axis=1)[:, k - 2:]
        margin = (top2[:, 1] - top2[:, 0]).astype(np.float32)
    else:
        margin = best.copy()
    if min_similarity is not None:
        assignment[best < float(min_similarity)] = UNASSIGNED
    return Partition(list(keywords), scores, assignment, best.astype(np.float32), margin,
                     None if min_similarity is None else float(min_similarity))


def assign_keywords(image_vecs: np.ndarray, keyword_vecs: np.ndarray,
                    min_similarity: float | None = None,
                    keywords: Sequence[str] | None = None) -> Partition:
    """Argmax keyword per image (see the module docstring). ``keywords`` default to their indices."""
    kw_vecs = _as_matrix(keyword_vecs, "keyword vectors")
    names = list(keywords) if keywords is not None else [str(i) for i in range(kw_vecs.shape[0])]
    return partition_from_scores(similarity_matrix(image_vecs, kw_vecs), names, min_similarity)


@dataclass
class TopK:
    """Per keyword: the chosen row indices (best first) and their similarity to that keyword."""

    keywords: list[str]
    k: int
    ids: list[np.ndarray]
    scores: list[np.ndarray]
    short: dict[str, int] = field(default_factory=dict)  # keyword → how many it got, when < k

    def groups(self) -> dict[str, list[int]]:
        return {kw: ids.tolist() for kw, ids in zip(self.keywords, self.ids)}


def resolve_overlaps(ranked_ids: Sequence[Sequence[int]], ranked_scores: Sequence[Sequence[float]],
                     k: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The overlap rule on per-keyword ranked lists (each sorted best first, ids may repeat across
    keywords). Returns, per keyword, at most ``k`` ids (best first) and their scores; no id is
    given to two keywords. A keyword's list should hold ``k × n_keywords`` entries (or the whole
    pool) so that it can always backfill what it loses; ties go to the earlier keyword."""
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ConfigError(f"k must be a positive integer, got {k!r}")
    if len(ranked_ids) != len(ranked_scores):
        raise ConfigError(f"{len(ranked_ids)} id lists but {len(ranked_scores)} score lists")
    n_kw = len(ranked_ids)
    ids_l = [np.asarray(r, dtype=np.int64).reshape(-1) for r in ranked_ids]
    sc_l = [np.asarray(s, dtype=np.float32).reshape(-1) for s in ranked_scores]
    for j, (a, b) in enumerate(zip(ids_l, sc_l)):
        if a.shape != b.shape:
            raise ConfigError(f"keyword {j}: {a.size} ids but {b.size} scores")
    if n_kw == 0:
        return [], []
    ids = np.concatenate(ids_l)
    scores = np.concatenate(sc_l)
    kw = np.repeat(np.arange(n_kw), [a.size for a in ids_l])
    rank = np.concatenate([np.arange(a.size) for a in ids_l])
    order = np.lexsort((rank, kw, -scores.astype(np.float64)))  # score desc, then keyword, then rank
    taken: set[int] = set()
    out_ids: list[list[int]] = [[] for _ in range(n_kw)]
    out_sc: list[list[float]] = [[] for _ in range(n_kw)]
    full = 0
    for pos in order.tolist():
        j = int(kw[pos])
        if len(out_ids[j]) >= k:
            continue
        i = int(ids[pos])
        if i in taken:
            continue
        taken.add(i)
        out_ids[j].append(i)
        out_sc[j].append(float(scores[pos]))
        if len(out_ids[j]) == k:
            full += 1
            if full == n_kw:
                break
    return ([np.asarray(x, dtype=np.int64) for x in out_ids],
            [np.asarray(x, dtype=np.float32) for x in out_sc])


def top_k_per_keyword(image_vecs: np.ndarray, keyword_vecs: np.ndarray, k: int,
                      keywords: Sequence[str] | None = None,
                      min_similarity: float | None = None) -> TopK:
    """The K most similar images per keyword, overlaps resolved (see ``resolve_overlaps``).
    Images under ``min_similarity`` to a keyword are not candidates for it."""
    scores = similarity_matrix(image_vecs, keyword_vecs)
    return top_k_from_scores(scores, k, keywords, min_similarity)


def top_k_from_scores(scores: np.ndarray, k: int, keywords: Sequence[str] | None = None,
                      min_similarity: float | None = None) -> TopK:
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ConfigError(f"k must be a positive integer, got {k!r}")
    n, n_kw = scores.shape
    names = list(keywords) if keywords is not None else [str(i) for i in range(n_kw)]
    depth = min(n, int(k) * n_kw)  # a keyword can lose at most k × (n_kw − 1) images to others
    ranked_ids, ranked_scores = [], []
    for j in range(n_kw):
        col = scores[:, j]
        top = np.argpartition(-col, depth - 1)[:depth] if 0 < depth < n else np.arange(n)
        top = top[np.lexsort((top, -col[top]))]
        if min_similarity is not None:
            top = top[col[top] >= float(min_similarity)]
        ranked_ids.append(top)
        ranked_scores.append(col[top])
    ids, sc = resolve_overlaps(ranked_ids, ranked_scores, int(k))
    short = {names[j]: len(x) for j, x in enumerate(ids) if len(x) < k}
    return TopK(names, int(k), ids, sc, short)
