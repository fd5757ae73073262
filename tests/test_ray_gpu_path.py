"""The Ray encoder actor's files-on-the-device path (``Encoder`` given bare paths), called
directly, without a cluster: the GPU path's code on the CPU device, against the local pipeline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mminstruct.embed.clip import load_clip, parse_model_spec

from mminstruct.embed.image_embed import embed_images
from tests.fixtures.images import draw_shape, save_jpeg

pytest.importorskip("pyarrow")


def test_encoder_decodes_files_on_its_device_like_the_local_pipeline(odd_images, tiny_clip,
                                                                      tmp_path: Path) -> None:
    from mminstruct.distributed.decode import split_transform
    from mminstruct.distributed.embed import Encoder, read_pool

    files = [save_jpeg(draw_shape("circle" if k % 2 else "square", k, size=(200, 150)),
                       tmp_path / "img" / f"{k}.jpg") for k in range(5)]
    files += [odd_images.exif_rotated, odd_images.palette, odd_images.corrupt, tmp_path / "gone.jpg"]
    spec = parse_model_spec(tiny_clip.spec)
    cm = load_clip(spec, "cpu", precision="fp32", cache_dir=tmp_path / "memo")
    enc = Encoder(spec, cm.identity, str(tmp_path / "out"), split_transform(cm.preprocess),
                  use_gpu=False, threads=1, batch_size=3, precision="fp32",
                  cache_dir=str(tmp_path / "memo"), decode_on_device=True)
    out = enc({"path": np.asarray([str(f) for f in files], dtype=object)})
    assert (int(out["n_ok"][0]), int(out["n_failed"][0])) == (7, 2)
    names, vectors, failures = read_pool(tmp_path / "out", cm.identity)
    local = embed_images(files, cm, cache=False, num_workers=0)
    want = {str(local.paths[i]): local.vectors[j] for j, i in enumerate(local.ok.tolist())}
    assert set(names) == set(want)
    for name, v in zip(names, vectors):
        cos = float(v.astype(np.float32) @ want[name].astype(np.float32))
        assert cos >= 0.998, name  # torchvision's JPEG decoder vs PIL's, float16 storage
    assert failures == {str(p): why for p, why in local.failures}
