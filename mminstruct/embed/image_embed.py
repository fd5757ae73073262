"""Image embeddings: the pipeline behind ``clip.embed_images``, the precision decision, and sizing.

* ``embed_images(paths, model, …)``: L2-normalised float16 vectors for the images that decode and
  ``(path, reason)`` for those that do not, cached on disk (``clip.EmbeddingCache``) by model
  identity and file fingerprint; when every image is cached the model is never loaded.
* On the CPU (or a GPU without the GPU path) images are decoded (``images.open_image``) and
  preprocessed in DataLoader workers (``cpu_workers``), overlapping with the model. JPEGs much
  larger than the model's input are decoded in PIL's draft mode (DCT scaling) when a probe of the
  first such images agrees with the full decode (cosine ≥ ``MIN_COSINE``).
* On CUDA, JPEGs are read by threads and decoded, resized, cropped and normalised on the GPU
  (``gpu_decode.gpu_batches``); what the GPU decoder refuses goes through the CPU path.
* ``encode_batch(cm, batch)``: a batch in the model's precision. ``auto`` decides on the first
  batch among ``clip.auto_candidates`` (by the kind of CPU: bf16 then int8 where bf16 is native,
  int8 alone on AVX2-only CPUs; bf16 on a GPU that runs it natively), each kept only if it runs,
  gives finite vectors and agrees with fp32 on a probe of the batch (min cosine ≥
  ``MIN_COSINE``); a candidate that fails is dropped for that model with one log line naming it
  and the reason, down to fp32. The same rule holds for draft decoding, GPU decoding and a kept
  precision failing on a later batch: a faster way never breaks embedding. int8 (``clip.int8_copy``)
  quantises only the Linear layers the image tower calls as modules, so it is not offered for
  open_clip's ModifiedResNet (RN50 …, the demo model). int8 quantises activations with one
  scale per batch, so an image's int8 vector varies slightly with its batch (within that cosine).
"""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mminstruct.embed import clip as _clip
from mminstruct.cache import file_fingerprint
from mminstruct.embed.clip import (ClipModel, EmbeddingCache, ModelSpec, PrecisionError, cache_folder, open_cache,
                   parse_model_spec)
from mminstruct.errors import ConfigError
from mminstruct.data.images import preprocess_file

log = logging.getLogger(__name__)

#: A lower precision (bf16, int8), draft-mode decoding and GPU decoding are each kept only if every
#: probed image's vector agrees with the reference's at least this well (cosine).
MIN_COSINE = _clip.BF16_MIN_COSINE
_CHECK_IMAGES = 8


def available_cpus() -> int:
    """The cores this process may run on (its affinity mask), not the machine's count."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cpu_workers(device: str = "cpu", cpus: int | None = None) -> int:
    """Decode workers by default. The model on a GPU: every core but one (the process feeding the
    GPU) decodes. The model on the CPU: it needs the cores too, so at most 4 workers, and none on
    two cores or fewer (the main process decodes between batches: measured faster there than a
    worker taking one of the model's two cores, see README)."""
    n = available_cpus() if cpus is None else max(1, int(cpus))
    if device.startswith("cuda"):
        return max(1, n - 1)
    return 0 if n <= 2 else min(4, n - 1)


@dataclass
class EmbedResult:
    """``vectors[j]`` belongs to ``paths[ok[j]]``; ``failures`` are the paths that did not embed."""

    paths: list[Path]
    vectors: np.ndarray  # float16 (len(ok), dim), L2-normalised
    ok: np.ndarray  # int64 indices into paths, ascending
    failures: list[tuple[Path, str]] = field(default_factory=list)
    n_cached: int = 0
    n_computed: int = 0
    failed: list[int] = field(default_factory=list)  # indices into paths of ``failures``
    precision: str | None = None  # fp32 / bf16 / int8 when anything was computed
    seconds: float = 0.0
    decode: str | None = None  # "cpu", "cpu+draft" or "gpu" when anything was computed


class _ImageDataset:
    """Decode (mminstruct.data.images.open_image) + preprocess; failures come back as reasons."""

    def __init__(self, paths: Sequence[Path], preprocess: Callable,
                 draft: tuple[int, int] | None = None):
        self.paths, self.preprocess, self.draft = list(paths), preprocess, draft

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, Any, str | None]:
        tensor, error = preprocess_file(self.paths[i], self.preprocess, self.draft)
        if error is not None and self.draft is not None:  # draft mode never loses an image
            tensor, error = preprocess_file(self.paths[i], self.preprocess)
        return i, tensor, error


def _collate(items: list[tuple[int, Any, str | None]]) -> tuple[list[int], Any, list[tuple[int, str]]]:
    import torch

    ok = [(i, t) for i, t, err in items if err is None]
    return ([i for i, _ in ok], torch.stack([t for _, t in ok]) if ok else None,
            [(i, err) for i, _, err in items if err is not None])


def embed_images(paths: Sequence[str | os.PathLike], model: ClipModel | ModelSpec | str, *,
                 batch_size: int = 64, num_workers: int | None = None, cache: Any = None,
                 progress: Callable[[int, int], None] | None = None, show_progress: bool | None = None,
                 device: str | int | None = "cpu", precision: str = "auto",
                 gpu_decode: bool | None = None, draft: bool | None = None) -> EmbedResult:
    """Embed image files; see the module docstring. ``model`` may be a spec: it is then loaded (on
    ``device``, in ``precision``) only if some image is not cached. ``show_progress`` None = a tqdm
    bar on a terminal. ``gpu_decode`` None: on when the model is on CUDA; ``draft`` None: on where
    its first-batch check passes (False: never)."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    _clip.check_precision(precision)
    t0 = time.perf_counter()
    all_paths = [Path(p) for p in paths]
    clip_model = model if isinstance(model, ClipModel) else None
    spec = None if clip_model else parse_model_spec(model)
    store_dir = cache_folder(cache)
    identity = clip_model.identity if clip_model else spec.identity(store_dir)
    ec = open_cache(cache, identity)

    keys: list[str | None] = []
    failures: dict[int, str] = {}
    for i, p in enumerate(all_paths):
        try:
            keys.append(ec.image_key(file_fingerprint(p)) if ec else f"#{i}")
        except OSError:
            keys.append(None)
            failures[i] = f"image {p} does not exist" if not p.exists() else f"image {p} cannot be read"
    first = {k: i for i, k in reversed(list(enumerate(keys))) if k is not None}  # unique, in order
    found = ec.vectors.get_many(list(first)) if ec else {}
    known_bad = ec.get_failures([k for k in first if k not in found]) if ec else {}
    todo = [(k, all_paths[i]) for k, i in sorted(first.items(), key=lambda kv: kv[1])
            if k not in found and k not in known_bad]
    n_cached = len(first) - len(todo)
    done = len(all_paths) - len(todo)
    if progress:
        progress(done, len(all_paths))

    run = _Run(ec, progress, done, len(all_paths), show_progress, len(todo))
    how = None
    if todo:
        if clip_model is None:
            clip_model = _clip.load_clip(spec, device, precision=precision, cache_dir=store_dir)
        try:
            how = _embed_todo(todo, clip_model, run, batch_size, num_workers, gpu_decode, draft)
        finally:
            run.close()

    dim = clip_model.dim if clip_model else (ec.vectors.dim if ec and ec.vectors.dim else 0)
    ok, rows = [], []
    for i, k in enumerate(keys):
        vec = found.get(k, run.computed.get(k)) if k is not None else None
        if vec is not None:
            ok.append(i)
            rows.append(vec)
        elif k is not None:
            failures[i] = known_bad.get(k) or run.bad.get(k) or f"image {all_paths[i]} was not embedded"
    vectors = np.stack(rows).astype(np.float16) if rows else np.zeros((0, dim), np.float16)
    failed = sorted(failures)
    fails = [(all_paths[i], failures[i]) for i in failed]
    precision_used = (clip_model.decided_precision or "fp32") if todo and clip_model else None
    return EmbedResult(all_paths, vectors, np.asarray(ok, dtype=np.int64), fails, n_cached,
                       len(todo), failed, precision_used, time.perf_counter() - t0, how)


class _Run:
    """Where a run's vectors and failures go: memory, the cache (each batch lands on disk before
    the next starts: a kill loses no finished work), progress and the bar."""

    def __init__(self, ec: EmbeddingCache | None, progress: Callable[[int, int], None] | None,
                 done: int, total: int, show_progress: bool | None, n_todo: int):
        from tqdm.auto import tqdm

        self.ec, self.progress, self.done, self.total = ec, progress, done, total
        self.computed: dict[str, np.ndarray] = {}
        self.bad: dict[str, str] = {}
        show = sys.stderr.isatty() if show_progress is None else show_progress
        self.bar = tqdm(total=n_todo, desc="embedding images", unit="img", disable=not show,
                        file=sys.stderr)

    def add(self, keys: Sequence[str], vecs: np.ndarray, bad: Sequence[tuple[str, str]]) -> None:
        new_vecs = list(zip(keys, vecs))
        self.computed.update(new_vecs)
        self.bad.update(bad)
        if self.ec:
            self.ec.vectors.put_many(new_vecs)
            self.ec.put_failures(list(bad))
        n = len(keys) + len(bad)
        self.bar.update(n)
        self.done += n
        if self.progress:
            self.progress(self.done, self.total)

    def close(self) -> None:
        self.bar.close()


def _embed_todo(todo: list[tuple[str, Path]], cm: ClipModel, run: _Run, batch_size: int,
                num_workers: int | None, gpu_decode: bool | None, draft: bool | None) -> str:
    """Embed ``todo`` (cache key, path) into ``run``; → how the images were decoded."""
    from mminstruct.embed import gpu_decode as gd

    if num_workers is not None and int(num_workers) < 0:
        raise ConfigError(f"num_workers must be ≥ 0, got {num_workers!r}")
    paths = [p for _, p in todo]
    use_gpu = cm.device.startswith("cuda") if gpu_decode is None else gpu_decode
    spec = gd.preprocess_spec(cm.preprocess)
    if use_gpu and spec is not None and gd.gpu_decode_available(cm.device):
        workers = cpu_workers(cm.device) if num_workers is None else int(num_workers)
        for idx, batch, failed in gd.gpu_batches(paths, cm.preprocess, cm.device, batch_size,
                                                 threads=max(1, workers), encoder=cm,
                                                 min_cosine=MIN_COSINE):
            _encode_into(run, cm, todo, idx, batch, failed)
        return "gpu"
    if use_gpu:
        log.info("GPU decoding unavailable (%s): decoding on the CPU",
                 "preprocess not recognised" if spec is None else "no CUDA JPEG decoder")
    return _embed_cpu(todo, paths, cm, run, batch_size, num_workers, spec, draft)


def _embed_cpu(todo: list[tuple[str, Path]], paths: list[Path], cm: ClipModel, run: _Run,
               batch_size: int, num_workers: int | None, spec: Any, draft: bool | None) -> str:
    from torch.utils.data import DataLoader

    n_batches = -(-len(todo) // batch_size)
    workers = cpu_workers(cm.device) if num_workers is None else int(num_workers)
    workers = min(workers, n_batches - 1)  # one batch: nothing to overlap with
    draft_size = None
    if draft is not False and spec is not None:
        draft_size = choose_draft(paths, cm, (spec.short_side, spec.short_side))
    dataset = _ImageDataset(paths, cm.preprocess, draft_size)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=_collate,
                        pin_memory=cm.device.startswith("cuda"),
                        prefetch_factor=2 if workers else None)
    for idx, batch, failed in loader:
        _encode_into(run, cm, todo, idx, batch, failed)
    return "cpu+draft" if draft_size else "cpu"


def _encode_into(run: _Run, cm: ClipModel, todo: list[tuple[str, Path]], idx: list[int],
                 batch: Any, failed: list[tuple[int, str]]) -> None:
    vecs = np.zeros((0, cm.dim), np.float16)
    if batch is not None and len(idx):
        with cm._lock:
            vecs = encode_batch(cm, batch).numpy().astype(np.float16)
    run.add([todo[i][0] for i in idx], vecs, [(todo[i][0], why) for i, why in failed])


def choose_draft(paths: Sequence[Path], cm: ClipModel, size: tuple[int, int],
                 scan: int = 64) -> tuple[int, int] | None:
    """``size`` (the model's input side) for draft-mode decoding if, among the first ``scan`` paths,
    there are JPEGs large enough for it to matter (≥ 2 × ``size`` on both sides: decoded at 1/2 or
    less, never below ``size``) and on up to 8 of them the drafted image's vector agrees with the
    full decode's (fp32, min cosine ≥ ``MIN_COSINE``); else None."""
    import torch
    from PIL import Image

    big: list[Path] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        for p in paths[:scan]:
            try:
                with Image.open(p) as img:
                    if img.format == "JPEG" and min(img.size) >= 2 * min(size):
                        big.append(p)
            except (OSError, ValueError, Image.DecompressionBombError):
                continue
            if len(big) >= _CHECK_IMAGES:
                break
    if not big:
        return None
    pairs = [(preprocess_file(p, cm.preprocess)[0], preprocess_file(p, cm.preprocess, size)[0])
             for p in big]
    pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
    if not pairs:
        return None
    with cm._lock:
        full = cm.encode_image_batch(torch.stack([a for a, _ in pairs]), "fp32")
        try:
            drafted = cm.encode_image_batch(torch.stack([b for _, b in pairs]), "fp32")
        except Exception as e:  # noqa: BLE001 — draft mode is optional: any failure turns it off
            drafted, why = None, f"{type(e).__name__}: {e}"
        else:
            why = check_agreement(full, drafted, "the full decode")
    if why is not None:
        (log.info if why.startswith("min cosine") else log.warning)(
            "JPEG draft mode dropped for CLIP model %r: %s; decoding in full", cm.name, why)
        return None
    log.info("JPEG draft mode check on %d images: min cosine %.5f → on", len(pairs),
             float((full * drafted).sum(dim=1).min()))
    return size


def precision_candidates(cm: ClipModel) -> list[str]:
    """Lower precisions ``auto`` tries on the first batch, in order: ``clip.auto_candidates``
    (by the kind of CPU, ``clip.AUTO_ORDER``; on a GPU bf16 where native)."""
    return _clip.auto_candidates(cm.device)


def check_agreement(ref: Any, low: Any, what: str = "") -> str | None:
    """None when every row of ``low`` (L2-normalised vectors) is finite and its first rows agree
    with ``ref``'s (min cosine ≥ ``MIN_COSINE``); else the reason, for the log line."""
    import torch

    bad = int((~torch.isfinite(low).all(dim=1)).sum())
    if bad:
        return f"non-finite values (NaN/inf) in {bad} of {len(low)} vectors"
    cos = float((ref * low[:len(ref)]).sum(dim=1).min())
    if not cos >= MIN_COSINE:  # NaN fails too
        return f"min cosine to {what or 'fp32'} {cos:.5f} < {MIN_COSINE}"
    return None


def _try(cm: ClipModel, batch: Any, prec: str) -> tuple[Any, str | None]:
    """(vectors, None) or (None, why ``prec`` failed on ``batch``: its exception or non-finite)."""
    import torch

    try:
        low = cm.encode_image_batch(batch, prec)
    except Exception as e:  # noqa: BLE001 — any failure of a lower precision is a reason to drop it
        return None, f"{type(e).__name__}: {e}"
    bad = int((~torch.isfinite(low).all(dim=1)).sum())
    if bad:
        return None, f"non-finite values (NaN/inf) in {bad} of {len(low)} vectors"
    return low, None


def _refuse(cm: ClipModel, batch: Any, prec: str, why: str) -> PrecisionError:
    """The error for a precision asked for by name that cannot run this model: the reason and
    the precisions that do run (tried on one image)."""
    works = ["fp32"] + [p for p in ("bf16", "int8") if p != prec and (
        p != "int8" or _clip.int8_supported(cm.device)) and _try(cm, batch[:1], p)[1] is None]
    cm.drop_copies()
    return PrecisionError(f"precision {prec!r} cannot embed images with CLIP model {cm.name!r} "
                          f"({why}); choose one of: {', '.join(works + ['auto'])}")


def encode_batch(cm: ClipModel, batch: Any) -> Any:
    """Encode a batch in the model's precision. Undecided (auto): decide on this batch — each of
    ``precision_candidates`` in turn is kept if it runs, gives finite vectors and, on a probe of the
    batch's first images, agrees with fp32 (``check_agreement``; the check costs one fp32 pass over
    the probe); the first that fails is dropped for this model with one log line naming it and the
    reason, and the next is tried, down to fp32. A precision asked for by name that raises or gives
    non-finite vectors is a ``PrecisionError`` naming the model and the precisions that run. A
    kept lower precision that fails on a later batch: that batch and the rest run in fp32."""
    import torch

    prec = cm.decided_precision
    if prec == "fp32":
        return cm.encode_image_batch(batch, "fp32")
    if prec is not None:
        out, why = _try(cm, batch, prec)
        if why is None:
            return out
        if cm.precision != "auto":
            raise _refuse(cm, batch, prec, why)
        log.warning("%s dropped for CLIP model %r on a later batch: %s; embedding in fp32", prec,
                    cm.name, why)
        cm.decided_precision = "fp32"
        cm.drop_copies()
        return cm.encode_image_batch(batch, "fp32")
    candidates = precision_candidates(cm)
    if not candidates:
        cm.decided_precision = "fp32"
        log.info("no faster precision on %s for this kind of device (%s): embedding in fp32",
                 cm.device, "CPU: " + _clip.cpu_kind() if cm.device.startswith("cpu") else "GPU")
        return cm.encode_image_batch(batch, "fp32")
    n = min(len(batch), _CHECK_IMAGES)
    ref = cm.encode_image_batch(batch[:n], "fp32")
    for prec in candidates:
        low, why = _try(cm, batch, prec)
        if why is None:
            why = check_agreement(ref, low)
        if why is None:
            cos = float((ref * low[:n]).sum(dim=1).min())
            log.info("%s check on %d images: min cosine to fp32 %.5f → kept", prec, n, cos)
            cm.decided_precision, cm.precision_cosine = prec, cos
            cm.drop_copies(prec)
            return low
        (log.info if why.startswith("min cosine") else log.warning)(
            "%s dropped for CLIP model %r: %s; trying %s", prec, cm.name, why,
            candidates[candidates.index(prec) + 1] if prec != candidates[-1] else "fp32")
        cm.drop_copies()
    cm.decided_precision, cm.precision_cosine = "fp32", 1.0
    return torch.cat([ref, cm.encode_image_batch(batch[n:], "fp32")]) if len(batch) > n else ref
