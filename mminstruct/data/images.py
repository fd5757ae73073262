"""The one image loader: safe path resolution, robust decoding, thumbnails and request encodings.

Every module that opens an image goes through here, so that EXIF rotation, odd modes (CMYK, 16-bit,
palette, RGBA, animated) and decompression bombs are handled once and the same way.

* ``resolve_image_path(root, rel)``: ``root/rel``, refusing absolute paths and ``..`` / symlink
  escapes unless ``allow_outside=True``.
* ``ImageRoot(root).resolve(rel)``: the same check for many paths under one root, resolving the
  root once and each path lexically where no ``..`` or symlink is involved (data-file loading).
* ``probe_image(path)``: header-only check (format, size, pixel limit) — cheap, used at load time.
* ``open_image(path)``: a fully decoded RGB ``PIL.Image`` (first frame, EXIF-rotated, transparency
  composited on white, 16-bit scaled to 8-bit); ``open_image_bytes(data, name)`` the same for
  bytes in memory (webdataset tar members).
* ``encode_jpeg(path, max_side, quality)``: RGB, downscaled, JPEG bytes — for API requests and
  thumbnails; ``data_url`` wraps bytes as a base64 data URL.
* ``list_image_files(folder)``: recursive, sorted, by image extension.
"""

from __future__ import annotations

import base64
import io
import os
import stat
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mminstruct.errors import ImageError, UnsafePathError

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
)

#: Images with more pixels than this are refused (PIL's own default bomb limit, ~89.5 MP).
DEFAULT_MAX_PIXELS: int = 89_478_485


def is_image_path(path: str | os.PathLike) -> bool:
    return Path(str(path)).suffix.lower() in IMAGE_EXTENSIONS


def resolve_image_path(
    root: str | os.PathLike, rel: str | os.PathLike, *, allow_outside: bool = False
) -> Path:
    """``root / rel`` as an absolute path, refusing absolute ``rel`` and escapes from ``root``.

    The check is on the resolved path, so ``a/../../x`` and a symlink pointing outside are caught.
    """
    if not isinstance(rel, (str, os.PathLike)) or not str(rel).strip():
        raise ImageError(f"image path {rel!r} is empty or not a string")
    rel_path = Path(rel)
    root_path = Path(root).resolve()
    if rel_path.is_absolute():
        if not allow_outside:
            raise UnsafePathError(
                f"absolute image path {str(rel)!r} refused (paths must be relative to {root_path}; "
                "pass --allow_outside_paths to allow it)"
            )
        return rel_path.resolve()
    full = (root_path / rel_path).resolve()
    if not allow_outside and not full.is_relative_to(root_path):
        raise UnsafePathError(
            f"image path {str(rel)!r} escapes {root_path} (pass --allow_outside_paths to allow it)"
        )
    return full


class ImageRoot:
    """``resolve_image_path`` for many paths under one root: the root is resolved once, and a
    relative path without ``..`` whose folders and file are no symlinks is checked lexically (one
    ``lstat`` per file, one ``islink`` per distinct folder) instead of by a ``realpath`` per file.
    Anything else (``..``, a symlink on the way, an absolute path) goes through
    ``resolve_image_path``, so escapes and symlinks leaving the root are refused exactly as there.
    Safe to share between threads."""

    def __init__(self, root: str | os.PathLike, *, allow_outside: bool = False):
        self.root = Path(root).resolve()
        self.allow_outside = allow_outside
        self._root_s = str(self.root)
        self._plain_dirs: dict[str, bool] = {self._root_s: True}  # folder → no symlink up to root

    def _plain_dir(self, d: str) -> bool:
        known = self._plain_dirs.get(d)
        if known is None:
            parent = os.path.dirname(d)
            known = (parent != d and len(parent) >= len(self._root_s) and self._plain_dir(parent)
                     and not os.path.islink(d))
            self._plain_dirs[d] = known
        return known

    def resolve(self, rel: str | os.PathLike) -> tuple[Path, os.stat_result | None]:
        """(the resolved path, its ``stat`` or None when it does not exist); raises as
        ``resolve_image_path`` does."""
        if isinstance(rel, str) and rel.strip() and not os.path.isabs(rel):
            parts = rel.replace(os.sep, "/").split("/")
            if ".." not in parts:
                full = os.path.normpath(os.path.join(self._root_s, rel))
                if self._plain_dir(os.path.dirname(full)):
                    try:
                        st = os.lstat(full)
                    except (FileNotFoundError, NotADirectoryError):
                        return Path(full), None
                    except OSError:
                        st = None
                    if st is not None and not stat.S_ISLNK(st.st_mode):
                        return Path(full), st
        full_path = resolve_image_path(self.root, rel, allow_outside=self.allow_outside)
        try:
            return full_path, full_path.stat()
        except OSError:
            return full_path, None


@dataclass(frozen=True)
class ImageInfo:
    path: Path
    format: str
    width: int
    height: int
    mode: str
    n_frames: int


def _check_pixels(path: Path, size: tuple[int, int], max_pixels: int) -> None:
    w, h = size
    if w * h > max_pixels:
        raise ImageError(
            f"image {path} is {w}x{h} = {w * h:,} pixels, over the limit of {max_pixels:,} "
            "(a decompression bomb guard)"
        )


def _open_raw(path: Path, max_pixels: int) -> Image.Image:
    """Open lazily (header only), with bombs, missing and unknown files turned into ImageError."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
    except FileNotFoundError as e:
        raise ImageError(f"image {path} does not exist") from e
    except IsADirectoryError as e:
        raise ImageError(f"image {path} is a directory") from e
    except Image.DecompressionBombError as e:
        raise ImageError(f"image {path} is over the pixel limit (a decompression bomb guard)") from e
    except UnidentifiedImageError as e:
        size = path.stat().st_size if path.exists() else -1
        what = "is empty (0 bytes)" if size == 0 else "is not a readable image"
        raise ImageError(f"image {path} {what}") from e
    except OSError as e:
        raise ImageError(f"image {path} cannot be read: {e}") from e
    try:
        _check_pixels(path, img.size, max_pixels)
    except ImageError:
        img.close()
        raise
    return img


def probe_image(path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageInfo:
    """Read the header only: existence, format, size and the pixel limit. Cheap (no decode)."""
    p = Path(path)
    img = _open_raw(p, max_pixels)
    try:
        return ImageInfo(p, img.format or "?", img.size[0], img.size[1], img.mode,
                         int(getattr(img, "n_frames", 1)))
    finally:
        img.close()


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.int64)
        top = 65535 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 255
        arr8 = np.clip(arr * 255 // max(top, 1), 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, "L").convert("RGB")
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        scaled = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
        return Image.fromarray((scaled * 255).astype(np.uint8), "L").convert("RGB")
    if mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def open_image(path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS,
               draft: tuple[int, int] | None = None) -> Image.Image:
    """Decode fully to RGB: first frame, EXIF orientation applied, transparency on white.
    ``draft=(w, h)``: a JPEG at least twice that size on both sides is decoded at the smallest of
    1/2, 1/4 or 1/8 scale that keeps both sides ≥ ``(w, h)`` (PIL's draft mode: DCT scaling).

    Raises ImageError (never a bare PIL/OSError) naming the file and the problem.
    """
    p = Path(path)
    return _decode(_open_raw(p, max_pixels), str(p), draft)


def _decode(img: Image.Image, name: str, draft: tuple[int, int] | None = None) -> Image.Image:
    """First frame, pixels loaded, EXIF orientation applied, RGB; errors name the image."""
    try:
        if getattr(img, "n_frames", 1) > 1:
            img.seek(0)
        if draft and img.format == "JPEG":
            img.draft(None, draft)
        img.load()
        img = ImageOps.exif_transpose(img) or img
        return _to_rgb(img)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ImageError(f"image {name} cannot be decoded: {e}") from e


def open_image_bytes(data: bytes, name: str, *,
                     max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """``open_image`` for an image held in memory (a member of a webdataset tar), named ``name``
    in messages: the same pixel limit, first frame, EXIF rotation and RGB conversion."""
    if not data:
        raise ImageError(f"image {name} is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise ImageError(f"image {name} is over the pixel limit (a decompression bomb guard)") from e
    except UnidentifiedImageError as e:
        raise ImageError(f"image {name} is not a readable image") from e
    except OSError as e:
        raise ImageError(f"image {name} cannot be read: {e}") from e
    _check_pixels(name, img.size, max_pixels)  # type: ignore[arg-type]  # used in the message only
    return _decode(img, name)


def downscale(img: Image.Image, max_side: int | None) -> Image.Image:
    if max_side and max(img.size) > max_side:
        img = img.copy()
        img.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
    return img


def encode_jpeg(
    source: str | os.PathLike | Image.Image, max_side: int | None = None, quality: int = 90
) -> bytes:
    """RGB JPEG bytes of an image file (or a PIL image), downscaled to ``max_side`` if larger."""
    img = source if isinstance(source, Image.Image) else open_image(source)
    img = downscale(_to_rgb(img), max_side)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality, optimize=False)
    return buf.getvalue()


def data_url(jpeg: bytes, mime: str = "image/jpeg") -> str:
    return f"data:{mime};base64,{base64.b64encode(jpeg).decode('ascii')}"


def list_image_files(folder: str | os.PathLike) -> list[Path]:
    """Every file under ``folder`` (recursive, symlinked dirs not followed) with an image extension,
    sorted for reproducibility."""
    root = Path(folder)
    if not root.is_dir():
        raise ImageError(f"image folder {root} does not exist or is not a folder")
    out = [
        Path(dirpath) / name
        for dirpath, dirnames, filenames in os.walk(root)
        for name in filenames
        if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS
    ]
    return sorted(out)


def preprocess_file(p: Path, preprocess: Callable, draft: tuple[int, int] | None = None
                    ) -> tuple[Any, str | None]:
    """(the model's input tensor, None) or (None, the reason): the CPU path for one image file."""
    try:
        return preprocess(open_image(p, draft=draft)), None
    except ImageError as e:
        return None, str(e)
    except Exception as e:  # noqa: BLE001 — a preprocessing failure is this image's, not the run's
        return None, f"image {p} cannot be preprocessed: {type(e).__name__}: {e}"
