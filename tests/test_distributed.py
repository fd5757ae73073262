"""mminstruct.distributed: Ray Data embedding, generation shards as Ray tasks, the cluster-wide
limiter. Tests marked ``ray`` share one local Ray instance (127.0.0.1, 2 CPUs, its session files
under pytest's tmp dir) and compare every result with the local engine's on the same inputs;
the others check addresses, errors and the limiter's arithmetic without starting Ray."""

from __future__ import annotations

import asyncio
import io
import json
import os
import sys
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mminstruct.commands import batch as bdg
from mminstruct.commands import generate as dg
from mminstruct.commands import task as task_file_generator
from mminstruct.embed.clip import embed_keywords
from mminstruct.embed.image_embed import embed_images
from mminstruct.distributed.cluster import (RayUnavailableError, check_address,
                                            connect, shutdown)
from mminstruct.distributed.decode import PilHead, split_transform
from mminstruct.distributed.embed import TAR_SEP, embed_pool, import_to_cache, read_pool
from mminstruct.distributed.limiter import ClusterLimiter, LimiterState, LocalBackend
from mminstruct.llm.limiter import Limiter, RateLimiter
from mminstruct.errors import ConfigError
from mminstruct.data.formats import load_task_file
from mminstruct.generate import load_output, run_generation
from mminstruct.generate.config import GenerationConfig
from mminstruct.data.images import list_image_files
from mminstruct.llm.client import EndpointConfig
from mminstruct.partition.retrieval import parquet_vectors
from mminstruct.generate.manifest import manifest_path_for
from tests.fixtures.images import draw_shape, make_odd_images, make_shapes_dataset, save_jpeg
from tests.fixtures.llm import FAKE_KEY, gen_args, make_prompt_workspace


KEYWORDS = ["red circle", "blue square"]


# ----------------------------------------------------------------------------------------------
# Without Ray: addresses, errors, the limiter's arithmetic


@pytest.mark.parametrize("given, expected", [
    (None, None), ("", None), ("  ", None), ("local", "local"), ("AUTO", "auto"),
    ("10.0.0.5:6379", "10.0.0.5:6379"), ("ray://head:10001", "ray://head:10001"),
    ("[::1]:6379", "[::1]:6379"),
])
def test_ray_addresses_are_normalised(given, expected) -> None:
    assert check_address(given) == expected


@pytest.mark.parametrize("bad", ["localhost", "head:99999", "http://head:6379", "a b:1", 6379])
def test_bad_ray_addresses_name_the_choices(bad) -> None:
    with pytest.raises(ConfigError, match="local .*auto .*HOST:PORT"):
        check_address(bad)


def test_missing_ray_is_one_clear_line_naming_the_requirements(
        stub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    ws = make_prompt_workspace(tmp_path, "vqa", 2)
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    monkeypatch.setitem(sys.modules, "ray.data", None)
    with pytest.raises(RayUnavailableError, match="requirements-ray.txt"):
        connect("local")
    rc = dg.main(gen_args(ws, stub, "--ray_address", "local"))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "requirements-ray.txt" in err[0]
    assert stub.stats()["requests"] == 0
    assert not list((ws.output_folder / "generated_data").glob("runs/*"))  # no run folder either


def test_the_limiter_state_grants_only_what_its_buckets_hold() -> None:
    now = [0.0]
    state = LimiterState(rpm=120, tpm=6000, clock=lambda: now[0])  # 2 req/s, 100 tok/s
    granted, tokens, wait, info = state.take(5, 0)
    assert (granted, wait) == (2, 0.0)  # the bucket holds one second: 2 requests
    granted, _, wait, _ = state.take(1, 0)
    assert granted == 0 and wait == pytest.approx(0.5)
    assert state.take(4, 0)[2] == pytest.approx(1.0)  # come back when a bucket's worth is there
    now[0] = 1.0
    assert state.take(5, 0)[0] == 2
    # tokens: all or nothing; a request over the capacity runs the bucket into debt
    assert state.take(0, 80)[1] == 80
    assert state.take(0, 80)[1] == 0  # 20 left
    now[0] = 2.0
    assert state.take(0, 500)[1] == 500  # capacity 100 reached: granted, debt of 400
    now[0] = 3.0
    assert state.take(0, 10)[1] == 0  # still in debt
    state.take(0, 0, settle=-400)  # the request used 400 fewer tokens than estimated
    assert state.take(0, 10)[1] == 10
    state.cool_down(5)
    assert state.take(1, 0)[:3] == (0, 0.0, pytest.approx(5.0))
    assert info["rpm"] == 120 and info["rpm_source"] == "flag"


def test_request_permits_come_only_with_their_tokens() -> None:
    """A worker waiting for tokens takes no request permit meanwhile (it would expire unused):
    requests and tokens are granted together or not at all, as in the local limiter."""
    state = LimiterState(rpm=120, tpm=600, clock=lambda: 0.0)  # buckets: 2 requests, 10 tokens
    assert state.take(1, 500)[:3] == (1, 500, 0.0)  # over the bucket: granted, 490 in debt
    granted, tokens, wait, _ = state.take(1, 10)
    assert (granted, tokens) == (0, 0) and wait == pytest.approx(50.0)  # (490 + 10) / 10 per s
    assert state.take(1, 0)[:3] == (1, 0, 0.0)  # the request permit was left in the bucket


def test_header_limits_are_adopted_unless_the_user_set_one() -> None:
    state = LimiterState(rpm=60)
    state.observe("rpm", 1000)
    state.observe("tpm", 5000)
    d = state.describe()
    assert (d["rpm"], d["rpm_source"], d["tpm"], d["tpm_source"]) == (60, "flag", 5000, "header")


async def _drive(proxies: list[ClusterLimiter], per_proxy: int, clock: list[float]
                 ) -> list[float]:
    granted: list[float] = []

    async def one(p: ClusterLimiter) -> None:
        await p.acquire(10)
        granted.append(clock[0])

    await asyncio.gather(*(one(p) for p in proxies for _ in range(per_proxy)))
    return granted


def test_proxies_sharing_one_state_stay_under_the_cluster_rate() -> None:
    """Three workers with 20 requests waiting each, on a fake clock that advances only when
    somebody sleeps: every grant must fit capacity + rate × elapsed, whatever the batching."""
    clock = [0.0]

    async def fake_sleep(s: float) -> None:
        clock[0] += s
        await asyncio.sleep(0)

    state = LimiterState(rpm=600, tpm=None, clock=lambda: clock[0])  # 10/s, capacity 10
    proxies = [ClusterLimiter(LocalBackend(state), 600, None, batch=4, clock=lambda: clock[0],
                              sleep=fake_sleep) for _ in range(3)]
    times = sorted(asyncio.run(_drive(proxies, 20, clock)))
    assert len(times) == 60
    for i, t in enumerate(times):
        assert i + 1 <= 10 + 10 * t + 1e-6, f"grant {i + 1} at t={t:.2f}s is over the limit"
    assert times[-1] >= 4.9  # 60 requests at 10/s after a burst of 10 take ≥ 5 s
    assert sum(p.round_trips for p in proxies) < 60  # batched: fewer calls than requests
    assert state.granted_requests <= 60 + 3 * 4  # spare permits are few and never reused late


def test_spare_permits_expire_and_spare_tokens_go_back() -> None:
    clock = [0.0]

    async def fake_sleep(s: float) -> None:
        clock[0] += s

    state = LimiterState(rpm=600, tpm=60_000, clock=lambda: clock[0])
    proxy = ClusterLimiter(LocalBackend(state), 600, 60_000, batch=8, lease_seconds=1.0,
                           clock=lambda: clock[0], sleep=fake_sleep)

    async def scenario() -> None:
        proxy._waiting = 7  # pretend 8 requests are waiting: one lease of 8
        await proxy.acquire(100)
        proxy._waiting = 0
        assert proxy._permits == 7 and proxy._credit == 700
        clock[0] += 2.0  # the lease is stale: permits dropped, tokens returned on the next call
        await proxy.acquire(100)
        assert proxy._permits == 0 and proxy._credit == 0

    asyncio.run(scenario())
    assert state.describe()["granted_requests"] == 9
    proxy.cool_down(3)
    assert state.buckets.paused_until == pytest.approx(clock[0] + 3)


class _Clock:
    """A fake clock that moves only when somebody sleeps."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    async def sleep(self, dt: float) -> None:
        self.t += dt
        await asyncio.sleep(0)


def _both(rpm: float | None, tpm: float | None) -> list[tuple[Any, _Clock]]:
    """The local limiter and the cluster one (batch=1, its actor's class in-process), each on its
    own fake clock."""
    local_clock, cluster_clock = _Clock(), _Clock()
    local = RateLimiter(rpm, tpm, clock=local_clock, sleep=local_clock.sleep)
    state = LimiterState(rpm, tpm, clock=cluster_clock)
    cluster = ClusterLimiter(LocalBackend(state), rpm, tpm, batch=1, clock=cluster_clock,
                             sleep=cluster_clock.sleep)
    return [(local, local_clock), (cluster, cluster_clock)]


async def _script(lim: Any, clock: _Clock) -> list[float]:
    """Acquires with token estimates, usage corrections both ways, a 429's cool-down, a request
    over the token bucket (debt) and three waiting at once: the time each acquire returned."""
    times: list[float] = []

    async def take(tokens: int) -> None:
        await lim.acquire(tokens)
        times.append(round(clock.t, 6))

    for tokens in (20, 20, 20):
        await take(tokens)
    lim.settle(20, 60)  # 40 more than estimated
    await take(10)
    lim.settle(10, 2)  # 8 fewer: given back
    lim.cool_down(1.0)
    await take(100)  # over the bucket (50): into debt
    await take(5)
    await asyncio.gather(take(0), take(0), take(0))
    return times


def test_the_local_and_the_cluster_limiter_give_the_same_schedule() -> None:
    """One interface, one arithmetic: the same calls give the same grant times, and both are
    the schedule worked out by hand (rpm 120: 2/s, bucket 2; tpm 3000: 50/s, bucket 50)."""
    expected = [0.0, 0.0, 0.5, 1.2, 2.2, 3.3, 3.3, 3.8, 4.3]
    for lim, clock in _both(120, 3000):
        assert isinstance(lim, Limiter)
        assert asyncio.run(_script(lim, clock)) == pytest.approx(expected), type(lim).__name__


def test_limits_learned_from_headers_give_the_same_schedule() -> None:
    async def script(lim: Any, clock: _Clock) -> list[float]:
        times = []
        for k, tokens in enumerate((1000, 30, 5, 5)):
            if k == 1:
                lim.observe_headers({"x-ratelimit-limit-tokens": "600",  # 10/s, bucket 10
                                     "x-ratelimit-limit-requests": "1"})  # rpm was given
            await lim.acquire(tokens)
            times.append(round(clock.t, 6))
        return times

    schedules = [asyncio.run(script(lim, clock)) for lim, clock in _both(60, None)]
    assert schedules[0] == pytest.approx(schedules[1])
    assert schedules[0] == pytest.approx([0.0, 1.0, 3.5, 4.5])
    for lim, _ in _both(60, None):
        lim.observe_headers({"x-ratelimit-limit-tokens": "600"})
        d = lim.describe()
        assert (d["rpm"], d["rpm_source"], d["tpm"], d["tpm_source"]) == (60, "flag", 600,
                                                                          "header")


@pytest.mark.ray
def test_the_limiter_actor_grants_as_the_in_process_state(ray_cluster) -> None:
    """The Ray actor is the same class: its grants match ``LimiterState`` driven in-process
    (rpm 6: one request per 10 s, so the actor's real clock barely moves meanwhile)."""
    import ray

    from mminstruct.distributed.limiter import start_limiter_actor

    actor = start_limiter_actor(6, 600)
    frozen = LimiterState(6, 600, clock=lambda: 0.0)
    try:
        for want in ((3, 5.0), (1, 5.0), (0, 8.0), (0, 8.0)):
            remote = ray.get(actor.take.remote(*want))
            local = frozen.take(*want)
            assert remote[:2] == local[:2], want
            assert remote[2] == pytest.approx(local[2], abs=0.5), want
        assert ray.get(actor.describe.remote())["granted_requests"] == 1
    finally:
        ray.kill(actor)


def test_split_transform_gives_the_same_floats_from_a_quarter_of_the_bytes(tiny_clip_model) -> None:
    from PIL import Image

    pre = tiny_clip_model.preprocess
    t = split_transform(pre)
    assert isinstance(t.head, PilHead) and t.tail is not None and t.shape == (64, 64, 3)
    rng = np.random.default_rng(0)
    imgs = [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
            for h, w in [(48, 64), (91, 37), (64, 64), (300, 100)]]
    pixels = np.stack([t.pixels(img) for img in imgs])
    assert pixels.dtype == np.uint8 and pixels.nbytes * 4 == sum(pre(i).numpy().nbytes for i in imgs)
    assert torch_equal(t.to_model_input(pixels, "cpu"), [pre(img) for img in imgs])
    whole = split_transform(lambda img: pre(img) * 1)  # not a Compose: the whole, as float32
    assert whole.tail is None and whole.shape == (3, 64, 64)
    assert torch_equal(whole.to_model_input(np.stack([whole.pixels(i) for i in imgs]), "cpu"),
                       [pre(img) for img in imgs])


def test_decode_workers_need_no_torch(tiny_clip_model, tmp_path: Path) -> None:
    """A decode worker unpickles the transform and decodes without importing torch."""
    import pickle
    import subprocess

    t = split_transform(tiny_clip_model.preprocess)
    (tmp_path / "t.pkl").write_bytes(pickle.dumps(t))
    img = save_jpeg(draw_shape("circle", 1, (120, 80)), tmp_path / "a.jpg")
    code = ("import pickle, sys, numpy as np; from mminstruct.distributed.decode import decode_files;"
            f"t = pickle.loads(open({str(tmp_path / 't.pkl')!r}, 'rb').read());"
            f"b = decode_files({{'path': np.array([{str(img)!r}, 'missing.jpg'])}}, t);"
            "print(b['pixels'].shape, b['pixels'].dtype, list(b['error'])[1], "
            "'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1]).stdout.strip()
    assert out == "(2, 64, 64, 3) uint8 image missing.jpg does not exist False", out


def torch_equal(batch, singles) -> bool:
    import torch

    return bool(torch.equal(batch, torch.stack(singles)))


# ----------------------------------------------------------------------------------------------
# A local Ray instance for the rest


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory):
    """(ClusterInfo, the folder holding Ray's session files)."""
    folder = tmp_path_factory.mktemp("ray")
    info = connect("local", num_cpus=2, object_store_memory=200 << 20, temp_dir=folder)
    assert info.started_here and info.cpus == 2
    yield info, folder
    shutdown()


@pytest.fixture(scope="session")
def pool(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """~20 images (8 drawn shapes and every odd kind, 4 of them broken) and a webdataset tar of
    them with a non-image member and a corrupt image member."""
    root = tmp_path_factory.mktemp("pool")
    odd = make_odd_images(root / "images")
    for i in range(8):
        save_jpeg(draw_shape("circle" if i % 2 else "square", 40 + i), root / "images" / f"s{i}.jpg")
    files = list_image_files(root / "images")
    tar_path = root / "shard-000000.tar"
    with tarfile.open(tar_path, "w") as tf:
        for f in files:
            tf.add(f, arcname=f"sample/{f.name}")
        meta = json.dumps({"caption": "not an image"}).encode()
        info = tarfile.TarInfo("sample/s0.json")
        info.size = len(meta)
        tf.addfile(info, io.BytesIO(meta))
    bad_tar = root / "broken.tar"
    bad_tar.write_bytes(b"this is not a tar archive" * 40)
    return {"files": files, "odd": odd, "tar": tar_path, "bad_tar": bad_tar, "root": root}


def _local(files: list[Path], spec: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    res = embed_images(files, spec, cache=False, num_workers=0, batch_size=8)
    vecs = {str(res.paths[i]): res.vectors[j] for j, i in enumerate(res.ok.tolist())}
    return vecs, {str(p): why for p, why in res.failures}


def _assert_same(ray_vecs: dict[str, np.ndarray], local_vecs: dict[str, np.ndarray]) -> None:
    assert set(ray_vecs) == set(local_vecs)
    for name, v in ray_vecs.items():
        a, b = v.astype(np.float32), local_vecs[name].astype(np.float32)
        cos = float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
        assert cos >= 0.999, f"{name}: cosine {cos:.5f} to the local pipeline's vector"


@pytest.mark.ray
def test_ray_embedding_of_a_folder_equals_the_local_pipeline(ray_cluster, pool, tiny_clip,
                                                             tmp_path: Path) -> None:
    files = pool["files"]
    result = embed_pool(files, model=tiny_clip.spec, output_dir=tmp_path / "emb",
                        cache_dir=tmp_path / "cache", batch_size=8)
    local_vecs, local_fail = _local(files, tiny_clip.spec)
    assert (result.n_new, result.n_failed) == (len(local_vecs), len(local_fail))
    assert len(local_fail) == 4 and len(files) >= 20
    names, vectors, failures = read_pool(result.output_dir, result.identity)
    assert vectors.dtype == np.float16 and vectors.shape == (len(names), 32)
    _assert_same(dict(zip(names, vectors)), local_vecs)
    assert failures == local_fail  # the same images fail, for the same reasons
    # the faiss index reads the shards as one array
    sharded = parquet_vectors(result.vector_shards)
    assert sharded.shape == (len(names), 32) and sharded.dtype == np.float16


@pytest.mark.ray
def test_ray_embedding_of_webdataset_tars_equals_the_local_pipeline(ray_cluster, pool, tiny_clip,
                                                                    tmp_path: Path) -> None:
    tar, bad_tar = pool["tar"], pool["bad_tar"]
    result = embed_pool(tars=[tar, bad_tar], model=tiny_clip.spec, output_dir=tmp_path / "emb",
                        cache_dir=tmp_path / "cache", batch_size=8)
    local_vecs, local_fail = _local(pool["files"], tiny_clip.spec)
    names, vectors, failures = read_pool(result.output_dir)
    member = {f"{tar}{TAR_SEP}sample/{Path(p).name}": p for p in [*local_vecs, *local_fail]}
    _assert_same({member[n]: v for n, v in zip(names, vectors)}, local_vecs)
    tar_failures = {member[n]: why for n, why in failures.items() if n in member}
    assert set(tar_failures) == set(local_fail)  # the .json member is not an image: passed over
    for path, why in tar_failures.items():  # the same reason, naming the tar member
        assert why.split(" ", 2)[2] == local_fail[path].split(" ", 2)[2]
    assert "tar shard" in failures[str(bad_tar)]  # an unreadable shard is reported, not fatal
    assert result.n_failed == len(local_fail) + 1


@pytest.mark.ray
def test_ray_embedding_resumes_and_feeds_the_local_cache(ray_cluster, tiny_clip,
                                                         tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    files = [save_jpeg(draw_shape("circle" if i % 2 else "square", i), folder / f"{i}.jpg")
             for i in range(10)]
    kw = dict(model=tiny_clip.spec, output_dir=tmp_path / "emb", cache_dir=tmp_path / "cache",
              batch_size=4)
    first = embed_pool(files, **kw)
    assert (first.n_new, first.n_skipped) == (10, 0)
    again = embed_pool(files, **kw)
    assert (again.n_new, again.n_skipped, again.new_shards) == (0, 10, [])
    save_jpeg(draw_shape("square", 99), files[3])  # a changed file is embedded again
    os.utime(files[3], ns=(1, 10**18))
    third = embed_pool(files, **kw)
    assert (third.n_new, third.n_skipped) == (1, 9)

    n_vec, n_fail = import_to_cache(first.output_dir, tmp_path / "cache", first.identity)
    assert n_vec == 11 and n_fail == 0  # every row, the stale one too (it keys an old fingerprint)
    cached = embed_images(files, tiny_clip.spec, cache=tmp_path / "cache", num_workers=0)
    assert cached.n_computed == 0 and cached.n_cached == 10  # no model needed any more
    recomputed, _ = _local(files, tiny_clip.spec)
    _assert_same({str(p): cached.vectors[j] for j, p in enumerate(files)}, recomputed)


@pytest.mark.ray
def test_task_file_command_line_with_ray(ray_cluster, tiny_clip, tmp_path: Path, capsys,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    shapes = make_shapes_dataset(tmp_path / "shapes", n_ref=6, n_pool=12)
    args = ["--data_file", "data.json", "--input_folder", str(shapes.root), "--keywords",
            *KEYWORDS, "--model_name", tiny_clip.spec, "--gpu", "-1", "--candidate_folder",
            "pool", "--num_workers", "0", "--batch_size", "8"]
    monkeypatch.setenv("MMINSTRUCT_CACHE_DIR", str(tmp_path / "cache_ray"))
    assert task_file_generator.main([*args, "--output_folder", str(tmp_path / "ray"),
                                     "--ray_address", "local"]) == 0
    ray_task = load_task_file(Path(capsys.readouterr().out.strip().splitlines()[-1]))
    shards = list((tmp_path / "cache_ray" / "ray_embeddings").glob("*/emb-*.parquet"))
    assert shards, "the candidates were not embedded with Ray"
    monkeypatch.setenv("MMINSTRUCT_CACHE_DIR", str(tmp_path / "cache_local"))
    assert task_file_generator.main([*args, "--output_folder", str(tmp_path / "local")]) == 0
    local_task = load_task_file(Path(capsys.readouterr().out.strip().splitlines()[-1]))

    cands = list_image_files(shapes.candidate_dir)
    vecs = embed_images(cands, tiny_clip.spec, cache=tmp_path / "cache_local").vectors
    scores = vecs.astype(np.float32) @ embed_keywords(KEYWORDS, tiny_clip.spec,
                                                      cache=tmp_path / "cache_local").T
    top = np.sort(scores, axis=1)
    margin = {str(p.relative_to(shapes.root)): top[i, -1] - top[i, -2] for i, p in enumerate(cands)}
    assert [s.reference_sample_idx for s in ray_task.subgroups] == \
        [s.reference_sample_idx for s in local_task.subgroups]
    for r, loc in zip(ray_task.subgroups, local_task.subgroups):
        moved = set(r.candidate_image_paths) ^ set(loc.candidate_image_paths)
        # only a candidate within the vectors' rounding of a tie may land elsewhere
        assert all(margin[p] < 2e-3 for p in moved), {p: margin[p] for p in moved}
    assert sum(len(s.candidate_image_paths) for s in ray_task.subgroups) == len(cands)


# ----------------------------------------------------------------------------------------------
# Generation


def _samples(path: Path) -> list[dict]:
    out = [{k: v for k, v in s.items() if k != "id"} for s in load_output(path).samples]
    return sorted(out, key=lambda s: (s["prompt_idx"], s.get("variant") or "",
                                      json.dumps(s["conversations"])))


def _cfg(ws, server, prefix: str, **kw) -> GenerationConfig:
    base = dict(input_folder=ws.input_folder, output_folder=ws.output_folder,
                prompt_file=ws.prompt_name, file_prefix=prefix, concurrency=4,
                endpoint=EndpointConfig(base_url=server.url), retry_base_delay=0.01,
                retry_max_delay=0.05, timeout=5)
    base.update(kw)
    return GenerationConfig(**base)


def _files_containing(root: Path, secret: bytes) -> list[Path]:
    hits = []
    for p in root.rglob("*"):
        try:
            if p.is_file() and not p.is_symlink() and secret in p.read_bytes():
                hits.append(p)
        except OSError:
            continue
    return hits


@pytest.mark.ray
def test_ray_generation_equals_the_local_engine(ray_cluster, stub, tmp_path: Path,
                                                capsys) -> None:
    n = 14
    ws = make_prompt_workspace(tmp_path, "vqa", n, min_gen=2, behaviours={4: "garbage!"})
    local = run_generation(_cfg(ws, stub, "local"))
    assert local.state == "finished"
    stub.state.reset()
    rc = bdg.main(gen_args(ws, stub, "--num_parallel", "2", "--ray_address", "local",
                           prefix="onray", concurrency=4))
    assert rc == 4  # prompt 4 failed for good
    out = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert _samples(out) == _samples(local.output)
    assert {s["prompt_idx"] for s in load_output(out).samples} == set(range(n)) - {4}
    assert sorted(int(k) for k in stub.stats()["ids"]) == list(range(n))  # each sent once…
    assert stub.stats()["by_behaviour"].get("garbage!") == 2  # …plus its format fix
    manifest = json.loads(manifest_path_for(out).read_text())
    assert len(manifest["shards"]) == 2 and manifest["counts"]["by_outcome"]["ok"] == n - 1
    runs = sorted((ws.output_folder / "generated_data" / "runs").glob("onray_shard*"))
    assert [r.name.split("_20")[0] for r in runs] == ["onray_shard_01_of_02", "onray_shard_02_of_02"]
    assert json.loads((runs[0] / "status.json").read_text())["limits"]["scope"] == "cluster"
    # the key went to the workers in the tasks' arguments, never into a file (Ray's logs and
    # session files included)
    secret = FAKE_KEY.encode()
    assert not _files_containing(ray_cluster[1], secret)
    assert not _files_containing(ws.output_folder, secret)


@pytest.mark.ray
def test_ray_generation_stops_and_resumes_without_losing_or_repeating(
        ray_cluster, stub, tmp_path: Path) -> None:
    n = 12
    ws = make_prompt_workspace(tmp_path, "vqa_nr", n, min_gen=1)
    from mminstruct.distributed.generate import run_on_ray

    stub.state.config.quota_after = 5  # the provider's quota runs out: the shards stop
    first = run_on_ray(_cfg(ws, stub, "q", concurrency=1), 3)
    assert first.state == "stopped" and first.output is None
    finished_first = {json.loads(line)["prompt_idx"] for r in first.shards
                      for line in (r.run_dir / "log.jsonl").read_text().splitlines()
                      if json.loads(line)["outcome"] == "ok"}
    assert 5 <= len(finished_first) < n
    stub.state.config.quota_after = None
    before = dict(stub.stats()["ids"])
    resumed = run_on_ray(_cfg(ws, stub, "q", concurrency=1, resume=True), 3)
    assert resumed.state == "finished"
    ids = stub.stats()["ids"]
    for i in range(n):  # every prompt answered; none finished in the first session sent again
        assert ids[str(i)] >= 1
        if i in finished_first:
            assert ids[str(i)] == before[str(i)], f"prompt {i} was sent again"
    assert [r.run_dir for r in resumed.shards] == [r.run_dir for r in first.shards]
    local = run_generation(_cfg(ws, stub, "local"))
    assert _samples(resumed.output) == _samples(local.output)
    # a third resume has nothing left to send: every shard finished in an earlier session
    requests = stub.stats()["requests"]
    again = run_on_ray(_cfg(ws, stub, "q", resume=True), 3)
    assert again.state == "finished" and stub.stats()["requests"] == requests
    assert _samples(again.output) == _samples(local.output)
    # a worker's error reaches the caller as itself (one clear line on the command line)
    with pytest.raises(ConfigError, match="no unfinished run with file_prefix 'never'"):
        run_on_ray(_cfg(ws, stub, "never", resume=True), 1)


@pytest.mark.ray
def test_the_shared_limiter_bounds_the_clusters_request_rate(ray_cluster, stub,
                                                             tmp_path: Path) -> None:
    """rpm=300 (5/s, a bucket of 5) across two workers of concurrency 8: in any 2 s window the
    server sees at most 5 + 2 × 5 requests (+1 for clock granularity). Two separate limiters
    would allow twice that."""
    from mminstruct.distributed.generate import run_on_ray

    n = 30
    ws = make_prompt_workspace(tmp_path, "vqa_nr", n, min_gen=1)
    stub.state.config.latency = 0.05
    result = run_on_ray(_cfg(ws, stub, "rl", rpm=300, concurrency=8), 2)
    assert result.state == "finished"
    times = sorted(stub.state.window)  # the server's arrival time of every request
    assert len(times) == n
    worst = max(sum(1 for t in times[i:] if t - t0 <= 2.0) for i, t0 in enumerate(times))
    assert worst <= 5 + 10 + 1, f"{worst} requests within 2 s"
    assert times[-1] - times[0] >= (n - 5) / 5 - 0.5  # the budget was shared, not doubled


def _holder_of(lock: Path) -> int | None:
    """The pid of the process holding ``lock`` open (the shard's Ray worker)."""
    target = str(lock.resolve())
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                if os.readlink(fd) == target:
                    return int(proc.name)
        except OSError:
            continue
    return None


@pytest.mark.ray
def test_a_killed_worker_is_retried_and_continues_its_run_log(ray_cluster, stub,
                                                               tmp_path: Path) -> None:
    import signal
    import threading
    import time

    from mminstruct.distributed.generate import run_on_ray

    n = 40
    ws = make_prompt_workspace(tmp_path, "vqa_nr", n, min_gen=1)
    stub.state.config.latency = 0.2
    killed: list[int] = []

    def kill_when_half_done() -> None:
        runs = ws.output_folder / "generated_data" / "runs"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not killed:
            for log in runs.glob("k_*/log.jsonl"):
                if len(log.read_text().splitlines()) >= 10:
                    pid = _holder_of(log.parent / "lock")
                    if pid is not None:
                        os.kill(pid, signal.SIGKILL)  # the Ray worker running this shard
                        killed.append(pid)
                        return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_when_half_done)
    killer.start()
    result = run_on_ray(_cfg(ws, stub, "k", concurrency=2), 1)
    killer.join()
    assert killed, "the worker was not found"
    assert result.state == "finished"
    ids = stub.stats()["ids"]
    assert sorted(int(k) for k in ids) == list(range(n))
    assert sum(ids.values()) - n <= 2  # only the two in flight when it died were sent again
    runs = list((ws.output_folder / "generated_data" / "runs").glob("k_*"))
    assert len(runs) == 1  # the retry continued the same run, it did not start another
    stub.state.reset()
    local = run_generation(_cfg(ws, stub, "local"))
    assert _samples(result.output) == _samples(local.output)


@pytest.mark.ray
def test_cancel_stops_every_shard_and_resume_finishes(ray_cluster, stub, tmp_path: Path) -> None:
    from mminstruct.distributed.generate import run_on_ray
    from mminstruct.generate.control import RunControl

    n = 24
    ws = make_prompt_workspace(tmp_path, "vqa_nr", n, min_gen=1)
    stub.state.config.latency = 0.3
    control = RunControl()
    seen: dict[int, int] = {}

    def progress(k: int, status) -> None:
        seen[k] = status.done
        if sum(seen.values()) >= 4:
            control.cancel()

    first = run_on_ray(_cfg(ws, stub, "c", concurrency=1), 2, control=control,
                       on_progress=progress, status_interval=0.2)
    assert first.state == "cancelled" and first.output is None
    assert all(r.state == "cancelled" for r in first.shards)
    done = sum(r.status.done for r in first.shards)
    assert 4 <= done < n
    resumed = run_on_ray(_cfg(ws, stub, "c", concurrency=1, resume=True), 2)
    assert resumed.state == "finished"
    assert sorted({s["prompt_idx"] for s in load_output(resumed.output).samples}) == list(range(n))
