"""Reading and decoding a candidate pool on Ray Data's CPU workers.

* ``decode_files`` (image files by path) and ``decode_tars`` (the image members of webdataset
  ``.tar`` shards, read with ``tarfile``) decode with ``mminstruct.data.images`` — ``open_image`` /
  ``open_image_bytes``, the local pipeline's RGB, EXIF and decompression-bomb handling — and give
  batches of pixels, file fingerprints and failure reasons (a failure is a row, never an error).
* ``Transform`` / ``split_transform``: the model's open_clip preprocess cut where it turns the
  PIL image into a tensor. Workers run the head (resize, centre crop, RGB) and ship uint8
  pixels, a quarter of float32's bytes; the encoder runs the tail (scaling to [0, 1] and
  Normalize) on the whole batch, on its device. The floats are bit for bit those of the whole
  transform. The head runs in PIL alone (``PilHead``, checked against torchvision's on probe
  images when the split is made), so decode workers never import torch: a Ray worker that does
  starts seconds slower and holds ~0.6 GB more. Any other preprocess runs whole, as float32.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mminstruct.cache import file_fingerprint
from mminstruct.errors import ImageError
from mminstruct.data.images import is_image_path, open_image, open_image_bytes

TAR_SEP = "::"
FP_COLS = ("fp_path", "fp_size", "fp_mtime_ns")
#: torchvision's InterpolationMode values → PIL's resampling filters (torchvision's own table).
_RESAMPLE = {"nearest": 0, "nearest-exact": 0, "bilinear": 2, "bicubic": 3, "box": 4,
             "hamming": 5, "lanczos": 1}


class PilHead:
    """torchvision's Resize / CenterCrop and open_clip's MaybeConvertMode on PIL images, in PIL
    alone: ``("resize", size, filter)``, ``("crop", (h, w))``, ``("mode", "RGB")`` steps."""

    def __init__(self, steps: tuple[tuple[Any, ...], ...]):
        self.steps = steps

    def __call__(self, img: Any) -> Any:
        for op, arg, *rest in self.steps:
            if op == "resize":
                img = _resize(img, arg, rest[0])
            elif op == "crop":
                img = _center_crop(img, arg)
            elif img.mode != arg:
                img = img.convert(arg)
        return img


def _resize(img: Any, size: int | tuple[int, ...], resample: int) -> Any:
    w, h = img.size
    if isinstance(size, int) or len(size) == 1:  # the shorter side becomes ``size``
        s = size if isinstance(size, int) else size[0]
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = s, int(s * long / short)
        new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    else:
        new_h, new_w = size
    return img.resize((new_w, new_h), resample)


def _center_crop(img: Any, size: tuple[int, int]) -> Any:
    from PIL import Image

    ch, cw = size
    w, h = img.size
    if cw > w or ch > h:  # torchvision pads with black first
        left, top = (cw - w) // 2 if cw > w else 0, (ch - h) // 2 if ch > h else 0
        padded = Image.new(img.mode, (max(w, cw), max(h, ch)))
        padded.paste(img, (left, top))
        img, (w, h) = padded, padded.size
        if (w, h) == (cw, ch):
            return img
    top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
    return img.crop((left, top, left + cw, top + ch))


def _pil_head(steps: list[Any]) -> PilHead | None:
    out: list[tuple[Any, ...]] = []
    for t in steps:
        name = type(t).__name__
        if name == "Resize" and getattr(t, "max_size", None) is None:
            mode = getattr(getattr(t, "interpolation", None), "value", None)
            if mode not in _RESAMPLE:
                return None
            size = t.size if isinstance(t.size, int) else tuple(int(v) for v in t.size)
            out.append(("resize", size, _RESAMPLE[mode]))
        elif name == "CenterCrop":
            out.append(("crop", tuple(int(v) for v in t.size)))
        elif name == "MaybeConvertMode":
            out.append(("mode", t.mode))
        else:
            return None
    return PilHead(tuple(out))


@dataclass(frozen=True)
class Transform:
    """A preprocess split for shipping (see the module docstring): ``tail`` holds the Normalize
    steps as (mean, std) pairs; None when ``head`` is the whole preprocess (float32 pixels)."""

    head: Any
    tail: tuple[tuple[tuple[float, ...], tuple[float, ...]], ...] | None
    shape: tuple[int, ...]

    @property
    def dtype(self) -> Any:
        return np.uint8 if self.tail is not None else np.float32

    def pixels(self, img: Any) -> np.ndarray:
        out = self.head(img)
        if self.tail is None:
            return out.numpy()
        arr = np.asarray(out, dtype=np.uint8)
        if arr.shape != self.shape:
            raise ValueError(f"the transform gave {arr.shape}, not {self.shape}")
        return arr

    def to_model_input(self, pixels: np.ndarray, device: str) -> Any:
        """A batch of ``pixels`` as the model's input tensor, on ``device``."""
        import torch

        x = torch.from_numpy(np.ascontiguousarray(pixels)).to(device)
        if self.tail is None:
            return x
        x = x.permute(0, 3, 1, 2).contiguous().float().div(255)  # torchvision's to_tensor
        for mean, std in self.tail:  # torchvision's normalize: the same two operations
            x = x.sub(torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(-1, 1, 1))
            x = x.div(torch.as_tensor(std, dtype=x.dtype, device=x.device).view(-1, 1, 1))
        return x


def split_transform(preprocess: Any) -> Transform:
    """Cut ``preprocess`` for shipping (see the module docstring); the whole of it when it is not
    a Compose of PIL steps, a to-tensor step and Normalize steps."""
    from PIL import Image

    rng = np.random.default_rng(0)
    probes = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
              for h, w in ((91, 37), (400, 500), (224, 224), (3, 7), (300, 1000))]
    steps = list(getattr(preprocess, "transforms", None) or [])
    cut = next((i for i, t in enumerate(steps)
                if type(t).__name__ in ("ToTensor", "MaybeToTensor")), None)
    if cut is not None and all(type(t).__name__ == "Normalize" for t in steps[cut + 1:]):
        from torchvision.transforms import Compose

        tv_head = Compose(steps[:cut])
        out = tv_head(probes[0])
        if isinstance(out, Image.Image) and out.mode == "RGB":
            pil = _pil_head(steps[:cut])
            same = pil is not None and all(
                np.array_equal(np.asarray(pil(p)), np.asarray(tv_head(p))) for p in probes)
            tail = tuple((tuple(float(v) for v in t.mean), tuple(float(v) for v in t.std))
                         for t in steps[cut + 1:])
            return Transform(pil if same else tv_head, tail, (out.size[1], out.size[0], 3))
    return Transform(preprocess, None, tuple(preprocess(probes[0]).shape))


class _Rows:
    """Accumulates decoded rows into the batch format the encoder takes."""

    def __init__(self, transform: Transform):
        self.shape, self.dtype = transform.shape, transform.dtype
        self.cols: dict[str, list[Any]] = {k: [] for k in ("path", *FP_COLS, "pixels", "error")}

    def __len__(self) -> int:
        return len(self.cols["path"])

    def add(self, name: str, fp: tuple[str, int, int] | None, pixels: Any, error: str) -> None:
        c = self.cols
        c["path"].append(name)
        c["fp_path"].append(fp[0] if fp else "")
        c["fp_size"].append(fp[1] if fp else -1)
        c["fp_mtime_ns"].append(fp[2] if fp else -1)
        c["pixels"].append(np.zeros(self.shape, self.dtype) if pixels is None else pixels)
        c["error"].append(error)

    def batch(self) -> dict[str, np.ndarray]:
        c = self.cols
        out = {k: np.asarray(c[k], dtype=object if k in ("path", "fp_path", "error") else np.int64)
               for k in ("path", *FP_COLS, "error")}
        out["pixels"] = np.stack(c["pixels"]) if c["pixels"] else np.zeros((0, *self.shape),
                                                                           self.dtype)
        return out


def _preprocessed(img: Any, transform: Transform, name: str) -> tuple[Any, str]:
    try:
        return transform.pixels(img), ""
    except Exception as e:  # noqa: BLE001 — as image_embed.preprocess_file: this image's failure
        return None, f"image {name} cannot be preprocessed: {type(e).__name__}: {e}"


def decode_files(batch: dict[str, np.ndarray], transform: Transform) -> dict[str, np.ndarray]:
    """Image files by path → preprocessed pixels, fingerprints and failure reasons."""
    rows = _Rows(transform)
    for name in batch["path"]:
        p = Path(str(name))
        try:
            fp = file_fingerprint(p)
        except OSError:
            why = f"image {p} does not exist" if not p.exists() else f"image {p} cannot be read"
            rows.add(str(name), None, None, why)
            continue
        try:
            pixels, err = _preprocessed(open_image(p), transform, str(p))
        except ImageError as e:
            pixels, err = None, str(e)
        rows.add(str(name), fp, pixels, err)
    return rows.batch()


def decode_tars(batch: dict[str, np.ndarray], transform: Transform, batch_size: int,
                skip: dict[str, frozenset[str]] | None = None
                ) -> Iterator[dict[str, np.ndarray]]:
    """The image members of webdataset tar shards (other members — .json, .txt, .cls — are not
    images and are passed over), ``batch_size`` at a time. An unreadable tar is one failure."""
    for tar in batch["tar"]:
        tar_path = Path(str(tar))
        rows = _Rows(transform)
        done = (skip or {}).get(str(tar), frozenset())
        try:
            st = tar_path.resolve().stat()
            with tarfile.open(tar_path, "r:*") as tf:
                for m in tf:
                    if not m.isfile() or not is_image_path(m.name) or m.name in done:
                        continue
                    name = f"{tar}{TAR_SEP}{m.name}"
                    fp = (f"{tar_path.resolve()}{TAR_SEP}{m.name}", int(m.size), st.st_mtime_ns)
                    try:
                        data = tf.extractfile(m).read()  # type: ignore[union-attr]
                        pixels, err = _preprocessed(open_image_bytes(data, name), transform,
                                                    name)
                    except ImageError as e:
                        pixels, err = None, str(e)
                    except (OSError, tarfile.TarError) as e:
                        pixels, err = None, f"image {name} cannot be read from the tar: {e}"
                    rows.add(name, fp, pixels, err)
                    if len(rows) >= batch_size:
                        yield rows.batch()
                        rows = _Rows(transform)
        except (OSError, tarfile.TarError, EOFError) as e:
            rows.add(str(tar), None, None, f"tar shard {tar} cannot be read: {e}")
        if len(rows):
            yield rows.batch()


__all__ = ["decode_files", "decode_tars", "Transform", "split_transform", "PilHead", "TAR_SEP",
           "FP_COLS"]
