"""Keyword suggestions on the Partition page: cluster the reference set, name the clusters from the
shipped vocabulary, flag the regions no keyword fits, add the names as keywords."""

from __future__ import annotations

from typing import Any

import streamlit as st

from mminstruct.errors import MMInstructError
from mminstruct.app.suggest import suggest_for_workspace


def suggestions_panel(ws: Any, emb: Any, key: str = "suggest") -> None:
    st.subheader("Keyword suggestions")
    p = ws.settings.partition
    with st.expander("What does the reference set contain? Cluster it and name the clusters",
                     expanded=key in st.session_state and bool(st.session_state[key])):
        c1, c2, c3 = st.columns([1, 1, 1])
        k = int(c1.number_input("Clusters (0: chosen by silhouette, 2–12)", 0, 100, 0,
                                key=f"{key}:k"))
        method = c2.radio("Clustering", ["kmeans", "hdbscan"], horizontal=True, key=f"{key}:method")
        if c3.button("Suggest keywords", key=f"{key}:go"):
            with st.spinner("Clustering and naming…"):
                try:
                    st.session_state[key] = suggest_for_workspace(ws, emb, k=k or None, method=method)
                except MMInstructError as e:
                    st.error(str(e))
                    st.session_state[key] = None
        s = st.session_state.get(key)
        if not s:
            st.caption("Clusters the reference embeddings and names each cluster by the concepts "
                       "of mminstruct/data/visual_concepts.txt whose CLIP text vectors fit it best.")
            return
        chosen_k = f"k = {s.k}" + (f" (best silhouette {s.silhouettes[s.k]:.2f})"
                                   if s.silhouettes else "")
        st.caption(f"{s.method}, {chosen_k}; a cluster is flagged when its images fit no current "
                   f"keyword (median best similarity under {s.min_fit:.3f})" if s.min_fit is not None
                   else f"{s.method}, {chosen_k}")
        st.dataframe([{"suggested keyword": c.name, "images": c.size,
                       "top words": ", ".join(w for w, _ in c.words[:5]),
                       "nearest keyword": c.keyword or "—",
                       "fit": round(c.keyword_fit, 3) if c.keyword else None,
                       "no keyword fits": "⚠ yes" if c.uncovered else ""} for c in s.clusters],
                     hide_index=True, width="stretch")
        offer = s.keywords(ws.subgroup_names())
        if not offer:
            st.caption("Every suggested name is a keyword already.")
            return
        default = [c.name for c in s.uncovered() if c.name in offer]
        picked = st.multiselect("Add as keywords", offer, default=default, key=f"{key}:pick")
        if st.button(f"Add {len(picked)} keyword(s)", key=f"{key}:add", disabled=not picked):
            try:
                ws.set_keywords([*p.keywords, *picked])
                ws.save()
            except MMInstructError as e:
                st.error(str(e))
            else:
                st.rerun()
