"""The Explore map alone, for ``bench/app_scale.py``'s 1,000,000-point case: the points of
``$MMI_MAP_XY`` (a float32 [N, 2] ``.npy``) and their groups (``$MMI_MAP_GROUPS``, int64 ``.npy``)
drawn by ``ui.charts.map_figure`` and selected by ``ui.charts.picked_rows`` — the same code the
Explore page runs — with the count of the rows selected shown as ``Selected N rows``.

Run: ``streamlit run bench/map_app.py`` with those two variables set. ``?gl_ratio=2`` in the URL
draws the WebGL canvas at that many pixels per CSS pixel instead of ``map_figure``'s choice
(``bench/map_drag.py`` compares them); ``?markers=symbol:size,symbol:size`` draws the two kinds
(reference, candidate) with those markers instead of ``map_figure``'s (``bench/map_symbols.py``
compares them). "Recolour" moves every point to the next group: a new figure, so the chart is
mounted again (``bench/map_mount.py``)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ui.charts import CLICK_TO_SELECT_JS, map_figure, picked_rows  # noqa: E402


@st.cache_resource
def _load(xy_path: str, groups_path: str) -> tuple[np.ndarray, np.ndarray]:
    return np.load(xy_path), np.load(groups_path)


xy, groups = _load(os.environ["MMI_MAP_XY"], os.environ["MMI_MAP_GROUPS"])
t0 = time.perf_counter()
names = {g: f"group {g}" for g in range(int(groups.max()) + 1)} | {-1: "unassigned", -2: "excluded"}
asked = [m.split(":") for m in st.query_params.get("markers", "").split(",") if ":" in m]
markers = ({kind: (symbol, int(size)) for kind, (symbol, size) in zip(("reference", "candidate"), asked)}
           if len(asked) == 2 else None)
# "Recolour": every point to the next group, a new figure (the chart is mounted again)
shift = st.session_state.setdefault("shift", 0)
if st.button("Recolour"):
    shift = st.session_state["shift"] = shift + 1
shown = (groups + shift) % (int(groups.max()) + 1) if shift else groups
drawn = map_figure(xy, shown, np.arange(len(xy)) < len(xy) // 2, names, None, markers=markers)
st.caption(f"{len(xy):,} points; figure built in {time.perf_counter() - t0:.2f} s")
ratio = st.query_params.get("gl_ratio", "")
config = drawn.config | ({"plotGlPixelRatio": int(ratio)} if ratio.isdigit() else {})
event = st.plotly_chart(drawn.figure, key="map", on_select="rerun",
                        selection_mode=("points", "box", "lasso"), width="stretch", config=config)
st.html(CLICK_TO_SELECT_JS, unsafe_allow_javascript=True)
t1 = time.perf_counter()
rows = picked_rows(event, xy, drawn.trace_rows)
if rows:
    st.session_state["sel"] = rows
st.write(f"Selected {len(st.session_state.get('sel', [])):,} rows "
         f"(selection computed in {time.perf_counter() - t1:.3f} s)")
