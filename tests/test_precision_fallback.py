"""Issue 19: a lower precision can never break embedding, on any kind of CPU.

The ``auto`` path runs as a native-bf16 CPU and as an AVX2-only CPU would (``cpu_mode``: the
capability probe ``clip.bf16_supported`` overridden, never the host's), for each architecture the
project ships or names: the demo CLIP (open_clip ModifiedResNet, real weights), open_clip ViTs
and ModifiedResNets (random weights; ViT-B-32 — the default model — and RN50 at full size in the
slow tests). Each fallback (an exception, NaN/inf, a low cosine; on the first or a later batch;
bf16, int8, draft decoding, GPU decoding) is planted and must be survived, bit for bit as fp32.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from mminstruct.embed import clip
from mminstruct.embed import gpu_decode
from mminstruct.embed import image_embed
from mminstruct.demo import DEMO_KEYWORDS, DEMO_MODEL
from tests.fixtures.images import draw_shape, save_jpeg

CPU_MODES = ("native-bf16", "no-bf16")
TINY_RN_ARCH = "mmi-tiny-test-rn"
TINY_RN_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 8, "head_width": 8},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1},
}


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMINSTRUCT_CACHE_DIR", str(tmp_path / "default_cache"))


@pytest.fixture(params=CPU_MODES)
def cpu_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The CPU as this test sees it: native bf16 or not (the probe overridden), int8 engine built in."""
    native = request.param == "native-bf16"
    monkeypatch.setattr(clip, "bf16_supported", lambda device: native)
    monkeypatch.setattr(clip, "int8_supported", lambda device: device.startswith("cpu"))
    return request.param


def _random_clip(arch: str) -> clip.ClipModel:
    import open_clip
    import torch

    torch.manual_seed(0)
    net, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=None)
    return clip.ClipModel(net, preprocess, open_clip.get_tokenizer(arch), f"random:{arch}", "cpu",
                          "fp32", name=arch)


@pytest.fixture(scope="session")
def tiny_rn(tmp_path_factory: pytest.TempPathFactory) -> clip.ClipModel:
    """A ModifiedResNet (RN50's family) small enough for the fast tests, random weights."""
    import open_clip

    config = tmp_path_factory.mktemp("tiny_rn") / f"{TINY_RN_ARCH}.json"
    config.write_text(json.dumps(TINY_RN_CONFIG))
    open_clip.add_model_config(config)
    return _random_clip(TINY_RN_ARCH)


@pytest.fixture(scope="session")
def demo_model() -> clip.ClipModel:
    return clip.load_clip(DEMO_MODEL, "cpu", precision="fp32")


def fresh(base: clip.ClipModel, precision: str = "auto", tag: str = "") -> clip.ClipModel:
    """A new ClipModel (its own precision decision and copies) over ``base``'s weights."""
    return clip.ClipModel(base.model, base.preprocess, base.tokenizer,
                          f"{base.identity}:{precision}:{tag}", "cpu", precision, base.name)


def charts(folder: Path, n: int = 12) -> list[Path]:
    kinds = ("circle", "square", "triangle")
    return [save_jpeg(draw_shape(kinds[k % 3], k), folder / f"c{k:02d}.jpg") for k in range(n)]


def embed(model: clip.ClipModel, paths: list[Path], **kw) -> image_embed.EmbedResult:
    return image_embed.embed_images(paths, model, cache=False, num_workers=0, draft=False, **kw)


def cosines(a: image_embed.EmbedResult, b: image_embed.EmbedResult) -> np.ndarray:
    return (a.vectors.astype(np.float32) * b.vectors.astype(np.float32)).sum(axis=1)


def spy(monkeypatch: pytest.MonkeyPatch, model: clip.ClipModel, plant=None) -> list[str]:
    """Record every precision ``model`` encodes in; ``plant(batch, precision, out)`` may alter it."""
    seen: list[str] = []
    real = model.encode_image_batch

    def encode(batch, precision="fp32"):
        seen.append(precision)
        out = real(batch, precision)
        return plant(batch, precision, out) if plant else out

    monkeypatch.setattr(model, "encode_image_batch", encode)
    return seen


# ----------------------------------------------------------------------------------------------
# auto on both kinds of CPU, every architecture


def _check_auto(base: clip.ClipModel, paths: list[Path], cpu_mode: str,
                monkeypatch: pytest.MonkeyPatch, expect: str | None = None) -> None:
    model = fresh(base, "auto", cpu_mode)
    seen = spy(monkeypatch, model)
    auto = embed(model, paths)
    ref = embed(fresh(base, "fp32", cpu_mode), paths)
    assert auto.failures == [] and auto.ok.tolist() == list(range(len(paths)))
    assert np.isfinite(auto.vectors.astype(np.float32)).all()
    assert cosines(auto, ref).min() >= image_embed.MIN_COSINE - 2e-3  # float16 storage on top
    assert auto.precision in (*clip.AUTO_ORDER[cpu_mode], "fp32")
    if cpu_mode == "no-bf16":
        assert "bf16" not in seen  # emulated bf16 is slower than fp32: never tried there
    if expect is not None:
        assert auto.precision == expect


def test_auto_embeds_with_the_demo_model_on_both_kinds_of_cpu(demo_model, cpu_mode, tmp_path,
                                                              monkeypatch, caplog) -> None:
    """The issue's crash: int8 broke the demo's ModifiedResNet. Now int8 is not offered for it
    (nothing it calls as a module to quantise) and auto goes on in fp32 (or bf16 where native)."""
    with caplog.at_level(logging.INFO, logger="mminstruct"):
        _check_auto(demo_model, charts(tmp_path), cpu_mode, monkeypatch)
    assert "int8 dropped for CLIP model 'demo-charts': RuntimeError: int8 has nothing to quantise" \
        in caplog.text or "bf16 check on" in caplog.text


@pytest.mark.parametrize("arch", ["tiny-vit", "tiny-rn"])
def test_auto_embeds_with_each_architecture_on_both_kinds_of_cpu(arch, tiny_clip_model, tiny_rn,
                                                                 cpu_mode, tmp_path,
                                                                 monkeypatch) -> None:
    base = tiny_clip_model if arch == "tiny-vit" else tiny_rn
    # A ViT on a CPU without native bf16: int8 (its MLP and attention projections) must work.
    expect = "int8" if (arch, cpu_mode) == ("tiny-vit", "no-bf16") else None
    _check_auto(base, charts(tmp_path), cpu_mode, monkeypatch, expect)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["ViT-B-32", "RN50"])
def test_auto_embeds_with_the_full_size_architectures(arch, cpu_mode, tmp_path, monkeypatch) -> None:
    """ViT-B-32 (the default model) and RN50 (the ModifiedResNet family), random weights."""
    base = _random_clip(arch)
    _check_auto(base, charts(tmp_path, 3), cpu_mode, monkeypatch,
                "int8" if (arch, cpu_mode) == ("ViT-B-32", "no-bf16") else None)


def test_demo_files_embed_through_the_spec_on_both_kinds_of_cpu(small_demo_workspace, cpu_mode,
                                                                tmp_path) -> None:
    """``embed_images(paths, "demo-charts")`` as the app and the CLI call it: auto, a fresh load."""
    paths = sorted(small_demo_workspace.root.rglob("*.jpg"))[:4]
    clip._MODELS.clear()  # a fresh model: its precision is decided under this CPU mode
    res = image_embed.embed_images(paths, DEMO_MODEL, cache=tmp_path, num_workers=0)
    assert res.failures == [] and len(res.vectors) == len(paths) and res.precision != "int8"


# ----------------------------------------------------------------------------------------------
# The demo workspace end to end: task file, Explore's embedding, Partition


@pytest.mark.slow
def test_task_file_from_the_demo_on_both_kinds_of_cpu(small_demo_workspace, cpu_mode,
                                                      tmp_path) -> None:
    from mminstruct.commands import task as task_file_generator

    clip._MODELS.clear()
    ws = small_demo_workspace
    rc = task_file_generator.main([
        "--data_file", ws.data_file.name, "--input_folder", str(ws.root), "--candidate_folder",
        "pool", "--keywords", *DEMO_KEYWORDS, "--model_name", DEMO_MODEL, "--gpu", "-1",
        "--output_folder", str(tmp_path / "out"), "--num_workers", "0"])
    assert rc == 0
    task = json.loads(next((tmp_path / "out").glob("*.json")).read_text())
    assert [sg["keyword"] for sg in task["subgroups"]] == list(DEMO_KEYWORDS)
    assert sum(len(sg["candidate_image_paths"]) for sg in task["subgroups"]) > 0


@pytest.mark.slow
def test_explore_and_partition_on_the_demo_workspace_on_both_kinds_of_cpu(app_home, demo_data,
                                                                          cpu_mode) -> None:
    from mminstruct.app.curation import build_task, curate, embed_workspace, keyword_vectors
    from tests.fixtures.app import DEMO_SIZE, make_demo_workspace

    clip._MODELS.clear()
    ws = make_demo_workspace(app_home / "workspaces" / "demo", demo_data, DEMO_MODEL)
    emb = embed_workspace(ws)  # what Explore shows
    assert emb.n == sum(DEMO_SIZE) and emb.n_computed == sum(DEMO_SIZE)
    assert not emb.reference.failures and not emb.candidates.failures
    cur = curate(ws, emb, keyword_vectors(ws, ws.settings.partition.keywords))  # Partition
    task = build_task(ws, emb, cur)
    assert [sg.keyword for sg in task.subgroups] == list(DEMO_KEYWORDS)


# ----------------------------------------------------------------------------------------------
# Each fallback, planted


@pytest.fixture
def native_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(clip, "bf16_supported", lambda device: True)
    monkeypatch.setattr(clip, "int8_supported", lambda device: True)


def test_a_precision_that_raises_is_dropped_with_one_log_line(tiny_clip_model, native_bf16, tmp_path,
                                                              monkeypatch, caplog) -> None:
    def plant(batch, precision, out):
        if precision in ("bf16", "int8"):
            raise TypeError(f"planted {precision} failure")
        return out

    model = fresh(tiny_clip_model, "auto", "raises")
    seen = spy(monkeypatch, model, plant)
    paths = charts(tmp_path)
    with caplog.at_level(logging.INFO, logger="mminstruct"):
        res = embed(model, paths)
    ref = embed(fresh(tiny_clip_model, "fp32", "raises"), paths)
    assert res.precision == "fp32" and "bf16" in seen and "int8" in seen
    np.testing.assert_array_equal(res.vectors, ref.vectors)
    drops = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert drops == [
        f"bf16 dropped for CLIP model {model.name!r}: TypeError: planted bf16 failure; trying int8",
        f"int8 dropped for CLIP model {model.name!r}: TypeError: planted int8 failure; trying fp32"]
    assert model._int8 is None and model._visual_bf16 is None  # the copies are freed


def test_the_next_precision_is_kept_when_one_raises(tiny_clip_model, native_bf16, tmp_path,
                                                    monkeypatch) -> None:
    def plant(batch, precision, out):
        if precision == "bf16":
            raise RuntimeError("planted")
        return out

    model = fresh(tiny_clip_model, "auto", "next")
    spy(monkeypatch, model, plant)
    assert embed(model, charts(tmp_path)).precision == "int8"


def test_non_finite_vectors_beyond_the_probe_drop_the_precision(tiny_clip_model, native_bf16,
                                                                tmp_path, monkeypatch) -> None:
    """NaN in an image the 8-image cosine probe does not look at still drops the precision."""
    def plant(batch, precision, out):
        if precision != "fp32" and len(out) > image_embed._CHECK_IMAGES:
            out = out.clone()
            out[image_embed._CHECK_IMAGES + 1] = float("nan")
        return out

    model = fresh(tiny_clip_model, "auto", "nan")
    spy(monkeypatch, model, plant)
    paths = charts(tmp_path, 12)  # one batch of 12 > the probe
    res = embed(model, paths)
    ref = embed(fresh(tiny_clip_model, "fp32", "nan"), paths)
    assert res.precision == "fp32"
    np.testing.assert_array_equal(res.vectors, ref.vectors)


def test_inf_vectors_drop_the_precision(tiny_clip_model, native_bf16, tmp_path, monkeypatch,
                                        caplog) -> None:
    def plant(batch, precision, out):
        return out * float("inf") if precision != "fp32" else out

    model = fresh(tiny_clip_model, "auto", "inf")
    spy(monkeypatch, model, plant)
    with caplog.at_level(logging.INFO, logger="mminstruct"):
        assert embed(model, charts(tmp_path)).precision == "fp32"
    assert f"bf16 dropped for CLIP model {model.name!r}: non-finite values (NaN/inf)" in caplog.text


def test_a_low_cosine_drops_the_precision(tiny_clip_model, native_bf16, tmp_path, monkeypatch,
                                          caplog) -> None:
    def plant(batch, precision, out):
        if precision == "fp32":
            return out
        out = out.roll(1, dims=1)
        return out / out.norm(dim=1, keepdim=True)

    model = fresh(tiny_clip_model, "auto", "cos")
    spy(monkeypatch, model, plant)
    paths = charts(tmp_path)
    with caplog.at_level(logging.INFO, logger="mminstruct"):
        res = embed(model, paths)
    assert res.precision == "fp32"
    np.testing.assert_array_equal(res.vectors, embed(fresh(tiny_clip_model, "fp32", "c"), paths).vectors)
    assert f"int8 dropped for CLIP model {model.name!r}: min cosine to fp32" in caplog.text


def test_a_kept_precision_failing_on_a_later_batch_goes_on_in_fp32(tiny_clip_model, tmp_path,
                                                                   monkeypatch, caplog) -> None:
    monkeypatch.setattr(clip, "bf16_supported", lambda device: False)
    monkeypatch.setattr(clip, "int8_supported", lambda device: True)
    calls = {"int8": 0}

    def plant(batch, precision, out):
        if precision == "int8":
            calls["int8"] += 1
            if calls["int8"] >= 2:  # the first batch passes its check; the second fails
                raise RuntimeError("planted later failure")
        return out

    model = fresh(tiny_clip_model, "auto", "later")
    spy(monkeypatch, model, plant)
    paths = charts(tmp_path, 12)
    with caplog.at_level(logging.INFO, logger="mminstruct"):
        res = embed(model, paths, batch_size=4)
    ref = embed(fresh(tiny_clip_model, "fp32", "later"), paths, batch_size=4)
    assert res.failures == [] and model.decided_precision == "fp32"
    np.testing.assert_array_equal(res.vectors[4:], ref.vectors[4:])  # the batches after, in fp32
    assert f"int8 dropped for CLIP model {model.name!r} on a later batch: RuntimeError: " \
           "planted later failure; embedding in fp32" in caplog.text


def test_int8_by_name_on_the_demo_model_is_one_clear_error(demo_model, tmp_path) -> None:
    paths = charts(tmp_path, 3)
    with pytest.raises(clip.PrecisionError) as info:
        embed(fresh(demo_model, "int8", "named"), paths)
    msg = str(info.value)
    assert msg.startswith("precision 'int8' cannot embed images with CLIP model 'demo-charts' (")
    assert "int8 has nothing to quantise" in msg and msg.endswith("choose one of: fp32, bf16, auto")


def test_int8_by_name_on_the_demo_model_from_the_command_line(small_demo_workspace, tmp_path,
                                                              capsys) -> None:
    from mminstruct.commands import task as task_file_generator

    ws = small_demo_workspace
    rc = task_file_generator.main([
        "--data_file", ws.data_file.name, "--input_folder", str(ws.root), "--keywords", "a",
        "--model_name", DEMO_MODEL, "--gpu", "-1", "--output_folder", str(tmp_path / "out"),
        "--num_workers", "0", "--precision", "int8"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert any("precision 'int8' cannot embed images with CLIP model 'demo-charts'" in line
               and "choose one of: fp32, bf16, auto" in line for line in err)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*.json"))


def test_a_precision_by_name_giving_nan_is_an_error_and_caches_nothing(tiny_clip_model, tmp_path,
                                                                       monkeypatch) -> None:
    def plant(batch, precision, out):
        return out * float("nan") if precision == "int8" else out

    model = fresh(tiny_clip_model, "int8", "named-nan")
    spy(monkeypatch, model, plant)
    with pytest.raises(clip.PrecisionError) as info:
        image_embed.embed_images(charts(tmp_path, 3), model, cache=tmp_path / "c", num_workers=0)
    assert str(info.value).startswith(f"precision 'int8' cannot embed images with CLIP model "
                                      f"{model.name!r} (non-finite values")
    ec = clip.EmbeddingCache(tmp_path / "c", model.identity)
    assert ec.vectors.get_many([ec.image_key(("x", 0, 0))]) == {} and len(ec.vectors) == 0


# ----------------------------------------------------------------------------------------------
# int8: only what is called as a module


def test_int8_copy_quantises_what_a_vit_calls_and_refuses_a_modified_resnet(tiny_clip_model,
                                                                            tiny_rn) -> None:
    import torch

    x = torch.randn(2, 3, 64, 64)
    q = clip.int8_copy(tiny_clip_model.model.visual, x[:1], name="vit")
    kinds = {n: type(m).__name__ for n, m in q.named_modules()}
    assert kinds["transformer.resblocks.0.mlp.c_fc"] == "Linear" and \
        type(q.get_submodule("transformer.resblocks.0.mlp.c_fc")).__module__.startswith(
            "torch.ao.nn.quantized.dynamic")
    assert kinds["transformer.resblocks.0.attn"] == "SelfAttention"
    assert type(q.get_submodule("transformer.resblocks.0.attn.in_proj")).__module__.startswith(
        "torch.ao.nn.quantized.dynamic")
    with torch.inference_mode():
        a = torch.nn.functional.normalize(tiny_clip_model.model.visual(x), dim=-1)
        b = torch.nn.functional.normalize(q(x), dim=-1)
    assert float((a * b).sum(dim=1).min()) >= image_embed.MIN_COSINE
    with pytest.raises(RuntimeError, match="int8 has nothing to quantise in rn: none of its image "
                                           "tower's Linear layers is called as a module"):
        clip.int8_copy(tiny_rn.model.visual, x[:1], name="rn")


def test_int8_copy_leaves_cross_attention_and_attribute_read_layers_alone() -> None:
    import torch
    from torch import nn

    class Tower(nn.Module):
        def __init__(self):
            super().__init__()
            self.cross = nn.MultiheadAttention(8, 2, batch_first=True)
            self.read = nn.Linear(8, 8)  # used by attribute, like ModifiedResNet's attention pool
            self.fc = nn.Linear(8, 8)
            self.ctx = nn.Parameter(torch.randn(1, 3, 8))

        def forward(self, x):
            y = self.cross(x, self.ctx.expand(len(x), -1, -1), self.ctx.expand(len(x), -1, -1),
                           need_weights=False)[0]
            return self.fc(y + nn.functional.linear(y, self.read.weight, self.read.bias)).mean(1)

    torch.manual_seed(0)
    tower = Tower().eval()
    x = torch.randn(2, 5, 8)
    q = clip.int8_copy(tower, x[:1])
    assert type(q.cross) is nn.MultiheadAttention and type(q.read) is nn.Linear
    assert type(q.fc).__module__.startswith("torch.ao.nn.quantized.dynamic")
    with torch.inference_mode():
        assert torch.isfinite(q(x)).all()


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("mask", [None, "float", "bool"])
def test_self_attention_computes_what_multihead_attention_does(batch_first: bool, mask) -> None:
    import torch
    from torch import nn

    torch.manual_seed(1)
    mha = nn.MultiheadAttention(16, 4, batch_first=batch_first).eval()
    with torch.no_grad():
        mha.in_proj_bias.normal_()
        mha.out_proj.bias.normal_()
    sa = clip._self_attention_class()(mha).eval()
    x = torch.randn(3, 6, 16) if batch_first else torch.randn(6, 3, 16)
    m = None
    if mask == "float":
        m = torch.triu(torch.full((6, 6), float("-inf")), diagonal=1)
    elif mask == "bool":
        m = torch.triu(torch.ones(6, 6, dtype=torch.bool), diagonal=1)
    with torch.inference_mode():
        want = mha(x, x, x, need_weights=False, attn_mask=m)[0]
        got = sa(x, x, x, need_weights=False, attn_mask=m)[0]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    with pytest.raises(NotImplementedError, match="plain self-attention only"):
        sa(x, x.clone(), x, need_weights=False)


# ----------------------------------------------------------------------------------------------
# Draft decoding and GPU decoding: the same rule


def _big_jpegs(folder: Path, n: int = 3) -> list[Path]:
    return [save_jpeg(draw_shape("circle", k, size=(640, 512)), folder / f"b{k}.jpg")
            for k in range(n)]


def test_draft_mode_is_dropped_when_its_check_raises(tiny_clip_model, tmp_path, monkeypatch,
                                                     caplog) -> None:
    model = fresh(tiny_clip_model, "fp32", "draft-raise")
    calls = []

    def plant(batch, precision, out):
        calls.append(1)
        if len(calls) == 2:  # choose_draft: the full decode, then the drafted one
            raise RuntimeError("planted draft failure")
        return out

    spy(monkeypatch, model, plant)
    with caplog.at_level(logging.INFO, logger="mminstruct"):
        res = image_embed.embed_images(_big_jpegs(tmp_path), model, cache=False, num_workers=0)
    assert res.decode == "cpu" and res.failures == []
    assert f"JPEG draft mode dropped for CLIP model {model.name!r}: RuntimeError: planted " \
           "draft failure; decoding in full" in caplog.text


def test_draft_mode_is_dropped_when_it_gives_nan(tiny_clip_model, tmp_path, monkeypatch) -> None:
    model = fresh(tiny_clip_model, "fp32", "draft-nan")
    calls = []

    def plant(batch, precision, out):
        calls.append(1)
        return out * float("nan") if len(calls) == 2 else out

    spy(monkeypatch, model, plant)
    assert image_embed.choose_draft(_big_jpegs(tmp_path), model, (64, 64)) is None


def test_an_image_that_fails_in_draft_mode_is_decoded_in_full(tiny_clip_model, tmp_path,
                                                             monkeypatch) -> None:
    real = image_embed.preprocess_file
    monkeypatch.setattr(image_embed, "preprocess_file",
                        lambda p, pp, draft=None: (None, "planted draft decode failure") if draft
                        else real(p, pp))
    path = _big_jpegs(tmp_path, 1)[0]
    i, tensor, error = image_embed._ImageDataset([path], tiny_clip_model.preprocess, (64, 64))[0]
    assert error is None and tensor is not None
    assert np.array_equal(tensor.numpy(), real(path, tiny_clip_model.preprocess)[0].numpy())


def _gpu_path(paths: list[Path], model: clip.ClipModel) -> dict[int, np.ndarray]:
    out = {}
    for idx, x, failed in gpu_decode.gpu_batches(paths, model.preprocess, "cpu", 4, encoder=model):
        assert not failed
        out.update(zip(idx, model.encode_image_batch(x, "fp32").numpy().astype(np.float16)))
    return out


def _cpu_path(paths: list[Path], model: clip.ClipModel) -> np.ndarray:
    return embed(model, paths, gpu_decode=False).vectors


@pytest.mark.parametrize("fault", ["raises", "nan"])
def test_gpu_decoding_is_dropped_when_its_first_batch_fails(fault, tiny_clip_model, tmp_path,
                                                            monkeypatch, caplog) -> None:
    """On the CPU device (torchvision's decoder): a GPU preprocessing that raises, or that gives
    NaN, sends everything through the CPU path, bit for bit."""
    import torch

    real = gpu_decode.gpu_preprocess

    def planted(images, spec, device):
        if fault == "raises":
            raise RuntimeError("planted GPU failure")
        return real(images, spec, device) * torch.nan

    monkeypatch.setattr(gpu_decode, "gpu_preprocess", planted)
    paths = charts(tmp_path, 6)
    model = fresh(tiny_clip_model, "fp32", f"gpu-{fault}")
    with caplog.at_level(logging.INFO, logger="mminstruct"):
        got = _gpu_path(paths, model)
    want = _cpu_path(paths, model)
    for i in range(len(paths)):
        np.testing.assert_array_equal(got[i], want[i])
    reason = "RuntimeError: planted GPU failure" if fault == "raises" else "non-finite values"
    assert f"GPU decode dropped for cpu: {reason}" in caplog.text


# ----------------------------------------------------------------------------------------------
# Decisions taken from the host, each overridden both ways


def test_bf16_probe_follows_the_cpus_capability(monkeypatch) -> None:
    import torch

    for native in (True, False):
        monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda n=native: n)
        assert clip.bf16_supported("cpu") is native
        assert clip.cpu_kind() == ("native-bf16" if native else "no-bf16")


def test_auto_candidates_by_kind_of_cpu(monkeypatch) -> None:
    monkeypatch.setattr(clip, "int8_supported", lambda device: device.startswith("cpu"))
    for native, want in ((True, ["bf16", "int8"]), (False, ["int8"])):
        monkeypatch.setattr(clip, "bf16_supported", lambda device, n=native: n)
        assert clip.auto_candidates("cpu") == want
    monkeypatch.setattr(clip, "int8_supported", lambda device: False)  # no quantised engine
    assert clip.auto_candidates("cpu") == []


def test_auto_candidates_on_a_gpu_follow_its_bf16(monkeypatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for native in (True, False):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, n=native, **k: n)
        assert clip.auto_candidates("cuda:0") == (["bf16"] if native else [])


def test_int8_needs_the_cpu_and_a_quantised_engine() -> None:
    assert clip.int8_supported("cuda:0") is False
    with pytest.raises(clip.ConfigError, match="int8.*CPU only"):
        clip.check_precision("int8", "cuda:0")


def test_gpu_number_resolves_by_the_gpus_there_are(monkeypatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert clip.resolve_device(1) == "cuda:1" and clip.resolve_device(0) == "cuda:0"
    assert clip.resolve_device(2) == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert clip.resolve_device(0) == "cpu"


def test_gpu_decoding_needs_cuda_whatever_the_host(monkeypatch) -> None:
    import torch

    monkeypatch.setattr(gpu_decode, "_AVAILABLE", {})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_decode.gpu_decode_available("cuda:0") is False
    assert gpu_decode.gpu_decode_available("cpu") is False


def test_worker_count_follows_the_cores_this_process_may_use(monkeypatch) -> None:
    import os

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5}, raising=False)
    assert image_embed.available_cpus() == 6
    assert image_embed.cpu_workers("cpu") == 4 and image_embed.cpu_workers("cuda:0") == 5
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert image_embed.cpu_workers("cpu") == 0 and image_embed.cpu_workers("cuda:0") == 1
