"""A selection's own subgroup and "more like these", under the galleries of Explore and Partition.

* ``new_subgroup_form(ws, emb, rows, key)``: name the ticked images as a subgroup of their own
  (manual membership, kept across keyword edits, written to the task file under that name).
* ``more_like_these_panel(ws, emb, rows, key)``: the K candidates nearest the ticked images (by
  nearest member or by centroid; the cached faiss index for large pools), previewed in a gallery,
  added to a subgroup with one click; a fragment (its own clicks rerun it alone).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import streamlit as st

from mminstruct.errors import MMInstructError
from mminstruct.app.neighbours import member_positions, more_like_these, pool_index
from mminstruct.app.subgroups import subgroup_from_selection

from .gallery import Item, gallery
from .safe import md_escape


def new_subgroup_form(ws: Any, emb: Any, rows: list[int], key: str) -> bool:
    """Returns True when a subgroup was made (the workspace is saved)."""
    if not rows:
        return False
    with st.form(f"{key}:form", clear_on_submit=True):
        name = st.text_input(f"Name a new subgroup of these {len(rows)} image(s)",
                             key=f"{key}:name", placeholder="e.g. charts with a dark theme")
        go = st.form_submit_button("New subgroup from these")
    if not go:
        return False
    try:
        made = subgroup_from_selection(ws, emb, rows, name)
        ws.save()
    except MMInstructError as e:
        st.error(str(e))
        return False
    st.session_state["_toast"] = f"Subgroup {made!r} made from {len(rows)} image(s)"
    return True


def _pool(ws: Any, emb: Any) -> tuple[Any, Any]:
    vecs = emb.candidates.vectors  # float16, memory-mapped: scanned in float32 chunks
    try:
        index = pool_index(vecs, ws.cache_dir / "index", fingerprint=emb.fingerprint or None)
    except MMInstructError:
        index = None  # scanned instead
    return vecs, index


@st.fragment
def more_like_these_panel(ws: Any, emb: Any, rows: list[int], key: str) -> None:
    """A fragment of its own: "How many", "Near", Find and its gallery rerun the panel alone, not
    the page around it; adding candidates to a subgroup saves the workspace and reruns the whole
    page (the partition changed)."""
    state = st.session_state.setdefault(f"{key}:found", {"sig": "", "rows": [], "scores": []})
    if not len(emb.candidates):
        return
    n_ref = len(emb.reference)
    with st.expander("More like these: the nearest candidates of the pool", expanded=bool(state["rows"])):
        c1, c2, c3 = st.columns([1, 2, 1])
        k = int(c1.number_input("How many", 1, 10_000, 24, key=f"{key}:k"))
        method = c2.radio("Near", ["members", "centroid"], horizontal=True, key=f"{key}:method",
                          format_func=lambda m: {"members": "any of them (nearest member)",
                                                 "centroid": "their centre (mean)"}[m])
        if c3.button("Find", key=f"{key}:find", disabled=not rows):
            p = ws.settings.partition
            sel = np.asarray(sorted(rows), dtype=np.int64)
            # "members": only the members searched from are read (256 of a 42,000-point box)
            use = sel[member_positions(len(sel))] if method == "members" else sel
            vecs = np.concatenate([emb.reference.rows32(use[use < n_ref]),
                                   emb.candidates.rows32(use[use >= n_ref] - n_ref)])
            excluded_paths = set(p.excluded_candidates)
            exclude = [r - n_ref for r in sel.tolist() if r >= n_ref]
            exclude += [i for i, c in enumerate(emb.candidates.paths) if c in excluded_paths]
            pool, index = _pool(ws, emb)
            try:
                found = more_like_these(vecs, k, pool=pool, index=index, method=method,
                                        exclude=exclude,
                                        members=len(sel) if method == "members" else None)
            except MMInstructError as e:
                st.error(str(e))
            else:
                state.update(sig=",".join(map(str, sel.tolist())),
                             rows=[n_ref + int(i) for i in found.ids],
                             scores=[float(s) for s in found.scores],
                             searched=found.searched + (
                                 f", from {found.members_searched:,} of {found.members:,} images "
                                 "spread over the selection"
                                 if found.members_searched < found.members and method == "members"
                                 else ""))
        if not state["rows"]:
            st.caption("Tick images above, then Find: the candidates nearest to them, best first.")
            return
        st.caption(f"{len(state['rows'])} candidate(s), best first ({state.get('searched', '')})")
        items = [Item(r, emb.abs_path(r), f"sim {s:.3f} · {emb.rel_path(r)}")
                 for r, s in zip(state["rows"], state["scores"])]
        ticked = gallery(items, f"{key}:gal", columns=6, page_size=24)
        names = ws.subgroup_names()
        c1, c2 = st.columns([2, 1])
        target = c1.selectbox("Add to subgroup", names, key=f"{key}:target") if names else None
        todo = ticked or state["rows"]
        if c2.button(f"Add {len(todo)} to the subgroup", key=f"{key}:add", disabled=not names):
            try:
                ws.assign("candidate", [emb.item_key(int(r)) for r in todo], target)
                ws.save()
            except MMInstructError as e:
                st.error(str(e))
                return
            state.update(rows=[], scores=[])
            st.session_state["_toast"] = f"Added {len(todo)} candidate(s) to {target!r}"
            st.rerun()  # the whole page: the partition changed
        st.caption("Adds the ticked ones, or all of them when none is ticked.")


def show_toast() -> None:
    msg = st.session_state.pop("_toast", None)
    if msg:
        st.toast(md_escape(msg, 200))
