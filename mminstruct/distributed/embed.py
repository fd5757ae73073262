"""Embedding a large candidate pool with Ray Data, into Parquet shards.

``embed_pool(files=…, tars=…, model=…)`` runs one streaming pipeline over the cluster:

1. **read + decode + preprocess** on CPU workers (Ray Data tasks): image files by path, or the
   members of webdataset ``.tar`` shards (read with ``tarfile``, one task a shard); decoding is
   ``mminstruct.data.images`` (``open_image`` / ``open_image_bytes``: the same RGB, EXIF and bomb
   handling as the local pipeline) and preprocessing the model's own open_clip transform, up to
   the resized, cropped uint8 pixels (``Transform``: a quarter of the bytes of float32);
2. **encode** in an actor pool (``map_batches`` with a class holding the open_clip model): one
   actor per GPU when the cluster has GPUs, else CPU actors; the transform's last steps (scaling
   and Normalize) run there on the batch — bit for bit what the whole transform gives — and
   precision is decided as locally (``image_embed.encode_batch``: bf16 / int8 only where they
   agree with fp32); on GPU actors, a pool of image files skips step 1: the actors read the files
   and decode them on the GPU (``gpu_decode.gpu_batches``, the local pipeline's GPU path);
3. **write**: each bundle an encoder takes (up to ``shard_rows`` images) becomes one
   ``emb-*.parquet`` shard, written atomically before the next is taken (a crash loses no
   finished shard), and its decode failures one ``fail-*.parquet`` shard.

Shards (in ``output_dir``, by default ``CACHE/ray_embeddings/{arch}-{key}/`` per model identity):
``path`` (the file, or ``SHARD.tar::MEMBER``), ``embedding`` (float16, L2-normalised, a
fixed-size list), ``fp_path``/``fp_size``/``fp_mtime_ns`` (the fingerprint the local cache keys
by) and ``model`` (the model identity); failure shards hold ``reason`` instead of ``embedding``.
A second run over the same folder embeds only what is not there yet (resume).

Readers: ``read_pool(output_dir)`` (names, vectors, failures), ``retrieval.parquet_vectors``
(``PoolEmbedding.vector_shards``) for the faiss index, and ``import_to_cache`` which puts every
vector and failure into the local embedding cache, after which ``image_embed.embed_images`` (and so the
task-file builder) finds them without loading a model. ``generate_task_file`` (in
``distributed.taskfile``) is step 1 with the candidate pool embedded this way.
"""

from __future__ import annotations

import io
import logging
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mminstruct.cache import atomic_write_bytes, atomic_write_json, content_key, file_fingerprint
from mminstruct.embed.clip import ModelSpec, default_cache_dir, open_cache, parse_model_spec
from mminstruct.errors import ConfigError, DataFileError
from mminstruct.distributed.cluster import connect, remote_error, require_ray
from mminstruct.distributed.decode import FP_COLS, TAR_SEP, Transform, decode_files, decode_tars, split_transform

log = logging.getLogger(__name__)

EMB_PREFIX, FAIL_PREFIX = "emb-", "fail-"
MANIFEST = "manifest.json"


@dataclass
class PoolEmbedding:
    """What ``embed_pool`` produced (``n_*`` count this session; the folder may hold more)."""

    output_dir: Path
    identity: str
    dim: int
    n_new: int = 0
    n_failed: int = 0
    n_skipped: int = 0  # already in the folder's shards (resumed)
    seconds: float = 0.0
    new_shards: list[Path] = field(default_factory=list)

    @property
    def vector_shards(self) -> list[Path]:
        """Every embedding shard in the folder, in a stable order (``retrieval.parquet_vectors``)."""
        return sorted(self.output_dir.glob(f"{EMB_PREFIX}*.parquet"))

    @property
    def failure_shards(self) -> list[Path]:
        return sorted(self.output_dir.glob(f"{FAIL_PREFIX}*.parquet"))


def pool_dir(identity: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """The default shard folder of one model identity under the cache folder."""
    slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in identity.split(":")[0])
    return Path(cache_dir or default_cache_dir()) / "ray_embeddings" / \
        f"{slug}-{content_key(identity)[:16]}"


# ---------------------------------------------------------------------------------------------
# Shards


def _schema(dim: int, failures: bool = False) -> Any:
    import pyarrow as pa

    value = ("reason", pa.string()) if failures else ("embedding", pa.list_(pa.float16(), dim))
    return pa.schema([("path", pa.string()), value, ("fp_path", pa.string()),
                      ("fp_size", pa.int64()), ("fp_mtime_ns", pa.int64()),
                      ("model", pa.string())], metadata={"mminstruct_model": "", "dim": str(dim)})


def write_shard(folder: Path, prefix: str, columns: dict[str, Any], dim: int,
                identity: str) -> Path:
    """One Parquet shard, written to a temporary file and renamed into place."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    failures = "reason" in columns
    schema = _schema(dim, failures).with_metadata({"mminstruct_model": identity, "dim": str(dim)})
    n = len(columns["path"])
    arrays = dict(columns, model=[identity] * n)
    if not failures:
        vecs = np.ascontiguousarray(np.asarray(columns["embedding"], np.float16).reshape(n, dim))
        arrays["embedding"] = pa.FixedSizeListArray.from_arrays(
            pa.array(vecs.reshape(-1), pa.float16()), dim)
    table = pa.Table.from_pydict({f.name: arrays[f.name] for f in schema}, schema=schema)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    path = folder / f"{prefix}{uuid.uuid4().hex}.parquet"
    atomic_write_bytes(path, buf.getvalue())
    return path


def _shard_model(path: Path) -> str:
    import pyarrow.parquet as pq

    try:
        meta = pq.read_schema(path).metadata or {}
    except (OSError, ValueError) as e:
        raise DataFileError(f"{path}: not a readable Parquet shard: {e}") from e
    return meta.get(b"mminstruct_model", b"").decode()


def _read_shards(folder: Path, prefix: str, columns: list[str], identity: str | None
                 ) -> dict[str, list[Any]]:
    import pyarrow.parquet as pq

    out: dict[str, list[Any]] = {c: [] for c in columns}
    for path in sorted(folder.glob(f"{prefix}*.parquet")):
        model = _shard_model(path)
        if identity is not None and model != identity:
            raise ConfigError(f"{path} holds embeddings of model {model!r}, not {identity!r}; "
                              "use another output folder for another model")
        table = pq.read_table(path, columns=columns)
        for c in columns:
            out[c].extend(table.column(c).to_pylist() if c != "embedding" else
                          [np.asarray(table.column(c).combine_chunks().flatten()
                                      .to_numpy(zero_copy_only=False)).reshape(len(table), -1)])
    return out


def read_pool(folder: str | os.PathLike, identity: str | None = None
              ) -> tuple[list[str], np.ndarray, dict[str, str]]:
    """(names, float16 vectors, {name: failure reason}) of every shard in ``folder``. A name
    embedded twice (a retried batch, a file changed between runs) counts once: the last shard's
    row (shards are read in name order, which is random: rows of one file are equal anyway)."""
    folder = Path(folder)
    emb = _read_shards(folder, EMB_PREFIX, ["path", "embedding"], identity)
    vecs = np.concatenate(emb["embedding"]) if emb["embedding"] else np.zeros((0, 0), np.float16)
    index = {name: i for i, name in enumerate(emb["path"])}
    names = list(index)
    vectors = vecs[list(index.values())] if names else vecs
    fail = _read_shards(folder, FAIL_PREFIX, ["path", "reason"], identity)
    failures = {p: r for p, r in zip(fail["path"], fail["reason"]) if p not in index}
    return names, vectors, failures


def import_to_cache(folder: str | os.PathLike, cache: Any = None, identity: str | None = None,
                    chunk: int = 20_000) -> tuple[int, int]:
    """Put every vector and decode failure of the shards in ``folder`` into the local embedding
    cache (``clip.open_cache(cache, identity)``), keyed by their fingerprints; → (vectors,
    failures) imported. Rows of tar members are imported too (keyed ``SHARD.tar::MEMBER``)."""
    import pyarrow.parquet as pq

    folder = Path(folder)
    n_vec = n_fail = 0
    caches: dict[str, Any] = {}
    for path in sorted(folder.glob(f"{EMB_PREFIX}*.parquet")) + \
            sorted(folder.glob(f"{FAIL_PREFIX}*.parquet")):
        model = _shard_model(path)
        if identity is not None and model != identity:
            raise ConfigError(f"{path} holds embeddings of model {model!r}, not {identity!r}")
        if model not in caches:
            caches[model] = open_cache(cache, model)
        ec = caches[model]
        if ec is None:
            return 0, 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=chunk):
            cols = batch.to_pydict()
            value = cols.get("embedding", cols.get("reason"))
            rows = [(ec.image_key((p, int(s), int(m))), v) for p, s, m, v in
                    zip(cols["fp_path"], cols["fp_size"], cols["fp_mtime_ns"], value)
                    if p and s is not None and s >= 0]  # a missing file has no fingerprint
            if "embedding" in cols:
                n_vec += ec.vectors.put_many(rows)
            else:
                ec.put_failures(rows)
                n_fail += len(rows)
    return n_vec, n_fail


# ---------------------------------------------------------------------------------------------
# Encoding in an actor pool


class Encoder:
    """A Ray Data actor: the open_clip model on this actor's GPU (or CPU threads). It takes
    shard-sized bundles, encodes them ``batch_size`` images at a time, and writes each bundle as
    one shard before taking the next. Bundles of decoded ``pixels`` (from the CPU decode tasks) are
    finished with the transform's tail; bundles of bare ``path``s (image files, when the actor is
    on a GPU: ``decode_on_device``) are read by threads and decoded on the GPU, exactly as the
    local pipeline does (``gpu_decode.gpu_batches``, with its CPU fallback and first-batch check)."""

    def __init__(self, spec: ModelSpec, identity: str, out_dir: str, transform: Transform,
                 use_gpu: bool, threads: int, batch_size: int, precision: str = "auto",
                 cache_dir: str | None = None, decode_on_device: bool | None = None):
        import torch

        from mminstruct.embed.clip import load_clip
        from mminstruct.embed.image_embed import cpu_workers

        if not use_gpu:
            torch.set_num_threads(max(1, threads))
        device = "cuda:0" if use_gpu and torch.cuda.is_available() else "cpu"
        self.cm = load_clip(spec, device, precision=precision, cache_dir=cache_dir)
        if self.cm.identity != identity:
            raise ConfigError(f"the model on this worker is {self.cm.identity!r}, the driver's "
                              f"{identity!r}: every node must see the same checkpoint file")
        self.identity, self.out_dir, self.transform = identity, Path(out_dir), transform
        self.batch_size = batch_size
        self.decode_on_device = device.startswith("cuda") if decode_on_device is None \
            else decode_on_device
        self.read_threads = cpu_workers(device if self.decode_on_device else "cpu") or 1

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        from mminstruct.embed.image_embed import encode_batch

        if "pixels" not in batch:
            return self._files(batch)
        ok = np.asarray([e == "" for e in batch["error"]], bool)
        vectors = np.zeros((0, self.cm.dim), np.float16)
        if ok.any():
            pixels, parts = batch["pixels"][ok], []
            with self.cm._lock, torch.inference_mode():
                for i in range(0, len(pixels), self.batch_size):
                    x = self.transform.to_model_input(pixels[i:i + self.batch_size],
                                                      self.cm.device)
                    parts.append(encode_batch(self.cm, x).numpy().astype(np.float16))
            vectors = np.concatenate(parts)
        return self._write(batch, ok, vectors)

    def _files(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Image files by path: fingerprints here, pixels decoded on the device."""
        from mminstruct.embed.gpu_decode import gpu_batches
        from mminstruct.embed.image_embed import encode_batch

        names = [str(n) for n in batch["path"]]
        fps: list[tuple[str, int, int] | None] = []
        errors: list[str] = []
        for name in names:
            p = Path(name)
            try:
                fps.append(file_fingerprint(p))
                errors.append("")
            except OSError:
                fps.append(None)
                errors.append(f"image {p} does not exist" if not p.exists()
                              else f"image {p} cannot be read")
        todo = [i for i, e in enumerate(errors) if not e]
        vecs: dict[int, np.ndarray] = {}
        for idx, x, failed in gpu_batches([names[i] for i in todo], self.cm.preprocess,
                                          self.cm.device, self.batch_size,
                                          threads=self.read_threads, encoder=self.cm):
            if x is not None:
                with self.cm._lock:
                    out = encode_batch(self.cm, x).numpy().astype(np.float16)
                vecs.update((todo[j], v) for j, v in zip(idx, out))
            for j, why in failed:
                errors[todo[j]] = why
        full = {"path": np.asarray(names, dtype=object), "error": np.asarray(errors, dtype=object),
                "fp_path": np.asarray([fp[0] if fp else "" for fp in fps], dtype=object),
                "fp_size": np.asarray([fp[1] if fp else -1 for fp in fps], np.int64),
                "fp_mtime_ns": np.asarray([fp[2] if fp else -1 for fp in fps], np.int64)}
        ok = np.asarray([e == "" for e in errors], bool)
        vectors = np.stack([vecs[i] for i in np.flatnonzero(ok)]) if ok.any() \
            else np.zeros((0, self.cm.dim), np.float16)
        return self._write(full, ok, vectors)

    def _write(self, batch: dict[str, np.ndarray], ok: np.ndarray,
               vectors: np.ndarray) -> dict[str, np.ndarray]:
        shards: list[str] = []
        fp = {c: batch[c] for c in FP_COLS}
        if ok.any():
            cols = {"path": list(batch["path"][ok]), "embedding": vectors,
                    **{c: list(v[ok]) for c, v in fp.items()}}
            shards.append(str(write_shard(self.out_dir, EMB_PREFIX, cols, self.cm.dim,
                                          self.identity)))
        if (~ok).any():
            bad = ~ok
            cols = {"path": list(batch["path"][bad]), "reason": list(batch["error"][bad]),
                    "fp_path": [p or None for p in fp["fp_path"][bad]],
                    "fp_size": list(fp["fp_size"][bad]), "fp_mtime_ns": list(fp["fp_mtime_ns"][bad])}
            shards.append(str(write_shard(self.out_dir, FAIL_PREFIX, cols, self.cm.dim,
                                          self.identity)))
        return {"shards": np.asarray(["\n".join(shards)], dtype=object),
                "n_ok": np.asarray([int(ok.sum())]), "n_failed": np.asarray([int((~ok).sum())])}


# ---------------------------------------------------------------------------------------------
# The driver


def _done_rows(folder: Path, identity: str) -> dict[str, tuple[int, int]]:
    """name → (size, mtime_ns) of everything already in the folder's shards (for resume)."""
    done: dict[str, tuple[int, int]] = {}
    for prefix in (EMB_PREFIX, FAIL_PREFIX):
        cols = _read_shards(folder, prefix, ["path", "fp_size", "fp_mtime_ns"], identity)
        for name, size, mtime in zip(cols["path"], cols["fp_size"], cols["fp_mtime_ns"]):
            if size is not None and size >= 0:
                done[name] = (int(size), int(mtime))
    return done


def embed_pool(files: Sequence[str | os.PathLike] = (), tars: Sequence[str | os.PathLike] = (),
               model: str | ModelSpec = "", *, output_dir: str | os.PathLike | None = None,
               cache_dir: str | os.PathLike | None = None, batch_size: int = 64,
               num_encoders: int | None = None, use_gpu: bool | None = None,
               encoder_cpus: float = 1.0, decode_cpus: float = 1.0, precision: str = "auto",
               shard_rows: int = 4096, ray_address: str | None = None,
               show_progress: bool = False) -> PoolEmbedding:
    """Embed image ``files`` and the image members of webdataset ``tars`` on the Ray cluster
    (connecting to ``ray_address`` unless this process is connected already); see the module
    docstring. ``use_gpu`` None: one GPU actor per GPU when the cluster has any. A shard holds
    at most ``shard_rows`` images (fewer for a small pool, so that encoding starts early and
    every encoder gets work), encoded ``batch_size`` at a time."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    t0 = time.perf_counter()
    spec = parse_model_spec(model)
    identity = spec.identity(cache_dir)
    out = Path(output_dir) if output_dir is not None else pool_dir(identity, cache_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = list(dict.fromkeys(str(f) for f in files))
    tar_list = list(dict.fromkeys(str(t) for t in tars))
    done = _done_rows(out, identity)
    todo, skipped = _todo_files(names, done)
    skip, tar_skipped = _tar_skips(tar_list, done)
    result = PoolEmbedding(out, identity, 0, n_skipped=skipped + tar_skipped)
    if not todo and not tar_list:
        result.seconds = time.perf_counter() - t0
        return result
    from mminstruct.embed.clip import load_clip

    driver_model = load_clip(spec, "cpu", cache_dir=cache_dir)  # its transform and dimension
    result.dim = driver_model.dim
    transform = split_transform(driver_model.preprocess)
    info = connect(ray_address)
    ray = require_ray()
    gpus = info.gpus if use_gpu is None or use_gpu else 0
    if use_gpu and not info.gpus:
        raise ConfigError("use_gpu is set but the Ray cluster has no GPU")
    n_actors = int(num_encoders or (gpus if gpus else 1))
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = show_progress
    ctx.execution_options.verbose_progress = show_progress
    # Paths per decode task: a batch, or fewer when the pool is small, so that every CPU of the
    # cluster gets some (the encoder's batches are put together again downstream).
    chunk = max(8, min(batch_size, -(-len(todo) // max(1, int(4 * info.cpus)))))
    # A decode task's working set (a Python worker with torch, ~0.8 GB, and its pixels). The
    # reservation also keeps Ray Data from fusing decoding into the encoder actors (it fuses
    # only operators asking for the same resources), which would serialise decode and encode.
    pixel_bytes = np.dtype(transform.dtype).itemsize * int(np.prod(transform.shape))
    decode_args = {"num_cpus": decode_cpus, "batch_format": "numpy",
                   "memory": max(chunk, batch_size) * pixel_bytes * 2 + (1 << 30)}
    datasets = []
    # On GPU actors, image files go to the actors as paths and are decoded there, on the GPU (the
    # local pipeline's GPU path); tars, and files in a pool with tars (one row layout), as pixels.
    files_on_gpu = bool(gpus) and bool(todo) and not tar_list
    if todo and files_on_gpu:
        datasets.append(ray.data.from_arrow([_arrow({"path": todo[i:i + batch_size]})
                                             for i in range(0, len(todo), batch_size)]))
    elif todo:
        blocks = [_arrow({"path": todo[i:i + chunk]}) for i in range(0, len(todo), chunk)]
        datasets.append(ray.data.from_arrow(blocks).map_batches(
            decode_files, fn_kwargs={"transform": transform}, batch_size=chunk, **decode_args))
    if tar_list:
        datasets.append(ray.data.from_arrow([_arrow({"tar": [t]}) for t in tar_list]).map_batches(
            decode_tars, fn_kwargs={"transform": transform, "batch_size": batch_size,
                                    "skip": skip},
            batch_size=1, **decode_args))
    ds = datasets[0] if len(datasets) == 1 else datasets[0].union(*datasets[1:])
    per_batch = max(1, shard_rows // batch_size)
    if todo and not tar_list:
        per_batch = min(per_batch, -(-len(todo) // (4 * n_actors * batch_size)))
    ds = ds.map_batches(
        Encoder, fn_constructor_kwargs={
            "spec": spec, "identity": identity, "out_dir": str(out), "transform": transform,
            "use_gpu": bool(gpus), "threads": int(encoder_cpus), "batch_size": batch_size,
            "precision": precision, "cache_dir": None if cache_dir is None else str(cache_dir)},
        batch_size=batch_size * max(1, per_batch), batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=n_actors),
        num_gpus=1 if gpus else 0, num_cpus=0 if gpus else encoder_cpus)
    try:
        for row in ds.iter_rows():
            result.n_new += int(row["n_ok"])
            result.n_failed += int(row["n_failed"])
            result.new_shards += [Path(s) for s in str(row["shards"]).split("\n") if s]
    except Exception as e:
        if isinstance(e, (ConfigError, DataFileError)):
            raise
        raise remote_error(e) from e
    result.seconds = time.perf_counter() - t0
    atomic_write_json(out / MANIFEST, {
        "model": spec.raw, "model_identity": identity, "dim": result.dim,
        "shards": len(result.vector_shards), "failure_shards": len(result.failure_shards),
        "last_session": {"new": result.n_new, "failed": result.n_failed,
                         "skipped": result.n_skipped, "seconds": round(result.seconds, 2),
                         "encoders": n_actors, "gpu": bool(gpus)}})
    log.info("embedded %d image(s) with Ray (%d failed, %d already done) in %.1fs → %s",
             result.n_new, result.n_failed, result.n_skipped, result.seconds, out)
    return result


def _arrow(cols: dict[str, list[str]]) -> Any:
    import pyarrow as pa

    return pa.table({k: pa.array(v, pa.string()) for k, v in cols.items()})


def _todo_files(names: list[str], done: dict[str, tuple[int, int]]) -> tuple[list[str], int]:
    todo, skipped = [], 0
    for name in names:
        if name in done:
            try:
                st = Path(name).resolve().stat()
                if (st.st_size, st.st_mtime_ns) == done[name]:
                    skipped += 1
                    continue
            except OSError:
                pass
        todo.append(name)
    return todo, skipped


def _tar_skips(tars: list[str], done: dict[str, tuple[int, int]]
               ) -> tuple[dict[str, frozenset[str]], int]:
    """Members of each tar already embedded from the same (unchanged) tar."""
    mtimes: dict[str, int] = {}
    for tar in tars:
        try:
            mtimes[tar] = Path(tar).resolve().stat().st_mtime_ns
        except OSError:
            continue
    by_tar: dict[str, set[str]] = {}
    for name, (_, mtime) in done.items():
        tar, sep, member = name.partition(TAR_SEP)
        if sep and mtimes.get(tar) == mtime:
            by_tar.setdefault(tar, set()).add(member)
    return {t: frozenset(m) for t, m in by_tar.items()}, sum(len(m) for m in by_tar.values())





# ---------------------------------------------------------------------------------------------
# Step 1 with the candidate pool embedded on the cluster


def generate_task_file(config: Any, progress: Any = None, **pool_options: Any) -> Path:
    """``taskfile.generate_task_file`` with the candidate images embedded by ``embed_pool`` on
    the cluster at ``config.ray_address``: those the local cache does not hold yet are embedded
    into shards, imported into the cache, and the local builder then finds every candidate
    cached (reference images and keywords, a few, are embedded locally as before)."""
    from mminstruct.partition import taskfile
    from mminstruct.distributed.cluster import check_address

    check_address(config.ray_address)  # a bad address fails now, even if nothing is embedded
    cand_abs = _candidate_files(config)
    spec, cache = config.spec, config.cache_dir
    identity = spec.identity(cache)
    ec = open_cache(cache, identity)
    missing = cand_abs
    if ec is not None:
        keys = {}
        for p in cand_abs:
            try:
                keys[p] = ec.image_key(file_fingerprint(p))
            except OSError:
                continue  # the local builder reports it
        found = set(ec.vectors.get_many(list(keys.values())))
        found |= set(ec.get_failures([k for k in keys.values() if k not in found]))
        missing = [p for p, k in keys.items() if k not in found]
    if missing:
        log.info("%d of %d candidate image(s) are not cached: embedding them with Ray",
                 len(missing), len(cand_abs))
        use_gpu = None if config.gpu is not None and config.gpu >= 0 else False
        result = embed_pool(missing, model=spec, cache_dir=cache, batch_size=config.batch_size,
                            ray_address=config.ray_address, use_gpu=use_gpu,
                            precision=config.precision, **pool_options)
        if ec is not None:
            import_to_cache(result.output_dir, cache, identity)
    return taskfile.generate_task_file(config, progress)


def _candidate_files(config: Any) -> list[Path]:
    """The candidate pool's files, found as ``taskfile.build_task_file`` finds them."""
    from mminstruct.partition import taskfile

    if config.input_folder is not None and str(config.input_folder).strip():
        input_root = Path(config.input_folder).expanduser().resolve()
        if not input_root.is_dir():
            raise DataFileError(f"input folder {str(config.input_folder)!r} does not exist")
    else:
        data = Path(config.data_file).expanduser()
        data = data if data.is_absolute() else Path.cwd() / data
        if not data.is_file():
            return []  # the local builder reports the missing data file
        input_root = data.resolve().parent
    return taskfile.collect_candidates(config, input_root)[1]


__all__ = ["embed_pool", "PoolEmbedding", "read_pool", "import_to_cache", "pool_dir",
           "write_shard", "Encoder", "TAR_SEP",
           "generate_task_file"]
