"""Content-addressed on-disk storage with atomic writes.

* ``atomic_write_bytes`` / ``atomic_write_json`` / ``atomic_write_text``: write to a temporary file in
  the same folder, fsync, then ``os.replace`` — a reader sees the old file or the new one, never half.
* ``content_key(*parts)``: a stable SHA-256 over JSON-able parts (inputs + parameters), the key of
  every cache entry.
* ``file_fingerprint(path)``: (resolved path, size, mtime_ns) — the cheap identity of a file's content.
* ``VectorStore``: key → float16 vector in one SQLite file (transactions make writes atomic, WAL lets
  the app read while a background run writes). Used for CLIP embeddings.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import tempfile
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np


_UMASK: int | None = None


def _file_mode() -> int:
    """0o666 less the process umask (mkstemp's 0o600 would hide outputs from other users)."""
    global _UMASK
    if _UMASK is None:
        _UMASK = os.umask(0o022)
        os.umask(_UMASK)
    return 0o666 & ~_UMASK


@contextmanager
def atomic_writer(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Write ``path`` through a temporary file in its folder ("wb" or "w" for UTF-8 text); on
    success fsync and rename over ``path``, on any error remove the temporary file. A reader (or a
    crash) sees the old file or the new one, never half of one."""
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_writer mode must be 'wb' or 'w', got {mode!r}")
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        os.fchmod(fd, _file_mode())
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_writer(path, "wb") as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def content_key(*parts: Any) -> str:
    """SHA-256 hex of the parts, serialised canonically (sorted keys, no whitespace)."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, bytes):
            h.update(b"b")
            h.update(hashlib.sha256(part).digest())
        else:
            h.update(b"j")
            h.update(json.dumps(part, sort_keys=True, separators=(",", ":"), default=str).encode())
        h.update(b"\x00")
    return h.hexdigest()


def file_fingerprint(path: str | os.PathLike) -> tuple[str, int, int]:
    """(resolved path, size, mtime_ns): changes whenever the file is rewritten."""
    p = Path(path).resolve()
    st = p.stat()
    return (str(p), st.st_size, st.st_mtime_ns)


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class VectorStore:
    """A persistent map from string keys to float16 vectors of one dimension, in one SQLite file.

    Thread-safe (one connection per thread); safe across processes (SQLite locking, WAL).
    """

    def __init__(self, path: str | os.PathLike, dim: int | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.dim = dim
        self._local = threading.local()
        con = self._con()
        with con:
            con.execute("CREATE TABLE IF NOT EXISTS vec (k TEXT PRIMARY KEY, v BLOB NOT NULL)")
            con.execute("CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL)")
        row = con.execute("SELECT v FROM meta WHERE k='dim'").fetchone()
        if row is not None:
            stored = int(row[0])
            if dim is not None and dim != stored:
                raise ValueError(f"vector store {self.path} holds dim {stored}, asked for {dim}")
            self.dim = stored

    def _con(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            con = sqlite3.connect(self.path, timeout=60)
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=NORMAL")
            self._local.con = con
        return con

    def get_many(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        con = self._con()
        for start in range(0, len(keys), 900):  # SQLite's host-parameter limit
            chunk = list(keys[start:start + 900])
            q = f"SELECT k, v FROM vec WHERE k IN ({','.join('?' * len(chunk))})"
            for k, v in con.execute(q, chunk):
                out[k] = np.frombuffer(v, dtype=np.float16)
        return out

    def put_many(self, items: Iterable[tuple[str, np.ndarray]]) -> int:
        rows = []
        for k, v in items:
            arr = np.ascontiguousarray(np.asarray(v, dtype=np.float16).reshape(-1))
            if self.dim is None:
                self.dim = int(arr.shape[0])
            if arr.shape[0] != self.dim:
                raise ValueError(f"vector of dim {arr.shape[0]} for store of dim {self.dim}")
            rows.append((k, arr.tobytes()))
        if not rows:
            return 0
        con = self._con()
        with con:  # one transaction: all rows or none
            con.execute("INSERT OR REPLACE INTO meta (k, v) VALUES ('dim', ?)", (str(self.dim),))
            con.executemany("INSERT OR REPLACE INTO vec (k, v) VALUES (?, ?)", rows)
        return len(rows)

    def __len__(self) -> int:
        return int(self._con().execute("SELECT COUNT(*) FROM vec").fetchone()[0])

    def close(self) -> None:
        con = getattr(self._local, "con", None)
        if con is not None:
            con.close()
            self._local.con = None
