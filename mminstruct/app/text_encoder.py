"""CLIP text vectors for the app's server without torch in it.

``keyword_vectors(...)`` and ``text_vectors(...)`` return what ``clip.embed_keywords`` /
``clip.embed_texts`` return. When every text is in the workspace's cache they are read in this
process (no model, no torch). Otherwise the texts are encoded by one worker process per server
(``concurrent.futures.ProcessPoolExecutor``, spawned, started on first use and kept): it loads
open_clip, torch and the text model once and writes the vectors to the same cache, so the
Streamlit server itself never holds torch (about 700 MB resident) — a text search over a
210,000-image map keeps the server under 1 GB. ``parse_spec(spec)``: a model spec parsed the same way (from the memo of specs parsed before, else
by the worker). ``warm(spec, cache=...)`` starts the worker and loads the model in it without
waiting (Explore calls it once its map is drawn), so that the first new text a person searches
for costs an encode, not an import of torch and a model load (6.7 s on 2 cores);
``MMINSTRUCT_TEXT_WARMUP=0`` turns that off. ``shutdown()`` stops the worker (tests, a server's
exit). The numbers are the in-process ones: the worker runs the same function on the same cache.
"""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import numpy as np

from mminstruct.embed.clip import (ModelSpec, cache_folder, embed_keywords, embed_texts,
                                   keyword_texts, load_clip, memoised_spec, parse_model_spec,
                                   texts_cached)
from mminstruct.errors import ModelSpecError

_LOCK = threading.Lock()
_POOL: ProcessPoolExecutor | None = None
_WARMED: set[tuple[str, str]] = set()  # (spec, cache) loaded in (or being loaded by) the worker
DEVICE = 0  # GPU 0 where there is one (resolved in the worker), else the CPU
#: Set to ``0`` to not start the worker ahead of the first new text (``warm``).
WARMUP_ENV = "MMINSTRUCT_TEXT_WARMUP"


class _WorkerProcess(multiprocessing.context.SpawnProcess):
    """A spawned process that does not run the parent's main script again as it starts.

    multiprocessing's spawn re-imports the parent's ``__main__`` from its file in the child. In a
    Streamlit server, ``__main__`` is the script being run (Streamlit swaps it in for each run):
    the worker started from a page would run ``app.py`` (its imports, its sidebar) before
    loading a model. The process is launched with a bare ``__main__`` in its place, which names
    no file to re-import; the functions sent to the worker live in importable modules."""

    @staticmethod
    def _Popen(process_obj: Any) -> Any:
        import sys
        import types

        main = sys.modules.get("__main__")
        sys.modules["__main__"] = types.ModuleType("__main__")
        try:
            return multiprocessing.context.SpawnProcess._Popen(process_obj)
        finally:
            if main is None:
                sys.modules.pop("__main__", None)
            else:
                sys.modules["__main__"] = main


class _WorkerContext(multiprocessing.context.SpawnContext):
    Process = _WorkerProcess


def _pool() -> ProcessPoolExecutor:
    global _POOL
    with _LOCK:
        if _POOL is None:
            _POOL = ProcessPoolExecutor(max_workers=1, initializer=_lower_priority,
                                        mp_context=_WorkerContext())
        return _POOL


#: The worker's ``nice`` increment: its model load (started ahead by ``warm``) takes the CPU the
#: server and the browser leave; a search waited for gets it all the same (they are idle then).
WORKER_NICE = 10


def _lower_priority() -> None:
    """Runs in the worker as it starts."""
    import os

    try:
        os.nice(WORKER_NICE)
    except OSError:  # not allowed here: the default priority
        pass


def shutdown() -> None:
    """Stop the worker (the next call starts a new one)."""
    global _POOL
    with _LOCK:
        pool, _POOL = _POOL, None
        _WARMED.clear()
    if pool is not None:
        pool.shutdown(wait=True, cancel_futures=True)


def _with_environment(env: dict[str, str], fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Runs in the worker: ``fn`` under the caller's environment as it is now (the cache folder,
    offline switches), not as it was when the worker started."""
    import os

    if dict(os.environ) != env:
        os.environ.clear()
        os.environ.update(env)
    return fn(*args, **kwargs)


def _in_worker(fn: Any, *args: Any, **kwargs: Any) -> Any:
    import os

    try:
        return _pool().submit(_with_environment, dict(os.environ), fn, *args, **kwargs).result()
    except BrokenProcessPool as e:  # the worker died (killed, out of memory): a new one next time
        shutdown()
        raise ModelSpecError(f"the text encoder's worker process stopped ({e}); try again") from e


def _load_model(spec: str, cache: Any) -> str:
    """Runs in the worker: the model loaded into ``clip.load_clip``'s cache (what
    ``embed_texts`` loads on a miss); returns its identity."""
    ms = parse_model_spec(spec)
    store = cache_folder(cache)
    load_clip(ms, DEVICE, cache_dir=store)
    return ms.identity(store)


def warm(spec: str, *, cache: Any) -> Future[str] | None:
    """Start the worker and load the model of ``spec`` in it, without waiting: the load runs
    while the person looks at the map. Once per spec and cache while the worker lives. Returns
    the load's future, or None (already warm or warming, ``MMINSTRUCT_TEXT_WARMUP=0``, or a spec
    that was never parsed here: the first real call parses and loads it). A failed load is not
    raised here: the first real call raises it, message and all."""
    import os

    if os.environ.get(WARMUP_ENV, "1").strip() == "0" or memoised_spec(spec) is None:
        return None
    key = (spec, str(cache_folder(cache)))
    with _LOCK:
        if key in _WARMED:
            return None
        _WARMED.add(key)
    future = _pool().submit(_with_environment, dict(os.environ), _load_model, spec, cache)
    future.add_done_callback(lambda f: f.cancelled() or f.exception())  # not logged as unretrieved
    return future


def parse_spec(spec: str) -> ModelSpec:
    """``clip.parse_model_spec(spec)`` without open_clip in this process: from the memo of specs
    parsed before, else parsed by the worker (which writes the memo; a bad spec raises its
    ``ModelSpecError`` here, message and all)."""
    hit = memoised_spec(spec)
    if hit is not None:
        return hit
    if not isinstance(spec, str) or not spec.strip():
        return parse_model_spec(spec)  # the empty-spec message; nothing to import
    parsed = _in_worker(parse_model_spec, spec)
    return memoised_spec(spec) or parsed  # the memo unwritable: the worker's answer


def text_vectors(texts: Sequence[str], model: str, *, cache: Any) -> np.ndarray:
    """``clip.embed_texts(texts, model, cache=cache)``, in the worker unless all are cached."""
    parse_spec(model)  # a bad spec: its message, here
    if texts_cached(texts, model, cache=cache):
        return embed_texts(texts, model, cache=cache, device=DEVICE)
    return _in_worker(embed_texts, list(texts), model, cache=cache, device=DEVICE)


def keyword_vectors(keywords: Sequence[str], model: str, *, templates: Sequence[str] | None,
                    cache: Any) -> np.ndarray:
    """``clip.embed_keywords(...)``, in the worker unless all are cached."""
    parse_spec(model)
    if texts_cached(keyword_texts(keywords, templates), model, cache=cache):
        return embed_keywords(keywords, model, templates=templates, cache=cache, device=DEVICE)
    return _in_worker(embed_keywords, list(keywords), model, templates=templates, cache=cache,
                      device=DEVICE)
