"""The Review page's quality panel: the report's summary (counts per flag and keyword, score and
length distributions), a filter by flag, and "reject every sample flagged …" per flag.

The report is ``manifests/RUN.quality.json`` beside the generated file (runs write it; the panel builds it
when it is missing or older than the file). Rejections go through the workspace's own list
(``Workspace.set_rejected``), so the page's exports leave them out like any other rejection.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import streamlit as st

from mminstruct.errors import MMInstructError
from mminstruct.quality.report import (ALL_FLAGS, QualityConfig, analyse, flagged_ids,
                                report_path_for, write_report)
from mminstruct.app.workspace import Workspace
from ui.safe import md_escape

FLAG_LABELS = {"exact_duplicate": "exact duplicate", "near_duplicate": "near duplicate",
               "icl_copy": "in-context copy", "invalid": "invalid",
               "refusal": "refusal", "cross_image_duplicate": "same Q/A on other images"}


@st.cache_data(max_entries=3, show_spinner="Reading the quality report…")
def _load_report(p: str, mtime: int) -> dict[str, Any]:
    return json.loads(Path(p).read_text(encoding="utf-8"))


def _build(path: Path, input_folder: str | None, cross_image: bool = False) -> None:
    with st.spinner("Building the quality report…"):
        rep = analyse(QualityConfig(str(path), input_folder=input_folder,
                                    cross_image=cross_image))
        write_report(rep, report_path_for(path))


def _histogram_chart(title: str, hist: dict[str, list], label_key: str = "edges") -> None:
    counts = hist.get("counts") or []
    if not counts:
        return
    if label_key == "edges":
        edges = hist["edges"]
        labels = [f"{edges[k]:.2f}" for k in range(len(counts))]
    else:
        labels = hist[label_key]
    st.caption(title)
    ordered_bar_chart(labels, counts, "bin", "samples")


def ordered_bar_chart(labels: list[str], counts: list[int], x: str, y: str) -> None:
    """Bars in the order given (``st.bar_chart`` sorts text labels alphabetically: "10–19"
    before "2")."""
    import altair as alt

    chart = alt.Chart(alt.Data(values=[{x: lab, y: int(c)} for lab, c in zip(labels, counts)]))
    st.altair_chart(chart.mark_bar().encode(x=alt.X(f"{x}:N", sort=list(labels)),
                                            y=alt.Y(f"{y}:Q")).properties(height=200),
                    width="stretch")


def _score_histogram(samples: list[dict[str, Any]], key: str, bins: int = 10) -> dict[str, list]:
    values = [s["scores"][key] for s in samples if s.get("scores", {}).get(key) is not None]
    if not values:
        return {"edges": [], "counts": []}
    counts = [0] * bins
    for v in values:
        counts[min(bins - 1, max(0, int(v * bins)))] += 1
    return {"edges": [k / bins for k in range(bins + 1)], "counts": counts}


def quality_panel(ws: Workspace, path: Path, name: str, input_folder: str | None
                  ) -> set[Any] | None:
    """Show the panel; return the ids the flag filter keeps, or None when no flag is picked."""
    rpath = report_path_for(path)
    fresh = rpath.is_file() and rpath.stat().st_mtime_ns >= path.stat().st_mtime_ns
    with st.expander("Quality report", expanded=True):
        if not fresh:
            st.caption("No quality report for this file yet." if not rpath.is_file() else
                       "The quality report is older than the file.")
            cross = st.checkbox("Also flag the same question and answer across images "
                                "(MinHash)", key="rv_q_cross")
            if st.button("Build the quality report", key="rv_q_build"):
                try:
                    _build(path, input_folder, cross)
                except (MMInstructError, OSError) as e:
                    st.error(f"Quality report failed: {e}")
                    return None
                st.rerun()
            return None
        try:
            report = _load_report(str(rpath), rpath.stat().st_mtime_ns)
        except (OSError, ValueError) as e:
            st.error(f"Cannot read {rpath.name}: {e}")
            return None
        summary, entries = report["summary"], report["samples"]
        shown_flags = [f for f in ALL_FLAGS if f in summary["flags"]]  # cross-image: when asked
        cols = st.columns(len(shown_flags) + 1)
        cols[0].metric("Flagged", f"{summary['flagged']:,} / {summary['samples']:,}")
        for col, flag in zip(cols[1:], shown_flags):
            col.metric(FLAG_LABELS[flag], f"{summary['flags'][flag]:,}")
        if summary.get("note"):
            st.caption(md_escape(summary["note"], 200))
        q = summary["questions"]
        st.caption(f"distinct-1 {q['distinct_1']} · distinct-2 {q['distinct_2']} · "
                   f"{q['multiple_choice']:,} multiple choice · thresholds: near duplicate "
                   f"{summary['thresholds']['near_duplicate']}, in-context copy "
                   f"{summary['thresholds']['icl_copy']}")
        st.dataframe([{"keyword": kw, "samples": v["samples"], "flagged": v["flagged"],
                       **{FLAG_LABELS[f]: v["flags"][f] for f in shown_flags}}
                      for kw, v in summary["by_keyword"].items()], hide_index=True)
        c1, c2 = st.columns(2)
        with c1:
            _histogram_chart("Answer length (words)", summary["answer_words"]["histogram"], "bins")
            st.caption("Question types")
            st.bar_chart({"type": list(q["types"]), "questions": list(q["types"].values())},
                         x="type", y="questions", height=200)
        with c2:
            _histogram_chart("Near-duplicate score (closest earlier question of the same image)",
                             _score_histogram(entries, "near_duplicate"))
            g = summary.get("grounding")
            if g:
                _histogram_chart(md_escape(f"Grounding (CLIP {g['model']})", 120), g["histogram"])
            else:
                _histogram_chart("In-context copy score", _score_histogram(entries, "icl_copy"))
        picked = st.multiselect("Show only samples flagged", shown_flags,
                                format_func=FLAG_LABELS.get,
                                key="rv_q_flags")
        r1, r2 = st.columns([2, 1])
        flag = r1.selectbox("Reject every sample flagged", shown_flags,
                            format_func=FLAG_LABELS.get,
                            key="rv_q_reject_flag")
        ids = flagged_ids(entries, [flag])
        if r2.button(f"Reject {len(ids):,}", key="rv_q_reject", disabled=not ids):
            ws.set_rejected(name, ids, True)
            ws.save()
            for sid in ids:  # the cards' toggles keep their own state: make them agree
                st.session_state[f"rv_rej_{name}_{sid}"] = True
            st.rerun()
        if not picked:
            return None
        return set(flagged_ids(entries, picked))
