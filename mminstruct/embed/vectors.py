"""Chunked access to large [N, D] vector arrays, shared by ``projection``, ``retrieval`` and ``curation``.

``vectors`` may be any array-like of shape [N, D] that supports ``len`` and row slicing (a numpy
array, a float16 ``np.load(..., mmap_mode="r")``, ``retrieval.parquet_vectors``); it is read in
chunks and converted to float32 chunk by chunk, so a 10M-row pool never sits in memory as float32.

* ``as_rows`` validates the shape without reading the data.
* ``iter_chunks`` / ``take_rows`` read blocks or selected rows.
* ``normalise_rows`` scales rows to unit L2 norm; ``check_finite`` refuses NaN and infinity, naming
  the first bad row.
* ``array_fingerprint`` is the SHA-256 of dtype, shape and bytes: the identity of vectors in cache keys.
* ``save_npy`` writes an array as ``.npy`` atomically; ``open_memmap`` opens one read-only and
  memory-mapped, one shared object per file and process (two sessions of the app on one workspace
  read the same pages of the same file, no copy each); ``forget_memmaps`` lets them go.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from mminstruct.errors import InputError

CHUNK_ROWS = 65_536


def as_rows(vectors: Any) -> Any:
    """Validate the [N, D] shape without reading the data; return something sliceable."""
    if isinstance(vectors, (list, tuple)):
        vectors = np.asarray(vectors, dtype=np.float32)
    shape = getattr(vectors, "shape", None)
    if shape is None:
        raise InputError(f"vectors must be an array-like of shape [N, D], got {type(vectors).__name__}")
    if len(shape) != 2:
        raise InputError(f"vectors must have shape [N, D], got shape {tuple(shape)}")
    if shape[0] > 0 and shape[1] < 1:
        raise InputError(f"vectors must have at least one dimension, got shape {tuple(shape)}")
    return vectors


def iter_chunks(vectors: Any, chunk_rows: int = CHUNK_ROWS,
                dtype: Any = np.float32) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(start, chunk)`` with ``chunk`` a float32 (by default) C-contiguous block of rows."""
    n = int(vectors.shape[0])
    for start in range(0, n, chunk_rows):
        block = np.asarray(vectors[start:start + chunk_rows])
        if dtype is not None:
            block = np.ascontiguousarray(block, dtype=dtype)
        yield start, block


def check_finite(block: np.ndarray, start: int = 0, what: str = "vector") -> None:
    """Raise ``InputError`` naming the first row (numbered from ``start``) with NaN or infinity."""
    finite = np.isfinite(block)
    if not finite.all():
        bad = start + int(np.flatnonzero(~finite.reshape(len(block), -1).all(axis=1))[0])
        raise InputError(f"{what} {bad} holds NaN or infinity; vectors must be finite")


def take_rows(vectors: Any, idx: np.ndarray, chunk_rows: int = CHUNK_ROWS) -> np.ndarray:
    """float32 rows ``idx`` (sorted ascending) of any array-like, one chunk at a time."""
    idx = np.asarray(idx, dtype=np.int64)
    if isinstance(vectors, np.ndarray):
        return np.ascontiguousarray(vectors[idx], dtype=np.float32)
    out = np.empty((len(idx), int(vectors.shape[1])), dtype=np.float32)
    pos = 0
    for start in range(0, int(vectors.shape[0]), chunk_rows):
        stop = start + chunk_rows
        hi = int(np.searchsorted(idx, stop))
        if hi > pos:
            block = np.asarray(vectors[start:stop])
            out[pos:hi] = block[idx[pos:hi] - start]
            pos = hi
    return out


def normalise_rows(block: np.ndarray) -> np.ndarray:
    """float32 rows scaled to unit L2 norm (all-zero rows stay zero)."""
    norms = np.linalg.norm(block, axis=1, keepdims=True)
    return np.ascontiguousarray(block / np.where(norms > 0, norms, 1.0), dtype=np.float32)


def array_fingerprint(vectors: Any, chunk_rows: int = CHUNK_ROWS) -> str:
    """SHA-256 hex over dtype, shape and the raw bytes of every row (read in chunks)."""
    vectors = as_rows(vectors)
    h = hashlib.sha256()
    dtype = np.dtype(getattr(vectors, "dtype", np.float32))
    h.update(f"{dtype.str}|{tuple(int(s) for s in vectors.shape)}|".encode())
    for _, block in iter_chunks(vectors, chunk_rows, dtype=None):
        h.update(memoryview(np.ascontiguousarray(block, dtype=dtype)).cast("B"))
    return h.hexdigest()


def save_npy(path: str | os.PathLike, array: np.ndarray) -> Path:
    """``array`` as a ``.npy`` file, written atomically (``cache.atomic_writer``)."""
    from mminstruct.cache import atomic_writer

    with atomic_writer(path, "wb") as f:
        np.save(f, np.ascontiguousarray(array), allow_pickle=False)
    return Path(path)


_MEMMAPS: dict[str, np.memmap] = {}
_MEMMAPS_LOCK = threading.Lock()


def open_memmap(path: str | os.PathLike) -> np.memmap:
    """The ``.npy`` file at ``path``, memory-mapped read-only; the same object for every caller in
    this process while the file is unchanged (keyed by resolved path, size and mtime)."""
    p = Path(path).resolve()
    st = p.stat()
    key = f"{p}|{st.st_size}|{st.st_mtime_ns}"
    with _MEMMAPS_LOCK:
        hit = _MEMMAPS.get(key)
        if hit is None:
            for old in [k for k in _MEMMAPS if k.startswith(f"{p}|")]:
                del _MEMMAPS[old]  # the file was replaced: the new content is another entry
            try:
                hit = np.load(p, mmap_mode="r", allow_pickle=False)
            except ValueError as e:  # e.g. no rows: nothing to map
                raise InputError(f"{p} cannot be memory-mapped ({e})") from e
            if not isinstance(hit, np.memmap):
                raise InputError(f"{p} is not a plain .npy array (cannot be memory-mapped)")
            _MEMMAPS[key] = hit
        return hit


def forget_memmaps() -> None:
    """Drop this process's memory maps (they are unmapped once no array refers to them)."""
    with _MEMMAPS_LOCK:
        _MEMMAPS.clear()
