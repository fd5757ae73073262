"""Keyword suggestions: clustering (k given or chosen by silhouette), naming by a vocabulary,
flagging regions no keyword fits; on the demo charts with the demo CLIP (slow)."""

from __future__ import annotations

import numpy as np
import pytest

from mminstruct.errors import ConfigError, DataFileError
from mminstruct.app.suggest import (VOCABULARY_PATH, choose_k, kmeans, load_vocabulary, name_clusters,
                                silhouette, suggest_keywords)

CHART_TYPES = {"bar chart", "line chart", "pie chart", "scatter plot"}


def _unit(a):
    return (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def blobs():
    """Four groups of 60, 50, 40, 30 unit vectors; word i points at group i (plus a generic word
    close to every image)."""
    rng = np.random.default_rng(0)
    centres = _unit(rng.standard_normal((4, 64)))
    sizes = (60, 50, 40, 30)
    x = _unit(np.concatenate([centres[i] + 0.25 * rng.standard_normal((n, 64))
                              for i, n in enumerate(sizes)]))
    truth = np.repeat(np.arange(4), sizes)
    words = ["alpha", "beta", "gamma", "delta", "generic", "noise"]
    generic = _unit(x.mean(axis=0, keepdims=True))
    vecs = _unit(np.concatenate([centres + 0.1 * rng.standard_normal((4, 64)), generic,
                                 rng.standard_normal((1, 64))]))
    return x, truth, words, vecs


def test_vocabulary_file_is_shipped_and_read(tmp_path):
    words = load_vocabulary()
    assert len(words) >= 300 and len(set(words)) == len(words)
    assert CHART_TYPES <= set(words) and {"receipt", "kitchen", "dog", "watercolor painting"} <= set(words)
    assert not any(w.startswith("#") for w in words)
    assert VOCABULARY_PATH.name == "visual_concepts.txt"
    own = tmp_path / "v.txt"
    own.write_text("# mine\n\n  red   car \nred car\nboat\n")
    assert load_vocabulary(own) == ["red car", "boat"]
    own.write_text("# only notes\n")
    with pytest.raises(DataFileError, match="holds no concept"):
        load_vocabulary(own)
    with pytest.raises(DataFileError, match="cannot be read"):
        load_vocabulary(tmp_path / "missing.txt")


def test_silhouette_matches_scikit_learn(blobs):
    from sklearn.metrics import silhouette_score

    x, truth, _, _ = blobs
    labels = truth.copy()
    labels[:5] = 3  # not perfect
    assert silhouette(x, labels) == pytest.approx(silhouette_score(x, labels, metric="cosine"), abs=1e-4)
    assert silhouette(x, np.zeros(len(x))) == 0.0


def test_kmeans_and_choose_k_recover_the_groups(blobs):
    x, truth, _, _ = blobs
    k, scores = choose_k(x, (2, 8))
    assert k == 4 and set(scores) == set(range(2, 9))
    _, labels = kmeans(x, 4)
    # each found cluster is one true group
    pairs = {(int(a), int(b)) for a, b in zip(labels, truth)}
    assert len(pairs) == 4
    with pytest.raises(ConfigError, match="k must be an integer between 1 and the 180 images"):
        kmeans(x, 0)


def test_clusters_are_named_by_centred_scores(blobs):
    x, truth, words, vecs = blobs
    s = suggest_keywords(x, vecs, words, k=4)
    assert [c.size for c in s.clusters] == [60, 50, 40, 30]  # biggest first
    assert [c.name for c in s.clusters] == ["alpha", "beta", "gamma", "delta"]
    assert "generic" not in s.top_words(1)  # fits every image equally: names none
    raw = name_clusters(s.centroids, vecs, words, None, top=6)  # uncentred, for contrast
    assert any(ws[0][0] == "generic" or ws[1][0] == "generic" for ws in raw)
    assert s.keywords(existing=["Beta"]) == ["alpha", "gamma", "delta"]
    auto = suggest_keywords(x, vecs, words)  # k by silhouette
    assert auto.k == 4 and auto.silhouettes[4] == max(auto.silhouettes.values())


def test_regions_no_keyword_fits_are_flagged(blobs):
    x, truth, words, vecs = blobs
    s = suggest_keywords(x, vecs, words, k=4, keyword_vecs=vecs[:2], keywords=["alpha", "beta"])
    flagged = {c.name for c in s.uncovered()}
    assert flagged == {"gamma", "delta"}
    by_name = {c.name: c for c in s.clusters}
    assert by_name["alpha"].keyword == "alpha" and by_name["beta"].keyword == "beta"
    assert by_name["gamma"].keyword_fit < s.min_fit <= by_name["alpha"].keyword_fit
    # with every keyword, nothing is uncovered
    full = suggest_keywords(x, vecs, words, k=4, keyword_vecs=vecs[:4], keywords=words[:4])
    assert full.uncovered() == []
    with pytest.raises(ConfigError, match="unknown clustering method 'dbscan'; choose one of: kmeans, hdbscan"):
        suggest_keywords(x, vecs, words, method="dbscan")


def test_hdbscan_finds_tight_groups_itself(blobs):
    _, _, words, vecs = blobs
    rng = np.random.default_rng(1)
    centres = vecs[:4]
    x = _unit(np.concatenate([centres[i] + 0.08 * rng.standard_normal((n, 64))
                              for i, n in enumerate((60, 50, 40, 30))]))
    s = suggest_keywords(x, vecs, words, method="hdbscan", min_cluster_size=10)
    assert s.k == 4 and [c.name for c in s.clusters] == ["alpha", "beta", "gamma", "delta"]
    assert [c.size for c in s.clusters] == [60, 50, 40, 30]  # noise points join the nearest


@pytest.mark.slow
def test_demo_charts_are_named_by_their_chart_types(tmp_path):
    """The demo CLIP knows charts only: the clusters of 48 demo charts carry the four chart types
    among their top three words, with k given and with k chosen by silhouette."""
    from mminstruct.embed.clip import embed_keywords
    from mminstruct.embed.image_embed import embed_images
    from mminstruct.demo import build_demo_workspace
    from mminstruct.data.records import load_data_file

    demo = build_demo_workspace(tmp_path / "demo", seed=0, n_reference=48, n_candidates=4, workers=1)
    data = load_data_file(demo.data_file)
    res = embed_images([data.image_path(r) for r in data.records], "demo-charts",
                       cache=tmp_path / "cache", device="cpu", show_progress=False)
    words = load_vocabulary()
    vocab = embed_keywords(words, "demo-charts", cache=tmp_path / "cache")
    for k in (4, None):
        s = suggest_keywords(res.vectors, vocab, words, k=k)
        assert CHART_TYPES <= s.top_words(3), (k, [c.words for c in s.clusters])
    # with only bar and line as keywords, the pie charts are a region no keyword fits
    kw = ["bar chart", "line chart"]
    s = suggest_keywords(res.vectors, vocab, words, k=4,
                         keyword_vecs=embed_keywords(kw, "demo-charts", cache=tmp_path / "cache"),
                         keywords=kw)
    assert any("pie chart" in dict(c.words[:3]) for c in s.uncovered())
    assert "pie chart" in s.keywords(kw) or any("pie chart" in dict(c.words[:3]) for c in s.clusters)
