"""Partition: edit the keyword list and watch the subgroups change live — counts per keyword,
galleries sorted by confidence with the uncertain ones flagged, a minimum similarity — then save
the MM-Gen task file (exclusions and manual choices honoured)."""

from __future__ import annotations

import time

import streamlit as st

from mminstruct.app.curation import build_task, curate, keyword_vectors, save_task
from mminstruct.errors import MMInstructError
from mminstruct.partition import partition_widget
from ui.gallery import Item, curation_actions, gallery
from ui.more_like import more_like_these_panel, new_subgroup_form, show_toast
from ui.subgroup_run import subgroup_run_from_task
from ui.suggest_view import suggestions_panel
from ui.safe import md_escape
from ui.settings import bind, show_error
from ui.state import embeddings_or_stop, require_workspace, through_app
from ui import nav

through_app(nav.PARTITION)
st.title("Partition")
ws = require_workspace()
p = ws.settings.partition

emb = embeddings_or_stop(ws)

left, right = st.columns([1, 2])
with left:
    st.subheader("Keywords")
    st.text_area("One keyword per line (add, remove or rename a line)", height=180,
                 **bind(ws, "kw_text"))
    show_error("kw_text")
    use_min = st.checkbox("Leave images under a minimum similarity unassigned",
                          **bind(ws, "use_min"))
    # ranges, steps and help: the settings' declarations (partition.PARTITION_SETTINGS)
    st.slider("Minimum similarity", disabled=not use_min, **partition_widget("min_similarity"),
              **bind(ws, "min_sim"))
    st.slider("Flag as uncertain when the margin to the runner-up keyword is under",
              format="%.3f", **partition_widget("low_margin"), **bind(ws, "low_margin"))
    st.number_input("Candidates per keyword (0: every candidate to its best keyword)",
                    **partition_widget("candidates_per_keyword"), **bind(ws, "top_k"))
    for key in ("use_min", "min_sim", "low_margin", "top_k"):
        show_error(key)

if not p.keywords:
    with right:
        st.info("Add keywords (one per line) to partition the images.")
    st.stop()

t0 = time.perf_counter()
try:
    kw_vecs = keyword_vectors(ws, p.keywords)
    t1 = time.perf_counter()
    cur = curate(ws, emb, kw_vecs)
except MMInstructError as e:
    st.error(str(e))
    st.stop()
t2 = time.perf_counter()

with right:
    st.subheader("Subgroups")
    counts = cur.counts()
    st.bar_chart({"reference": [c["reference"] for c in counts],
                  "candidates": [c["candidates"] for c in counts]} | {"keyword": cur.keywords},
                 x="keyword", y=["reference", "candidates"], stack=False, height=260)
    excl_r, excl_c = int(cur.reference.excluded.sum()), \
        int(cur.candidates.excluded.sum()) if cur.candidates else 0
    unas_r = int((cur.reference.group == -1).sum())
    unas_c = int((cur.candidates.group == -1).sum()) if cur.candidates else 0
    st.caption(f"Partition of {emb.n:,} images by {len(p.keywords)} keywords"
               + (f" and {len(cur.keywords) - len(p.keywords)} subgroup(s) from selections"
                  if len(cur.keywords) > len(p.keywords) else "") + " in "
               f"{(t2 - t1) * 1000:.0f} ms (keyword vectors {(t1 - t0) * 1000:.0f} ms) · "
               f"unassigned {unas_r} ref / {unas_c} cand · excluded {excl_r} ref / {excl_c} cand")
    st.dataframe(counts, hide_index=True, width="stretch")


@st.fragment
def galleries() -> None:
    """The subgroup's galleries and what acts on them, as a fragment: picking a subgroup, ticking
    images and turning a gallery page rerun this section alone, not the partition above it
    ("more like these" is a fragment within it); what changes the partition (sending to a
    subgroup, excluding, a new or removed subgroup) reruns the whole page."""
    st.subheader("Galleries")
    if st.session_state.get("gal_kw") not in cur.keywords:
        st.session_state.pop("gal_kw", None)  # renamed or removed elsewhere
    kw = st.selectbox("Subgroup", cur.keywords, key="gal_kw",
                      format_func=lambda x: f"{x} (from a selection)"
                      if x in p.manual_subgroups else x)
    k = cur.keywords.index(kw)
    tab_ref, tab_cand = st.tabs([f"Reference ({cur.reference.count(k)})",
                                 f"Candidates ({cur.candidates.count(k) if cur.candidates else 0})"])

    def _items(kind: str) -> list[Item]:
        g = cur.reference if kind == "reference" else cur.candidates
        if g is None:
            return []
        out = []
        for r in g.members(k):
            row = emb.row_of(kind, int(r))
            margin = float(g.partition.margin[r])
            note = "manual" if g.manual[r] else f"margin {margin:.3f}"
            flag = f"uncertain: margin {margin:.3f}" if cur.flagged(kind, int(r)) else ""
            score = "" if cur.is_manual(k) else f"{float(g.partition.scores[r, k]):.3f} · "
            out.append(Item(row, emb.abs_path(row), f"{score}{note} · {emb.rel_path(row)}", flag))
        return out

    ticked: list[int] = []
    members: list[int] = []
    for tab, kind in ((tab_ref, "reference"), (tab_cand, "candidate")):
        with tab:
            items = _items(kind)
            members += [int(it.key) for it in items]
            n_flag = sum(1 for it in items if it.flag)
            if n_flag:
                st.caption(f":orange[{n_flag} uncertain] (sorted last): most confident first")
            chosen = gallery(items, f"part_{kind}_{k}", columns=6, page_size=24)
            ticked += chosen
            if curation_actions(ws, emb, chosen, f"part_act_{kind}"):
                st.rerun()
            if new_subgroup_form(ws, emb, chosen, f"part_new_{kind}"):
                st.rerun()
    if kw in p.manual_subgroups and st.button(f"Remove the subgroup {kw!r} (its images go back to "
                                              "the keywords)", key="part_remove_sg"):
        ws.remove_subgroup(kw)
        ws.save()
        st.rerun()
    subgroup_run_from_task(ws, kw)
    st.caption("More like these: the ticked images, or the whole subgroup when none is ticked.")
    more_like_these_panel(ws, emb, ticked or members, "part_more")
    show_toast()


galleries()

suggestions_panel(ws, emb)

st.subheader("Task file")
st.caption("MM-Gen's task file of exactly this partition: keyword subgroups with reference sample "
           "indices and candidate image paths; excluded images are left out.")
if st.button("Save the task file", type="primary", key="save_task"):
    try:
        path = save_task(ws, build_task(ws, emb, cur))
    except (MMInstructError, OSError) as e:
        st.error(f"Cannot save the task file: {e}")
    else:
        st.success(f"Saved {md_escape(path.name, 120)}")
if ws.settings.task_file:
    st.caption(f"Last saved: {md_escape(ws.settings.task_file, 200)}")
    st.page_link(nav.PROMPTS, label="Plan the prompts →")
