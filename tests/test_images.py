"""The one image loader: odd modes decode to sensible RGB, broken files give one clear error."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from mminstruct.errors import ImageError, UnsafePathError
from mminstruct.data.images import (data_url, encode_jpeg, list_image_files, open_image, probe_image,
                               resolve_image_path)


def test_decodable_odd_images_become_rgb(odd_images):
    for path in odd_images.decodable:
        img = open_image(path)
        assert img.mode == "RGB", path.name
        assert img.size in ((64, 48), (48, 64)), path.name


def test_exif_orientation_is_applied(odd_images):
    assert open_image(odd_images.exif_rotated).size == (48, 64)
    assert open_image(odd_images.good).size == (64, 48)


def test_sixteen_bit_is_scaled_not_clipped(odd_images):
    with Image.open(odd_images.sixteen_bit) as raw:
        assert raw.mode.startswith("I")  # really 16-bit on disk
    arr = np.asarray(open_image(odd_images.sixteen_bit)).astype(int)
    # a 0..65535 ramp must become a 0..255 ramp; clipping to 8 bits would turn it almost all white
    row = arr[0, :, 0]
    assert row[0] <= 5 and row[-1] >= 250 and np.all(np.diff(row) >= 0)
    assert 100 < arr.mean() < 155 and arr.shape == (48, 64, 3)


def test_transparency_is_composited_on_white(odd_images):
    arr = np.asarray(open_image(odd_images.rgba)).astype(int)
    orig = np.asarray(open_image(odd_images.good)).astype(int)
    # half-transparent over white: halfway between the colour and 255
    assert np.abs(arr - (orig + 255) / 2).mean() < 6


def test_animated_gif_gives_first_frame(odd_images):
    img = open_image(odd_images.animated)
    with Image.open(odd_images.animated) as raw:
        assert raw.n_frames == 3
        first = np.asarray(raw.convert("RGB"))
    assert np.array_equal(np.asarray(img), first)


@pytest.mark.parametrize("attr,match", [
    ("corrupt", "cannot be (read|decoded)"),
    ("zero_byte", r"is empty \(0 bytes\)"),
    ("bomb", "decompression bomb"),
    ("not_an_image", "not a readable image"),
])
def test_broken_images_raise_one_clear_error(odd_images, attr, match):
    path = getattr(odd_images, attr)
    with pytest.raises(ImageError, match=match) as e:
        open_image(path)
    assert str(path) in str(e.value)


def test_probe_reads_headers_and_refuses_bombs(odd_images):
    info = probe_image(odd_images.webp_as_jpg)
    assert info.format == "WEBP" and (info.width, info.height) == (64, 48)
    assert probe_image(odd_images.animated).n_frames == 3
    with pytest.raises(ImageError, match="decompression bomb"):
        probe_image(odd_images.bomb)
    with pytest.raises(ImageError, match="does not exist"):
        probe_image(odd_images.folder / "nope.jpg")


def test_resolve_image_path_refuses_escapes(tmp_path):
    (tmp_path / "a").mkdir()
    assert resolve_image_path(tmp_path, "a/x.jpg") == (tmp_path / "a" / "x.jpg").resolve()
    assert resolve_image_path(tmp_path, "a/../b.jpg") == (tmp_path / "b.jpg").resolve()
    with pytest.raises(UnsafePathError, match="escapes"):
        resolve_image_path(tmp_path / "a", "../b.jpg")
    with pytest.raises(UnsafePathError, match="absolute"):
        resolve_image_path(tmp_path, "/etc/passwd")
    assert resolve_image_path(tmp_path / "a", "../b.jpg", allow_outside=True) == (tmp_path / "b.jpg").resolve()
    with pytest.raises(ImageError, match="empty"):
        resolve_image_path(tmp_path, "  ")


def test_encode_jpeg_downscales_and_wraps(odd_images):
    data = encode_jpeg(odd_images.cmyk, max_side=32)
    img = Image.open(io.BytesIO(data))
    assert img.format == "JPEG" and img.mode == "RGB" and max(img.size) == 32
    assert max(Image.open(io.BytesIO(encode_jpeg(odd_images.good))).size) == 64  # never upscales
    assert data_url(data).startswith("data:image/jpeg;base64,/9j/")


def test_list_image_files_recursive_sorted(tmp_path, odd_images):
    (tmp_path / "z" / "deep").mkdir(parents=True)
    for name in ("b.JPG", "a.png", "z/deep/c.webp", "notes.txt", ".hidden.jpg"):
        (tmp_path / name).write_bytes(b"x")
    found = [p.relative_to(tmp_path).as_posix() for p in list_image_files(tmp_path)]
    assert found == ["a.png", "b.JPG", "z/deep/c.webp"]
    with pytest.raises(ImageError, match="does not exist"):
        list_image_files(tmp_path / "missing")
