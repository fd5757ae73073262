"""``partition.assign.top_similar``: the rows most similar to a text vector, float16 rows scored by
faiss chunk by chunk, equal to the brute-force answer (every row scored by ``exact_similarity``,
sorted by similarity descending then row) — with ties (duplicated vectors), several blocks, a
chunk holding the whole answer, and ``k`` larger than a chunk."""

from __future__ import annotations

import numpy as np
import pytest

from mminstruct.partition.assign import exact_similarity, similarity_matrix, top_similar


def _brute(blocks, q, k):
    sims = np.concatenate([exact_similarity(b, q) for b in blocks])
    order = np.lexsort((np.arange(len(sims)), -sims.astype(np.float64)))[:k]
    return [(int(i), float(sims[i])) for i in order]


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)


@pytest.fixture(scope="module")
def blocks():
    rng = np.random.default_rng(0)
    a = _unit(rng.normal(size=(3_000, 32)).astype(np.float32))
    b = _unit(rng.normal(size=(1_700, 32)).astype(np.float32))
    a[100:160] = a[7]  # 61 identical vectors: a tie across the cut of any k below 61
    b[5:9] = a[7]  # ... and across the two blocks
    return [a, b]


@pytest.mark.parametrize("k", [1, 5, 48, 70, 700])
def test_the_answer_is_the_brute_force_one(blocks, k) -> None:
    q = blocks[0][7].astype(np.float32)  # the tied vectors are its best matches
    for chunk in (256, 1_000, 100_000):
        assert top_similar(blocks, q, k, chunk_rows=chunk) == _brute(blocks, q, k), (k, chunk)
    rng = np.random.default_rng(k)
    for _ in range(3):
        r = rng.normal(size=32).astype(np.float32)
        r /= np.linalg.norm(r)
        assert top_similar(blocks, r, k, chunk_rows=512) == _brute(blocks, r, k)


def test_one_chunk_holding_the_answer_is_scored_whole(blocks) -> None:
    """The 61 tied rows all sit in one 256-row chunk, whose list is k + 16 deep: the rows cut from
    it are found by scoring that chunk whole."""
    q = blocks[0][7].astype(np.float32)
    got = top_similar(blocks, q, 40, chunk_rows=256)
    assert [r for r, _ in got] == [7] + list(range(100, 139))  # ties by row
    assert got == _brute(blocks, q, 40)


def test_a_chunk_list_cut_inside_the_answer_is_scored_whole(blocks, monkeypatch) -> None:
    """With each chunk's list shorter than k (5 deep), the chunks holding more of the answer are
    scored whole: the answer is still the brute-force one. (At k + 16 deep a cut inside the answer
    takes a rounding flip between faiss's float32 sum and the exact score.)"""
    import mminstruct.partition.assign as assign

    monkeypatch.setattr(assign, "_TOP_SLACK", -35)
    for q in (blocks[0][7].astype(np.float32), blocks[1][100].astype(np.float32)):
        assert top_similar(blocks, q, 40, chunk_rows=256) == _brute(blocks, q, 40)


def test_scores_agree_with_the_float32_pass(blocks) -> None:
    q = blocks[0][11].astype(np.float32)
    fast = dict(top_similar(blocks, q, 30, chunk_rows=700))
    slow = similarity_matrix(np.concatenate(blocks), q[None])[:, 0]
    assert max(abs(s - slow[r]) for r, s in fast.items()) < 1e-5


def test_float32_blocks_and_edges(blocks) -> None:
    f32 = [b.astype(np.float32) for b in blocks]
    q = f32[1][3]
    assert top_similar(f32, q, 10) == _brute(f32, q, 10)
    tie = f32[0][7]  # 65 equal scores: k = 40 cuts inside them
    assert top_similar(f32, tie, 40) == _brute(f32, tie, 40)
    assert top_similar(blocks, q, 0) == []
    assert top_similar([blocks[0][:0], blocks[1]], q, 3) == _brute([blocks[1]], q, 3)
    everything = top_similar(blocks, q, 10_000, chunk_rows=1_000)
    assert len(everything) == 4_700 and everything == _brute(blocks, q, 10_000)
