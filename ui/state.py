"""Session state shared by the pages: the current workspace, the in-memory embeddings, the key.

The workspace comes from the session (``st.session_state["ws_path"]``), else the URL
(``?ws=/path``), else ``$MMINSTRUCT_WORKSPACE``, else the most recent one. Embeddings are kept in
memory per process (like ``st.cache_resource``) under ``curation.embedding_key``, read from the
background embedding job's result (``mminstruct.app.embed``; vectors memory-mapped, one mapping per
file shared by every session); no page embeds in its own script run. The API key typed into the app lives only in
``st.session_state["_api_key"]`` with the workspace and base URL it was typed for (never in a
widget's value after submission, never on disk); it is dropped when either changes.
"""

from __future__ import annotations

import os
import threading
import weakref
from pathlib import Path
from collections import OrderedDict
from typing import Any

import streamlit as st

from mminstruct.errors import DamagedWorkspaceError, MMInstructError
from mminstruct.app.workspace import Workspace, recent_workspaces, remember_workspace
from ui import nav

WS_KEY = "ws_path"
KEY_SESSION = "_api_key"
ENV_WORKSPACE = "MMINSTRUCT_WORKSPACE"

_LOCK = threading.Lock()
_EMBEDDINGS: OrderedDict[str, Any] = OrderedDict()
_MAX_EMBEDDINGS = 3


def workspace_path() -> str | None:
    ss = st.session_state
    if ss.get(WS_KEY):
        return str(ss[WS_KEY])
    # a new session (a reload, a URL typed): every widget is seeded from the workspace it opens
    for candidate in (st.query_params.get("ws"), os.environ.get(ENV_WORKSPACE)):
        if candidate:
            ss[WS_KEY] = candidate
            try:
                remember_workspace(candidate)  # a reload (the URL may lose ?ws=) opens it again
            except OSError:
                pass
            return str(candidate)
    recent = recent_workspaces()
    if recent:
        ss[WS_KEY] = str(recent[0])
        return ss[WS_KEY]
    return None


def _switched() -> None:
    """Another workspace is now open: the typed key stays with the one left, and every bound
    widget is seeded again from the new one (never written back from the old one's state)."""
    from .settings import forget_widgets

    st.session_state.pop(KEY_SESSION, None)
    forget_widgets()


def open_workspace(path: str, create: bool = False) -> Workspace:
    ws = Workspace.open(path, create=create)
    remember_workspace(ws.root)
    if st.session_state.get(WS_KEY) != str(ws.root):
        _switched()
    st.session_state[WS_KEY] = str(ws.root)
    if st.query_params.get("ws"):
        st.query_params["ws"] = str(ws.root)  # a reload opens this one, not the one left
    return ws


def current_workspace() -> Workspace | None:
    path = workspace_path()
    if not path:
        return None
    try:
        ws = Workspace.open(path, create=True)
    except DamagedWorkspaceError as e:
        _offer_restore(e)
        return None
    except MMInstructError as e:
        st.error(f"Cannot open the workspace: {e}")
        st.session_state.pop(WS_KEY, None)
        return None
    ws.page = _page_title()
    return ws


def _page_title() -> str:
    """The page this run draws (for the history's entries): "Data", "Explore", …"""
    try:
        from streamlit.runtime.scriptrunner import get_script_run_ctx

        ctx = get_script_run_ctx()
        if ctx is None:
            return ""
        info = ctx.pages_manager.get_pages().get(ctx.pages_manager.current_page_script_hash)
        if info:
            name = str(info.get("page_name") or Path(str(info.get("script_path", ""))).stem)
            return name.split("_", 1)[-1].replace("_", " ").title() if name[:1].isdigit() \
                else name.replace("_", " ").title()
    except (AttributeError, ImportError, KeyError, TypeError):
        pass
    return ""


def _offer_restore(e: DamagedWorkspaceError) -> None:
    """A damaged ``workspace.json``: say so, and offer the last good history entry."""
    st.error(f"Cannot open the workspace: {e}")
    if e.last_good is None:
        return
    if st.button(f"Restore history entry {e.last_good} (the last good state)",
                 key="restore_damaged"):
        from mminstruct.app.history import restore

        restore(e.root, e.last_good, page="damaged workspace")
        st.rerun()


def require_workspace(need_data: bool = True) -> Workspace:
    """The current workspace, or a note and ``st.stop()``."""
    ws = current_workspace()
    if ws is None:
        st.info("No workspace is open. Open the demo on the Data page, or open or create a "
                "workspace folder in the sidebar.")
        st.page_link(nav.DATA, label="Go to the Data page")
        st.stop()
    if need_data and not ws.has_data:
        st.info("This workspace has no data yet. Open the demo or load a data file on the "
                "Data page.")
        st.page_link(nav.DATA, label="Go to the Data page")
        st.stop()
    return ws


# ----------------------------------------------------------------------------------------------
# Embeddings (in memory, per process)


def cached_embeddings(ws: Workspace) -> Any | None:
    from mminstruct.app.curation import embedding_key

    with _LOCK:
        return _EMBEDDINGS.get(embedding_key(ws))


class EmbeddingsPending(Exception):
    """The workspace's embeddings (or its map) are being computed by the background job."""


_REPORTED: set[str] = set()  # jobs whose "embedded now" figures a page has shown (per process)


def _remember(key: str, emb: Any) -> Any:
    with _LOCK:
        _EMBEDDINGS[key] = emb
        while len(_EMBEDDINGS) > _MAX_EMBEDDINGS:
            _EMBEDDINGS.popitem(last=False)
    return long_lived(emb)


def long_lived(obj: Any) -> Any:
    """Mark what was just loaded (a 150,000-record data file, a map's 210,000 paths: millions of
    Python objects) as long-lived: ``gc.freeze()`` moves every object tracked now out of the
    collector's generations, so a full collection (Python's own, or Streamlit's after a script
    run) no longer walks them — it took 1–10 s per rerun at that size. Reference counting still
    frees them when they are dropped; ``forget_embeddings`` unfreezes (a workspace change)."""
    import gc

    try:
        if obj in _FROZEN:
            return obj  # frozen when it was loaded (every rerun hands back the same object)
        _FROZEN.add(obj)
    except TypeError:  # not weak-referenceable: freeze anyway
        pass
    gc.collect(1)  # this run's young garbage is not frozen with it
    gc.freeze()
    return obj


_FROZEN: "weakref.WeakSet[Any]" = weakref.WeakSet()


def get_embeddings(ws: Workspace, need_projection: bool = False, _again: bool = False) -> Any:
    """The workspace's embeddings: from memory, else the background job's result on disk
    (memory-mapped vectors, ``curation.load_embeddings``). Nothing is embedded in this script
    run: when the result (or, with ``need_projection``, the map) is missing, the job is started
    (``mminstruct.app.embed``) and ``EmbeddingsPending`` raised; a failed or cancelled job for
    these settings is not restarted by itself (``EmbeddingsPending`` with its status)."""
    from mminstruct.app.curation import embedding_key, load_embeddings, projection_ready
    from mminstruct.app.embed import JobRunning, job_status, start_job
    from mminstruct.app.demo import demo_pool_progress

    key = embedding_key(ws)
    with _LOCK:
        emb = _EMBEDDINGS.get(key)
    if emb is None and demo_pool_progress(ws) is None:  # the demo's pool is complete
        emb = load_embeddings(ws, key=key)
        if emb is not None:
            if emb.job_token in _REPORTED or not emb.job_token:
                emb.n_cached, emb.n_computed = emb.n, 0  # read from the cache, not embedded now
            _REPORTED.add(emb.job_token)
            _remember(key, emb)
    if emb is not None and (not need_projection or projection_ready(ws, emb)):
        return emb
    status = job_status(ws)
    ended_here = status.key == key and status.state in ("failed", "cancelled")
    if status.alive or (ended_here and not st.session_state.get(_RETRY_KEY)):
        raise EmbeddingsPending(status)
    st.session_state.pop(_RETRY_KEY, None)
    if demo_pool_progress(ws) is not None:
        raise EmbeddingsPending(status)  # the demo's candidate charts are still being drawn
    try:
        status = start_job(ws)
    except JobRunning:
        status = job_status(ws)
    if status.state == "finished" and status.key == key and not _again:  # it ran to its end
        return get_embeddings(ws, need_projection, _again=True)
    raise EmbeddingsPending(status)


_RETRY_KEY = "_embed_retry"


def embeddings_or_stop(ws: Workspace, need_projection: bool = False) -> Any:
    """The workspace's embeddings, or what the background job is doing (or why it failed) and
    the end of this page's run; the sidebar shows the job's progress and reruns the page when it
    ends."""
    from mminstruct.app.curation import embedding_key
    from mminstruct.app.demo import demo_pool_progress

    from .safe import for_browser

    try:
        return get_embeddings(ws, need_projection)
    except MMInstructError as e:
        st.error(f"Cannot embed this workspace's images: {for_browser(e)}")
        st.stop()
    except EmbeddingsPending as pending:
        status = pending.args[0]
    if status.key == embedding_key(ws) and status.state == "failed":
        st.error(f"Cannot embed this workspace's images: {for_browser(status.message)}")
        if status.cause.strip() and status.cause not in status.message:
            with st.expander("The whole error"):  # (the message above may quote a shortened one)
                st.code(status.cause, language=None, wrap_lines=True)
        if st.button("Try again", key="embed_retry"):
            st.session_state[_RETRY_KEY] = True
            st.rerun()
    elif status.key == embedding_key(ws) and status.state == "cancelled":
        st.info("The embedding job was cancelled; the images it embedded are kept in the cache.")
        if st.button("Embed the rest", key="embed_retry", type="primary"):
            st.session_state[_RETRY_KEY] = True
            st.rerun()
    elif demo_pool_progress(ws) is not None:
        st.info("The demo's candidate charts are still being drawn; embedding starts when they "
                "are done.")
        _poll_until(lambda: demo_pool_progress(ws) is None)
    else:
        if status.alive and status.key and status.key != embedding_key(ws):
            st.info("An embedding job for earlier settings (another model or data file) is still "
                    "running; these settings are embedded when it ends (or cancel it in the "
                    "sidebar).")
        else:
            st.info("Embedding runs in the background (progress in the sidebar); this page "
                    "opens when it is done. Other pages stay usable meanwhile.")
        # The sidebar was drawn before this run started the job, so it holds no live progress
        # yet: this page reruns by itself when the job ends (or the sidebar's next run takes over).
        _poll_until(lambda: not _job_alive(ws))
    st.stop()


def _job_alive(ws: Workspace) -> bool:
    from mminstruct.app.embed import job_status

    return job_status(ws).alive


@st.fragment(run_every=1.0)
def _poll(done: Any) -> None:
    if done():
        st.rerun()


def _poll_until(done: Any) -> None:
    _poll(done)


def forget_embeddings() -> None:
    """Drop the in-memory embeddings and their memory maps (a workspace change gives the memory
    back; the next page reads the job's result from disk again)."""
    import gc

    from mminstruct.embed.vectors import forget_memmaps

    with _LOCK:
        _EMBEDDINGS.clear()
    forget_memmaps()
    gc.unfreeze()  # what ``long_lived`` froze is collectable again
    gc.collect()


# ----------------------------------------------------------------------------------------------
# The API key


def api_key(ws: Workspace, for_base_url: str | None = None) -> tuple[str | None, str]:
    """(key, where it came from): the environment, ``st.secrets``, or this session. A key typed
    in this session belongs to the workspace and base URL it was typed for: once either changes
    it is dropped, never sent elsewhere. ``for_base_url``: the endpoint the key would go to when
    it is not the workspace's current one (a run started earlier): a typed key is not offered."""
    var = ws.settings.endpoint.api_key_env or "OPENAI_API_KEY"
    if os.environ.get(var):
        return os.environ[var], f"environment variable ${var}"
    try:
        secret = st.secrets.get(var)
    except FileNotFoundError:  # no secrets.toml (StreamlitSecretNotFoundError), or a bad one
        secret = None
    if secret:
        return str(secret), f"st.secrets[{var!r}]"
    typed = typed_key(ws)
    if typed and for_base_url is not None and for_base_url.strip() != _scope(ws)[1]:
        return None, "none (the key typed here is for another base URL)"
    if typed:
        return typed, "typed in this session for this base URL (kept in memory only)"
    return None, "none"


def _scope(ws: Workspace) -> tuple[str, str]:
    return (str(ws.root), ws.settings.endpoint.base_url.strip())


def set_typed_key(ws: Workspace, key: str) -> None:
    """Keep ``key`` in this session for this workspace's current base URL only."""
    st.session_state[KEY_SESSION] = {"key": key, "scope": _scope(ws)}


def typed_key(ws: Workspace) -> str | None:
    """The key typed for this workspace and base URL; a key typed for another one is dropped."""
    slot = st.session_state.get(KEY_SESSION)
    if not isinstance(slot, dict):
        st.session_state.pop(KEY_SESSION, None)
        return None
    if tuple(slot.get("scope", ())) != _scope(ws):
        st.session_state.pop(KEY_SESSION, None)
        return None
    return str(slot["key"])


def forget_typed_key() -> None:
    st.session_state.pop(KEY_SESSION, None)


RUN_PICK, RUN_SELECT = "run_pick", "run_select"  # the Generate page's run, its selectbox


def show_run(name: str) -> None:
    """The Generate page shows run ``name`` next (a run just started): its choice of run, which
    otherwise keeps the run it showed before, is dropped and drawn again from ``RUN_PICK``."""
    st.session_state[RUN_PICK] = name
    st.session_state.pop(RUN_SELECT, None)


NAV_FLAG = "_nav_ok"
GOTO = "_goto"


def through_app(page: str) -> None:
    """Pages run only inside app.py's navigation (its sidebar, its session setup). Streamlit also
    serves files under ``pages/`` by their own URLs (``/explore`` in a fresh session runs the file
    alone); such a run goes through app.py first, which then opens ``page``."""
    if st.session_state.get(NAV_FLAG):
        return
    from streamlit.errors import StreamlitAPIException

    st.session_state[GOTO] = page
    try:
        st.switch_page(nav.MAIN)
    except StreamlitAPIException:
        # app.py's navigation is in place already (a page link clicked before the session's first
        # run had finished): app.py is not one of its pages, so run app.py again, on this page
        st.session_state.pop(GOTO, None)
        st.rerun()


def session_memo(name: str, key: Any, compute: Any) -> Any:
    """``compute()``'s value, kept in the session under ``name`` while ``key`` is unchanged (for
    work a rerun would otherwise repeat: a 150,000-prompt plan, an estimate over 2,000 prompts)."""
    slot = st.session_state.get(f"_memo:{name}")
    if slot is not None and slot[0] == key:
        return slot[1]
    value = compute()
    st.session_state[f"_memo:{name}"] = (key, value)
    return value
