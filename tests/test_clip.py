"""mminstruct.embed.clip: model specs, loading, cached image/text embeddings, the bf16 decision."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from mminstruct.embed import clip
from mminstruct.embed import image_embed
from mminstruct.errors import ConfigError, InputError, ModelSpecError
from tests.fixtures.images import draw_shape, save_jpeg


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No test writes to ~/.cache: the default cache folder is this test's own."""
    folder = tmp_path / "default_cache"
    monkeypatch.setenv("MMINSTRUCT_CACHE_DIR", str(folder))
    return folder


def fresh_model(base: clip.ClipModel, identity: str, precision: str = "auto") -> clip.ClipModel:
    """A new ClipModel over the session's weights, with its own identity and bf16 decision."""
    return clip.ClipModel(base.model, base.preprocess, base.tokenizer, identity, "cpu", precision)


def norms(v: np.ndarray) -> np.ndarray:
    return np.linalg.norm(v.astype(np.float32), axis=1)


# ----------------------------------------------------------------------------------------------
# Model specs


def test_default_spec_is_vit_b32_laion_tag() -> None:
    spec = clip.parse_model_spec(clip.DEFAULT_CLIP_MODEL)
    assert (spec.kind, spec.arch, spec.pretrained) == ("tag", "ViT-B-32", "laion2b_s34b_b79k")
    assert spec.identity() == "ViT-B-32:laion2b_s34b_b79k"


def test_tag_spelling_is_normalised_so_the_cache_identity_is_stable() -> None:
    spec = clip.parse_model_spec(" ViT-B-32:LAION2B-S34B-B79K ")
    assert spec.identity() == clip.parse_model_spec(clip.DEFAULT_CLIP_MODEL).identity()


def test_checkpoint_spec_identity_is_the_files_sha256(tiny_clip, tmp_path: Path) -> None:
    spec = clip.parse_model_spec(tiny_clip.registered_spec)
    assert spec.kind == "checkpoint" and spec.arch == tiny_clip.arch
    assert spec.pretrained == str(tiny_clip.checkpoint.resolve())
    sha = hashlib.sha256(tiny_clip.checkpoint.read_bytes()).hexdigest()
    assert spec.identity(tmp_path) == f"{tiny_clip.arch}:sha256={sha}"
    # A copy elsewhere is the same model; a changed file is another.
    copy = tmp_path / "copy.pt"
    shutil.copy(tiny_clip.checkpoint, copy)
    assert clip.parse_model_spec(f"{tiny_clip.arch}:{copy}").identity(tmp_path) == spec.identity(tmp_path)
    copy.write_bytes(copy.read_bytes() + b"\0")
    assert clip.parse_model_spec(f"{tiny_clip.arch}:{copy}").identity(tmp_path) != spec.identity(tmp_path)


def test_config_json_spec_registers_the_architecture(tiny_clip) -> None:
    spec = clip.parse_model_spec(tiny_clip.spec)
    assert spec.arch == tiny_clip.arch and spec.config_path == str(tiny_clip.config_path.resolve())


def test_hf_hub_spec_is_accepted_as_open_clip_does() -> None:
    spec = clip.parse_model_spec("hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K")
    assert spec.kind == "hf-hub" and spec.identity() == "hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K"


@pytest.mark.parametrize("bad, expected", [
    ("", "empty CLIP model name"),
    ("ViT-Q-99:openai", "unknown CLIP architecture 'ViT-Q-99'; choose one of:"),
    ("vit-b-32:openai", "did you mean 'ViT-B-32'"),
    ("ViT-B-32", "names no weights"),
    ("ViT-B-32:", "names no weights"),
    ("ViT-B-32:nope", "unknown pretrained tag for ViT-B-32 'nope'; choose one of: openai"),
    ("ViT-B-32:/no/such/checkpoint.pt", "checkpoint file '/no/such/checkpoint.pt' for ViT-B-32 not found"),
    ("ViT-B-32:weights.safetensors", "not found"),
    ("hf-hub:", "expected hf-hub:ORG/NAME"),
    ("hf-hub:just-a-name", "expected hf-hub:ORG/NAME"),
    ("/no/such/config.json:/x.pt", "model config file '/no/such/config.json' not found"),
])
def test_bad_specs_name_the_problem_and_the_choices(bad: str, expected: str) -> None:
    with pytest.raises(ModelSpecError, match=None) as info:
        clip.parse_model_spec(bad)
    assert expected in str(info.value)
    assert isinstance(info.value, InputError)  # the CLI turns it into one line


def test_unknown_architecture_lists_the_valid_ones() -> None:
    with pytest.raises(ModelSpecError) as info:
        clip.parse_model_spec("NoSuchNet:openai")
    assert "ViT-B-16" in str(info.value) or "more)" in str(info.value)


def test_a_folder_is_not_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(ModelSpecError, match="is a folder"):
        clip.parse_model_spec(f"ViT-B-32:{tmp_path}")


def test_a_json_that_is_not_a_model_config_is_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "not-a-model.json"
    cfg.write_text('{"hello": 1}')
    with pytest.raises(ModelSpecError, match="not an open_clip model config"):
        clip.parse_model_spec(f"{cfg}:{cfg}")


def test_demo_charts_spec_uses_the_shipped_models_table(tiny_clip, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    table = tmp_path / "named_models.json"
    table.write_text(json.dumps({"demo-charts": {"config": str(tiny_clip.config_path),
                                                 "checkpoint": str(tiny_clip.checkpoint)}}))
    monkeypatch.setattr(clip, "NAMED_MODELS_FILE", table)
    spec = clip.parse_model_spec("demo-charts")
    assert (spec.kind, spec.arch) == ("demo", tiny_clip.arch)
    assert spec.identity(tmp_path) == clip.parse_model_spec(tiny_clip.spec).identity(tmp_path)
    assert clip.load_clip("demo-charts", "cpu", cache_dir=tmp_path).dim == 32


def test_demo_charts_loads_through_open_clips_normal_path() -> None:
    demo = pytest.importorskip("mminstruct.demo")
    try:
        config_json, checkpoint = demo.model_files()
    except (ModelSpecError, AttributeError) as e:
        pytest.skip(f"demo model not available: {e}")
    spec = clip.parse_model_spec("demo-charts")
    assert spec.kind == "demo" and spec.arch == Path(config_json).stem
    assert spec.pretrained == str(Path(checkpoint).resolve())
    model = clip.load_clip("demo-charts", "cpu")
    vecs = model.encode_texts(["a bar chart", "a pie chart"])
    assert vecs.shape == (2, model.dim)
    np.testing.assert_allclose(norms(vecs), 1.0, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Devices and loading


def test_gpu_falls_back_to_cpu_with_a_log_line(caplog: pytest.LogCaptureFixture) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    with caplog.at_level(logging.INFO, logger="mminstruct.embed.clip"):
        assert clip.resolve_device(0) == "cpu"
    assert "no CUDA GPU is available; using the CPU" in caplog.text
    assert clip.resolve_device(None) == "cpu" and clip.resolve_device(-1) == "cpu"
    assert clip.resolve_device("cuda:1") == "cuda:1"


def test_loaded_models_are_reused_per_process(tiny_clip, tmp_path: Path) -> None:
    a = clip.load_clip(tiny_clip.spec, "cpu", cache_dir=tmp_path)
    b = clip.load_clip(tiny_clip.registered_spec, "cpu", cache_dir=tmp_path)  # same weights
    assert a is b
    c = clip.load_clip(tiny_clip.spec, "cpu", precision="fp32", cache_dir=tmp_path)
    assert c is not a and c.decided_precision == "fp32"
    assert a.dim == 32 and a.identity.startswith(f"{tiny_clip.arch}:sha256=")


@pytest.mark.parametrize("content", [b"not a checkpoint", b""])
def test_a_broken_checkpoint_is_one_clear_error(tiny_clip, tmp_path: Path,
                                                content: bytes) -> None:
    bad = tmp_path / "broken.pt"
    bad.write_bytes(content)
    with pytest.raises(ModelSpecError, match=f"cannot load checkpoint .*broken.pt as {tiny_clip.arch}"):
        clip.load_clip(f"{tiny_clip.config_path}:{bad}", "cpu", cache_dir=tmp_path)


def test_tag_weights_unavailable_offline_is_one_clear_error(monkeypatch: pytest.MonkeyPatch,
                                                            tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # A built-in tag: open_clip tries the hub for the weights, which is unreachable here.
    with pytest.raises(ModelSpecError, match="cannot load CLIP model 'RN50:openai'.*local checkpoint"):
        clip.load_clip("RN50:openai", "cpu", cache_dir=tmp_path)


# ----------------------------------------------------------------------------------------------
# Image embeddings


def test_decodable_images_embed_and_broken_ones_are_reported(odd_images, tiny_clip_model,
                                                             tmp_path: Path) -> None:
    missing = tmp_path / "missing.jpg"
    paths = odd_images.decodable + odd_images.broken + [missing]
    res = image_embed.embed_images(paths, tiny_clip_model, batch_size=4, num_workers=0, cache=tmp_path)
    n_ok = len(odd_images.decodable)
    assert res.ok.tolist() == list(range(n_ok))
    assert res.vectors.dtype == np.float16 and res.vectors.shape == (n_ok, tiny_clip_model.dim)
    np.testing.assert_allclose(norms(res.vectors), 1.0, atol=2e-3)
    reasons = dict(res.failures)
    assert list(reasons) == odd_images.broken + [missing]
    assert res.failed == list(range(n_ok, len(paths)))
    assert "empty (0 bytes)" in reasons[odd_images.zero_byte]
    assert "decompression bomb" in reasons[odd_images.bomb]
    assert "not a readable image" in reasons[odd_images.not_an_image]
    assert str(odd_images.corrupt) in reasons[odd_images.corrupt]
    assert "does not exist" in reasons[missing]


def test_second_run_computes_nothing_and_never_calls_the_model(odd_images, tiny_clip_model,
                                                               tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    model = fresh_model(tiny_clip_model, "cache-test")
    paths = odd_images.decodable + odd_images.broken
    first = image_embed.embed_images(paths, model, batch_size=4, num_workers=0, cache=tmp_path)
    assert first.n_computed == len(paths) and first.n_cached == 0

    def boom(*a, **k):
        raise AssertionError("the model was called on a cache hit")

    monkeypatch.setattr(model, "encode_image_batch", boom)
    monkeypatch.setattr(image_embed, "preprocess_file", boom)  # decode failures are cached too
    second = image_embed.embed_images(paths, model, batch_size=4, num_workers=0, cache=tmp_path)
    assert second.n_computed == 0 and second.n_cached == len(paths)
    assert np.array_equal(first.vectors, second.vectors) and first.failures == second.failures


def test_a_cached_run_from_a_spec_does_not_load_the_model(shapes_dataset, tiny_clip,
                                                          tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    paths = sorted(shapes_dataset.image_dir.glob("*.jpg"))[:5]
    first = image_embed.embed_images(paths, tiny_clip.spec, cache=tmp_path, num_workers=0)
    monkeypatch.setattr(clip, "load_clip", lambda *a, **k: pytest.fail("model loaded on a cache hit"))
    second = image_embed.embed_images(paths, tiny_clip.spec, cache=tmp_path, num_workers=0)
    assert second.n_computed == 0 and np.array_equal(first.vectors, second.vectors)


def test_cache_key_changes_when_the_file_changes(tiny_clip_model, tmp_path: Path) -> None:
    model = fresh_model(tiny_clip_model, "change-test", "fp32")
    img = save_jpeg(draw_shape("circle", 1), tmp_path / "img" / "x.jpg")
    other = save_jpeg(draw_shape("square", 2), tmp_path / "img" / "y.jpg")
    before = image_embed.embed_images([img, other], model, cache=tmp_path / "c", num_workers=0)
    save_jpeg(draw_shape("square", 7), img)  # rewritten: new size/mtime
    st = img.stat()
    os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    after = image_embed.embed_images([img, other], model, cache=tmp_path / "c", num_workers=0)
    assert after.n_computed == 1 and after.n_cached == 1
    assert not np.array_equal(before.vectors[0], after.vectors[0])
    assert np.array_equal(before.vectors[1], after.vectors[1])


def test_cache_false_writes_nothing(shapes_dataset, tiny_clip_model, _private_cache: Path) -> None:
    paths = sorted(shapes_dataset.image_dir.glob("*.jpg"))[:3]
    res = image_embed.embed_images(paths, fresh_model(tiny_clip_model, "nocache"), cache=False, num_workers=0)
    assert res.vectors.shape[0] == 3 and not (_private_cache / "clip").exists()


def test_default_cache_folder_comes_from_the_environment(shapes_dataset, tiny_clip_model,
                                                         _private_cache: Path) -> None:
    paths = sorted(shapes_dataset.image_dir.glob("*.jpg"))[:2]
    image_embed.embed_images(paths, fresh_model(tiny_clip_model, "env-cache"), num_workers=0)
    assert clip.default_cache_dir() == _private_cache
    assert list((_private_cache / "clip").glob("*.sqlite"))


def test_duplicate_paths_are_computed_once(shapes_dataset, tiny_clip_model, tmp_path: Path) -> None:
    a, b = sorted(shapes_dataset.image_dir.glob("*.jpg"))[:2]
    res = image_embed.embed_images([a, b, a], fresh_model(tiny_clip_model, "dup"), cache=tmp_path,
                            num_workers=0)
    assert res.n_computed == 2 and res.ok.tolist() == [0, 1, 2]
    assert np.array_equal(res.vectors[0], res.vectors[2])


def test_worker_processes_give_the_same_vectors(shapes_dataset, tiny_clip_model) -> None:
    paths = sorted(shapes_dataset.image_dir.glob("*.jpg"))
    paths += sorted(shapes_dataset.candidate_dir.rglob("*.jpg"))
    model = fresh_model(tiny_clip_model, "workers", "fp32")
    main = image_embed.embed_images(paths, model, batch_size=8, num_workers=0, cache=False)
    workers = image_embed.embed_images(paths, model, batch_size=8, num_workers=2, cache=False)
    assert workers.ok.tolist() == main.ok.tolist()
    np.testing.assert_array_equal(workers.vectors, main.vectors)


def test_progress_callback_reaches_the_total(shapes_dataset, tiny_clip_model, tmp_path: Path) -> None:
    paths = sorted(shapes_dataset.image_dir.glob("*.jpg"))
    calls: list[tuple[int, int]] = []
    image_embed.embed_images(paths, fresh_model(tiny_clip_model, "progress"), batch_size=5, num_workers=0,
                      cache=tmp_path, progress=lambda d, t: calls.append((d, t)))
    assert calls[0] == (0, len(paths)) and calls[-1] == (len(paths), len(paths))
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_bad_batch_size_is_a_config_error(tiny_clip_model) -> None:
    with pytest.raises(ConfigError, match="batch_size"):
        image_embed.embed_images([], tiny_clip_model, batch_size=0)


def test_no_paths_gives_an_empty_result(tiny_clip_model) -> None:
    res = image_embed.embed_images([], tiny_clip_model, cache=False)
    assert res.vectors.shape == (0, tiny_clip_model.dim) and res.failures == []


# ----------------------------------------------------------------------------------------------
# The bf16 decision


def test_bf16_is_kept_when_it_agrees_with_fp32(shapes_dataset, tiny_clip_model,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(clip, "bf16_supported", lambda device: True)
    paths = sorted(shapes_dataset.image_dir.glob("*.jpg"))
    auto = image_embed.embed_images(paths, fresh_model(tiny_clip_model, "bf16-ok"), cache=False,
                                    num_workers=0)
    fp32 = image_embed.embed_images(paths, fresh_model(tiny_clip_model, "fp32", "fp32"), cache=False,
                             num_workers=0)
    assert auto.precision == "bf16" and fp32.precision == "fp32"
    cos = (auto.vectors.astype(np.float32) * fp32.vectors.astype(np.float32)).sum(axis=1)
    assert cos.min() >= clip.BF16_MIN_COSINE - 1e-3  # float16 storage rounding on top


def test_bf16_is_dropped_when_it_disagrees(shapes_dataset, tiny_clip_model,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(clip, "bf16_supported", lambda device: True)
    monkeypatch.setattr(clip, "int8_supported", lambda device: False)
    model = fresh_model(tiny_clip_model, "bf16-bad")
    real = model.encode_image_batch

    def lossy(batch, precision):  # a device whose bf16 path drifts
        out = real(batch, "fp32")
        if precision == "bf16":
            out = out.roll(1, dims=1)
            out = out / out.norm(dim=1, keepdim=True)
        return out

    monkeypatch.setattr(model, "encode_image_batch", lossy)
    paths = sorted(shapes_dataset.image_dir.glob("*.jpg"))  # 12 > the 8-image probe
    res = image_embed.embed_images(paths, model, cache=False, num_workers=0)
    assert res.precision == "fp32" and model.decided_precision == "fp32"
    fp32 = image_embed.embed_images(paths, fresh_model(tiny_clip_model, "ref", "fp32"), cache=False,
                             num_workers=0)
    np.testing.assert_array_equal(res.vectors, fp32.vectors)  # no bf16 row slipped through


def test_bf16_is_not_tried_where_unsupported(shapes_dataset, tiny_clip_model,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(clip, "bf16_supported", lambda device: False)
    model = fresh_model(tiny_clip_model, "no-bf16")
    seen: list[str] = []
    real = model.encode_image_batch
    monkeypatch.setattr(model, "encode_image_batch", lambda b, p: seen.append(p) or real(b, p))
    res = image_embed.embed_images(sorted(shapes_dataset.image_dir.glob("*.jpg")), model, cache=False,
                            num_workers=0)
    assert res.precision in ("fp32", "int8") and seen and "bf16" not in seen


# ----------------------------------------------------------------------------------------------
# int8 (CPUs without native bf16)


def test_auto_picks_int8_on_a_cpu_without_bf16_when_it_agrees(shapes_dataset, tiny_clip_model,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(clip, "bf16_supported", lambda device: False)
    paths = sorted(shapes_dataset.image_dir.glob("*.jpg"))
    model = fresh_model(tiny_clip_model, "int8-ok")
    auto = image_embed.embed_images(paths, model, cache=False, num_workers=0)
    fp32 = image_embed.embed_images(paths, fresh_model(tiny_clip_model, "fp32", "fp32"), cache=False,
                             num_workers=0)
    assert auto.precision == "int8" and model.precision_cosine >= image_embed.MIN_COSINE
    cos = (auto.vectors.astype(np.float32) * fp32.vectors.astype(np.float32)).sum(axis=1)
    assert cos.min() >= image_embed.MIN_COSINE - 1e-3  # float16 storage rounding on top
    assert not np.array_equal(auto.vectors, fp32.vectors)  # int8 really ran
    assert model._int8 is not None and model._visual_bf16 is None


def test_int8_is_not_chosen_when_its_check_fails(shapes_dataset, tiny_clip_model,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(clip, "bf16_supported", lambda device: False)
    monkeypatch.setattr(image_embed, "MIN_COSINE", 1.0 + 1e-6)  # no lower precision can pass
    paths = sorted(shapes_dataset.image_dir.glob("*.jpg"))
    model = fresh_model(tiny_clip_model, "int8-bad")
    tried: list[str] = []
    real = model.encode_image_batch
    monkeypatch.setattr(model, "encode_image_batch", lambda b, p: tried.append(p) or real(b, p))
    res = image_embed.embed_images(paths, model, cache=False, num_workers=0)
    assert "int8" in tried and res.precision == "fp32" and model.decided_precision == "fp32"
    assert model._int8 is None  # the quantised copy is freed
    fp32 = image_embed.embed_images(paths, fresh_model(tiny_clip_model, "ref8", "fp32"), cache=False,
                             num_workers=0)
    np.testing.assert_array_equal(res.vectors, fp32.vectors)


def test_precision_flag_values(tiny_clip, tiny_clip_model, tmp_path: Path) -> None:
    m = fresh_model(tiny_clip_model, "forced-int8", "int8")
    paths = [save_jpeg(draw_shape("circle", k), tmp_path / f"{k}.jpg") for k in range(3)]
    assert image_embed.embed_images(paths, m, cache=False, num_workers=0).precision == "int8"
    res = image_embed.embed_images(paths, tiny_clip.spec, cache=False, num_workers=0, precision="fp32")
    assert res.precision == "fp32"
    with pytest.raises(ConfigError, match="unknown precision 'fp8'; choose one of: fp32, bf16, int8, auto"):
        image_embed.embed_images(paths, tiny_clip.spec, cache=False, precision="fp8")
    with pytest.raises(ConfigError, match="int8.*CPU only"):
        clip.check_precision("int8", "cuda:0")


# ----------------------------------------------------------------------------------------------
# Worker sizing and draft mode


def test_worker_sizing() -> None:
    assert image_embed.cpu_workers("cuda:0", cpus=16) == 15  # every core but the feeder's
    assert image_embed.cpu_workers("cuda:0", cpus=1) == 1
    assert image_embed.cpu_workers("cpu", cpus=16) == 4  # the model needs the cores too
    assert image_embed.cpu_workers("cpu", cpus=4) == 3
    assert image_embed.cpu_workers("cpu", cpus=2) == 0  # decode in the main process
    assert image_embed.cpu_workers() == image_embed.cpu_workers("cpu", image_embed.available_cpus())


def test_draft_mode_is_used_for_large_jpegs_when_it_agrees(tiny_clip_model, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image

    big = [save_jpeg(draw_shape("circle", k, size=(640, 512)), tmp_path / f"b{k}.jpg") for k in range(3)]
    small = [save_jpeg(draw_shape("square", k), tmp_path / f"s{k}.jpg") for k in range(2)]
    model = fresh_model(tiny_clip_model, "draft", "fp32")
    on = image_embed.embed_images(big + small, model, cache=False, num_workers=0)
    off = image_embed.embed_images(big + small, model, cache=False, num_workers=0, draft=False)
    assert (on.decode, off.decode) == ("cpu+draft", "cpu")
    cos = (on.vectors.astype(np.float32) * off.vectors.astype(np.float32)).sum(axis=1)
    assert cos.min() >= image_embed.MIN_COSINE - 1e-3
    with Image.open(big[0]) as img:  # the tiny model's input is 64 px: drafts of 64 or more
        img.draft(None, (64, 64))
        assert img.size == (80, 64)  # 1/8 scale: the largest that keeps both sides ≥ 64
    assert image_embed.embed_images(small, model, cache=False, num_workers=0).decode == "cpu"  # none large
    monkeypatch.setattr(image_embed, "MIN_COSINE", 1.0 + 1e-6)
    assert image_embed.embed_images(big, model, cache=False, num_workers=0).decode == "cpu"


def test_unknown_precision_is_refused(tiny_clip_model) -> None:
    with pytest.raises(ConfigError, match="unknown precision 'fp8'"):
        fresh_model(tiny_clip_model, "x", "fp8")


# ----------------------------------------------------------------------------------------------
# Text embeddings


def test_text_vectors_are_normalised_and_cached(tiny_clip, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    first = clip.embed_texts(["bar chart", "pie chart", "bar chart"], tiny_clip.spec, cache=tmp_path)
    assert first.shape == (3, 32) and first.dtype == np.float32
    np.testing.assert_allclose(norms(first), 1.0, atol=1e-5)
    np.testing.assert_array_equal(first[0], first[2])
    monkeypatch.setattr(clip, "load_clip", lambda *a, **k: pytest.fail("model loaded on a cache hit"))
    again = clip.embed_texts(["bar chart", "pie chart", "bar chart"], tiny_clip.spec, cache=tmp_path)
    np.testing.assert_array_equal(again, first)  # rounded as stored, so a cached run is identical


def test_keyword_vectors_average_over_templates(tiny_clip_model) -> None:
    templates = ["a photo of a {}.", "a diagram of a {}."]
    got = clip.embed_keywords(["map", "table"], tiny_clip_model, templates=templates, cache=False)
    for row, kw in zip(got, ["map", "table"]):
        sent = tiny_clip_model.encode_texts([t.format(kw) for t in templates]).mean(axis=0)
        np.testing.assert_allclose(row, sent / np.linalg.norm(sent), atol=2e-3)  # float16 rounding
    plain = clip.embed_keywords(["map"], tiny_clip_model, cache=False)
    np.testing.assert_allclose(plain[0], tiny_clip_model.encode_texts(["map"])[0], atol=2e-3)


def test_template_parsing() -> None:
    assert clip.parse_templates(None) == ()
    assert clip.parse_templates(["default"]) == clip.DEFAULT_TEMPLATES
    assert clip.parse_templates(["a {} here"]) == ("a {} here",)
    for bad in (["no slot"], ["{} and {}"]):
        with pytest.raises(ConfigError, match="exactly once"):
            clip.parse_templates(bad)
