"""Top-K retrieval from large candidate pools with faiss (faiss-cpu, imported lazily).

* ``CandidateIndex.build(vectors, kind="auto"|"flat"|"ivf"|"ivfpq", ...)``: cosine similarity as
  inner product over L2-normalised vectors. ``flat`` is exact (``IndexFlatIP``) and is what "auto"
  picks below 1M vectors; ``ivf`` (inverted lists over k-means cells, trained on a sample) above;
  ``ivfpq`` (product-quantised codes, 64 bytes a 512-d vector) when full float32 vectors would not
  fit in ``max_flat_bytes`` (10M × 512 would take 20 GB). Vectors are read and added in chunks
  from any array-like (a float16 memory-mapped ``.npy``, Parquet shards via ``parquet_vectors``),
  so a 10M pool never has to sit in memory as float32 and no image is ever loaded.
* ``search(queries, k, nprobe=None, rerank_with=None)`` → (scores, ids), best first; ids -1 and
  scores -inf where the index has fewer than k results.
* ``save(path)`` / ``CandidateIndex.load(path)``: the faiss file plus a JSON sidecar, each written
  to a temporary file and renamed into place (the sidecar last: a crash leaves no half index).
* ``CandidateIndex.build_or_load(vectors, cache_dir, fingerprint=None, ...)``: content-addressed
  cache; the key holds the vectors' fingerprint, the resolved build parameters and faiss' version.
* ``top_k_per_keyword(index, keyword_vecs, k)`` → ``partition.TopK``: the K nearest candidates per
  keyword under the project's one overlap rule (``partition.resolve_overlaps``: an image retrieved
  by several keywords goes to the one it is most similar to; the loser takes its next nearest).
  Lists are searched only as deep as needed: a keyword that falls short searches again deeper.
"""

from __future__ import annotations

import json
import math
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mminstruct.cache import atomic_write_json, content_key
from mminstruct.errors import ConfigError, DataFileError, InputError, choices_message
from mminstruct.partition.assign import TopK, resolve_overlaps
from mminstruct.embed.vectors import array_fingerprint, check_finite, iter_chunks, normalise_rows, take_rows

Progress = Callable[[float, str], None]

KINDS = ("auto", "flat", "ivf", "ivfpq")
EXACT_LIMIT = 1_000_000  # "auto" uses the exact index below this many vectors
MAX_FLAT_BYTES = 8 << 30  # "auto" uses PQ codes when float32 vectors would exceed this
ADD_CHUNK_ROWS = 65_536
_FORMAT_VERSION = 1


@dataclass(frozen=True)
class IndexParams:
    """The resolved build parameters of an index (all of them go into the cache key)."""

    kind: str
    dim: int
    nlist: int = 0  # IVF cells (0 for flat)
    pq_m: int = 0  # PQ sub-quantisers (0 unless ivfpq)
    pq_bits: int = 8
    train_size: int = 0
    seed: int = 0


def _faiss():
    import faiss  # noqa: PLC0415  (lazy: heavy import)

    return faiss


def resolve_params(n: int, dim: int, kind: str = "auto", *, nlist: int | None = None,
                   pq_m: int | None = None, pq_bits: int = 8, train_size: int | None = None,
                   seed: int = 0, max_flat_bytes: int = MAX_FLAT_BYTES) -> IndexParams:
    """Turn "auto" and the defaults into concrete parameters for ``n`` vectors of ``dim``."""
    if kind not in KINDS:
        raise ConfigError(choices_message("index kind", kind, KINDS))
    if dim < 1:
        raise InputError(f"vectors must have at least one dimension, got {dim}")
    if kind == "auto":
        if n < EXACT_LIMIT:
            kind = "flat"
        else:
            kind = "ivf" if n * dim * 4 <= max_flat_bytes else "ivfpq"
    if kind == "flat":
        return IndexParams("flat", dim, seed=seed)
    if n < 39:
        raise ConfigError(f"an {kind} index needs at least 39 vectors to train, got {n}; use kind='flat'")
    nl = int(nlist) if nlist is not None else max(1, int(round(math.sqrt(n))))
    if nl < 1:
        raise ConfigError(f"nlist must be >= 1, got {nl}")
    nl = min(nl, n // 39)  # faiss wants >= 39 training points per cell
    ts = int(train_size) if train_size is not None else min(n, max(64 * nl, 10_000))
    if ts < 39 * nl:
        raise ConfigError(f"train_size {ts} is too small for nlist {nl} (needs >= {39 * nl})")
    ts = min(ts, n)
    m = 0
    if kind == "ivfpq":
        if pq_m is None:  # the largest divisor of dim not above dim/8 (64 for 512-d)
            m = max(d for d in range(1, max(1, dim // 8) + 1) if dim % d == 0)
        else:
            m = int(pq_m)
        if m < 1 or dim % m:
            raise ConfigError(f"pq_m must divide the dimension {dim}, got {m}")
        if pq_bits not in (4, 6, 8, 10, 12):
            raise ConfigError(choices_message("pq_bits", pq_bits, (4, 6, 8, 10, 12)))
        if ts < (1 << pq_bits):
            raise ConfigError(f"train_size {ts} is below the {1 << pq_bits} PQ centroids")
    return IndexParams(kind, dim, nl, m, pq_bits if kind == "ivfpq" else 8, ts, seed)


def default_nprobe(nlist: int) -> int:
    """Cells searched per query: about 1/16 of them (at least 8) — recall@10 ≥ 0.95 on clustered
    data (see tests and bench/retrieval_latency.py)."""
    return max(1, min(nlist, max(8, nlist // 16)))


@dataclass
class CandidateIndex:
    """A faiss index over L2-normalised candidate vectors; ids are row numbers in the input."""

    index: Any
    params: IndexParams
    nprobe: int = 0
    fingerprint: str | None = None
    from_cache: bool = False
    build_seconds: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def kind(self) -> str:
        return self.params.kind

    @property
    def dim(self) -> int:
        return self.params.dim

    # ------------------------------------------------------------------ build

    @classmethod
    def build(cls, vectors: Any, kind: str = "auto", *, nlist: int | None = None,
              nprobe: int | None = None, pq_m: int | None = None, pq_bits: int = 8,
              train_size: int | None = None, seed: int = 0, max_flat_bytes: int = MAX_FLAT_BYTES,
              chunk_rows: int = ADD_CHUNK_ROWS, progress: Progress | None = None,
              fingerprint: str | None = None) -> CandidateIndex:
        """Build from any [N, D] array-like (read ``chunk_rows`` rows at a time)."""
        vectors = _check_vectors(vectors)
        n, dim = int(vectors.shape[0]), int(vectors.shape[1])
        params = resolve_params(n, dim, kind, nlist=nlist, pq_m=pq_m, pq_bits=pq_bits,
                                train_size=train_size, seed=seed, max_flat_bytes=max_flat_bytes)
        faiss = _faiss()
        t0 = time.perf_counter()
        if params.kind == "flat":
            index = faiss.IndexFlatIP(dim)
        else:
            spec = f"IVF{params.nlist},Flat" if params.kind == "ivf" else \
                f"IVF{params.nlist},PQ{params.pq_m}x{params.pq_bits}"
            index = faiss.index_factory(dim, spec, faiss.METRIC_INNER_PRODUCT)
            ivf = faiss.extract_index_ivf(index)
            ivf.cp.seed = seed
            if params.kind == "ivfpq":
                index.pq.cp.seed = seed
                index.do_polysemous_training = False  # factory default; 20x slower training, unused
            rng = np.random.default_rng(seed)
            idx = np.sort(rng.choice(n, size=params.train_size, replace=False))
            if progress:
                progress(0.0, f"training {params.kind} on {len(idx):,} vectors")
            sample = normalise_rows(take_rows(vectors, idx))
            check_finite(sample, what="training sample row")
            index.train(sample)
            del sample
        train_share = 0.0 if params.kind == "flat" else 0.3
        for start, block in iter_chunks(vectors, chunk_rows):
            check_finite(block, start, what="row")
            index.add(normalise_rows(block))
            if progress:
                progress(train_share + (1 - train_share) * (start + len(block)) / n,
                         f"added {start + len(block):,} of {n:,} vectors")
        out = cls(index, params, fingerprint=fingerprint, build_seconds=time.perf_counter() - t0)
        out.set_nprobe(nprobe)
        return out

    def set_nprobe(self, nprobe: int | None) -> None:
        """Cells searched per query (IVF kinds); ``None`` restores ``default_nprobe``."""
        if self.params.kind == "flat":
            self.nprobe = 0
            return
        if nprobe is None:
            self.nprobe = default_nprobe(self.params.nlist)
        elif not isinstance(nprobe, (int, np.integer)) or nprobe < 1:
            raise ConfigError(f"nprobe must be a positive integer, got {nprobe!r}")
        else:
            self.nprobe = min(int(nprobe), self.params.nlist)

    # ------------------------------------------------------------------ search

    def search(self, queries: Any, k: int, *, nprobe: int | None = None,
               rerank_with: Any = None, rerank_factor: int = 4) -> tuple[np.ndarray, np.ndarray]:
        """Scores (cosine, float32) and ids (int64) of the ``k`` nearest rows per query, best first.

        ``rerank_with``: the original vectors (array-like); the index's ``k × rerank_factor`` best
        are re-scored exactly from them — worth it for ``ivfpq``, whose scores are approximate.
        """
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise ConfigError(f"k must be a positive integer, got {k!r}")
        q = np.asarray(queries, dtype=np.float32)
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise InputError(f"queries must have shape [Q, {self.dim}], got {tuple(q.shape)}")
        check_finite(q, what="query")
        q = normalise_rows(q)
        fetch = int(k) * max(1, int(rerank_factor)) if rerank_with is not None else int(k)
        fetch = max(1, min(fetch, self.ntotal)) if self.ntotal else int(k)
        kwargs = {}
        if self.params.kind != "flat":
            probe = self.nprobe if nprobe is None else min(max(1, int(nprobe)), self.params.nlist)
            kwargs["params"] = _faiss().SearchParametersIVF(nprobe=probe)
        scores, ids = self.index.search(q, fetch, **kwargs)
        if rerank_with is not None:
            scores, ids = _rerank(q, ids, rerank_with, self.ntotal)
        scores, ids = _pad(scores[:, :k], ids[:, :k], int(k))
        scores[ids < 0] = -np.inf
        return scores.astype(np.float32), ids.astype(np.int64)

    # ------------------------------------------------------------------ persistence

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``path`` (faiss) and ``path.json`` (parameters), each atomically, sidecar last."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # a fresh name faiss creates itself (so the file gets the umask's mode, not mkstemp's 0600)
        tmp = str(path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp"))
        try:
            _faiss().write_index(self.index, tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        meta = {"format": _FORMAT_VERSION, "params": asdict(self.params), "nprobe": self.nprobe,
                "ntotal": self.ntotal, "fingerprint": self.fingerprint,
                "faiss": _faiss().__version__, "build_seconds": round(self.build_seconds, 3)}
        atomic_write_json(_meta_path(path), meta)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> CandidateIndex:
        path = Path(path)
        meta_path = _meta_path(path)
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            params = IndexParams(**meta["params"])
        except FileNotFoundError as e:
            raise DataFileError(f"index {path}: no parameter file {meta_path.name} next to it "
                                "(an index is complete only once both exist)") from e
        except (ValueError, KeyError, TypeError) as e:
            raise DataFileError(f"index {path}: unreadable parameter file {meta_path.name}: {e}") from e
        try:
            index = _faiss().read_index(str(path))
        except RuntimeError as e:
            raise DataFileError(f"index {path}: faiss cannot read it: {e}") from e
        if int(index.ntotal) != int(meta.get("ntotal", -1)) or int(index.d) != params.dim:
            raise DataFileError(f"index {path} holds {index.ntotal} vectors of dim {index.d}, but "
                                f"{meta_path.name} says {meta.get('ntotal')} of dim {params.dim}")
        out = cls(index, params, fingerprint=meta.get("fingerprint"), from_cache=True, meta=meta)
        out.set_nprobe(meta.get("nprobe") or None)
        return out

    @classmethod
    def build_or_load(cls, vectors: Any, cache_dir: str | os.PathLike, *,
                      fingerprint: str | None = None, kind: str = "auto", nprobe: int | None = None,
                      progress: Progress | None = None, **build_params: Any) -> CandidateIndex:
        """The cached index for these vectors and parameters, built (and stored) on a miss.

        ``fingerprint``: the vectors' identity if the caller knows it (e.g. a content key of the
        embedded files or Parquet shards); otherwise their bytes are hashed. ``nprobe`` is a search
        setting, not part of the key. ``from_cache`` on the result tells which happened.
        """
        vectors = _check_vectors(vectors)
        n, dim = int(vectors.shape[0]), int(vectors.shape[1])
        build_keys = {"nlist", "pq_m", "pq_bits", "train_size", "seed", "max_flat_bytes", "chunk_rows"}
        unknown = set(build_params) - build_keys
        if unknown:
            raise ConfigError(choices_message("build parameter", sorted(unknown)[0], sorted(build_keys)))
        resolve_keys = build_keys - {"chunk_rows"}
        params = resolve_params(n, dim, kind, **{k: v for k, v in build_params.items() if k in resolve_keys})
        fp = fingerprint or array_fingerprint(vectors)
        key = content_key("candidate-index", _FORMAT_VERSION, fp, n, asdict(params), _faiss().__version__)
        path = Path(cache_dir) / f"index-{params.kind}-{key[:40]}.faiss"
        if path.exists() and _meta_path(path).exists():
            try:
                out = cls.load(path)
            except DataFileError:
                out = None  # damaged entry: rebuild and overwrite
            if out is not None and out.ntotal == n:
                out.set_nprobe(nprobe)
                if progress:
                    progress(1.0, "index loaded from cache")
                return out
        explicit = {k: v for k, v in build_params.items() if k != "max_flat_bytes"}
        explicit.update(nlist=params.nlist or None, pq_m=params.pq_m or None,
                        train_size=params.train_size or None)
        out = cls.build(vectors, params.kind, nprobe=nprobe, progress=progress, fingerprint=fp,
                        **explicit)
        out.save(path)
        return out


# ---------------------------------------------------------------------------- top-K per keyword

def top_k_per_keyword(index: CandidateIndex, keyword_vecs: Any, k: int, *,
                      keywords: Sequence[str] | None = None, min_similarity: float | None = None,
                      nprobe: int | None = None, rerank_with: Any = None) -> TopK:
    """The ``k`` nearest candidates per keyword, overlaps resolved by ``partition.resolve_overlaps``.

    Each keyword's list starts ``2k`` deep; when the rule leaves a keyword short and its list was
    cut by the depth (not by the pool, the probed cells or ``min_similarity``), that keyword is
    searched again twice as deep — and with twice the ``nprobe`` when its probed cells ran out —
    until every keyword has ``k`` or nothing more can be found. Truncated lists give the same
    result as full ones: a keyword that fills up within its list would never take a pair beyond it.

    For an ``ivfpq`` index pass ``rerank_with`` (the original vectors, e.g. the memory map): PQ
    scores alone found 19 % of the true top-10 at 10M × 512, re-ranked 100 % (bench/retrieval_latency.py).
    """
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ConfigError(f"k must be a positive integer, got {k!r}")
    kw = np.asarray(keyword_vecs, dtype=np.float32)
    if kw.ndim != 2 or (kw.shape[0] and kw.shape[1] != index.dim):
        raise InputError(f"keyword vectors must have shape [K, {index.dim}], got {tuple(kw.shape)}")
    n_kw = kw.shape[0]
    names = list(keywords) if keywords is not None else [str(i) for i in range(n_kw)]
    if len(names) != n_kw:
        raise ConfigError(f"{len(names)} keyword names for {n_kw} keyword vectors")
    if min_similarity is not None and not -1.0 <= float(min_similarity) <= 1.0:
        raise ConfigError(f"min_similarity must be between -1 and 1, got {min_similarity!r}")
    total = index.ntotal
    flat = index.params.kind == "flat"
    depth = [min(total, 2 * int(k))] * n_kw
    probe = [0 if flat else (nprobe or index.nprobe)] * n_kw
    ranked_ids: list[np.ndarray] = [np.zeros(0, np.int64)] * n_kw
    ranked_sc: list[np.ndarray] = [np.zeros(0, np.float32)] * n_kw
    complete = [False] * n_kw
    todo = list(range(n_kw))
    while True:
        for j, sc, ids in _search_grouped(index, kw, todo, depth, probe, rerank_with):
            found = ids >= 0
            sc, ids = sc[found], ids[found]
            cut = False
            if min_similarity is not None:
                keep = sc >= float(min_similarity)
                cut = not keep.all()
                sc, ids = sc[keep], ids[keep]
            ranked_ids[j], ranked_sc[j] = ids, sc
            cells_exhausted = not found.all() and (flat or probe[j] >= index.params.nlist)
            whole_pool = found.all() and depth[j] >= total
            complete[j] = cut or whole_pool or cells_exhausted
            if not found.all() and not cells_exhausted:  # probed cells ran out: probe more
                probe[j] = min(index.params.nlist, probe[j] * 2)
        chosen, chosen_sc = resolve_overlaps(ranked_ids, ranked_sc, int(k))
        todo = [j for j in range(n_kw) if len(chosen[j]) < k and not complete[j]]
        if not todo:
            break
        for j in todo:
            if len(ranked_ids[j]) >= depth[j]:
                depth[j] = min(total, depth[j] * 2)
    short = {names[j]: len(x) for j, x in enumerate(chosen) if len(x) < k}
    return TopK(names, int(k), chosen, chosen_sc, short)


def _search_grouped(index: CandidateIndex, kw: np.ndarray, todo: list[int], depth: list[int],
                    probe: list[int], rerank_with: Any):
    """Yield ``(j, scores, ids)`` per keyword in ``todo``; keywords that share a depth and an
    nprobe go to faiss as one batch (one pass over the vectors instead of one per keyword)."""
    groups: dict[tuple[int, int], list[int]] = {}
    for j in todo:
        groups.setdefault((depth[j], probe[j]), []).append(j)
    for (d, p), members in groups.items():
        sc, ids = index.search(kw[members], max(1, d), nprobe=p or None, rerank_with=rerank_with)
        for row, j in enumerate(members):
            yield j, sc[row], ids[row]


# ---------------------------------------------------------------------------- Parquet shards

class ShardedVectors:
    """Several [n_i, D] shards seen as one [sum n_i, D] array-like (row slicing only).

    A shard is an array-like or a zero-argument callable that loads one (called when its rows are
    first needed; the most recently loaded shard is kept).
    """

    def __init__(self, shards: Sequence[Any], lengths: Sequence[int], dim: int,
                 dtype: Any = np.float32, names: Sequence[str] | None = None):
        if len(shards) != len(lengths):
            raise ConfigError(f"{len(shards)} shards but {len(lengths)} lengths")
        self._shards = list(shards)
        self._names = list(names) if names is not None else [f"shard {i}" for i in range(len(shards))]
        self._bounds = np.concatenate([[0], np.cumsum(np.asarray(lengths, dtype=np.int64))])
        self.shape = (int(self._bounds[-1]), int(dim))
        self.dtype = np.dtype(dtype)
        self._loaded: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return self.shape[0]

    def _shard(self, i: int) -> np.ndarray:
        if self._loaded is not None and self._loaded[0] == i:
            return self._loaded[1]
        src = self._shards[i]
        arr = np.asarray(src() if callable(src) else src)
        want = (int(self._bounds[i + 1] - self._bounds[i]), self.shape[1])
        if arr.shape != want:
            raise DataFileError(f"{self._names[i]}: expected {want[0]} vectors of dim {want[1]}, "
                                f"got shape {arr.shape}")
        self._loaded = (i, arr)
        return arr

    def __getitem__(self, item: slice) -> np.ndarray:
        if not isinstance(item, slice) or item.step not in (None, 1):
            raise TypeError("ShardedVectors supports contiguous row slices only")
        start, stop, _ = item.indices(self.shape[0])
        parts = []
        i = int(np.searchsorted(self._bounds, start, side="right")) - 1
        while start < stop and i < len(self._shards):
            lo, hi = int(self._bounds[i]), int(self._bounds[i + 1])
            take_hi = min(stop, hi)
            if take_hi > start:
                parts.append(self._shard(i)[start - lo:take_hi - lo])
                start = take_hi
            i += 1
        if not parts:
            return np.zeros((0, self.shape[1]), dtype=self.dtype)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


def parquet_vectors(paths: Sequence[str | os.PathLike], column: str = "embedding") -> ShardedVectors:
    """Parquet shards whose ``column`` holds one fixed-length list of floats per row, as one
    array-like; only the metadata is read here, each shard's column when its rows are needed."""
    import pyarrow as pa  # noqa: PLC0415
    import pyarrow.parquet as pq  # noqa: PLC0415

    paths = [Path(p) for p in paths]
    lengths, dim, dtype = [], None, None
    for p in paths:
        try:
            f = pq.ParquetFile(p)
            schema = f.schema_arrow
        except (OSError, ValueError) as e:
            raise DataFileError(f"{p}: not a readable Parquet file: {e}") from e
        if column not in schema.names:
            raise DataFileError(choices_message(f"column in {p.name}", column, schema.names))
        lengths.append(f.metadata.num_rows)
        typ = schema.field(column).type
        value_type = getattr(typ, "value_type", None)
        if value_type is None or not pa.types.is_floating(value_type):
            raise DataFileError(f"{p}: column {column!r} has type {typ}; expected a list of floats")
        if dtype is None:
            dtype = np.dtype(value_type.to_pandas_dtype())
            dim = getattr(typ, "list_size", None)
    if dim is None:  # variable-length lists: read the first row to learn the dimension
        first = next((p for p, n in zip(paths, lengths) if n), None)
        dim = _read_parquet_column(first, column).shape[1] if first is not None else 0
    return ShardedVectors([lambda p=p: _read_parquet_column(p, column) for p in paths], lengths,
                          dim or 0, dtype or np.float32, [str(p) for p in paths])


def _read_parquet_column(path: Path, column: str) -> np.ndarray:
    import pyarrow.parquet as pq  # noqa: PLC0415

    col = pq.read_table(path, columns=[column]).column(column).combine_chunks()
    if col.null_count:
        raise DataFileError(f"{path}: column {column!r} has {col.null_count} empty row(s)")
    lengths = np.asarray(col.value_lengths()) if hasattr(col, "value_lengths") else None
    flat = col.flatten().to_numpy(zero_copy_only=False)
    n = len(col)
    if lengths is not None and n and (lengths != lengths[0]).any():
        bad = int(np.flatnonzero(lengths != lengths[0])[0])
        raise DataFileError(f"{path}: row {bad} of {column!r} has {lengths[bad]} values, "
                            f"row 0 has {lengths[0]}")
    return flat.reshape(n, -1) if n else flat.reshape(0, 0)


# ---------------------------------------------------------------------------- helpers

def _check_vectors(vectors: Any) -> Any:
    if isinstance(vectors, (list, tuple)):
        vectors = np.asarray(vectors, dtype=np.float32)
    shape = getattr(vectors, "shape", None)
    if shape is None or len(shape) != 2:
        raise InputError(f"candidate vectors must be an array-like of shape [N, D], got "
                         f"{'shape ' + str(tuple(shape)) if shape is not None else type(vectors).__name__}")
    if int(shape[0]) == 0:
        raise InputError("no candidate vectors to index")
    return vectors


def _meta_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _pad(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    if ids.shape[1] >= k:
        return scores.copy(), ids.copy()
    extra = k - ids.shape[1]
    return (np.pad(scores, ((0, 0), (0, extra)), constant_values=-np.inf),
            np.pad(ids, ((0, 0), (0, extra)), constant_values=-1))


def _rerank(q: np.ndarray, ids: np.ndarray, vectors: Any, ntotal: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact scores for the candidate ids from the original vectors; re-sorted, -1s last."""
    if int(vectors.shape[0]) != ntotal:
        raise InputError(f"rerank vectors hold {vectors.shape[0]} rows but the index {ntotal}")
    uniq = np.unique(ids[ids >= 0])
    rows = normalise_rows(take_rows(vectors, uniq)) if len(uniq) else np.zeros((0, q.shape[1]), np.float32)
    pos = np.searchsorted(uniq, np.where(ids >= 0, ids, 0))
    exact = np.einsum("qd,qkd->qk", q, rows[pos]) if len(uniq) else np.zeros(ids.shape, np.float32)
    exact = np.where(ids >= 0, exact, -np.inf).astype(np.float32)
    order = np.argsort(-exact, axis=1, kind="stable")
    return np.take_along_axis(exact, order, 1), np.take_along_axis(ids, order, 1)
