"""The sidebar on every page: the workspace (open, create, recent ones), the background embedding
job's progress (images per second, ETA, pause, cancel), the CLIP model in use and the generation
endpoint's status."""

from __future__ import annotations

import hashlib

import streamlit as st

from mminstruct.errors import MMInstructError
from mminstruct.app.workspace import default_workspace_root, recent_workspaces
from mminstruct.llm.client import endpoint_label

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


def _history_box(ws) -> None:
    """The workspace's history: the last changes, Undo, Restore any entry (each an entry too)."""
    from mminstruct.app import history

    entries = history.entries(ws.root)
    note = st.session_state.pop("_history_note", None)
    with st.expander(f"History ({len(entries)} changes)", expanded=bool(note)):
        if not entries:
            st.caption("No change recorded yet.")
            return
        for e in reversed(entries[-12:]):
            st.caption(md_escape(f"#{e.id} · {e.time[11:16]} · {e.page or '-'} · "
                                 f"{'; '.join(e.changes)}", 300))
        if note:
            st.success(md_escape(note, 400))
        if len(entries) >= 2 and st.button(
                f"Undo: {md_escape('; '.join(entries[-1].changes), 80)}", key="hist_undo"):
            _restore(ws, None)
        ids = [e.id for e in reversed(entries)]
        pick = st.selectbox("Entry", ids, key="hist_pick",
                            format_func=lambda i: f"#{i}: " + "; ".join(
                                next(e for e in entries if e.id == i).changes)[:60])
        if st.button("Restore this entry", key="hist_restore"):
            _restore(ws, int(pick))
        st.caption("A restore is itself an entry: undo it the same way. From a shell: "
                   "`python -m mminstruct.app.history WORKSPACE`.")


def _restore(ws, entry_id: int | None) -> None:
    from mminstruct.app import history

    from .settings import forget_widgets

    try:
        new, notes = (history.undo(ws.root, page="Sidebar") if entry_id is None
                      else history.restore(ws.root, entry_id, page="Sidebar"))
    except MMInstructError as e:
        st.error(str(e))
        return
    forget_widgets()  # every field shows the restored settings
    st.session_state["_history_note"] = " ".join(
        [f"Restored entry {new.restores}." if new else "Already in that state."] + notes)
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
        _history_box(ws)
        if ws.has_data:
            _embed_job_box(ws)
        st.subheader("CLIP model")
        st.caption(md_escape(ws.settings.partition.clip_model, 200))
        st.subheader("Endpoint")
        ep = ws.settings.endpoint
        st.caption(md_escape(f"{endpoint_label(ep.base_url)} · model {ep.generator_model}", 200))
        key, source = api_key(ws)
        st.caption(md_escape(f"key: {source}", 120))
        # Checked by itself only when the user saved a base URL; the default (OpenAI) URL only
        # on a click. The key goes to that endpoint only (it is scoped to it: ui.state.api_key).
        asked = st.button("Check the endpoint", key="sb_check") if not ep.base_url else False
        if ep.base_url or asked:
            ok, message = _check(ep.base_url, hashlib.sha256((key or "").encode()).hexdigest(), key)
            (st.success if ok else st.warning)(md_escape(message, 300), icon=None)
        else:
            st.caption("Not checked: an endpoint without a saved base URL is contacted only when "
                       "you ask.")
