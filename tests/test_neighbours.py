""""More like these": the K nearest candidates to a selection, checked against brute force."""

from __future__ import annotations

import numpy as np
import pytest

from mminstruct.errors import ConfigError, InputError
from mminstruct.app.neighbours import centroid, member_positions, more_like_these, pool_index
from mminstruct.partition.retrieval import CandidateIndex


def _unit(a: np.ndarray) -> np.ndarray:
    return (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    centres = _unit(rng.standard_normal((20, 32)))
    pool = _unit(centres[rng.integers(0, 20, 4000)] + 0.35 * rng.standard_normal((4000, 32)))
    # a selection from two different spots of the map
    sel = _unit(np.concatenate([centres[[3]] + 0.3 * rng.standard_normal((4, 32)),
                                centres[[11]] + 0.3 * rng.standard_normal((3, 32))]))
    return pool, sel


def _brute(pool, sel, k, method, exclude=()):
    sims = pool @ (centroid(sel)[:, None] if method == "centroid" else sel.T)
    score = sims.max(axis=1)
    score[list(exclude)] = -np.inf
    order = np.lexsort((np.arange(len(pool)), -score))[:k]
    return order, score[order]


@pytest.mark.parametrize("method", ["members", "centroid"])
def test_brute_force_scan_is_the_true_nearest(data, method):
    pool, sel = data
    exclude = [5, 17, 2000]
    got = more_like_these(sel, 50, pool=pool, method=method, exclude=exclude, chunk_rows=700)
    ids, scores = _brute(pool, sel, 50, method, exclude)
    assert got.ids.tolist() == ids.tolist() and got.searched == "brute force"
    np.testing.assert_allclose(got.scores, scores, rtol=0, atol=1e-5)
    assert not set(exclude) & set(got.ids.tolist())
    # float16 pools (what the app holds) give the same rows
    half = more_like_these(sel, 50, pool=pool.astype(np.float16), method=method, exclude=exclude)
    assert len(set(half.ids.tolist()) & set(ids.tolist())) >= 48


@pytest.mark.parametrize("method", ["members", "centroid"])
def test_flat_index_is_exact_even_when_the_selection_is_in_the_pool(data, method):
    pool, sel = data
    inside = [10, 20, 30, 40, 50, 60]  # a selection of pool images: they are excluded from the answer
    sel2 = pool[inside]
    index = CandidateIndex.build(pool, "flat")
    got = more_like_these(sel2, 40, index=index, method=method, exclude=inside)
    ids, scores = _brute(pool, sel2, 40, method, inside)
    assert got.ids.tolist() == ids.tolist() and got.searched == "flat"
    np.testing.assert_allclose(got.scores, scores, atol=1e-5)
    # with the selection itself excluded there are still 40 answers
    assert len(got) == 40 and not set(inside) & set(got.ids.tolist())


def test_ivf_index_recall(data):
    pool, sel = data
    index = CandidateIndex.build(pool, "ivf", nlist=20)
    ids, _ = _brute(pool, sel, 100, "members")
    every_cell = more_like_these(sel, 100, index=index, nprobe=20)
    assert every_cell.ids.tolist() == ids.tolist() and every_cell.searched == "ivf"
    some_cells = more_like_these(sel, 100, index=index, nprobe=6)
    assert len(set(some_cells.ids.tolist()) & set(ids.tolist())) >= 80
    # cell by cell = what faiss finds searching each member on its own (to any depth), best kept
    sc, found = index.search(sel, len(pool), nprobe=6)
    best = {}
    for i, v in zip(found.reshape(-1).tolist(), sc.reshape(-1).tolist()):
        if i >= 0:
            best[i] = max(best.get(i, -2.0), v)
    expected = sorted(best, key=lambda i: (-best[i], i))[:100]
    assert some_cells.ids.tolist() == expected
    np.testing.assert_allclose(some_cells.scores, [best[i] for i in expected], atol=1e-5)


def test_members_finds_both_spots_and_centroid_only_the_middle(data):
    pool, sel = data
    by_member = more_like_these(sel, 30, pool=pool)
    near_a = pool @ sel[:4].T
    near_b = pool @ sel[4:].T
    side = near_a.max(axis=1) >= near_b.max(axis=1)
    assert 0 < side[by_member.ids].sum() < 30  # neighbours of both spots


def test_small_pools_are_scanned_and_bad_input_is_named(data, tmp_path):
    pool, sel = data
    assert pool_index(pool, tmp_path) is None
    idx = pool_index(pool, tmp_path, min_rows=100)
    assert idx is not None and idx.ntotal == len(pool) and idx.kind == "ivf"
    assert pool_index(pool, tmp_path, min_rows=100).from_cache  # built once, then read
    assert sorted(more_like_these(sel, 3, pool=pool[:2]).ids.tolist()) == [0, 1]  # all there is
    assert len(more_like_these(sel, 5, pool=pool[:3], exclude=[0, 1, 2])) == 0
    with pytest.raises(ConfigError, match="unknown method 'mean'; choose one of: members, centroid"):
        more_like_these(sel, 5, pool=pool, method="mean")
    with pytest.raises(ConfigError, match="k must be a positive integer, got 0"):
        more_like_these(sel, 0, pool=pool)
    with pytest.raises(InputError, match="selection is empty"):
        more_like_these(np.zeros((0, 32)), 5, pool=pool)
    with pytest.raises(InputError, match="dim 32 but the pool dim 16"):
        more_like_these(sel, 5, pool=pool[:, :16])
    with pytest.raises(ConfigError, match="needs the pool's vectors"):
        more_like_these(sel, 5)


def test_a_large_selection_searches_from_max_queries_members_spread_over_it() -> None:
    rng = np.random.default_rng(11)
    pool = rng.normal(size=(3_000, 16)).astype(np.float32)
    sel = rng.normal(size=(1_000, 16)).astype(np.float32)
    capped = more_like_these(sel, 20, pool=pool, max_queries=50)
    assert (capped.members_searched, capped.members) == (50, 1_000)
    # the same as searching from those 50 members alone (evenly spaced over the selection)
    picked = sel[np.unique(np.linspace(0, 999, 50).round().astype(np.int64))]
    alone = more_like_these(picked, 20, pool=pool, max_queries=None)
    assert np.array_equal(capped.ids, alone.ids)
    full = more_like_these(sel, 20, pool=pool, max_queries=None)
    assert (full.members_searched, full.members) == (1_000, 1_000)
    assert not np.array_equal(full.ids, capped.ids)  # the cap is a real approximation, said so
    # a caller that reads only the members searched from (the app: 256 of a 42,000-point box)
    pos = member_positions(1_000, 50)
    assert np.array_equal(pos, np.unique(np.linspace(0, 999, 50).round().astype(np.int64)))
    read = more_like_these(sel[pos], 20, pool=pool, members=1_000)
    assert np.array_equal(read.ids, capped.ids) and np.array_equal(read.scores, capped.scores)
    assert (read.members_searched, read.members) == (50, 1_000)
    assert np.array_equal(member_positions(40, 50), np.arange(40))
    assert np.array_equal(member_positions(1_000, None), np.arange(1_000))
    for bad in (10, True, 49.5):  # fewer than given, not a count
        with pytest.raises(ConfigError, match="members="):
            more_like_these(sel[pos], 20, pool=pool, members=bad)
    with pytest.raises(ConfigError, match="method 'members' only"):
        more_like_these(sel[pos], 20, pool=pool, method="centroid", members=1_000)
    centre = more_like_these(sel, 20, pool=pool, method="centroid", max_queries=50)
    assert np.array_equal(centre.ids, more_like_these(sel, 20, pool=pool, method="centroid",
                                                      max_queries=None).ids)
