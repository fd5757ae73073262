"""The GPU decode path, run on the CPU device (torchvision's own JPEG decoder): its preprocessing
equals open_clip's (crop box, pixels, vectors), EXIF orientation, the CPU fallback for what it
does not decode, and the first-batch check."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from mminstruct.embed import clip
from mminstruct.embed import gpu_decode
from mminstruct.embed import image_embed
from tests.fixtures.images import draw_shape, save_jpeg


def _photo(size: tuple[int, int], seed: int) -> Image.Image:
    """Smooth colour fields with shapes: a crop one pixel off changes many pixels."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    arr = (np.sin(xx[..., None] / rng.uniform(3, 9, 3)) * 60 + np.cos(yy[..., None] / rng.uniform(3, 9, 3)) * 60
           + 128)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def _tensor(img: Image.Image):
    import torch

    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).contiguous()


def test_spec_is_read_from_the_model_preprocess(tiny_clip_model) -> None:
    import open_clip

    _, _, pp = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)
    spec = gpu_decode.preprocess_spec(pp)
    assert spec is not None
    assert (spec.resize, spec.interpolation, spec.crop) == (224, "bicubic", (224, 224))
    assert spec.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    assert spec.std == pytest.approx((0.26862954, 0.26130258, 0.27577711))
    tiny = gpu_decode.preprocess_spec(tiny_clip_model.preprocess)
    assert tiny is not None and tiny.short_side == 64 and tiny.crop == (64, 64)
    from torchvision.transforms import Compose, Lambda

    assert gpu_decode.preprocess_spec(Compose([Lambda(lambda x: x)])) is None  # unknown step
    assert gpu_decode.preprocess_spec(lambda img: img) is None


@pytest.mark.parametrize("size", [(640, 480), (480, 640), (301, 157), (224, 224), (100, 90)])
def test_gpu_preprocessing_on_the_cpu_matches_open_clip(size, tiny_clip_model) -> None:
    import open_clip
    import torch

    _, _, pp = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)
    spec = gpu_decode.preprocess_spec(pp)
    img = _photo(size, seed=sum(size))
    want = pp(img)
    got = gpu_decode.gpu_preprocess([_tensor(img)], spec, "cpu")[0]
    assert got.shape == want.shape == (3, 224, 224)
    err = (got - want).abs().mean().item()
    # the same crop box: the error against a crop one pixel off is many times larger
    shifted = torch.roll(want, shifts=1, dims=2)
    assert err < 0.02 and err * 5 < (got[..., 1:] - shifted[..., 1:]).abs().mean().item()
    # and the model sees the same image
    t_spec = gpu_decode.preprocess_spec(tiny_clip_model.preprocess)
    a = tiny_clip_model.encode_image_batch(gpu_decode.gpu_preprocess([_tensor(img)], t_spec, "cpu"))
    b = tiny_clip_model.encode_image_batch(tiny_clip_model.preprocess(img)[None])
    assert float((a * b).sum()) >= image_embed.MIN_COSINE


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pil(orientation: int) -> None:
    img = _photo((37, 23), seed=orientation)
    exif = Image.Exif()
    exif[0x0112] = orientation
    img.info["exif"] = exif.tobytes()
    img.getexif()[0x0112] = orientation
    want = np.asarray(ImageOps.exif_transpose(img))
    got = gpu_decode.apply_orientation(_tensor(img), orientation).permute(1, 2, 0).numpy()
    assert got.shape == want.shape and np.array_equal(got, want)


def _cpu_reference(paths, cm):
    """Vectors and failures of the CPU path (embed_images, no cache, GPU decoding off)."""
    res = image_embed.embed_images(paths, cm, cache=False, num_workers=0, gpu_decode=False, draft=False)
    return {res.paths[i]: res.vectors[j] for j, i in enumerate(res.ok.tolist())}, dict(res.failures)


def test_gpu_batches_fall_back_to_the_cpu_path_and_report_failures_alike(odd_images, tiny_clip_model,
                                                                        tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.jpg"
    big = save_jpeg(draw_shape("circle", 5, size=(400, 300)), tmp_path / "big.jpg")
    truncated.write_bytes(big.read_bytes()[:-200])
    paths = odd_images.decodable + odd_images.broken + [truncated, big, tmp_path / "missing.jpg"]
    model = clip.ClipModel(tiny_clip_model.model, tiny_clip_model.preprocess,
                           tiny_clip_model.tokenizer, "gpu-path", "cpu", "fp32")
    got_vecs: dict[Path, np.ndarray] = {}
    got_fail: dict[Path, str] = {}
    for idx, x, failed in gpu_decode.gpu_batches(paths, model.preprocess, "cpu", 5, threads=3,
                                                 encoder=model):
        if x is not None:
            for i, v in zip(idx, model.encode_image_batch(x, "fp32").numpy()):
                got_vecs[paths[i]] = v
        got_fail.update((paths[i], why) for i, why in failed)
    want_vecs, want_fail = _cpu_reference(paths, model)
    want_fail[tmp_path / "missing.jpg"] = next(why for p, why in got_fail.items() if p.name == "missing.jpg")
    assert set(got_vecs) == set(want_vecs) and got_fail == want_fail
    assert truncated in got_fail and "truncated" in got_fail[truncated]
    assert "does not exist" in got_fail[tmp_path / "missing.jpg"]
    for p, v in got_vecs.items():  # the JPEGs decoded by torchvision, the rest by PIL
        assert float(v @ want_vecs[p].astype(np.float32)) >= image_embed.MIN_COSINE - 1e-3, p.name


def test_embed_images_takes_the_gpu_path_where_available(odd_images, tiny_clip_model, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gpu_decode, "gpu_decode_available", lambda device: True)
    paths = [save_jpeg(_photo((320, 240), k), tmp_path / f"p{k}.jpg") for k in range(6)]
    paths += [odd_images.exif_rotated, odd_images.webp_as_jpg, odd_images.corrupt]
    model = clip.ClipModel(tiny_clip_model.model, tiny_clip_model.preprocess,
                           tiny_clip_model.tokenizer, "gpu-embed", "cpu", "fp32")
    decoded: list[int] = []
    real = gpu_decode._decode_on
    monkeypatch.setattr(gpu_decode, "_decode_on", lambda d, dev: decoded.append(len(d)) or real(d, dev))
    res = image_embed.embed_images(paths, model, cache=False, num_workers=2, batch_size=4, gpu_decode=True)
    ref_vecs, ref_fail = _cpu_reference(paths, model)
    assert res.decode == "gpu" and dict(res.failures) == ref_fail
    assert sum(decoded) == 7  # the six photos and the EXIF-rotated JPEG; not WebP, not corrupt
    for j, i in enumerate(res.ok.tolist()):
        cos = float(res.vectors[j].astype(np.float32) @ ref_vecs[paths[i]].astype(np.float32))
        assert cos >= image_embed.MIN_COSINE - 1e-3, paths[i].name


def test_first_batch_check_sends_everything_to_the_cpu_path_when_it_fails(
        tiny_clip_model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = [save_jpeg(_photo((200, 150), k), tmp_path / f"q{k}.jpg") for k in range(5)]
    model = clip.ClipModel(tiny_clip_model.model, tiny_clip_model.preprocess,
                           tiny_clip_model.tokenizer, "gpu-check", "cpu", "fp32")
    vecs = {}
    for idx, x, _ in gpu_decode.gpu_batches(paths, model.preprocess, "cpu", 2, encoder=model,
                                            min_cosine=1.0 + 1e-6):  # no two decoders agree so well
        vecs.update(zip(idx, model.encode_image_batch(x, "fp32").numpy().astype(np.float16)))
    ref, _ = _cpu_reference(paths, model)
    for i, p in enumerate(paths):  # bit for bit the CPU path's
        np.testing.assert_array_equal(vecs[i], ref[p])


def test_gpu_decoding_is_not_available_on_the_cpu() -> None:
    assert not gpu_decode.gpu_decode_available("cpu")
