"""2-D maps of CLIP embeddings (UMAP or PCA), cached on disk, and subsamples for drawing them.

* ``project_2d(vectors, method="umap"|"pca", seed=…, sample_size=…, cache_dir=…)`` → float32 [N, 2].
  UMAP (umap-learn, cosine metric, imported lazily) is fit on a random sample of at most
  ``sample_size`` points and the rest are placed with ``UMAP.transform``. Nearest neighbours come
  from an exact faiss search over the sample instead of pynndescent: no 80 s numba compile in a
  new process, exact, deterministic; its cost is one matrix product, O(N × sample_size × D).
  PCA is exact (a covariance eigendecomposition over chunks, no sklearn), for when the user asks
  for speed. Both are deterministic for a seed. With ``cache_dir`` the result is stored under a
  content key (the vectors' bytes, the method, its parameters and the library versions), written
  atomically, so the same call returns from disk in milliseconds, also from a new process (a
  cache hit does not import umap). ``cached_projection(n, fingerprint, method, cache_dir=…)``
  returns that stored result or None without computing anything.
* ``display_sample(n_points, max_points, seed, always=None)`` → the sorted indices of a
  deterministic subsample to draw when the browser cannot take every point.
* ``rows_in_selection(xy, boxes, lassos)`` → the sorted rows of a map inside a box or lasso (the
  shapes of plotly's selection event), tested against every row (numpy for a box,
  ``matplotlib.path.Path.contains_points`` for a lasso): the app's map selection, drawn points or
  not. ``rows_in_box`` / ``rows_in_lasso`` for one shape.
* ``warm_up_umap()`` compiles umap's remaining numba code (layout, transform) on a tiny input, so
  the first real call does not pay it (the app can run it in the background when it starts).

``vectors`` may be any array-like of shape [N, D] that supports ``len`` and row slicing (a numpy
array, a float16 ``np.load(..., mmap_mode="r")``, ``retrieval.parquet_vectors``); it is read in
chunks and converted to float32 chunk by chunk.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mminstruct.cache import atomic_write_bytes, content_key
from mminstruct.errors import ConfigError, InputError, choices_message
from mminstruct.embed.vectors import (CHUNK_ROWS, array_fingerprint, as_rows, check_finite, iter_chunks, normalise_rows,
                      take_rows)

Progress = Callable[[float, str], None]
"""``progress(fraction_done, message)`` — the shape of ``st.progress(value, text)``."""

METHODS = ("umap", "pca")
_FORMAT_VERSION = 1  # bump when the stored result of the same inputs would change


@dataclass(frozen=True)
class UmapParams:
    """UMAP settings (all in the cache key). ``n_epochs=200`` is umap's own choice above 10,000
    points; ``None`` lets umap use 500 epochs up to 10,000 points (about twice as slow)."""

    n_neighbors: int = 15
    min_dist: float = 0.1
    n_epochs: int | None = 200

    def validate(self) -> None:
        if self.n_neighbors < 2:
            raise ConfigError(f"UMAP n_neighbors must be >= 2, got {self.n_neighbors}")
        if not 0.0 <= self.min_dist <= 1.0:
            raise ConfigError(f"UMAP min_dist must be in [0, 1], got {self.min_dist}")
        if self.n_epochs is not None and self.n_epochs < 1:
            raise ConfigError(f"UMAP n_epochs must be >= 1, got {self.n_epochs}")


# ----------------------------------------------------------------------------- cache

def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _cache_path(cache_dir: str | os.PathLike, method: str, key: str) -> Path:
    return Path(cache_dir) / f"projection-{method}-{key[:40]}.npy"


def _load_cached(path: Path, n: int) -> np.ndarray | None:
    try:
        arr = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return None  # unreadable (e.g. a disk error): recompute and overwrite
    if arr.shape != (n, 2) or arr.dtype != np.float32:
        return None
    return arr


def projection_key(fingerprint: str, method: str, params: dict[str, Any]) -> str:
    """The cache key of a projection: vectors' fingerprint + method + parameters + library."""
    if method == "umap":  # the installed version, without importing umap (seconds, numba)
        from importlib.metadata import version  # noqa: PLC0415

        lib = f"umap-learn {version('umap-learn')} faiss-cpu {version('faiss-cpu')}"
    else:
        lib = f"numpy {np.__version__}"
    return content_key("projection", _FORMAT_VERSION, fingerprint, method, params, lib)


# ----------------------------------------------------------------------------- PCA

def pca_2d(vectors: Any, chunk_rows: int = CHUNK_ROWS, progress: Progress | None = None) -> np.ndarray:
    """Exact PCA to 2-D: mean and covariance in float64 over chunks, eigendecomposition, projection.

    Each axis's sign is fixed so that its largest-magnitude loading is positive (deterministic).
    """
    n, d = int(vectors.shape[0]), int(vectors.shape[1])
    if n == 0:
        return np.zeros((0, 2), dtype=np.float32)
    total = np.zeros(d, dtype=np.float64)
    gram = np.zeros((d, d), dtype=np.float64)
    for start, block in iter_chunks(vectors, chunk_rows):
        check_finite(block, start)
        b = block.astype(np.float64)
        total += b.sum(axis=0)
        gram += b.T @ b
        if progress:
            progress(0.5 * min(1.0, (start + len(block)) / n), "PCA: covariance")
    mean = total / n
    cov = gram / n - np.outer(mean, mean)
    evals, evecs = np.linalg.eigh(cov)
    order = np.argsort(evals)[::-1][:2]
    axes = evecs[:, order]  # [d, <=2]
    if axes.shape[1] < 2:
        axes = np.pad(axes, ((0, 0), (0, 2 - axes.shape[1])))
    for j in range(axes.shape[1]):
        if axes[np.argmax(np.abs(axes[:, j])), j] < 0:
            axes[:, j] = -axes[:, j]
    out = np.empty((n, 2), dtype=np.float32)
    for start, block in iter_chunks(vectors, chunk_rows):
        out[start:start + len(block)] = (block.astype(np.float64) - mean) @ axes
        if progress:
            progress(0.5 + 0.5 * min(1.0, (start + len(block)) / n), "PCA: projecting")
    return out


# ----------------------------------------------------------------------------- UMAP

class _ExactCosineSearch:
    """Exact cosine k-nearest-neighbour search over the fitted sample (faiss ``IndexFlatIP`` on
    L2-normalised rows), in the shape of ``pynndescent.NNDescent`` that ``UMAP.transform`` calls.

    Why not pynndescent: its numba code compiles for ~30 s before the first fit and ~50 s before the
    first ``transform`` in every new process (measured on 2 cores, see bench/projection_speed.py),
    its results depend on thread timing unless single-threaded, and it is approximate. An exact
    search has none of these costs and its time is one matrix product per chunk.
    """

    _angular_trees = True  # read by UMAP.transform to pick its (unused here) epsilon

    def __init__(self, fitted_unit_rows: np.ndarray):
        import faiss  # noqa: PLC0415  (lazy: heavy import)

        self.index = faiss.IndexFlatIP(int(fitted_unit_rows.shape[1]))
        self.index.add(fitted_unit_rows)

    def query(self, query_data: np.ndarray, k: int = 10, epsilon: float = 0.1):
        sims, ids = self.index.search(normalise_rows(np.asarray(query_data, dtype=np.float32)), k)
        dists = np.clip(1.0 - sims, 0.0, 2.0).astype(np.float32)
        return ids.astype(np.int32), dists


def _umap_model(params: UmapParams, seed: int, knn: tuple):
    import umap  # noqa: PLC0415  (lazy: heavy import, numba JIT)

    return umap.UMAP(
        n_components=2,
        n_neighbors=params.n_neighbors,
        min_dist=params.min_dist,
        n_epochs=params.n_epochs,
        metric="cosine",
        precomputed_knn=knn,
        random_state=seed,  # deterministic; umap then runs single-threaded
        transform_seed=seed,
        n_jobs=1,
        verbose=False,
    )


def umap_2d(vectors: Any, *, seed: int = 0, sample_size: int = 50_000,
            params: UmapParams | None = None, chunk_rows: int = 20_000,
            progress: Progress | None = None) -> np.ndarray:
    """UMAP to 2-D (cosine): fit on a random sample of at most ``sample_size`` rows with their
    exact k nearest neighbours, then ``UMAP.transform`` the other rows in chunks."""
    params = params or UmapParams()
    params.validate()
    n = int(vectors.shape[0])
    if n <= params.n_neighbors + 1:  # too few points for a neighbour graph: PCA is the honest map
        return pca_2d(vectors)
    rng = np.random.default_rng(seed)
    if n > sample_size:
        fit_idx = np.sort(rng.choice(n, size=sample_size, replace=False))
    else:
        fit_idx = np.arange(n)
    if progress:
        progress(0.0, f"UMAP: reading {len(fit_idx):,} points")
    fit_x = take_rows(vectors, fit_idx) if n > sample_size else _read_all(vectors)
    check_finite(fit_x, 0)
    fit_x = normalise_rows(fit_x)
    if progress:
        progress(0.02, f"UMAP: nearest neighbours of {len(fit_x):,} points")
    search = _ExactCosineSearch(fit_x)
    knn_ids, knn_dists = search.query(fit_x, params.n_neighbors)
    model = _umap_model(params, seed, (knn_ids, knn_dists, search))
    fit_share = 1.0 if n == len(fit_idx) else max(0.2, len(fit_idx) / n)
    if progress:
        progress(0.1 * fit_share, f"UMAP: laying out {len(fit_x):,} points")
    with _quiet_umap_warnings():
        fitted = model.fit_transform(fit_x)
    out = np.empty((n, 2), dtype=np.float32)
    out[fit_idx] = fitted
    if n == len(fit_idx):
        return out
    if progress:
        progress(fit_share, f"UMAP: placing {n - len(fit_idx):,} more points")
    rest = np.ones(n, dtype=bool)
    rest[fit_idx] = False
    done = 0
    for start, block in iter_chunks(vectors, chunk_rows):
        mask = rest[start:start + len(block)]
        if not mask.any():
            continue
        rows = block[mask]
        check_finite(rows, start)
        with _quiet_umap_warnings():
            out[start + np.flatnonzero(mask)] = model.transform(normalise_rows(rows))
        done += len(rows)
        if progress:
            progress(fit_share + (1 - fit_share) * done / (n - len(fit_idx)), "UMAP: placing points")
    return out


def _read_all(vectors: Any) -> np.ndarray:
    if isinstance(vectors, np.ndarray):
        return np.ascontiguousarray(vectors, dtype=np.float32)
    return np.concatenate([b for _, b in iter_chunks(vectors)])


class _quiet_umap_warnings:
    """umap warns that random_state forces one thread and that our search index is not an
    NNDescent object; both are intended here, so they say nothing to the user."""

    def __enter__(self):
        import warnings  # noqa: PLC0415

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.filterwarnings("ignore", message=".*n_jobs.*overridden.*")
        warnings.filterwarnings("ignore", message=".*knn_search_index.*")
        return self

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


def warm_up_umap(seed: int = 0) -> float:
    """Compile umap's numba code (layout, fuzzy set, transform) on a tiny random input so the
    first real call in this process does not pay for it; returns the seconds it took."""
    t0 = time.perf_counter()
    x = np.random.default_rng(seed).normal(size=(300, 16)).astype(np.float32)
    umap_2d(x, seed=seed, sample_size=200, params=UmapParams(n_epochs=10))
    return time.perf_counter() - t0


# ----------------------------------------------------------------------------- public entry

def _params(n: int, method: str, seed: int, sample_size: int,
            umap_params: UmapParams | None) -> dict[str, Any]:
    params: dict[str, Any] = {"seed": int(seed)}
    if method == "umap":
        up = umap_params or UmapParams()
        up.validate()
        params.update(asdict(up), sample_size=int(sample_size) if n > sample_size else None)
    return params


def cached_projection(n: int, fingerprint: str, method: str = "umap", *, cache_dir: str | os.PathLike,
                      seed: int = 0, sample_size: int = 50_000,
                      umap_params: UmapParams | None = None) -> np.ndarray | None:
    """``project_2d``'s cached result for ``n`` vectors of this ``fingerprint``, or None (nothing
    is computed: the app asks this before deciding whether a background job must project)."""
    if method not in METHODS:
        raise ConfigError(choices_message("projection method", method, METHODS))
    params = _params(n, method, seed, sample_size, umap_params)
    return _load_cached(_cache_path(cache_dir, method, projection_key(fingerprint, method, params)), n)


def project_2d(vectors: Any, method: str = "umap", *, seed: int = 0, sample_size: int = 50_000,
               cache_dir: str | os.PathLike | None = None, progress: Progress | None = None,
               umap_params: UmapParams | None = None, fingerprint: str | None = None) -> np.ndarray:
    """A float32 [N, 2] map of ``vectors`` by ``method`` ("umap" or "pca"), cached under ``cache_dir``.

    ``fingerprint``: the vectors' identity when the caller already knows it (e.g. a content key
    of the embedded files); by default ``array_fingerprint(vectors)`` hashes their bytes.
    """
    if method not in METHODS:
        raise ConfigError(choices_message("projection method", method, METHODS))
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    if sample_size < 10:
        raise ConfigError(f"sample_size must be at least 10, got {sample_size}")
    vectors = as_rows(vectors)
    n = int(vectors.shape[0])
    params = _params(n, method, seed, sample_size, umap_params)
    path = None
    if cache_dir is not None:
        fp = fingerprint or array_fingerprint(vectors)
        path = _cache_path(cache_dir, method, projection_key(fp, method, params))
        cached = _load_cached(path, n)
        if cached is not None:
            if progress:
                progress(1.0, "projection loaded from cache")
            return cached
    if method == "pca":
        out = pca_2d(vectors, progress=progress)
    else:
        out = umap_2d(vectors, seed=int(seed), sample_size=sample_size, params=umap_params,
                      progress=progress)
    out = np.ascontiguousarray(out, dtype=np.float32)
    if path is not None:
        atomic_write_bytes(path, _npy_bytes(out))
    if progress:
        progress(1.0, "projection done")
    return out


def display_sample(n_points: int, max_points: int, seed: int = 0,
                   always: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
    """Sorted int64 indices of at most ``max_points`` of ``n_points``, the same for the same seed.

    ``always``: indices that must be drawn (e.g. the reference set, the current selection); they
    are kept first and the rest of the budget is a uniform random sample of the others.
    All indices when ``n_points <= max_points``.
    """
    if n_points < 0:
        raise ConfigError(f"n_points must be >= 0, got {n_points}")
    if max_points < 1:
        raise ConfigError(f"max_points must be >= 1, got {max_points}")
    if n_points <= max_points:
        return np.arange(n_points, dtype=np.int64)
    keep = np.unique(np.asarray(always if always is not None else [], dtype=np.int64))
    if len(keep) and (keep[0] < 0 or keep[-1] >= n_points):
        bad = keep[0] if keep[0] < 0 else keep[-1]
        raise InputError(f"index {int(bad)} in 'always' is outside 0..{n_points - 1}")
    rng = np.random.default_rng(seed)
    if len(keep) >= max_points:
        return np.sort(rng.choice(keep, size=max_points, replace=False))
    budget = max_points - len(keep)
    if len(keep) == 0:
        picked = rng.choice(n_points, size=budget, replace=False)
    else:
        others = np.ones(n_points, dtype=bool)
        others[keep] = False
        picked = rng.choice(np.flatnonzero(others), size=budget, replace=False)
    return np.sort(np.concatenate([keep, picked.astype(np.int64)]))


# ----------------------------------------------------------------------------- selection on the map

def _shape_xy(shape: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    """``{"x": [...], "y": [...]}`` (plotly's selection event) or an (xs, ys) pair → float64."""
    if isinstance(shape, dict):
        xs, ys = shape.get("x"), shape.get("y")
    else:
        try:
            xs, ys = shape
        except (TypeError, ValueError) as e:
            raise InputError(f"a {what} must be {{'x': [...], 'y': [...]}} or (xs, ys), got "
                             f"{shape!r:.80}") from e
    try:
        x = np.asarray(xs, dtype=np.float64).reshape(-1)
        y = np.asarray(ys, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as e:
        raise InputError(f"the {what}'s coordinates are not numbers: {shape!r:.80}") from e
    if len(x) != len(y):
        raise InputError(f"the {what} has {len(x)} x but {len(y)} y coordinates")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise InputError(f"the {what} has a coordinate that is not a finite number: {shape!r:.80}")
    return x, y


def rows_in_box(xy: np.ndarray, box: Any) -> np.ndarray:
    """Sorted int64 rows of ``xy`` ([N, 2]) inside a box ``{"x": [x0, x1], "y": [y0, y1]}``
    (corners in any order, edges included) — every row, vectorised."""
    x, y = _shape_xy(box, "box")
    if len(x) < 2:
        raise InputError(f"a box needs two x and two y values, got {len(x)}")
    pts = np.asarray(xy)
    px, py = pts[:, 0], pts[:, 1]
    inside = (px >= x.min()) & (px <= x.max()) & (py >= y.min()) & (py <= y.max())
    return np.flatnonzero(inside).astype(np.int64)


def rows_in_lasso(xy: np.ndarray, lasso: Any) -> np.ndarray:
    """Sorted int64 rows of ``xy`` ([N, 2]) inside a closed polygon ``{"x": [...], "y": [...]}``
    (a lasso path; closed implicitly), tested with ``matplotlib.path.Path.contains_points``
    against every row. Fewer than 3 vertices enclose nothing."""
    x, y = _shape_xy(lasso, "lasso")
    if len(x) < 3:
        return np.zeros(0, np.int64)
    from matplotlib.path import Path as _Path  # noqa: PLC0415 (lazy: matplotlib is heavy)

    pts = np.asarray(xy, dtype=np.float64)
    # only the rows in the polygon's bounding box go through the polygon test
    cand = rows_in_box(pts, {"x": [x.min(), x.max()], "y": [y.min(), y.max()]})
    if not len(cand):
        return cand
    poly = _Path(np.column_stack([x, y]), closed=False)
    inside = poly.contains_points(pts[cand])
    return cand[inside]


def rows_in_selection(xy: np.ndarray, boxes: Sequence[Any] = (),
                      lassos: Sequence[Any] = ()) -> np.ndarray:
    """Sorted, distinct int64 rows of ``xy`` inside any of ``boxes`` or ``lassos`` (the shapes a
    plotly box or lasso selection reports, in data coordinates): the selection over every row of
    the map, not only the points a browser drew."""
    pts = np.asarray(xy)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise InputError(f"the map's points must be an [N, 2] array, got shape {pts.shape}")
    parts = [rows_in_box(pts, b) for b in boxes] + [rows_in_lasso(pts, s) for s in lassos]
    if not parts:
        return np.zeros(0, np.int64)
    return parts[0] if len(parts) == 1 else np.unique(np.concatenate(parts))
