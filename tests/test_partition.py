"""mminstruct.partition.assign: argmax assignment, margins, unassigned, and the top-K overlap rule."""

from __future__ import annotations

import numpy as np
import pytest

from mminstruct.errors import ConfigError
from mminstruct.partition.assign import (UNASSIGNED, assign_keywords, partition_from_scores,
                                  resolve_overlaps, similarity_matrix, top_k_from_scores,
                                  top_k_per_keyword)


def unit(*rows: list[float]) -> np.ndarray:
    a = np.asarray(rows, dtype=np.float32)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


KW = np.eye(3, dtype=np.float32)  # three orthogonal keyword directions
NAMES = ["chart", "map", "table"]


def test_argmax_best_and_margin_on_hand_built_vectors() -> None:
    images = np.array([[0.8, 0.6, 0.0],    # chart, margin 0.2
                       [0.0, 0.6, 0.8],    # table, margin 0.2
                       [0.1, 0.99, 0.1]],  # map, margin 0.89
                      dtype=np.float32)
    p = assign_keywords(images, KW, keywords=NAMES)
    assert p.assignment.tolist() == [0, 2, 1]
    np.testing.assert_allclose(p.best, [0.8, 0.8, 0.99], atol=1e-6)
    np.testing.assert_allclose(p.margin, [0.2, 0.2, 0.89], atol=1e-6)
    np.testing.assert_allclose(p.scores, images, atol=1e-6)  # identity keywords: scores = coords
    assert p.groups() == {"chart": [0], "map": [2], "table": [1]}
    assert p.counts() == {"chart": 1, "map": 1, "table": 1}
    assert p.members("table").tolist() == [1] and p.members(1).tolist() == [2]


def test_min_similarity_sends_low_scores_to_unassigned() -> None:
    images = unit([1, 0, 0], [1, 1, 1], [0, 0.2, 1])
    p = assign_keywords(images, KW, min_similarity=0.7, keywords=NAMES)
    assert p.assignment.tolist() == [0, UNASSIGNED, 2]
    assert p.unassigned().tolist() == [1]
    assert p.counts() == {"chart": 1, "map": 0, "table": 1, "unassigned": 1}
    assert p.groups() == {"chart": [0], "map": [], "table": [2]}
    report = p.unassigned_report(labels=["a.jpg", "b.jpg", "c.jpg"])
    assert "1 of 3 image(s) under min_similarity 0.7" in report
    assert "b.jpg: best 0.577 ('chart')" in report


def test_margin_is_the_best_score_with_one_keyword() -> None:
    p = assign_keywords(unit([1, 1]), unit([1, 0]), keywords=["only"])
    assert p.assignment.tolist() == [0]
    np.testing.assert_allclose(p.margin, p.best)


def test_float16_vectors_give_the_float32_result() -> None:
    rng = np.random.default_rng(0)
    imgs = rng.standard_normal((500, 16)).astype(np.float32)
    imgs /= np.linalg.norm(imgs, axis=1, keepdims=True)
    kws = unit(*rng.standard_normal((4, 16)).tolist())
    a = assign_keywords(imgs, kws)
    b = assign_keywords(imgs.astype(np.float16), kws)
    same = a.assignment == b.assignment
    assert same.mean() > 0.99  # only near-ties may flip
    assert np.all(a.margin[~same] < 1e-2)
    # chunked matmul equals one big matmul
    np.testing.assert_allclose(similarity_matrix(imgs, kws), imgs @ kws.T, atol=1e-6)


def test_no_images_gives_an_empty_partition() -> None:
    p = assign_keywords(np.zeros((0, 0), np.float16), KW, keywords=NAMES)
    assert len(p) == 0 and p.counts() == {"chart": 0, "map": 0, "table": 0}
    assert p.groups() == {"chart": [], "map": [], "table": []}


@pytest.mark.parametrize("call, match", [
    (lambda: assign_keywords(np.ones((2, 4)), KW), "dim 4 but keyword vectors dim 3"),
    (lambda: assign_keywords(np.ones((2, 3)), KW, min_similarity=1.5), "between -1 and 1"),
    (lambda: assign_keywords(np.ones((2, 3)), np.zeros((0, 3))), "no keywords"),
    (lambda: assign_keywords(np.ones(3), KW), "2-D array"),
    (lambda: partition_from_scores(np.ones((2, 3)), ["a", "b"]), "3 score columns for 2 keywords"),
])
def test_bad_partition_input_is_a_config_error(call, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        call()


# ----------------------------------------------------------------------------------------------
# The overlap rule


def test_an_overlapping_image_goes_to_its_most_similar_keyword_and_the_loser_backfills() -> None:
    ranked_ids = [[10, 11, 12, 13], [10, 14, 11]]
    ranked_scores = [[0.9, 0.8, 0.7, 0.6], [0.95, 0.5, 0.4]]
    ids, scores = resolve_overlaps(ranked_ids, ranked_scores, k=2)
    assert ids[1].tolist() == [10, 14]  # 10 is closer to keyword 1 (0.95 > 0.9)
    assert ids[0].tolist() == [11, 12]  # keyword 0 lost 10 and took its next nearest
    np.testing.assert_allclose(scores[0], [0.8, 0.7])
    np.testing.assert_allclose(scores[1], [0.95, 0.5])


def test_a_keyword_keeps_an_image_only_the_other_retrieved_lower() -> None:
    ids, _ = resolve_overlaps([[1, 2], [1, 3]], [[0.9, 0.1], [0.2, 0.15]], k=1)
    assert ids[0].tolist() == [1] and ids[1].tolist() == [3]


def test_short_lists_give_fewer_and_are_reported() -> None:
    scores = np.array([[0.9, 0.8], [0.7, 0.95], [0.6, 0.1]], dtype=np.float32)
    tk = top_k_from_scores(scores, k=2, keywords=["a", "b"])
    assert sorted(np.concatenate(tk.ids).tolist()) == [0, 1, 2]  # the pool of 3 is shared out
    assert tk.short == {"b": 1}
    tk = top_k_from_scores(scores, k=2, keywords=["a", "b"], min_similarity=0.75)
    assert tk.groups() == {"a": [0], "b": [1]} and tk.short == {"a": 1, "b": 1}


def test_ties_go_to_the_earlier_keyword() -> None:
    ids, _ = resolve_overlaps([[5], [5]], [[0.5], [0.5]], k=1)
    assert ids[0].tolist() == [5] and ids[1].tolist() == []


@pytest.mark.parametrize("k", [0, -1, 1.5, None])
def test_bad_k_is_refused(k) -> None:
    with pytest.raises(ConfigError, match="k must be a positive integer"):
        resolve_overlaps([[1]], [[0.1]], k)


def test_mismatched_ranked_lists_are_refused() -> None:
    with pytest.raises(ConfigError, match="2 ids but 1 scores"):
        resolve_overlaps([[1, 2]], [[0.3]], 1)


def _deferred_acceptance(scores: np.ndarray, k: int) -> list[set[int]]:
    """Reference: keywords propose in rank order, an image keeps its most similar proposer, the
    rejected keyword proposes its next nearest — the rule as the issue words it."""
    n, m = scores.shape
    order = [list(np.argsort(-scores[:, j], kind="stable")) for j in range(m)]
    nxt = [0] * m
    held: dict[int, int] = {}  # image → keyword
    count = [0] * m
    free = [j for j in range(m)]
    while free:
        j = free.pop()
        while count[j] < k and nxt[j] < n:
            i = int(order[j][nxt[j]])
            nxt[j] += 1
            cur = held.get(i)
            if cur is None:
                held[i], count[j] = j, count[j] + 1
            elif scores[i, j] > scores[i, cur]:
                held[i], count[j], count[cur] = j, count[j] + 1, count[cur] - 1
                free.append(cur)
    groups: list[set[int]] = [set() for _ in range(m)]
    for i, j in held.items():
        groups[j].add(i)
    return groups


@pytest.mark.parametrize("seed", range(5))
def test_top_k_matches_the_proposal_rule_and_has_no_blocking_pair(seed: int) -> None:
    rng = np.random.default_rng(seed)
    imgs = unit(*rng.standard_normal((60, 8)).tolist())
    kws = unit(*rng.standard_normal((4, 8)).tolist())
    k = 7
    tk = top_k_per_keyword(imgs, kws, k)
    scores = imgs @ kws.T
    got = [set(x.tolist()) for x in tk.ids]
    assert got == _deferred_acceptance(scores, k)
    assert all(len(g) == k for g in got) and tk.short == {}
    chosen = {i: j for j, g in enumerate(got) for i in g}
    assert len(chosen) == 4 * k  # nobody twice
    for j, g in enumerate(got):
        np.testing.assert_allclose(tk.scores[j], scores[tk.ids[j], j], atol=1e-6)
        assert list(tk.scores[j]) == sorted(tk.scores[j], reverse=True)
        worst = min(scores[i, j] for i in g)
        # no image prefers keyword j over its own keyword while j holds a worse image
        for i in range(len(imgs)):
            if i in g:
                continue
            mine = scores[i, chosen[i]] if i in chosen else -np.inf
            assert not (scores[i, j] > worst and scores[i, j] > mine)


def test_keywords_are_normalised_once_and_duplicates_named() -> None:
    from mminstruct.partition.assign import normalise_keywords
    assert normalise_keywords(["  bar   chart ", "Pie\tchart", "map"]) == ["bar chart", "Pie chart", "map"]
    assert normalise_keywords(("a",)) == ["a"] and normalise_keywords([]) == []
    with pytest.raises(ConfigError, match=r"keyword 'Bar chart' is given twice \(also as 'bar chart'\)"):
        normalise_keywords(["bar chart", " Bar  chart"])
    for bad in ("", "   ", None, 3):
        with pytest.raises(ConfigError, match=f"keyword {bad!r} is empty or not a string"):
            normalise_keywords(["ok", bad])
    for bad in ("bar chart", None, {"a": 1}):
        with pytest.raises(ConfigError, match="keywords must be a list of strings"):
            normalise_keywords(bad)


def test_groups_counts_and_the_unassigned_report_of_a_partition() -> None:
    scores = np.array([[0.9, 0.1, 0.0],    # chart
                       [0.05, 0.1, 0.12],  # under 0.2: unassigned, nearest table
                       [0.1, 0.2, 0.7],    # table
                       [0.15, 0.1, 0.0],   # unassigned, nearest chart
                       [0.3, 0.25, 0.1],   # chart, margin 0.05
                       [0.8, 0.1, 0.1]],   # chart
                      dtype=np.float32)
    p = partition_from_scores(scores, NAMES, min_similarity=0.2)
    assert p.groups() == {"chart": [0, 4, 5], "map": [], "table": [2]}
    assert p.counts() == {"chart": 3, "map": 0, "table": 1, "unassigned": 2}
    np.testing.assert_allclose(p.margin, [0.8, 0.02, 0.5, 0.05, 0.05, 0.7], atol=1e-6)
    assert p.unassigned_report(labels=[f"img{i}.jpg" for i in range(6)]) == (
        "2 of 6 image(s) under min_similarity 0.2:\n"
        "  img1.jpg: best 0.120 ('table')\n"
        "  img3.jpg: best 0.150 ('chart')")
    assert p.unassigned_report(limit=1) == (
        "2 of 6 image(s) under min_similarity 0.2:\n  image 1: best 0.120 ('table')\n  … and 1 more")
    assert "more" not in p.unassigned_report(limit=2)  # exactly at the limit: nothing left out
    q = partition_from_scores(scores, NAMES)  # no threshold: no "unassigned" count, none left out
    assert q.counts() == {"chart": 4, "map": 0, "table": 2}
    assert q.unassigned_report() == "no image is unassigned"


def test_top_k_passes_names_k_and_the_threshold_through_and_keeps_a_score_at_it() -> None:
    images = unit([1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.2, 0.0, 0.98])
    t = top_k_per_keyword(images, KW, 1, keywords=NAMES, min_similarity=0.5)
    assert t.k == 1 and t.keywords == NAMES
    assert t.groups() == {"chart": [0], "map": [1], "table": [2]}
    assert top_k_per_keyword(images, KW, 1).keywords == ["0", "1", "2"]
    assert top_k_per_keyword(images, KW, 1, min_similarity=0.99).short == {"2": 0}  # 0.98 < 0.99
    scores = np.array([[1.0, 0.0], [0.5, 0.75], [0.25, 1.0], [0.0, 0.875]], np.float32)
    t2 = top_k_from_scores(scores, 2, ["a", "b"], min_similarity=0.5)
    # "a" keeps image 1, whose score is exactly the threshold; "b" takes 2 and 3 (1 is over for b
    # too, but b is full with higher scores)
    assert t2.groups() == {"a": [0, 1], "b": [2, 3]} and t2.short == {}
    np.testing.assert_allclose(t2.scores[0], [1.0, 0.5])
    t3 = top_k_from_scores(scores, 2, ["a", "b"], min_similarity=0.6)
    assert t3.groups() == {"a": [0], "b": [2, 3]} and t3.short == {"a": 1}
    for bad in (0, -1, 1.5, "2"):
        with pytest.raises(ConfigError, match=f"k must be a positive integer, got {bad!r}"):
            top_k_from_scores(np.zeros((2, 2), np.float32), bad)


def test_similarity_is_computed_in_chunks_that_cover_every_row(monkeypatch) -> None:
    from mminstruct.partition import assign as partition
    monkeypatch.setattr(partition, "_CHUNK_ROWS", 2)  # 5 rows of 3 dims: chunks 0-1, 2-3, 4
    images = unit([1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 1, 1]).astype(np.float16)
    got = similarity_matrix(images, KW)
    assert got.dtype == np.float32 and got.shape == (5, 3)
    np.testing.assert_allclose(got, images.astype(np.float32) @ KW.T, atol=1e-6)


def test_two_keywords_margin_threshold_edges_and_default_names() -> None:
    scores = np.array([[0.5, 0.25], [0.125, 0.75], [0.375, 0.25]], np.float32)
    p = partition_from_scores(scores, ["a", "b"], min_similarity=0.5)
    np.testing.assert_allclose(p.margin, [0.25, 0.625, 0.125])  # best − runner-up with 2 keywords
    assert p.assignment.tolist() == [0, 1, UNASSIGNED]  # a score exactly at the threshold stays
    for edge in (-1.0, 1.0):
        assert partition_from_scores(scores, ["a", "b"], min_similarity=edge).min_similarity == edge
    for bad in (-1.5, 1.5):
        with pytest.raises(ConfigError, match=f"min_similarity must be between -1 and 1, got {bad}"):
            partition_from_scores(scores, ["a", "b"], min_similarity=bad)
    with pytest.raises(ConfigError, match="no keywords to partition by"):
        partition_from_scores(np.zeros((2, 0), np.float32), [])
    assert assign_keywords(unit([1, 0, 0]), KW).keywords == ["0", "1", "2"]
