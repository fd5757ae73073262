"""2-D projections: PCA against numpy's SVD, UMAP cluster structure and determinism, the
fit-on-sample + transform path, the content-addressed cache (also across processes), and the
display subsample. UMAP tests pay umap's numba compile (~5 s) and are marked slow."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from mminstruct.app import projection
from mminstruct.embed import vectors
from mminstruct.errors import ConfigError, InputError
from mminstruct.app.projection import UmapParams, display_sample, project_2d

REPO = Path(__file__).resolve().parent.parent


def clustered(n: int, dim: int, n_clusters: int, seed: int, spread: float = 0.15):
    """Unit vectors around ``n_clusters`` random directions (a Gaussian mixture on the sphere)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_clusters, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = rng.integers(0, n_clusters, n)
    x = centres[labels] + spread * rng.normal(size=(n, dim)) / np.sqrt(dim)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), labels


def knn_purity(emb: np.ndarray, labels: np.ndarray, k: int = 10) -> float:
    """Share of each point's k nearest 2-D neighbours that carry its own label."""
    d = ((emb[:, None, :] - emb[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    nn = np.argsort(d, axis=1)[:, :k]
    return float((labels[nn] == labels[:, None]).mean())


@pytest.fixture(scope="module")
def blobs():
    return clustered(600, 32, 5, seed=3)


# ------------------------------------------------------------------------------------------- PCA

def test_pca_matches_numpy_svd():
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(300, 20)) * np.linspace(5, 0.5, 20)).astype(np.float32)
    got = project_2d(x, "pca")
    xc = x.astype(np.float64) - x.mean(axis=0)
    u, s, _ = np.linalg.svd(xc, full_matrices=False)
    want = u[:, :2] * s[:2]
    for j in range(2):  # an axis's sign is a convention; the module fixes one, SVD another
        sign = np.sign(np.dot(got[:, j], want[:, j]))
        np.testing.assert_allclose(got[:, j], sign * want[:, j], rtol=1e-4, atol=1e-4)
    assert got.dtype == np.float32 and got.shape == (300, 2)


def test_pca_chunked_float16_memmap_equals_in_memory(tmp_path):
    x = np.random.default_rng(1).normal(size=(1000, 16)).astype(np.float16)
    np.save(tmp_path / "v.npy", x)
    mm = np.load(tmp_path / "v.npy", mmap_mode="r")
    a = projection.pca_2d(mm, chunk_rows=97)  # chunks that do not divide N
    b = projection.pca_2d(x.astype(np.float32))
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_pca_sign_convention_is_deterministic():
    x = np.random.default_rng(2).normal(size=(200, 8)).astype(np.float32)
    a, b = project_2d(x, "pca"), project_2d(x.copy(), "pca")
    assert np.array_equal(a, b)


# ------------------------------------------------------------------------------------------ cache

def test_cache_hit_returns_same_and_skips_compute(tmp_path, monkeypatch):
    x = np.random.default_rng(4).normal(size=(500, 12)).astype(np.float32)
    first = project_2d(x, "pca", cache_dir=tmp_path)
    assert len(list(tmp_path.glob("projection-pca-*.npy"))) == 1

    def boom(*a, **k):
        raise AssertionError("recomputed despite a cache entry")

    monkeypatch.setattr(projection, "pca_2d", boom)
    again = project_2d(x.copy(), "pca", cache_dir=tmp_path)
    assert np.array_equal(first, again)


def test_changed_input_or_parameter_misses(tmp_path, monkeypatch):
    x = np.random.default_rng(5).normal(size=(400, 12)).astype(np.float32)
    calls = []
    real = projection.pca_2d
    monkeypatch.setattr(projection, "pca_2d", lambda *a, **k: calls.append(1) or real(*a, **k))
    project_2d(x, "pca", cache_dir=tmp_path)
    project_2d(x, "pca", cache_dir=tmp_path)
    assert len(calls) == 1
    y = x.copy()
    y[123, 4] += 1e-3  # one value changed
    project_2d(y, "pca", cache_dir=tmp_path)
    assert len(calls) == 2
    project_2d(x, "pca", cache_dir=tmp_path, seed=1)  # a parameter in the key
    assert len(calls) == 3
    project_2d(x.astype(np.float16), "pca", cache_dir=tmp_path)  # other bytes, other entry
    assert len(calls) == 4
    assert len(list(tmp_path.glob("*.npy"))) == 4


def test_corrupt_cache_entry_is_recomputed(tmp_path):
    x = np.random.default_rng(6).normal(size=(300, 10)).astype(np.float32)
    good = project_2d(x, "pca", cache_dir=tmp_path)
    (entry,) = tmp_path.glob("*.npy")
    entry.write_bytes(entry.read_bytes()[:50])  # truncated by a crash of something else
    again = project_2d(x, "pca", cache_dir=tmp_path)
    assert np.array_equal(good, again)
    assert np.array_equal(np.load(entry), good)  # rewritten whole


def test_cache_hit_in_a_new_process(tmp_path):
    x = np.random.default_rng(7).normal(size=(800, 24)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    first = project_2d(x, "pca", cache_dir=tmp_path / "cache")
    script = textwrap.dedent(f"""
        import numpy as np
        from mminstruct.app import projection
        def boom(*a, **k):
            raise SystemExit("recomputed")
        projection.pca_2d = boom
        out = projection.project_2d(np.load({str(tmp_path / 'x.npy')!r}), "pca",
                                    cache_dir={str(tmp_path / 'cache')!r})
        np.save({str(tmp_path / 'out.npy')!r}, out)
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert np.array_equal(np.load(tmp_path / "out.npy"), first)


def test_fingerprint_reads_memmap_in_chunks_and_matches(tmp_path):
    x = np.random.default_rng(8).normal(size=(1000, 8)).astype(np.float16)
    np.save(tmp_path / "v.npy", x)
    mm = np.load(tmp_path / "v.npy", mmap_mode="r")
    assert vectors.array_fingerprint(mm, chunk_rows=33) == vectors.array_fingerprint(x)
    assert vectors.array_fingerprint(x) != vectors.array_fingerprint(x.astype(np.float32))


# ----------------------------------------------------------------------------------- validation

def test_unknown_method_lists_choices():
    with pytest.raises(ConfigError, match=r"unknown projection method 'tsne'; choose one of: umap, pca"):
        project_2d(np.zeros((10, 3), np.float32), "tsne")


def test_bad_shapes_and_values_are_named():
    with pytest.raises(InputError, match=r"shape \[N, D\].*\(5,\)"):
        project_2d(np.zeros(5, np.float32), "pca")
    x = np.ones((20, 4), np.float32)
    x[7, 2] = np.nan
    with pytest.raises(InputError, match="vector 7 holds NaN"):
        project_2d(x, "pca")
    with pytest.raises(ConfigError, match="n_neighbors"):
        project_2d(np.ones((20, 4), np.float32), "umap", umap_params=UmapParams(n_neighbors=1))


def test_too_few_points_for_umap_fall_back_to_pca():
    x = np.random.default_rng(9).normal(size=(6, 5)).astype(np.float32)
    np.testing.assert_allclose(project_2d(x, "umap"), projection.pca_2d(x))
    assert project_2d(np.zeros((0, 5), np.float32), "pca").shape == (0, 2)


def test_progress_reports_fractions_up_to_one():
    seen = []
    project_2d(np.random.default_rng(10).normal(size=(300, 6)), "pca",
               progress=lambda f, msg: seen.append((f, msg)))
    fracs = [f for f, _ in seen]
    assert fracs == sorted(fracs) and 0 <= fracs[0] and fracs[-1] == 1.0


# ------------------------------------------------------------------------------ display sample

def test_display_sample_deterministic_sorted_and_bounded():
    a = display_sample(1_000_000, 50_000, seed=3)
    b = display_sample(1_000_000, 50_000, seed=3)
    assert np.array_equal(a, b)
    assert len(a) == 50_000 and len(np.unique(a)) == 50_000
    assert np.all(np.diff(a) > 0) and a[0] >= 0 and a[-1] < 1_000_000
    assert not np.array_equal(a, display_sample(1_000_000, 50_000, seed=4))
    assert np.array_equal(display_sample(10, 50), np.arange(10))


def test_display_sample_keeps_the_points_it_must():
    always = np.arange(0, 2000, 2)  # e.g. the reference set
    s = display_sample(100_000, 5_000, seed=0, always=always)
    assert len(s) == 5_000 and np.isin(always, s).all()
    assert len(display_sample(100, 10, always=range(50))) == 10
    with pytest.raises(InputError, match="index 100"):
        display_sample(100, 10, always=[100])


# ------------------------------------------------------------------------------------------ UMAP

@pytest.mark.slow
def test_umap_keeps_clusters_apart_and_is_deterministic(blobs):
    x, labels = blobs
    a = project_2d(x, "umap", seed=11)
    assert a.shape == (600, 2) and a.dtype == np.float32 and np.isfinite(a).all()
    assert knn_purity(a, labels) >= 0.9
    b = project_2d(x, "umap", seed=11)
    assert np.array_equal(a, b)
    c = project_2d(x, "umap", seed=12)
    assert not np.array_equal(a, c)


@pytest.mark.slow
def test_umap_fits_a_sample_and_transforms_the_rest(monkeypatch):
    x, labels = clustered(900, 32, 4, seed=5)
    models = []
    real_model = projection._umap_model

    def spy(params, seed, knn):
        model = real_model(params, seed, knn)
        models.append(model)
        calls = []
        real_transform = model.transform
        model.transform = lambda rows: calls.append(len(rows)) or real_transform(rows)
        model.transform_calls = calls
        return model

    monkeypatch.setattr(projection, "_umap_model", spy)
    out = project_2d(x, "umap", seed=0, sample_size=300)
    (model,) = models
    assert model.embedding_.shape == (300, 2)  # fit on the sample only
    assert sum(model.transform_calls) == 600  # every other point placed by transform
    rng = np.random.default_rng(0)
    fit_idx = np.sort(rng.choice(900, size=300, replace=False))
    np.testing.assert_array_equal(out[fit_idx], model.embedding_)
    assert knn_purity(out, labels) >= 0.9  # transformed points land in their own cluster
    assert np.array_equal(out, project_2d(x, "umap", seed=0, sample_size=300))


@pytest.mark.slow
def test_umap_cache_roundtrip(tmp_path, blobs, monkeypatch):
    x, _ = blobs
    first = project_2d(x, "umap", seed=1, cache_dir=tmp_path)
    np.save(tmp_path / "x.npy", x)
    script = textwrap.dedent(f"""
        import sys, numpy as np
        from mminstruct.app import projection
        out = projection.project_2d(np.load({str(tmp_path / 'x.npy')!r}), "umap", seed=1,
                                    cache_dir={str(tmp_path)!r})
        assert "umap" not in sys.modules, "a cache hit imported umap"
        np.save({str(tmp_path / 'out.npy')!r}, out)
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert np.array_equal(np.load(tmp_path / "out.npy"), first)
    monkeypatch.setattr(projection, "umap_2d", lambda *a, **k: pytest.fail("recomputed"))
    assert np.array_equal(project_2d(x, "umap", seed=1, cache_dir=tmp_path), first)
    calls = []
    monkeypatch.setattr(projection, "umap_2d", lambda v, **k: calls.append(k) or np.zeros((len(v), 2)))
    project_2d(x, "umap", seed=1, cache_dir=tmp_path, umap_params=UmapParams(min_dist=0.5))
    assert len(calls) == 1
