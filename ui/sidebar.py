"""The sidebar on every page: the workspace (open, create, recent ones), the background embedding
job's progress (images per second, ETA, pause, cancel), the CLIP model in use and the generation
endpoint's status."""

from __future__ import annotations

import hashlib

import streamlit as st

from mminstruct.errors import MMInstructError
from mminstruct.app.workspace import default_workspace_root, recent_workspaces

from .safe import md_escape
from .state import WS_KEY, api_key, current_workspace, forget_embeddings, open_workspace


@st.cache_data(ttl=30, show_spinner=False)
def _check(base_url: str, key_hash: str, _key: str | None) -> tuple[bool, str]:
    from mminstruct.app.runs import check_endpoint

    res = check_endpoint(base_url or None, _key)
    return res.ok, res.message


def _workspace_box() -> None:
    ws = current_workspace()
    st.subheader("Workspace")
    if ws is not None:
        st.caption(md_escape(str(ws.root), 200))
    recent = [str(p) for p in recent_workspaces()]
    if ws is not None and str(ws.root) in recent:
        recent.remove(str(ws.root))
    if recent:
        choice = st.selectbox("Recent workspaces", ["—"] + recent, key="sb_recent")
        if choice != "—" and st.button("Open", key="sb_open_recent"):
            _switch(choice, create=False)
    with st.expander("Open or create a workspace"):
        default = str(default_workspace_root() / "my-project")
        path = st.text_input("Folder", value=default, key="sb_new_path")
        if st.button("Open / create", key="sb_create"):
            _switch(path, create=True)


def _switch(path: str, create: bool) -> None:
    try:
        open_workspace(path, create=create)
    except MMInstructError as e:
        st.error(str(e))
        return
    forget_embeddings()
    st.session_state.pop("explore_sel", None)
    st.rerun()


def _embed_job_box(ws) -> None:
    from mminstruct.app.embed import job_status, start_job

    status = job_status(ws)
    if status.alive:
        st.subheader("Embedding")
        _live_job(str(ws.root))
    elif status.state == "interrupted":
        st.subheader("Embedding")
        st.caption(md_escape(status.message, 300))
        if st.button("Resume the embedding", key="sb_embed_resume"):
            try:
                start_job(ws)
            except MMInstructError as e:
                st.error(md_escape(str(e), 300))
            else:
                st.rerun()


@st.fragment(run_every=1.0)
def _live_job(root: str) -> None:
    """The running job's progress, refreshed every second by itself (only while a job runs);
    when the job ends the whole page reruns, so a page waiting for it opens."""
    from mminstruct.app.embed import cancel_job, job_status, pause_job
    from mminstruct.app.workspace import Workspace

    ws = Workspace.open(root)
    status = job_status(ws)
    if not status.alive:
        st.rerun()
    st.progress(status.fraction, text=md_escape(status.label(), 200))
    left, right = st.columns(2)
    if status.state == "paused":
        if left.button("Continue", key="sb_embed_continue"):
            pause_job(ws, False)
    elif status.state == "embedding" and left.button("Pause", key="sb_embed_pause"):
        pause_job(ws)
    if status.state != "cancelling" and right.button("Cancel", key="sb_embed_cancel"):
        cancel_job(ws)
        st.rerun()


def sidebar() -> None:
    with st.sidebar:
        _workspace_box()
        ws = current_workspace() if st.session_state.get(WS_KEY) else None
        if ws is None:
            return
        if ws.has_data:
            _embed_job_box(ws)
        st.subheader("CLIP model")
        st.caption(md_escape(ws.settings.partition.model_name, 200))
        st.subheader("Endpoint")
        ep = ws.settings.endpoint
        st.caption(md_escape(f"{ep.base_url or 'OpenAI (default URL)'} · model {ep.model_name}", 200))
        key, source = api_key(ws)
        st.caption(md_escape(f"key: {source}", 120))
        # Checked by itself only when the user saved a base URL; the default (OpenAI) URL only
        # on a click. The key goes to that endpoint only (it is scoped to it: ui.state.api_key).
        asked = st.button("Check the endpoint", key="sb_check") if not ep.base_url else False
        if ep.base_url or asked:
            ok, message = _check(ep.base_url, hashlib.sha256((key or "").encode()).hexdigest(), key)
            (st.success if ok else st.warning)(md_escape(message, 300), icon=None)
        else:
            st.caption("Not checked: the default OpenAI URL is contacted only when you ask.")
