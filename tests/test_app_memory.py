"""The app's partition at the size of real sets without a float32 copy of the vectors: the scores
come from the float16 vectors in row chunks (the command line's own ``similarity_matrix``), are
memoised per keyword set, and give the command line's partition; the partition itself is memoised
per inputs; a workspace whose keywords are cached does not import torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from mminstruct.app import curation
from mminstruct.app.curation import Embeddings, ImageSet, curate, keyword_scores
from mminstruct.app.workspace import Workspace
from mminstruct.partition.assign import assign_keywords
from tests.fixtures.app import REPO


def _unit(n: int, d: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture
def big(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(curation, "_SCORES", type(curation._SCORES)())
    monkeypatch.setattr(curation, "_CURATIONS", type(curation._CURATIONS)())
    n_ref, n_cand, d = 30_000, 10_000, 512
    vec = _unit(n_ref + n_cand, d, 0).astype(np.float16)
    ref = ImageSet("reference", [f"r{i}.png" for i in range(n_ref)], [], vec[:n_ref],
                   list(range(n_ref)))
    cand = ImageSet("candidate", [f"c{i}.png" for i in range(n_cand)], [], vec[n_ref:])
    emb = Embeddings("m", None, tmp_path, ref, cand, [], fingerprint="f" * 64)
    ws = Workspace.open(tmp_path / "ws", create=True)
    ws.settings.partition.keywords = ["a", "b", "c", "d"]
    return ws, emb, _unit(4, d, 1)


def test_the_partition_is_the_command_lines_and_keeps_no_float32_copy(big) -> None:
    ws, emb, kw = big
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    cur = curate(ws, emb, kw)
    grown = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    f32_copy = emb.n * 512 * 4  # 82 MB: what a kept float32 copy of the set would hold
    assert grown < f32_copy / 8, f"curate kept {grown / 1e6:.1f} MB"
    cli = assign_keywords(emb.reference.vectors, kw, None, ws.settings.partition.keywords)
    assert np.array_equal(cur.reference.partition.assignment, cli.assignment)
    assert np.array_equal(cur.reference.partition.scores, cli.scores)


def test_scores_and_partition_are_memoised_per_inputs(big, monkeypatch: pytest.MonkeyPatch) -> None:
    ws, emb, kw = big
    calls: list[int] = []
    real = curation.similarity_matrix
    monkeypatch.setattr(curation, "similarity_matrix",
                        lambda v, k: (calls.append(len(v)), real(v, k))[1])
    first = curate(ws, emb, kw)
    assert calls == [30_000, 10_000]
    assert curate(ws, emb, kw) is first  # a rerun: nothing recomputed
    assert calls == [30_000, 10_000]
    ws.settings.partition.min_similarity = 0.05  # the scores are reused, the partition is not
    other = curate(ws, emb, kw)
    assert other is not first and calls == [30_000, 10_000]
    assert (other.reference.group == -1).sum() > 0
    ws.settings.partition.excluded_reference = [3]
    assert curate(ws, emb, kw).reference.group[3] == curation.EXCLUDED
    assert calls == [30_000, 10_000]
    kw2 = kw.copy()
    kw2[0] = _unit(1, 512, 7)[0]  # an edited keyword: new scores, once
    curate(ws, emb, kw2)
    curate(ws, emb, kw2)
    assert calls == [30_000, 10_000, 30_000, 10_000]
    assert not keyword_scores(emb.reference, kw, emb.fingerprint).flags.writeable


PROBE = """
import json, sys
from mminstruct.app.workspace import Workspace
from mminstruct.app.curation import keyword_vectors
ws = Workspace.open(sys.argv[1])
v = keyword_vectors(ws, ws.settings.partition.keywords)
print(json.dumps({"shape": list(v.shape), "torch": "torch" in sys.modules}))
"""


@pytest.mark.slow
def test_cached_keywords_load_no_torch(demo_ws: Workspace, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "model_cache"
    monkeypatch.setenv("MMINSTRUCT_CACHE_DIR", str(cache))
    from mminstruct.embed import clip

    monkeypatch.setattr(clip, "_SPEC_MEMO", {})
    want = curation.keyword_vectors(demo_ws, demo_ws.settings.partition.keywords)  # cached now
    env = dict(os.environ, MMINSTRUCT_CACHE_DIR=str(cache), PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-c", PROBE, str(demo_ws.root)], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out == {"shape": list(want.shape), "torch": False}


WORKER_PROBE = """
import json, sys
import numpy as np
from mminstruct.app import text_encoder
from mminstruct.embed.clip import texts_cached
spec, cache = sys.argv[1], sys.argv[2]
v = text_encoder.text_vectors(["a chart of rainfall"], spec, cache=cache)
k = text_encoder.keyword_vectors(["bar chart", "map"], spec, templates=["a photo of a {}"],
                                 cache=cache)
torch = "torch" in sys.modules
after = texts_cached(["a chart of rainfall"], spec, cache=cache)
text_encoder.shutdown()
np.save(sys.argv[3], np.concatenate([v, k]))
print(json.dumps({"torch": torch or "torch" in sys.modules, "after": after}))
"""


@pytest.mark.slow
def test_text_vectors_come_from_a_worker_process_and_equal_the_in_process_ones(
        tiny_clip, tmp_path: Path) -> None:
    from mminstruct.embed.clip import embed_keywords, embed_texts

    env = dict(os.environ, MMINSTRUCT_CACHE_DIR=str(tmp_path / "models"), PYTHONPATH=str(REPO))
    out = tmp_path / "v.npy"
    done = subprocess.run([sys.executable, "-c", WORKER_PROBE, tiny_clip.spec,
                           str(tmp_path / "cache"), str(out)],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    # the spec never parsed on this machine (a fresh cache): parsed by the worker too
    assert got == {"torch": False, "after": True}
    want = np.concatenate([
        embed_texts(["a chart of rainfall"], tiny_clip.spec, cache=tmp_path / "own"),
        embed_keywords(["bar chart", "map"], tiny_clip.spec, templates=["a photo of a {}"],
                       cache=tmp_path / "own")])
    assert np.array_equal(np.load(out), want)


@pytest.mark.slow
def test_warm_loads_the_model_in_the_text_worker_once_ahead_of_the_first_search(
        tiny_clip, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``text_encoder.warm``: the worker started and the model loaded without waiting, once per
    spec and cache while the worker lives; off with ``MMINSTRUCT_TEXT_WARMUP=0`` (as in the rest
    of the tests) and for a spec never parsed here; the search after it gives the vectors the
    in-process encoder gives."""
    from mminstruct.app import text_encoder
    from mminstruct.embed.clip import embed_texts, loaded_models, parse_model_spec

    assert os.environ[text_encoder.WARMUP_ENV] == "0"  # conftest: page tests start no worker
    monkeypatch.setenv("MMINSTRUCT_CACHE_DIR", str(tmp_path / "models"))
    cache = tmp_path / "cache"
    text_encoder.shutdown()
    parse_model_spec(tiny_clip.spec)  # memoised: as after the page's own parse
    try:
        assert text_encoder.warm(tiny_clip.spec, cache=cache) is None
        assert text_encoder._POOL is None  # nothing started
        monkeypatch.setenv(text_encoder.WARMUP_ENV, "1")
        assert text_encoder.warm("never-parsed-here.json:nothing.pt", cache=cache) is None
        assert text_encoder._POOL is None
        future = text_encoder.warm(tiny_clip.spec, cache=cache)
        assert future is not None
        identity = future.result(timeout=600)
        assert text_encoder.warm(tiny_clip.spec, cache=cache) is None  # once
        assert text_encoder._in_worker(loaded_models) == [identity]  # the worker's models
        # the worker yields the CPU to the server and the browser
        assert text_encoder._in_worker(os.nice, 0) == min(os.nice(0) + text_encoder.WORKER_NICE, 19)
        got = text_encoder.text_vectors(["a chart of rainfall"], tiny_clip.spec, cache=cache)
        want = embed_texts(["a chart of rainfall"], tiny_clip.spec, cache=tmp_path / "own")
        assert np.array_equal(got, want)
        text_encoder.shutdown()  # a new worker holds nothing: warmed again
        again = text_encoder.warm(tiny_clip.spec, cache=cache)
        assert again is not None and again.result(timeout=600) == identity
    finally:
        text_encoder.shutdown()


def test_the_text_worker_does_not_run_the_servers_script_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Streamlit runs the app as the module ``__main__`` (its file as ``__file__``), and a page
    starts the text worker: multiprocessing's spawn would run that script again in the worker
    as it starts. The worker starts with nothing of the parent's script run, and the parent's
    ``__main__`` is left as it was."""
    import types

    from mminstruct.app import text_encoder

    marker = tmp_path / "ran"
    script = tmp_path / "app_page.py"
    script.write_text(f"open({str(marker)!r}, 'a').write('ran')\n")
    page = types.ModuleType("__main__")
    page.__file__ = str(script)
    monkeypatch.setitem(sys.modules, "__main__", page)
    text_encoder.shutdown()
    try:
        assert text_encoder._in_worker(os.getpid) != os.getpid()  # a worker process answered
        assert sys.modules["__main__"] is page
    finally:
        text_encoder.shutdown()
    assert not marker.exists()


def test_explore_warms_the_text_model_once_its_map_is_drawn(demo_ws: Workspace,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from mminstruct.app import text_encoder
    from tests.fixtures.app import app_test, no_errors

    calls: list = []
    monkeypatch.setattr(text_encoder, "warm", lambda spec, *, cache: calls.append((spec, cache)))
    at = app_test(demo_ws).run()
    at.switch_page("pages/3_partition.py").run()
    assert calls == []  # not on other pages
    at.switch_page("pages/2_explore.py").run()
    no_errors(at)
    assert at.get("plotly_chart") and calls == [(demo_ws.settings.partition.clip_model,
                                                  demo_ws.cache_dir)]
