""""More like these": the candidates of the pool nearest to a selection or a subgroup.

Two ways to say "near a set of images" (``method``):

* ``"members"`` (the default): a candidate's score is its cosine similarity to the *nearest*
  member (max over the members). Right for a selection spread over several spots of the map: it
  finds more of each. Exact through a flat index or the brute-force scan: the K best by this score
  are always among the K nearest of some member (the member a candidate is nearest to ranks it
  above every candidate of lower score), so searching each member's K (+ the excluded) nearest
  and keeping each candidate's best is the whole answer. A selection of more than
  ``MAX_MEMBER_QUERIES`` images is searched from that many of its members, evenly spaced over it
  (a box around 40,000 points would otherwise be 40,000 queries).
* ``"centroid"``: similarity to the members' mean direction (one query). Right for a tight group
  ("more of this kind"); the cheaper of the two.

The pool is searched by brute force (float32 products in row chunks) unless a
``retrieval.CandidateIndex`` over it is given — the cached faiss index the app builds for large
pools (``pool_index``). ``exclude`` (pool rows: the selection's own candidates, the subgroup's
members, excluded images) never appear in the answer; the search goes deep enough that excluding
them still leaves K.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from mminstruct.errors import ConfigError, InputError, choices_message
from mminstruct.embed.vectors import CHUNK_ROWS, as_rows, check_finite, iter_chunks, normalise_rows

METHODS = ("members", "centroid")
#: below this many pool rows the app scans by brute force; above it, a cached faiss index (IVF:
#: a many-member search reads each probed cell once, ``_search_ivf_cells``)
INDEX_MIN_ROWS = 50_000
#: a "members" search over a larger selection (a box around 40,000 points of a 210,000-point
#: map) searches from this many of its members, spread evenly over it: each member is one query
MAX_MEMBER_QUERIES = 256


@dataclass
class Neighbours:
    """Pool rows (best first) and their scores (cosine, float32) under ``method``."""

    ids: np.ndarray
    scores: np.ndarray
    method: str
    searched: str  # "brute force" or the index kind
    members_searched: int = 0  # the queries: all members, or MAX_MEMBER_QUERIES of them
    members: int = 0  # the selection's size

    def __len__(self) -> int:
        return int(self.ids.shape[0])


def centroid(vectors: Any) -> np.ndarray:
    """The unit mean direction of some L2-normalised vectors (float32, shape [D])."""
    v = np.asarray(vectors, dtype=np.float32)
    if v.ndim != 2 or not len(v):
        raise InputError(f"a centroid needs a non-empty [N, D] array, got shape {v.shape}")
    c = v.mean(axis=0)
    norm = float(np.linalg.norm(c))
    if norm < 1e-12:
        raise InputError("the selection's vectors cancel out (their mean is zero); use "
                         "method='members'")
    return (c / norm).astype(np.float32)


def _check(selection: Any, k: Any, method: str) -> np.ndarray:
    if method not in METHODS:
        raise ConfigError(choices_message("method", method, METHODS))
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ConfigError(f"k must be a positive integer, got {k!r}")
    sel = np.asarray(selection, dtype=np.float32)
    if sel.ndim == 1:
        sel = sel[None, :]
    if sel.ndim != 2 or not len(sel):
        raise InputError(f"the selection is empty or not an [N, D] array (shape {sel.shape}); "
                         "select images first")
    check_finite(sel, what="selection vector")
    return normalise_rows(sel)


def _best_per_id(ids: np.ndarray, scores: np.ndarray, excluded: np.ndarray, k: int,
                 ntotal: int) -> tuple[np.ndarray, np.ndarray]:
    """Each id's best score (ids -1 and ``excluded`` dropped), the top ``k`` by (score desc, id
    asc). A dense per-id array: the ids are rows of a pool of ``ntotal``."""
    ids, scores = ids.reshape(-1), scores.reshape(-1)
    keep = ids >= 0
    ids, scores = ids[keep], scores[keep]
    best = np.full(max(ntotal, 1), -np.inf, np.float32)
    np.maximum.at(best, ids, scores.astype(np.float32))
    if len(excluded):
        best[excluded[(excluded >= 0) & (excluded < len(best))]] = -np.inf
    return _top(best, k)


def _top(best: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` finite entries of ``best`` with the highest values, ties by index."""
    valid = np.flatnonzero(np.isfinite(best))
    if not len(valid):
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    kk = min(int(k), len(valid))
    cand = valid[np.argpartition(-best[valid], kk - 1)[:kk]] if kk < len(valid) else valid
    # ties at the cut: argpartition may take any of them; the full order below is by (score, id)
    cand = np.union1d(cand, valid[best[valid] == best[cand].min()])
    order = np.lexsort((cand, -best[cand].astype(np.float64)))[:kk]
    ids = cand[order].astype(np.int64)
    return ids, best[ids].astype(np.float32)


def _search_index(index: Any, queries: np.ndarray, k: int, excluded: np.ndarray,
                  nprobe: int | None) -> tuple[np.ndarray, np.ndarray]:
    """One search of every query, ``k`` + the excluded deep (enough for the exact answer: see the
    module docstring), then each id's best score. One round only: an IVF or flat search costs
    the scan of its cells whatever the depth, so searching again deeper would pay it twice."""
    depth = int(min(max(1, int(index.ntotal)), k + len(excluded)))
    scores, ids = index.search(queries, depth, nprobe=nprobe)
    return _best_per_id(ids, scores, excluded, k, int(index.ntotal))


def _search_ivf_cells(index: Any, queries: np.ndarray, k: int, excluded: np.ndarray,
                      nprobe: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Many queries over an IVF-flat index, cell by cell: each query picks its ``nprobe`` cells
    (as faiss would), then every probed cell is read once and scored against all the queries that
    probed it in one matrix product. Each candidate gets the best score among the queries that
    probed its cell — exactly what per-query faiss searches with unlimited depth would give, at
    a fraction of the memory traffic (faiss re-reads a cell for every query probing it)."""
    import faiss  # noqa: PLC0415 (heavy import)

    ivf = faiss.extract_index_ivf(index.index)
    probe = index.nprobe if nprobe is None else min(max(1, int(nprobe)), index.params.nlist)
    _, cells = ivf.quantizer.search(np.ascontiguousarray(queries, dtype=np.float32), probe)
    flat_cells = cells.reshape(-1)
    owner = np.repeat(np.arange(len(queries)), cells.shape[1])
    keep = flat_cells >= 0
    flat_cells, owner = flat_cells[keep], owner[keep]
    order = np.argsort(flat_cells, kind="stable")
    flat_cells, owner = flat_cells[order], owner[order]
    starts = np.flatnonzero(np.r_[True, flat_cells[1:] != flat_cells[:-1]])
    ends = np.r_[starts[1:], len(flat_cells)]
    invlists, dim = ivf.invlists, int(index.dim)
    best = np.full(max(int(index.ntotal), 1), -np.inf, np.float32)
    for a, b in zip(starts.tolist(), ends.tolist()):
        cell = int(flat_cells[a])
        size = int(invlists.list_size(cell))
        if not size:
            continue
        ids = faiss.rev_swig_ptr(invlists.get_ids(cell), size).copy()
        codes = faiss.rev_swig_ptr(invlists.get_codes(cell), size * dim * 4)
        vecs = np.frombuffer(codes, dtype=np.float32, count=size * dim).reshape(size, dim)
        sims = vecs @ queries[owner[a:b]].T  # (size, queries probing this cell)
        best[ids] = sims.max(axis=1)
    if len(excluded):
        best[excluded[(excluded >= 0) & (excluded < len(best))]] = -np.inf
    return _top(best, k)


def member_positions(n: int, max_queries: int | None = MAX_MEMBER_QUERIES) -> np.ndarray:
    """The positions (in the selection's order) of the members a "members" search over ``n``
    members queries from: all of them, or ``max_queries`` evenly spaced over the selection (None:
    no limit). A caller holding only row numbers reads just these rows' vectors and passes
    ``members=n`` to ``more_like_these``: a box around 42,000 points reads 256 vectors, not all."""
    if max_queries is None or n <= int(max_queries):
        return np.arange(int(n), dtype=np.int64)
    if int(max_queries) < 1:
        raise ConfigError(f"max_queries must be a positive integer or None, got {max_queries!r}")
    return np.unique(np.linspace(0, n - 1, int(max_queries)).round().astype(np.int64))


def more_like_these(selection: Any, k: int, *, pool: Any = None, index: Any = None,
                    method: str = "members", exclude: Iterable[int] = (),
                    nprobe: int | None = None, chunk_rows: int = CHUNK_ROWS // 4,
                    max_queries: int | None = MAX_MEMBER_QUERIES,
                    members: int | None = None) -> Neighbours:
    """The ``k`` pool rows nearest to ``selection`` ([M, D] vectors, or one [D] vector).

    Give ``pool`` ([N, D] array-like, scanned in chunks) or ``index`` (a ``CandidateIndex`` over
    the pool; searched with ``nprobe`` cells for IVF kinds). Fewer than ``k`` come back only when
    the pool (less ``exclude``) is smaller, or an approximate index finds fewer. "members" with
    more than ``max_queries`` members (None: no limit) searches from that many of them, evenly
    spaced over the selection's order (``Neighbours.members_searched`` says how many).
    ``members``: the selection's size when ``selection`` holds only its ``member_positions``
    (method "members" only: those are then searched as they are)."""
    sel = _check(selection, k, method)
    excluded = np.unique(np.fromiter((int(i) for i in exclude), dtype=np.int64))
    if members is not None:
        if method != "members" or isinstance(members, bool) or int(members) != members \
                or members < len(sel):
            raise ConfigError(f"members={members!r}: give it with method 'members' only, as the "
                              f"selection's size (at least the {len(sel)} vectors given)")
        n_members = int(members)
    else:
        n_members = len(sel)
        if method == "members":
            sel = sel[member_positions(n_members, max_queries)]
    queries = centroid(sel)[None, :] if method == "centroid" else sel
    if index is not None:
        if int(index.dim) != sel.shape[1]:
            raise InputError(f"the selection has dim {sel.shape[1]} but the index dim {index.dim}")
        if index.kind == "ivf" and len(queries) > 1:
            best_ids, best = _search_ivf_cells(index, queries, int(k), excluded, nprobe)
        else:
            best_ids, best = _search_index(index, queries, int(k), excluded, nprobe)
        return Neighbours(best_ids, best, method, index.kind, len(queries), n_members)
    if pool is None:
        raise ConfigError("more_like_these needs the pool's vectors (pool=) or an index (index=)")
    pool = as_rows(pool)
    if len(pool) and int(pool.shape[1]) != sel.shape[1]:
        raise InputError(f"the selection has dim {sel.shape[1]} but the pool dim {pool.shape[1]}")
    n = int(pool.shape[0])
    best_all = np.full(n, -np.inf, np.float32)
    q_t = np.ascontiguousarray(queries.T)
    for start, block in iter_chunks(pool, chunk_rows):
        sims = normalise_rows(block) @ q_t  # (rows, queries)
        best_all[start:start + len(block)] = sims.max(axis=1)
    if len(excluded):
        best_all[excluded[(excluded >= 0) & (excluded < n)]] = -np.inf
    ids, scores = _top(best_all, int(k))
    return Neighbours(ids, scores, method, "brute force", len(queries), n_members)


def pool_index(vectors: Any, cache_dir: str | os.PathLike, *, fingerprint: str | None = None,
               min_rows: int = INDEX_MIN_ROWS, kind: str = "ivf", **build: Any) -> Any:
    """The cached faiss index over a pool (``CandidateIndex.build_or_load``), or None when the
    pool is small enough to scan. IVF by default: a selection of many images is then scored cell
    by cell (``_search_ivf_cells``); an exact flat index would cost a full scan per member."""
    vectors = as_rows(vectors)
    if int(vectors.shape[0]) < min_rows:
        return None
    from mminstruct.partition.retrieval import CandidateIndex  # noqa: PLC0415 (faiss is heavy)

    return CandidateIndex.build_or_load(vectors, cache_dir, fingerprint=fingerprint, kind=kind,
                                        **build)
