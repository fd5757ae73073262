"""The GPU path: JPEGs decoded (nvJPEG), resized, cropped and normalised on the model's device.

* ``preprocess_spec(preprocess)``: what an open_clip preprocess does — resize (shorter side, or
  both sides), interpolation, antialias, centre crop, mean/std — read from its transforms; None
  when it holds a step this module does not reproduce (that model then decodes on the CPU).
* ``gpu_preprocess(images, spec, device)``: decoded uint8 (C, H, W) images → the model's input
  batch, with torchvision's tensor ops: the same output size, crop box and normalisation as the
  PIL preprocess (bicubic/bilinear antialiased resize; pixels within rounding of PIL's).
* ``gpu_batches(paths, preprocess, device, batch_size, threads=, encoder=)``: batches of
  ``(indices, input tensor on device, [(index, failure reason)])``. Files are read, and their JPEG
  headers parsed (format, mode, size, EXIF orientation), by ``threads`` threads; baseline RGB or
  grayscale JPEGs are decoded together on ``device`` (``torchvision.io.decode_jpeg``) and
  EXIF-oriented there; anything else (PNG, WebP, CMYK, over the pixel limit, one the decoder
  refuses) goes through the CPU path (``images.preprocess_file``),
  whose failures are reported as everywhere else. A producer thread prepares the next batches (on
  its own CUDA stream) while the model runs on the current one. On the first batch, the GPU
  path's vectors are compared with the CPU path's on up to 8 images (``encoder``, fp32): an
  exception there, a non-finite vector or a cosine below ``min_cosine`` turns the GPU path off
  (one log line with the reason), and everything goes through the CPU path.

Everything here also runs with ``device="cpu"`` (torchvision's libjpeg decoder), which is how the
tests check it without a GPU.
"""

from __future__ import annotations

import io
import logging
import queue
import threading
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mminstruct.embed.clip import BF16_MIN_COSINE
from mminstruct.data.images import DEFAULT_MAX_PIXELS, preprocess_file

log = logging.getLogger(__name__)

#: nvJPEG handles large images, but a batch of a few 100 MP ones would exhaust memory: larger
#: images take the CPU path (which also applies the decompression-bomb limit).
GPU_MAX_PIXELS = 40_000_000
_CHECK_IMAGES = 8


@dataclass(frozen=True)
class PreprocessSpec:
    """An open_clip preprocess as data. ``resize``: an int (the shorter side becomes it) or
    (h, w); ``crop``: (h, w) or None; ``interpolation``: torchvision's InterpolationMode value."""

    resize: int | tuple[int, int]
    interpolation: str
    antialias: bool
    crop: tuple[int, int] | None
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def short_side(self) -> int:
        return self.resize if isinstance(self.resize, int) else min(self.resize)


def preprocess_spec(preprocess: Any) -> PreprocessSpec | None:
    """Read ``preprocess`` (a torchvision Compose as open_clip builds it); None if unrecognised."""
    steps = list(getattr(preprocess, "transforms", None) or [])
    resize = interp = crop = norm = None
    antialias, to_tensor = True, False
    for t in steps:
        name = type(t).__name__
        if name == "Resize" and resize is None and crop is None and not to_tensor:
            if getattr(t, "max_size", None) is not None:
                return None
            size = t.size
            if isinstance(size, (list, tuple)):
                size = int(size[0]) if len(size) == 1 else (int(size[0]), int(size[1]))
            resize, interp = size, getattr(getattr(t, "interpolation", None), "value", None)
            antialias = getattr(t, "antialias", True) is not False
        elif name == "CenterCrop" and crop is None and not to_tensor:
            crop = tuple(int(v) for v in t.size)
        elif (name == "MaybeConvertMode" and getattr(t, "mode", "RGB") == "RGB") or \
                (name == "function" and getattr(t, "__name__", "") == "_convert_to_rgb"):
            continue
        elif name in ("ToTensor", "MaybeToTensor") and not to_tensor:
            to_tensor = True
        elif name == "Normalize" and to_tensor and norm is None:
            norm = (tuple(float(v) for v in t.mean), tuple(float(v) for v in t.std))
        else:
            return None
    if resize is None or interp not in ("bilinear", "bicubic") or not to_tensor or norm is None:
        return None
    if crop is not None and len(crop) == 1:
        crop = (crop[0], crop[0])
    return PreprocessSpec(resize, interp, antialias, crop, norm[0], norm[1])  # type: ignore[arg-type]


def gpu_preprocess(images: Sequence[Any], spec: PreprocessSpec, device: str) -> Any:
    """uint8 (C, H, W) images (C = 1 or 3, any device) → float (N, 3, H', W') on ``device``:
    resize, centre crop (padding with black like torchvision when the image is smaller), to
    [0, 1], Normalize — the steps and sizes of the PIL preprocess ``spec`` was read from."""
    import torch
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    mode = InterpolationMode(spec.interpolation)
    size = [spec.resize] if isinstance(spec.resize, int) else list(spec.resize)
    out = []
    for img in images:
        img = img.to(device, non_blocking=True)
        if img.shape[0] == 1:
            img = img.expand(3, -1, -1)
        img = TF.resize(img, size, interpolation=mode, antialias=spec.antialias)
        if spec.crop is not None:
            img = TF.center_crop(img, list(spec.crop))
        out.append(img)
    x = torch.stack(out).float().div_(255)
    mean = torch.as_tensor(spec.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std = torch.as_tensor(spec.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return x.sub_(mean).div_(std)


def apply_orientation(img: Any, orientation: int) -> Any:
    """EXIF orientation 1–8 applied to a (C, H, W) tensor, as ``PIL.ImageOps.exif_transpose``."""
    import torch

    if orientation == 2:
        return img.flip(-1)
    if orientation == 3:
        return img.flip(-1).flip(-2)
    if orientation == 4:
        return img.flip(-2)
    if orientation == 5:
        return img.transpose(-1, -2)
    if orientation == 6:
        return torch.rot90(img, -1, dims=(-2, -1))
    if orientation == 7:
        return torch.rot90(img, 1, dims=(-2, -1)).flip(-1)
    if orientation == 8:
        return torch.rot90(img, 1, dims=(-2, -1))
    return img


_AVAILABLE: dict[str, bool] = {}


def gpu_decode_available(device: str) -> bool:
    """Whether ``torchvision.io.decode_jpeg`` decodes on ``device`` (a CUDA device); tried once."""
    if not device.startswith("cuda"):
        return False
    if device not in _AVAILABLE:
        try:
            import numpy as np
            import torch
            from PIL import Image
            from torchvision.io import decode_jpeg

            buf = io.BytesIO()
            Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buf, format="JPEG")
            data = torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)
            _AVAILABLE[device] = bool(torch.cuda.is_available()) and \
                decode_jpeg(data, device=device).shape[0] == 3
        except (ImportError, RuntimeError, TypeError, ValueError) as e:
            log.info("torchvision cannot decode JPEGs on %s: %s", device, e)
            _AVAILABLE[device] = False
    return _AVAILABLE[device]


@dataclass
class _Item:
    """One file after the reader: JPEG bytes and orientation for the GPU, or the CPU path's
    result (``tensor`` / ``error``)."""

    data: bytes | None = None
    orientation: int = 1
    tensor: Any = None
    error: str | None = None


def _read(p: Path, preprocess: Any, max_pixels: int, gpu_ok: bool) -> _Item:
    """Read a file; a plain JPEG is left for the GPU, anything else goes the CPU path here."""
    from PIL import Image

    if gpu_ok:
        try:
            data = p.read_bytes()
        except OSError:
            data = b""
        # a JPEG whose end marker is missing is truncated: the CPU path reports it (as it does
        # everywhere), where a GPU decoder might fill the rest with grey
        if data[:3] == b"\xff\xd8\xff" and data.rstrip(b"\x00\r\n ")[-2:] == b"\xff\xd9":
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                    img = Image.open(io.BytesIO(data))
                with img:
                    w, h = img.size
                    if (img.format == "JPEG" and img.mode in ("RGB", "L")
                            and w * h <= min(max_pixels, GPU_MAX_PIXELS)):
                        return _Item(data, int(img.getexif().get(0x0112, 1) or 1))
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
                pass  # the CPU path names the problem
    tensor, error = preprocess_file(p, preprocess)
    return _Item(tensor=tensor, error=error)


def _decode_on(datas: list[bytes], device: str) -> list[Any]:
    """Decode JPEG bytes on ``device``, together; an image the decoder refuses is None."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    tensors = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
    with warnings.catch_warnings():  # torchvision ≥ 0.29 points to TorchCodec on every call
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            return list(decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device))
        except RuntimeError:
            out = []
            for t in tensors:  # one bad file fails the whole call: find it
                try:
                    out.append(decode_jpeg(t, mode=ImageReadMode.RGB, device=device))
                except RuntimeError:
                    out.append(None)
            return out


class _Batcher:
    """Turns a batch of paths into (indices, tensor, failures) on ``device``."""

    def __init__(self, paths: Sequence[Path], preprocess: Any, device: str, threads: int,
                 max_pixels: int, encoder: Any, min_cosine: float):
        self.paths, self.preprocess, self.device = list(paths), preprocess, device
        self.spec = preprocess_spec(preprocess)
        self.max_pixels, self.encoder, self.min_cosine = max_pixels, encoder, min_cosine
        self.gpu_ok = self.spec is not None
        self.pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="gpu-read")
        self.checked = encoder is None

    def submit(self, start: int, stop: int) -> list[Future]:
        return [self.pool.submit(_read, self.paths[i], self.preprocess, self.max_pixels,
                                 self.gpu_ok) for i in range(start, stop)]

    def make(self, start: int, futures: list[Future]) -> tuple[list[int], Any, list[tuple[int, str]]]:

        items = [f.result() for f in futures]
        gpu = [k for k, it in enumerate(items) if it.data is not None]
        spec = self.spec
        if gpu and self.gpu_ok and spec is not None:
            if self.checked:
                self._on_device(items, gpu, start, spec)
            else:  # the first batch: any failure of the GPU path turns it off (CPU path instead)
                try:
                    self._on_device(items, gpu, start, spec)
                    why = self._check(start, items, gpu)
                except Exception as e:  # noqa: BLE001 — GPU decoding is optional
                    why = f"{type(e).__name__}: {e}"
                self.checked = True
                if why is not None:
                    (log.info if why.startswith("min cosine") else log.warning)(
                        "GPU decode dropped for %s: %s; decoding on the CPU", self.device, why)
                    self.gpu_ok = False
                    gpu = [k for k, it in enumerate(items) if it.data is not None]
        if gpu and not self.gpu_ok:  # the GPU path was turned off: the CPU path decodes them
            for k in gpu:
                t, e = preprocess_file(self.paths[start + k], self.preprocess)
                items[k] = _Item(tensor=t, error=e)
        ok = [k for k, it in enumerate(items) if it.error is None and it.tensor is not None]
        failed = [(start + k, it.error or f"image {self.paths[start + k]} was not decoded")
                  for k, it in enumerate(items) if it.error is not None or it.tensor is None]
        if not ok:
            return [], None, failed
        import torch

        x = torch.stack([items[k].tensor.to(self.device, non_blocking=True) for k in ok])
        return [start + k for k in ok], x, failed

    def _on_device(self, items: list[_Item], gpu: list[int], start: int, spec: PreprocessSpec
                   ) -> None:
        """Decode and preprocess ``items[gpu]`` (JPEG bytes) on the device, in place; what the
        decoder refuses goes through the CPU path (its item loses ``data``: the mark of the GPU
        path's items, which a failed first-batch check redoes on the CPU)."""
        decoded = _decode_on([items[k].data for k in gpu], self.device)  # type: ignore[misc]
        for k, img in zip(gpu, decoded):
            if img is None:  # refused: the CPU path decodes it or names the problem
                t, e = preprocess_file(self.paths[start + k], self.preprocess)
                items[k] = _Item(tensor=t, error=e)
            else:
                items[k].tensor = apply_orientation(img, items[k].orientation)
        on_gpu = [k for k in gpu if items[k].data is not None]
        if on_gpu:
            x = gpu_preprocess([items[k].tensor for k in on_gpu], spec, self.device)
            for j, k in enumerate(on_gpu):
                items[k].tensor = x[j]

    def _check(self, start: int, items: list[_Item], gpu: list[int]) -> str | None:
        """First batch: the GPU path's vectors against the CPU path's (fp32). None when they are
        finite and agree (min cosine ≥ ``min_cosine``), else the reason."""
        import torch

        probe = []
        for k in [k for k in gpu if items[k].data is not None][:_CHECK_IMAGES]:
            t, _ = preprocess_file(self.paths[start + k], self.preprocess)
            if t is not None:
                probe.append((k, t))
        if not probe:
            return None
        with self.encoder._lock:
            a = self.encoder.encode_image_batch(torch.stack([items[k].tensor for k, _ in probe]),
                                                "fp32")
            b = self.encoder.encode_image_batch(torch.stack([t for _, t in probe]), "fp32")
        bad = int((~torch.isfinite(a).all(dim=1)).sum())
        if bad:
            return f"non-finite values (NaN/inf) in {bad} of {len(a)} vectors"
        cos = float((a * b).sum(dim=1).min())
        if not cos >= self.min_cosine:
            return f"min cosine to the CPU path {cos:.5f} < {self.min_cosine}"
        log.info("GPU decode check on %d images: min cosine to the CPU path %.5f → GPU",
                 len(probe), cos)
        return None


def gpu_batches(paths: Sequence[str | Path], preprocess: Any, device: str, batch_size: int, *,
                threads: int = 8, encoder: Any = None, max_pixels: int = DEFAULT_MAX_PIXELS,
                prefetch: int = 2, min_cosine: float = BF16_MIN_COSINE
                ) -> Iterator[tuple[list[int], Any, list[tuple[int, str]]]]:
    """Batches of (indices into ``paths``, model input on ``device``, failures); see the module
    docstring. ``encoder`` (a ``ClipModel``) enables the first-batch check against the CPU path.
    Reading runs ``prefetch`` batches ahead; batch preparation in a producer thread."""
    import torch

    batcher = _Batcher([Path(p) for p in paths], preprocess, device, threads, max_pixels, encoder,
                       min_cosine)
    n = len(batcher.paths)
    q: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
    stop = threading.Event()
    cuda = device.startswith("cuda")

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            stream = torch.cuda.Stream(device) if cuda else None
            starts = list(range(0, n, batch_size))
            pending = [batcher.submit(s, min(s + batch_size, n)) for s in starts[:prefetch + 1]]
            for b, s in enumerate(starts):
                if b + prefetch + 1 < len(starts):
                    s2 = starts[b + prefetch + 1]
                    pending.append(batcher.submit(s2, min(s2 + batch_size, n)))
                futures = pending.pop(0)
                if stream is not None:
                    with torch.cuda.stream(stream):
                        out = batcher.make(s, futures)
                    event = torch.cuda.Event()
                    event.record(stream)
                else:
                    out, event = batcher.make(s, futures), None
                if not put((out, event)) or stop.is_set():
                    return
            put(None)
        except BaseException as e:  # noqa: BLE001 — handed to the consumer, raised there
            put(e)

    producer = threading.Thread(target=produce, name="gpu-batches", daemon=True)
    producer.start()
    try:
        while True:
            got = q.get()
            if got is None:
                return
            if isinstance(got, BaseException):
                raise got
            (idx, x, failed), event = got
            if event is not None:
                current = torch.cuda.current_stream(device)
                current.wait_event(event)
                if x is not None:
                    x.record_stream(current)
            yield idx, x, failed
    finally:
        stop.set()
        producer.join(timeout=30)
        batcher.pool.shutdown(wait=False, cancel_futures=True)
