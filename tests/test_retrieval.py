"""faiss retrieval: exact search equals brute force, the overlap rule equals a plain-numpy reference
(and partition.top_k_per_keyword), IVF recall on clustered data, IVF-PQ with re-ranking,
save/load and the content-addressed cache, chunked input from memory maps and Parquet shards."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mminstruct.partition import assign as partition
from mminstruct.embed import vectors
from mminstruct.errors import ConfigError, DataFileError, InputError
from mminstruct.partition.retrieval import CandidateIndex, parquet_vectors, resolve_params, top_k_per_keyword


def sphere_mixture(n: int, dim: int, n_clusters: int, seed: int, spread: float = 0.25):
    """Unit vectors around random unit centres (a Gaussian mixture projected on the sphere)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_clusters, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = centres[rng.integers(0, n_clusters, n)] + spread * rng.normal(size=(n, dim)) / np.sqrt(dim) * 2
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), centres.astype(np.float32)


def brute_force_top_k(x: np.ndarray, queries: np.ndarray, k: int):
    sims = queries @ x.T
    ids = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, ids, 1), ids


def reference_overlap_rule(x: np.ndarray, kw: np.ndarray, k: int) -> list[list[int]]:
    """The rule stated plainly over the full similarity matrix: each keyword takes its nearest
    free image in turn; an image wanted by several keywords goes to the one it is most similar to
    (that pair comes first in descending order) and the others move on to their next nearest."""
    sims = kw @ x.T  # (n_kw, n)
    order = np.argsort(-sims, axis=None, kind="stable")
    owner = {}
    got = [[] for _ in range(len(kw))]
    for flat in order:
        j, i = divmod(int(flat), x.shape[0])
        if len(got[j]) < k and i not in owner:
            owner[i] = j
            got[j].append(i)
    return got


@pytest.fixture(scope="module")
def small():
    x, centres = sphere_mixture(3000, 32, 8, seed=0)
    rng = np.random.default_rng(1)
    # keywords near the same few clusters, so their top lists overlap heavily
    kw = centres[[0, 0, 1, 2, 2, 2]] + 0.05 * rng.normal(size=(6, 32)).astype(np.float32)
    kw /= np.linalg.norm(kw, axis=1, keepdims=True)
    return x, kw.astype(np.float32)


# --------------------------------------------------------------------------------- exact search

def test_flat_search_equals_brute_force(small):
    x, kw = small
    index = CandidateIndex.build(x, "flat")
    scores, ids = index.search(kw, 50)
    want_s, want_i = brute_force_top_k(x, kw, 50)
    for got, want in zip(ids.tolist(), want_i.tolist()):
        assert set(got) == set(want)  # recall@50 = 1
    np.testing.assert_allclose(scores, want_s, atol=1e-5)  # same order, up to float near-ties
    np.testing.assert_allclose(scores, np.take_along_axis(kw @ x.T, ids, 1), atol=1e-5)
    assert scores.dtype == np.float32 and ids.dtype == np.int64


def test_unnormalised_inputs_are_cosine(small):
    x, kw = small
    scale = np.random.default_rng(2).uniform(0.1, 10, size=(len(x), 1)).astype(np.float32)
    index = CandidateIndex.build(x * scale, "flat")
    _, ids = index.search(kw * 7.0, 20)
    assert np.array_equal(ids, brute_force_top_k(x, kw, 20)[1])


def test_k_beyond_pool_pads_with_minus_one():
    x, _ = sphere_mixture(5, 8, 2, seed=3)
    scores, ids = CandidateIndex.build(x, "flat").search(x[:2], 8)
    assert (ids[:, :5] >= 0).all() and (ids[:, 5:] == -1).all()
    assert np.isneginf(scores[:, 5:]).all()


# ---------------------------------------------------------------------------- overlap rule

def test_top_k_per_keyword_equals_plain_reference_and_partition(small):
    x, kw = small
    k = 120
    got = top_k_per_keyword(CandidateIndex.build(x, "flat"), kw, k, keywords=list("abcdef"))
    want = reference_overlap_rule(x, kw, k)
    assert [g.tolist() for g in got.ids] == want
    brute = partition.top_k_per_keyword(x, kw, k)
    assert all(np.array_equal(a, b) for a, b in zip(got.ids, brute.ids))
    all_ids = np.concatenate(got.ids)
    assert len(all_ids) == len(set(all_ids.tolist())) == 6 * k  # disjoint, every keyword full
    assert got.short == {}
    sims = kw @ x.T
    for j, (ids, sc) in enumerate(zip(got.ids, got.scores)):
        np.testing.assert_allclose(sc, sims[j, ids], atol=1e-5)


def test_overlapping_keywords_force_deeper_search(small, monkeypatch):
    x, kw = small
    depths = []
    real = CandidateIndex.search
    monkeypatch.setattr(CandidateIndex, "search",
                        lambda self, q, k, **kw_: depths.append(k) or real(self, q, k, **kw_))
    twins = np.stack([kw[0]] * 4)  # identical keywords: all but the first lose everything
    got = top_k_per_keyword(CandidateIndex.build(x, "flat"), twins, 100)
    assert [len(g) for g in got.ids] == [100] * 4
    assert max(depths) >= 400  # the later twins had to look past the first 2k
    assert [g.tolist() for g in got.ids] == reference_overlap_rule(x, twins, 100)


def test_small_pool_gives_everything_once():
    x, centres = sphere_mixture(50, 16, 3, seed=4)
    got = top_k_per_keyword(CandidateIndex.build(x, "flat"), centres, 30, keywords=["p", "q", "r"])
    assert sorted(np.concatenate(got.ids).tolist()) == list(range(50))
    assert sum(got.short.values()) == 50 and set(got.short) <= {"p", "q", "r"}


def test_min_similarity_excludes_far_images(small):
    x, kw = small
    got = top_k_per_keyword(CandidateIndex.build(x, "flat"), kw, 2000, min_similarity=0.5)
    for sc in got.scores:
        assert (sc >= 0.5).all()
    brute = partition.top_k_per_keyword(x, kw, 2000, min_similarity=0.5)
    assert all(np.array_equal(a, b) for a, b in zip(got.ids, brute.ids))


# ------------------------------------------------------------------------------------------ IVF

def recall_at(x, queries, index, k=10, **kw):
    _, want = brute_force_top_k(x, queries, k)
    _, got = index.search(queries, k, **kw)
    return np.mean([len(set(a) & set(b)) / k for a, b in zip(want.tolist(), got.tolist())])


def test_ivf_with_every_cell_probed_is_exact(small):
    x, kw = small
    index = CandidateIndex.build(x, "ivf", nlist=16)
    assert index.kind == "ivf" and index.params.nlist == 16
    _, ids = index.search(kw, 30, nprobe=16)
    assert np.array_equal(ids, brute_force_top_k(x, kw, 30)[1])
    got = top_k_per_keyword(index, kw, 80, nprobe=16)
    assert [g.tolist() for g in got.ids] == reference_overlap_rule(x, kw, 80)


def test_ivf_runs_out_of_probed_cells_and_probes_more(small):
    x, kw = small
    index = CandidateIndex.build(x, "ivf", nlist=32, nprobe=1)
    got = top_k_per_keyword(index, kw, 300)  # 1 cell holds ~100: must widen nprobe
    assert [len(g) for g in got.ids] == [300] * 6
    assert len(set(np.concatenate(got.ids).tolist())) == 1800


def test_ivf_recall_small_clustered_set():
    x, _ = sphere_mixture(20_000, 64, 50, seed=5)
    rng = np.random.default_rng(8)  # queries near, not on, the data
    q = x[rng.choice(len(x), 100, replace=False)] + 0.02 * rng.normal(size=(100, 64)).astype(np.float32)
    index = CandidateIndex.build(x, "ivf")
    assert recall_at(x, q, index) >= 0.95


@pytest.mark.slow
def test_ivf_recall_at_10_on_200k_vectors():
    x, _ = sphere_mixture(200_000, 64, 200, seed=6)
    rng = np.random.default_rng(7)
    q = x[rng.choice(len(x), 200, replace=False)] + 0.02 * rng.normal(size=(200, 64)).astype(np.float32)
    index = CandidateIndex.build(x, "ivf")
    assert index.kind == "ivf" and index.params.nlist == 447
    assert recall_at(x, q, index) >= 0.95


def test_ivfpq_with_rerank_recovers_exact_order(small):
    x, kw = small
    index = CandidateIndex.build(x, "ivfpq", nlist=8, pq_m=8, pq_bits=8)
    assert index.kind == "ivfpq"
    plain = recall_at(x, kw, index, k=20, nprobe=8)
    reranked = recall_at(x, kw, index, k=20, nprobe=8, rerank_with=x, rerank_factor=10)
    assert reranked >= 0.95 and reranked >= plain
    scores, ids = index.search(kw, 20, nprobe=8, rerank_with=x, rerank_factor=10)
    np.testing.assert_allclose(scores, np.take_along_axis(kw @ x.T, ids, 1), atol=1e-5)


def test_auto_kind_by_size():
    assert resolve_params(999_999, 512).kind == "flat"
    p = resolve_params(2_000_000, 512)
    assert (p.kind, p.nlist) == ("ivf", 1414)
    p = resolve_params(10_000_000, 512)
    assert (p.kind, p.pq_m, p.nlist) == ("ivfpq", 64, 3162)
    assert resolve_params(2_000_000, 512, max_flat_bytes=1 << 30).kind == "ivfpq"


# ---------------------------------------------------------------------------- persistence/cache

def test_save_load_roundtrip(tmp_path, small):
    x, kw = small
    index = CandidateIndex.build(x, "ivf", nlist=16, nprobe=5)
    index.save(tmp_path / "i.faiss")
    back = CandidateIndex.load(tmp_path / "i.faiss")
    assert back.params == index.params and back.nprobe == 5 and back.from_cache
    for a, b in zip(index.search(kw, 25), back.search(kw, 25)):
        assert np.array_equal(a, b)
    assert not list(tmp_path.glob(".*tmp"))  # no temporary left behind


def test_index_without_sidecar_is_incomplete(tmp_path, small):
    x, _ = small
    CandidateIndex.build(x[:100], "flat").save(tmp_path / "i.faiss")
    (tmp_path / "i.faiss.json").unlink()  # as if killed between the two renames
    with pytest.raises(DataFileError, match="i.faiss: no parameter file"):
        CandidateIndex.load(tmp_path / "i.faiss")


def test_build_or_load_hits_and_misses(tmp_path, small, monkeypatch):
    x, kw = small
    a = CandidateIndex.build_or_load(x, tmp_path, kind="ivf", nlist=16)
    assert not a.from_cache
    builds = []
    real = CandidateIndex.build.__func__
    monkeypatch.setattr(CandidateIndex, "build",
                        classmethod(lambda cls, *ar, **k: builds.append(k) or real(cls, *ar, **k)))
    b = CandidateIndex.build_or_load(x.copy(), tmp_path, kind="ivf", nlist=16, nprobe=3)
    assert b.from_cache and builds == [] and b.nprobe == 3  # nprobe is not in the key
    assert np.array_equal(a.search(kw, 10, nprobe=3)[1], b.search(kw, 10)[1])
    CandidateIndex.build_or_load(x, tmp_path, kind="ivf", nlist=24)  # other parameter
    y = x.copy()
    y[5] = -y[5]
    CandidateIndex.build_or_load(y, tmp_path, kind="ivf", nlist=16)  # other vectors
    CandidateIndex.build_or_load(x, tmp_path, kind="ivf", nlist=16, fingerprint="pool-v2")
    assert len(builds) == 3
    assert len(list(tmp_path.glob("*.faiss"))) == 4
    with pytest.raises(ConfigError, match="unknown build parameter 'nlists'"):
        CandidateIndex.build_or_load(x, tmp_path, nlists=3)


# ------------------------------------------------------------------------- chunked input sources

def test_float16_memmap_in_chunks_equals_in_memory(tmp_path, small):
    x, kw = small
    np.save(tmp_path / "v.npy", x.astype(np.float16))
    mm = np.load(tmp_path / "v.npy", mmap_mode="r")
    a = CandidateIndex.build(mm, "ivf", nlist=16, chunk_rows=257)
    b = CandidateIndex.build(x.astype(np.float16).astype(np.float32), "ivf", nlist=16)
    for u, v in zip(a.search(kw, 15), b.search(kw, 15)):
        np.testing.assert_array_equal(u, v)


def _write_shards(folder, x, sizes, fixed=True):
    paths, start = [], 0
    for i, n in enumerate(sizes):
        rows = x[start:start + n]
        start += n
        typ = pa.list_(pa.float16(), x.shape[1]) if fixed else pa.list_(pa.float16())
        col = pa.array(list(rows.astype(np.float16)), type=typ)
        path = folder / f"part-{i}.parquet"
        pq.write_table(pa.table({"path": [f"img{j}.jpg" for j in range(n)], "embedding": col}), path)
        paths.append(path)
    return paths


@pytest.mark.parametrize("fixed", [True, False])
def test_parquet_shards_index_like_one_array(tmp_path, small, fixed):
    x, kw = small
    x = x[:1000]
    paths = _write_shards(tmp_path, x, [300, 0, 450, 250], fixed=fixed)
    vecs = parquet_vectors(paths)
    assert vecs.shape == (1000, 32) and vecs.dtype == np.float16
    np.testing.assert_array_equal(vecs[290:760], x[290:760].astype(np.float16))
    a = CandidateIndex.build(vecs, "flat", chunk_rows=128)
    b = CandidateIndex.build(x.astype(np.float16), "flat")
    assert np.array_equal(a.search(kw, 40)[1], b.search(kw, 40)[1])
    assert vectors.array_fingerprint(vecs) == vectors.array_fingerprint(x.astype(np.float16))


def test_parquet_problems_are_named(tmp_path, small):
    x, _ = small
    (path,) = _write_shards(tmp_path, x[:10], [10])
    with pytest.raises(DataFileError, match="unknown column in part-0.parquet 'emb'; choose one of: path, embedding"):
        parquet_vectors([path], column="emb")
    with pytest.raises(DataFileError, match="expected a list of floats"):
        parquet_vectors([path], column="path")
    ragged = tmp_path / "ragged.parquet"
    pq.write_table(pa.table({"embedding": pa.array([[0.1, 0.2], [0.3]], type=pa.list_(pa.float32()))}), ragged)
    with pytest.raises(DataFileError, match="ragged.parquet: row 1 of 'embedding' has 1 values"):
        CandidateIndex.build(parquet_vectors([ragged]), "flat")


# ----------------------------------------------------------------------------------- validation

def test_bad_input_is_named():
    x = np.ones((100, 8), np.float32)
    with pytest.raises(ConfigError, match="unknown index kind 'hnsw'; choose one of: auto, flat, ivf, ivfpq"):
        CandidateIndex.build(x, "hnsw")
    x[42, 3] = np.inf
    with pytest.raises(InputError, match="row 42 holds NaN or infinity"):
        CandidateIndex.build(x, "flat")
    index = CandidateIndex.build(np.ones((100, 8), np.float32), "flat")
    with pytest.raises(InputError, match=r"queries must have shape \[Q, 8\]"):
        index.search(np.ones((2, 9), np.float32), 3)
    with pytest.raises(ConfigError, match="k must be a positive integer"):
        top_k_per_keyword(index, np.ones((2, 8), np.float32), 0)
    with pytest.raises(ConfigError, match="needs at least 39 vectors"):
        CandidateIndex.build(np.ones((20, 8), np.float32), "ivf")
    with pytest.raises(ConfigError, match="pq_m must divide the dimension 8"):
        CandidateIndex.build(np.random.default_rng(0).normal(size=(2000, 8)), "ivfpq", pq_m=3)
    with pytest.raises(InputError, match="no candidate vectors"):
        CandidateIndex.build(np.zeros((0, 8), np.float32))


def test_saved_index_follows_the_umask(tmp_path, small):
    import os

    x, _ = small
    old = os.umask(0o022)
    try:
        CandidateIndex.build(x[:100], "flat").save(tmp_path / "i.faiss")
    finally:
        os.umask(old)
    assert (tmp_path / "i.faiss").stat().st_mode & 0o777 == 0o644
