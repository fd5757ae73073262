"""The Review page's judge panel: a judge's scores (``manifests/RUN.scores.jsonl``, written by
``python -m mminstruct.judge`` or the Generate page) — distributions per subgroup and per prompt
mode, sort and filter by score and aspect, and "reject every sample scored below …" through the
workspace's own rejections (``Workspace.set_rejected``), so exports leave them out."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import streamlit as st

from mminstruct.app.review import SCORE_SORTS, below, load_scores, scores_path_for
from mminstruct.app.workspace import Workspace
from mminstruct.errors import MMInstructError
from mminstruct.quality.scores import distributions
from ui.safe import md_escape

OVERALL = "overall"


@dataclass
class JudgeView:
    """What the panel decided: the scores (id → line), the aspect, the order and the filter."""

    scores: dict[Any, dict[str, Any]] = field(default_factory=dict)
    aspect: str | None = None  # None: overall
    sort: str = "file order"
    at_most: float | None = None


@st.cache_data(max_entries=3, show_spinner="Reading the judge's scores…")
def _load(p: str, mtime: int) -> dict[Any, dict[str, Any]]:
    return load_scores(p)


def judge_panel(ws: Workspace, path: Path, name: str) -> JudgeView:
    spath = scores_path_for(path)
    if not spath.is_file():
        return JudgeView()
    try:
        scores = _load(str(spath), spath.stat().st_mtime_ns)
    except (MMInstructError, OSError) as e:
        st.error(f"Cannot read the judge's scores {spath.name}: {e}")
        return JudgeView()
    view = JudgeView(scores)
    dist = distributions(scores)
    with st.expander("Judge scores", expanded=True):
        a = dist["all"]
        judges = ", ".join(f"{j.get('model')} (rubric {j.get('rubric')})" for j in dist["judges"])
        st.caption(md_escape(f"{a['judged']:,} of {a['samples']:,} samples judged · overall mean "
                             f"{a['overall_mean']} · judge {judges}", 300))
        c1, c2 = st.columns(2)
        with c1:
            st.caption("Overall score per subgroup (mean)")
            st.bar_chart({"subgroup": list(dist["by_subgroup"]),
                          "mean": [v["overall_mean"] for v in dist["by_subgroup"].values()]},
                         x="subgroup", y="mean", height=200)
        with c2:
            st.caption("Overall score per prompt mode (mean)")
            st.bar_chart({"mode": list(dist["by_mode"]),
                          "mean": [v["overall_mean"] for v in dist["by_mode"].values()]},
                         x="mode", y="mean", height=200)
        st.dataframe([{"subgroup": k, "judged": v["judged"], "overall": v["overall_mean"],
                       **v["aspect_means"]} for k, v in dist["by_subgroup"].items()],
                     hide_index=True)
        aspects = [OVERALL, *a["aspect_means"]]
        c1, c2, c3 = st.columns(3)
        pick = c1.selectbox("Score", aspects, key="rv_j_aspect")
        view.aspect = None if pick == OVERALL else pick
        view.sort = c2.selectbox("Order", SCORE_SORTS, key="rv_j_sort")
        limit = c3.number_input("Show only scores at most (0: all)", 0.0, 100.0, 0.0, 0.5,
                                key="rv_j_at_most")
        view.at_most = float(limit) if limit else None
        r1, r2 = st.columns([2, 1])
        threshold = r1.number_input(f"Reject every sample whose {pick} score is below", 0.0,
                                    100.0, 3.0, 0.5, key="rv_j_threshold")
        ids = below(scores, float(threshold), view.aspect)
        if r2.button(f"Reject {len(ids):,}", key="rv_j_reject", disabled=not ids):
            ws.set_rejected(name, ids, True)
            ws.save()
            for sid in ids:  # the cards' toggles keep their own state: make them agree
                st.session_state[f"rv_rej_{name}_{sid}"] = True
            st.rerun()
    return view


def show_scores(rec: dict[str, Any] | None) -> None:
    """A sample's scores and the judge's rationale, beside the sample."""
    if not rec:
        return
    if rec.get("scores") is None:
        st.caption(md_escape(f"judge: unjudged ({rec.get('error', 'unknown')})", 120))
        return
    st.markdown(f"**Judge: {rec['overall']}**")
    for aspect, v in rec["scores"].items():
        why = (rec.get("rationale") or {}).get(aspect, "")
        st.caption(md_escape(f"{aspect} {v} — {why}", 400))
