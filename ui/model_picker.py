"""The CLIP model as a setting (Data and Explore pages): a field for the spec, the checkpoints found
on this machine as choices, and the check before any embedding (``mminstruct.app.model_choice``)."""

from __future__ import annotations

from typing import Any

import streamlit as st

from mminstruct.errors import MMInstructError
from mminstruct.app.workspace import Workspace

from .safe import md_escape
from .settings import bind, show_error

FOUND_TTL = 60.0


@st.cache_data(ttl=FOUND_TTL, show_spinner=False)
def _found() -> list[tuple[str, str]]:
    from mminstruct.app.model_choice import found_checkpoints

    return found_checkpoints()


def _choose(root: str, pick_key: str) -> None:
    """The callback of the "found on this machine" list: the chosen spec becomes the setting."""
    from mminstruct.app.model_choice import set_clip_model

    spec = st.session_state.get(pick_key)
    if not spec:
        return
    try:
        ws = Workspace.open(root)
        set_clip_model(ws, spec, remember_any=True)
        ws.save()
    except MMInstructError as e:
        st.session_state[f"{pick_key}:err"] = f"Not saved: {e}"
        return
    st.session_state.pop(f"{pick_key}:err", None)
    st.session_state[pick_key] = None


def models_asked(key: str) -> bool:
    """Whether this session asked the picker ``key`` for the models found on this machine."""
    return bool(st.session_state.get(f"{key}:show"))


def model_picker(ws: Workspace, key: str, *, find_now: bool = True) -> None:
    """The spec field (bound to ``partition.clip_model`` as ``key``; checked when edited) and the
    models found on this machine as choices (with ``find_now`` False, after a click: finding
    them imports open_clip, which the first page does not)."""
    st.text_input("CLIP model (ARCH:TAG, ARCH:/path/to/checkpoint.pt, CONFIG.json:/path/to/"
                  "checkpoint.pt, hf-hub:ORG/NAME, or demo-charts)", **bind(ws, key))
    show_error(key)
    if not (find_now or models_asked(key)):
        if st.button("Find models on this machine", key=f"{key}:find"):
            st.session_state[f"{key}:show"] = True
            st.rerun()
        return
    found = _found()
    pick_key = f"{key}:found"
    if found:
        labels = dict(found)
        st.selectbox("Or choose a model found on this machine", list(labels), index=None,
                     format_func=lambda s: labels.get(s, s), key=pick_key,
                     placeholder=f"{len(found)} found (open_clip and Hugging Face caches, "
                                 "recently used)",
                     on_change=_choose, args=(str(ws.root), pick_key))
        err = st.session_state.get(f"{pick_key}:err")
        if err:
            st.error(err)
    else:
        st.caption("No checkpoint found in open_clip's or Hugging Face's cache on this machine.")


def model_ready(ws: Workspace) -> Any:
    """The model's check before embedding; an error box (the whole message) and a stop when the
    spec is bad or its weights cannot be had. Remembered per spec for this session."""
    from mminstruct.app.model_choice import ready_to_load, remember_model

    spec = ws.settings.partition.clip_model
    slot = st.session_state.get("_model_ready")
    if slot is not None and slot[0] == spec:
        return slot[1]
    try:
        mc = ready_to_load(spec)
    except MMInstructError as e:
        st.error(md_escape(str(e), None))  # the message names the model ("CLIP model 'x' …")
        st.stop()
    if mc.kind == "checkpoint":
        remember_model(mc.spec)
    st.session_state["_model_ready"] = (spec, mc)
    return mc


def model_download_warning(ws: Workspace) -> None:
    """The Data page: the same check Explore makes before embedding (weights that must be
    downloaded on a machine that cannot), said as a warning where the model is chosen.
    Remembered per spec for this session (the check may probe the network for a few seconds)."""
    from mminstruct.app.model_choice import ready_to_load
    from mminstruct.embed.clip import DEMO_MODEL

    spec = ws.settings.partition.clip_model
    if spec.strip() == DEMO_MODEL:  # shipped with the package (and checking it loads torch)
        return
    slot = st.session_state.get("_model_download")
    if slot is None or slot[0] != spec:
        try:
            ready_to_load(spec)
            problem = ""
        except MMInstructError as e:
            problem = str(e)
        slot = (spec, problem)
        st.session_state["_model_download"] = slot
    if slot[1]:
        st.warning(md_escape(slot[1], None))
