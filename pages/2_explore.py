"""Explore: CLIP embeddings of the reference set and the candidate pool on a 2-D map, coloured by
keyword subgroup; box or lasso selection opens the images in a gallery, from which they can be
sent to a subgroup or excluded; a text query ranks every image by CLIP similarity."""

from __future__ import annotations

import time

import numpy as np
import streamlit as st

from mminstruct.app.curation import curate, keyword_vectors, projection, search, warm_text_search
from mminstruct.errors import MMInstructError
from ui.charts import (CLICK_SOURCE, CLICK_TO_SELECT_JS, HOVER_TEXT_MAX, MAP_SOURCE, hover_text,
                       map_figure, picked_rows, rings_script, select_from_map, selection_shapes)
from ui.gallery import Item, curation_actions, gallery
from ui.more_like import more_like_these_panel, new_subgroup_form, show_toast
from ui.safe import for_browser, md_escape
from ui.model_picker import model_picker, model_ready, models_asked
from ui.settings import bind, show_error
from ui.state import cached_embeddings, embeddings_or_stop, require_workspace, through_app
from ui import nav

SEL_KEY = "explore_sel"
MAP_KEY = "map"  # the chart's widget key: its selection event in the session
TRACE_ROWS_KEY = "_explore_trace_rows"  # rows of each trace of the map last drawn

through_app(nav.EXPLORE)
st.title("Explore")
ws = require_workspace()
p = ws.settings.partition

# open while there are no embeddings yet, and once the models on this machine were asked for
with st.expander("CLIP model", expanded=cached_embeddings(ws) is None
                 or models_asked("ex_clip_model")):
    # the models found on this machine after a click: finding them imports open_clip (torch),
    # which the server does not need while the keywords and the map are cached
    model_picker(ws, "ex_clip_model", find_now=False)
    st.caption("Changing the model re-embeds every image with it (from that model's cache when "
               "it embedded them before).")
    st.text_input("Ray cluster for the embedding job: HOST:PORT, auto or local (empty: this "
                  "machine's cores)", placeholder="e.g. 10.0.0.5:6379", **bind(ws, "ex_ray"))
    show_error("ex_ray")
    st.caption("The candidate pool is embedded there when the job next starts; the reference "
               "images, the map and the cache stay here. Or embed ahead from a shell: "
               "`python -m mminstruct.app.embed WORKSPACE --ray_address ADDRESS`.")
in_memory = cached_embeddings(ws) is not None
if not in_memory:
    model_ready(ws)  # a bad spec, or weights that cannot be downloaded: said now, in full
emb = embeddings_or_stop(ws)

c1, c2, c3 = st.columns(3)
c1.metric("Reference images", f"{len(emb.reference):,}")
c2.metric("Candidate images", f"{len(emb.candidates):,}")
computed = 0 if in_memory else min(emb.n_computed, emb.n)
c3.metric("Embedded now / from cache", f"{computed:,} / {emb.n - computed:,}")
problems = emb.reference.failures + emb.problems + emb.candidates.failures
st.caption(f"{emb.n:,} images on the map = {len(emb.reference):,} reference + "
           f"{len(emb.candidates):,} candidates" + (f"; {len(problems):,} could not be used "
                                                    "(listed below)" if problems else ""))
no_image = len(emb.data.records) - len(emb.reference) - len(emb.reference.failures)
if no_image > 0:  # the Data page counts every record loaded
    st.caption(f"{no_image:,} record(s) of the data file have no image and are not on the map.")
if problems:
    with st.expander(f"{len(problems)} image(s) could not be used"):
        st.code(for_browser("\n".join(f"{a}: {b}" for a, b in problems[:200])), language=None,
                wrap_lines=True)
if not emb.n:
    st.warning("No image could be embedded.")
    st.stop()

with st.expander("Keywords: they colour the map (the same list as on the Partition page)",
                 expanded=not p.keywords):
    st.text_area("One keyword per line", height=110, **bind(ws, "kw_text"))
    show_error("kw_text")

cur = None
if p.keywords:
    try:
        cur = curate(ws, emb, keyword_vectors(ws, p.keywords))
    except MMInstructError as e:
        st.error(str(e))
groups = cur.group_of_all() if cur is not None else np.full(emb.n, -1, np.int64)
subgroups = cur.keywords if cur is not None else list(p.keywords)  # + subgroups from selections
group_names = {k: kw for k, kw in enumerate(subgroups)} | {-1: "unassigned", -2: "excluded"}

# ----------------------------------------------------------------------------------------------
# The map

st.radio("Projection", ["umap", "pca"], horizontal=True,
         format_func=lambda m: {"umap": "UMAP", "pca": "PCA (fast, linear)"}[m],
         **bind(ws, "proj_method"))
show_error("proj_method")
method = p.projection
emb = embeddings_or_stop(ws, need_projection=True)  # a missing map is made by the background job

bar = st.progress(0.0, text="Projecting to 2-D…")
t0 = time.perf_counter()
from_cache: list[bool] = []


def _progress(f: float, msg: str) -> None:
    if "from cache" in msg:
        from_cache.append(True)
    bar.progress(min(1.0, f), text=msg)


try:
    xy = projection(ws, emb, progress=_progress)
except MMInstructError as e:
    bar.empty()
    st.error(f"Projection failed: {e}")
    st.stop()
bar.empty()
proj_s = time.perf_counter() - t0

sel_state = st.session_state.setdefault(SEL_KEY, {"rows": [], "source": ""})

# ----------------------------------------------------------------------------------------------
# Text search (before the map: the map drawn below already rings what it found)

with st.form("search_form"):
    query = st.text_input("Rank every image by CLIP similarity to a text", key="search_q",
                          placeholder="e.g. a pie chart with five slices")
    go = st.form_submit_button("Search")
if go and query.strip():
    try:
        hits = search(ws, emb, query, limit=48)
    except MMInstructError as e:
        st.error(str(e))
        hits = []
    sel_state.update(rows=[r for r, _ in hits], source=f"search: {query.strip()}",
                     scores={str(r): s for r, s in hits})

# A box, lasso or click on the map: its event (the chart's state from the browser) is read before
# the map is drawn, so this run's map and gallery show the new selection together. A click maps
# back through the rows of the traces the browser drew (the last run's figure).
event = st.session_state.get(MAP_KEY)
picked = picked_rows(event, xy, st.session_state.get(TRACE_ROWS_KEY) or [])
signature = ",".join(map(str, picked))
if signature != st.session_state.get("explore_sig", ""):
    st.session_state["explore_sig"] = signature
    if picked:
        select_from_map(sel_state, picked,
                        MAP_SOURCE if any(selection_shapes(event)) else CLICK_SOURCE)
selected = [r for r in sel_state["rows"] if 0 <= r < emb.n]
n_ref = len(emb.reference)
is_ref = np.arange(emb.n) < n_ref
hover = None
if emb.n <= HOVER_TEXT_MAX:  # above it the hover names the subgroup and kind (payload)
    hover = [hover_text("reference" if r < n_ref else "candidate", emb.rel_path(r),
                        emb.question(r), group_names.get(int(groups[r]), "?")) for r in range(emb.n)]
# a box or lasso drawn on the map is shown by the chart itself; rings mark the others (a click, a
# search, more like these) over the chart, so no selection changes the figure (the browser
# redraws no WebGL point)
rings = () if sel_state.get("source") == MAP_SOURCE else selected
drawn = map_figure(xy, groups, is_ref, group_names, hover)
st.session_state[TRACE_ROWS_KEY] = drawn.trace_rows
st.caption(f"All {emb.n:,} points drawn · {method.upper()} "
           f"{'from cache' if from_cache else f'computed in {proj_s:.1f} s'} · pick the box or lasso "
           "tool (top right of the chart) — it selects every point inside it — or click a point")
st.plotly_chart(drawn.figure, key=MAP_KEY, on_select="rerun",
                selection_mode=("points", "box", "lasso"), width="stretch",
                config=drawn.config)
st.html(CLICK_TO_SELECT_JS, unsafe_allow_javascript=True)
st.html(rings_script(xy, rings, MAP_KEY), unsafe_allow_javascript=True)
warm_text_search(ws)  # the text model loads in its worker while the person looks at the map

# ----------------------------------------------------------------------------------------------
# The selection

@st.fragment
def selection_section(selected: list[int], source: str, scores: dict[str, float]) -> None:
    """The selection's gallery and what acts on it, as a fragment: ticking images and turning a
    gallery page rerun this section alone, not the map above it (a full page run at 210,000
    points; "more like these" is a fragment within it); what changes the map (sending to a
    subgroup, excluding, a new subgroup, clearing) reruns the whole page."""
    st.subheader(f"Selection · {len(selected):,} image(s)")
    if source:
        st.caption(md_escape(source, 120))
    if not selected:
        st.caption("Select points on the map (box or lasso) or search by text to see images here.")
        return
    if st.button("Clear the selection", key="sel_clear"):
        sel_state.update(rows=[], source="", scores={})
        st.rerun()
    items = []
    for r in selected[:2000]:
        kind = "ref" if r < n_ref else "cand"
        g = group_names.get(int(groups[r]), "?")
        sim = f" · sim {scores[str(r)]:.3f}" if str(r) in scores else ""
        items.append(Item(r, emb.abs_path(r), f"{kind} · {g}{sim} · {emb.rel_path(r)}"))
    chosen = gallery(items, "explore_gallery", columns=6, page_size=36)
    st.caption(f"{len(chosen)} ticked; the buttons act on the ticked images")
    if curation_actions(ws, emb, chosen, "explore_actions"):
        st.rerun()
    # a subgroup of their own, and more like them: the ticked images, or the whole selection
    acting = chosen or selected
    if new_subgroup_form(ws, emb, acting, "explore_new"):
        st.rerun()
    more_like_these_panel(ws, emb, acting, "explore_more")
    show_toast()


selection_section(selected, sel_state.get("source") or "", sel_state.get("scores") or {})
st.page_link(nav.PARTITION, label="Edit the keywords on the Partition page →")
